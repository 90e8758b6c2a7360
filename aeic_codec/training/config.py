"""The training configuration: dataclasses, and the TOML schema read off them.

One schema, two kinds of run: a file with a top-level ``base_bundle`` key trains a
realism decoder for that bundle (``RealismConfig``, every key top-level); any other file
trains the codec in stages (``TrainConfig``, with ``[model]`` and ``[[stages]]``).

Every TOML key is a dataclass field: its type, its default and whether it may be left
out come from the field; a field's ``toml`` metadata names the key when it differs from
the field's name (``lora.rank`` is key ``rank`` of table ``[lora]``) and ``optional``
marks keys whose value is derived when left out (names). Relative paths in a TOML file
are taken from the file's folder. No torch here: reading a configuration is cheap.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aeic_codec.bundles.bundle import STORAGE_DTYPES, BundleError, read_info
from aeic_codec.nn.config import PRESETS, ModelConfig, tiny_config

PARTS = ("encoder", "context", "g_s", "denoiser_lora", "denoiser", "vae")
SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")  # cuda may name its index, cuda:N
CROP_MULTIPLE = 64  # y (1/32) must have an even size for the 2x2 quadtree cells
# Fields of the config that fix the trajectory: a resumed run must match them.
RESUME_KEYS = ("model", "stages", "seed", "lora_rank", "lora_alpha", "disc_width")
# Depths a run may raise over its init_bundle: the blocks they add are residual, so they
# can start as identities and the grown model computes exactly what the bundle did.
GROWABLE = ("gs_blocks", "context_depth")
# How a decoder tiles: no weight depends on it, so a run may change it freely.
TILING = ("eps_tile", "eps_overlap", "vae_tile")
# What the encoder sends beside the streams: no weight depends on it either.
COLOUR_GRID = ("colour_grid", "colour_grid_step")
REALISM_KEY = "base_bundle"  # the top-level key that makes a file a realism run
REALISM_PATHS = ("base_bundle", "taef2", "init", "eval_dir")
LATENT_SCALE = 8  # the realism decoder's D latent is at 1/8 of the image size, y at 1/32
REALISM_DEVICES = ("auto", "cpu")  # a realism run trains on the CPU
# The realism terms on renderings of D, in the order the loss adds them.
IMAGE_TERMS = ("image", "phase", "pixel", "perceptual", "spectrum")


class TrainConfigError(ValueError):
    """A training configuration or run folder that cannot be used; the message says why."""


def _toml(name: str | None) -> dict[str, str | None]:
    """Field metadata: read from TOML key ``name`` ("table.key": a key of a sub-table)."""
    return {"toml": name}


_OPTIONAL = {"optional": True}  # TOML may leave it out; the reader derives it


@dataclass(frozen=True)
class LossWeights:
    """Weights of the distortion terms; the rate weight is the stage's lambda."""

    mse: float = 1.0
    msssim: float = 0.0
    lpips: float = 0.0
    dists: float = 0.0
    adv: float = 0.0
    distill_enc: float = 0.0
    distill_dec: float = 0.0


@dataclass(frozen=True)
class StageConfig:
    """One stage: which parts train, on which crops, with which loss and schedule."""

    name: str = field(metadata=_OPTIONAL)  # default: stage<N>
    steps: int
    lr: float
    lambda_: float = field(metadata=_toml("lambda"))
    crop: int
    batch: int  # the global batch: processes of a distributed run share it
    train: tuple[str, ...]
    export: str = field(metadata=_OPTIONAL)  # default: <run name>-<stage name>
    schedule: str = "constant"
    warmup: int = 0
    lr_min: float = 0.0
    lambda_start: float | None = None
    lambda_ramp: int = 0  # steps from lambda_start to lambda; 0 means the whole stage
    accum: int = 1
    clip: float = 0.0  # gradient-norm clip; 0 disables it
    aux_lr: float = 1e-3
    disc_lr: float | None = None  # None: the stage's scheduled lr
    export_lambda: float | None = None  # the lambda recorded in the bundle; None: lambda
    loss: LossWeights = field(default_factory=LossWeights)

    def lr_at(self, step: int) -> float:
        """Linear warmup, then constant or cosine decay to lr_min at the stage's end."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.schedule == "constant":
            return self.lr
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1 + math.cos(math.pi * t))

    def lambda_at(self, step: int) -> float:
        """lambda, or a linear ramp to it from lambda_start (rate pressure grows gently)."""
        if self.lambda_start is None:
            return self.lambda_
        ramp = self.lambda_ramp or self.steps
        return self.lambda_start + (self.lambda_ - self.lambda_start) * min(1.0, step / ramp)


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run: model, stages and the run's machinery."""

    model: ModelConfig
    stages: tuple[StageConfig, ...]
    name: str = field(default="aeic", metadata=_OPTIONAL)  # default: the file's stem
    init_bundle: Path | None = field(default=None, metadata=_toml(None))  # from [model]
    teacher_bundle: Path | None = None
    seed: int = 0
    threads: int = 0  # 0 keeps torch's default
    bf16: bool = False
    latent_std: float = 0.0  # > 0: scale a fresh g_a so that y starts with this std
    encoder_dtype: str = "fp32"  # storage of the encoder side in exported bundles
    decoder_dtype: str = "bf16"  # storage of g_s, eps and D in exported bundles
    device: str = "auto"
    workers: int = 1
    log_every: int = 10
    lora_rank: int = field(default=32, metadata=_toml("lora.rank"))
    lora_alpha: float = field(default=8.0, metadata=_toml("lora.alpha"))
    disc_width: int = field(default=64, metadata=_toml("discriminator.width"))
    eval_dir: Path | None = field(default=None, metadata=_toml("eval.dir"))
    eval_every: int = field(default=0, metadata=_toml("eval.every"))
    eval_images: int = field(default=8, metadata=_toml("eval.images"))
    checkpoint_every: int = field(default=1000, metadata=_toml("checkpoint.every"))
    checkpoint_minutes: float = field(default=30.0, metadata=_toml("checkpoint.minutes"))

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def uses(self, loss: str) -> bool:
        """Whether any stage gives this loss term a weight."""
        return any(getattr(s.loss, loss) > 0 for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (paths as strings), for config.json and resume checks."""
        return _plain(self)


def _plain(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


@dataclass(frozen=True)
class RealismConfig:
    """A realism run: a realism decoder for ``base_bundle``; every field is a top-level key.

    The run's machinery (name, seed, threads, device, log, eval, checkpoint) has the
    fields TrainConfig has, under the same names.
    """

    base_bundle: str = ""
    taef2: str = ""  # folder with taef2_encoder.safetensors and taef2_decoder.safetensors
    preset: str = "aeic-small-taef2"
    # Where to start: a checkpoint.pt of another realism run, or a bundle's realism decoder
    # (a .safetensors file; the critics then start afresh). Empty: the base's own g_s.
    init: str = ""
    seed: int = 0
    threads: int = 2
    steps: int = 3000
    crop: int = 256  # pixels; a multiple of 64 (crops start on y's 2x2 quadtree cells)
    batch: int = 8
    lr: float = 2e-4
    lr_min: float = 2e-5
    warmup: int = 50
    disc_lr: float = 2e-4
    disc_width: int = 64
    adv_start: int = 300  # steps of distillation alone (the critic trains from step 0)
    adv_ramp: int = 300
    latent: float = 1.0
    lowpass: float = 4.0
    adv: float = 0.1
    image: float = 0.0  # weight of the image term (0: off, no photo cache)
    image_crop: int = 128  # pixels of each crop's centre that D renders for it
    image_pool: int = 4  # the image term compares means over pool x pool pixels
    phase: float = 0.0  # weight of the lattice term
    pixel: float = 0.0  # weight of full-resolution MSE on the renderings
    perceptual: float = 0.0  # weight of the TAEF2-encoder feature distance on them
    image_adv: float = 0.0  # weight of a hinge critic on the renderings themselves
    spectrum: float = 0.0  # weight of the renderings' band-power distance (losses.py)
    # That distance per window of this side (0: over each whole rendering) and per this
    # many orientation sectors of each band (1: radially averaged).
    spectrum_window: int = 0
    spectrum_sectors: int = 1
    # The noise input's per-channel scales (preset with latent_noise) learn this many times
    # faster than the rest: from zero, they have to grow to l_T's own scale (about 0.6).
    noise_lr: float = 100.0
    # Above 0, the noise scales start at this value instead (whatever ``init`` holds): a
    # decoder whose scales start at zero may never learn to use the noise.
    noise_init: float = 0.0
    # Zero g_s's 1x11 and 11x1 depthwise kernels (InceptionDW's band branches) and keep
    # them so: they draw long horizontal and vertical structures, which the realism
    # decoder turns into streaks.
    no_band_kernels: bool = False
    # Decay of a moving average of the decoder's weights (0: none). Evaluation and export
    # use the average: a decoder trained against critics swings from step to step.
    ema: float = 0.0
    # The exported decoder gives only detail finer than this Gaussian sigma, in pixels
    # (ModelConfig.detail_sigma; 0: its whole picture). Evaluations here use its whole
    # picture either way.
    detail_sigma: float = 0.0
    grid_cell: int = 64  # the colour grid applied to evaluation decodes
    grid_step: int = 4
    eval_dir: str = ""
    eval_images: int = 4
    eval_every: int = 250  # and the last step; each evaluated step keeps its checkpoint
    max_pixels: int = 250_000  # larger training photos are downscaled for the caches
    checkpoint_minutes: float = 5.0
    log_every: int = 20
    name: str = field(default="realism", metadata=_OPTIONAL)  # default: the file's stem
    device: str = "cpu"  # auto or cpu: the realism trainer runs on the CPU
    checkpoint_every: int = 0  # steps; 0: by checkpoint_minutes, on stop and at the end

    @property
    def total_steps(self) -> int:
        return self.steps

    def needs_photos(self) -> bool:
        """Whether any term renders crops through D and compares them with the photos."""
        return any(getattr(self, key) > 0 for key in (*IMAGE_TERMS, "image_adv"))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, for config.json."""
        return _plain(self)


# --------------------------------------------------------------------------- schema

_REQUIRED = object()


@dataclass(frozen=True)
class _Key:
    """One TOML key: the field it fills, the TOML type it takes and its default."""

    field: str
    kind: type
    default: Any


Schema = dict[str, Any]  # key -> _Key, or table name -> Schema of that table


def _toml_kind(hint: Any) -> type:
    """The TOML type of an annotation: paths are strings, tuples lists, dataclasses tables."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is not tuple and args:  # X | None
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        return list
    if hint is Path:
        return str
    if dataclasses.is_dataclass(hint):
        return dict
    return hint


def schema_of(cls: type) -> Schema:
    """The TOML keys of a config dataclass, each with its type and default."""
    hints = typing.get_type_hints(cls)
    schema: Schema = {}
    for f in dataclasses.fields(cls):
        name = f.metadata.get("toml", f.name)
        if name is None:
            continue
        kind = _toml_kind(hints[f.name])
        if f.metadata.get("optional"):
            default = None
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = {} if kind is dict else f.default_factory()
        else:
            default = _REQUIRED
        table = schema
        *tables, key = name.split(".")
        for t in tables:
            table = table.setdefault(t, {})
        table[key] = _Key(f.name, kind, default)
    return schema


_TOP_KEYS = schema_of(TrainConfig)
_REALISM_KEYS = schema_of(RealismConfig)
_STAGE_KEYS = schema_of(StageConfig)
_LOSS_KEYS = schema_of(LossWeights)
_PATH_FIELDS = {
    name
    for name, hint in typing.get_type_hints(TrainConfig).items()
    if Path in typing.get_args(hint)
}


def load_train_config(path: str | Path) -> TrainConfig | RealismConfig:
    """Read a TOML training configuration of either kind; errors name the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TrainConfigError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"{path}: not valid TOML ({exc})") from exc
    parse = parse_realism_config if REALISM_KEY in data else parse_train_config
    try:
        return parse(data, path.resolve().parent, default_name=path.stem)
    except TrainConfigError as exc:
        raise TrainConfigError(f"{path}: {exc}") from exc


def parse_train_config(
    data: dict[str, Any], base_dir: Path, default_name: str = "aeic"
) -> TrainConfig:
    """Build a TrainConfig from parsed TOML; relative paths are taken from ``base_dir``."""
    top = _read_table(data, "top level", _TOP_KEYS)
    model, init_bundle = _model_section(top.pop("model"), base_dir)
    tables = top.pop("stages")
    if not tables:
        raise TrainConfigError("at least one [[stages]] table is needed")
    top["name"] = top["name"] or default_name
    for key in _PATH_FIELDS & set(top):
        top[key] = _path(base_dir, top[key])
    stages = tuple(_stage(i, table, top["name"]) for i, table in enumerate(tables))
    config = TrainConfig(model=model, stages=stages, init_bundle=init_bundle, **top)
    validate_config(config)
    return config


def parse_realism_config(
    data: dict[str, Any], base_dir: Path, default_name: str = "realism"
) -> RealismConfig:
    """Build a RealismConfig from parsed TOML; relative paths are taken from ``base_dir``."""
    top = _read_table(data, "top level", _REALISM_KEYS)
    top["name"] = top["name"] or default_name
    for key in REALISM_PATHS:
        if top[key]:
            top[key] = str((base_dir / top[key]).resolve())
    config = RealismConfig(**top)
    validate_realism(config)
    return config


def validate_realism(config: RealismConfig) -> None:
    """What the realism trainer's crops, renderings and device need."""
    if config.crop % CROP_MULTIPLE:
        raise TrainConfigError(f"crop must be a multiple of {CROP_MULTIPLE}")
    if config.image_crop % LATENT_SCALE or not 0 < config.image_crop <= config.crop:
        raise TrainConfigError("image_crop must be a multiple of 8 no larger than crop")
    window = config.spectrum_window
    if config.spectrum_sectors < 1 or not (window == 0 or 8 <= window <= config.image_crop):
        raise TrainConfigError(
            "spectrum_sectors must be at least 1 and spectrum_window 0 or from 8 to image_crop"
        )
    realism_device(config.device)


def realism_device(device: str) -> str:
    """The device a realism run trains on, the CPU, for a device setting that allows it."""
    if device not in REALISM_DEVICES:
        raise TrainConfigError(
            f"a realism run trains on the CPU: device must be auto or cpu, got {device!r}"
        )
    return "cpu"


def validate_config(config: TrainConfig) -> None:
    """Reject what would fail (or silently do nothing) only after hours of training."""
    if config.device.split(":")[0] not in DEVICES or config.device.startswith("auto:"):
        raise TrainConfigError(f"device must be auto, cpu, cuda[:N] or mps, got {config.device!r}")
    if config.workers not in (0, 1):
        raise TrainConfigError("workers must be 0 (load in the main process) or 1")
    for key in ("encoder_dtype", "decoder_dtype"):
        if getattr(config, key) not in STORAGE_DTYPES:
            raise TrainConfigError(
                f"{key} must be one of {', '.join(STORAGE_DTYPES)}, got {getattr(config, key)!r}"
            )
    if config.latent_std < 0:
        raise TrainConfigError("latent_std must be >= 0 (0 leaves the initialisation alone)")
    if config.log_every < 1 or config.lora_rank < 1 or config.disc_width < 1:
        raise TrainConfigError("log_every, [lora] rank and [discriminator] width must be >= 1")
    if config.eval_every and config.eval_dir is None:
        raise TrainConfigError("[eval] every is set but [eval] dir is not")
    distills = config.uses("distill_enc") or config.uses("distill_dec")
    if distills and config.teacher_bundle is None:
        raise TrainConfigError("distill_enc/distill_dec weights need teacher_bundle")
    exports = [s.export for s in config.stages]
    if len(set(exports)) != len(exports):
        raise TrainConfigError("every stage needs its own export name")
    for i, s in enumerate(config.stages):
        where = f"[[stages]] #{i + 1} ({s.name})"
        if s.steps < 1 or s.batch < 1 or s.accum < 1 or s.lr <= 0:
            raise TrainConfigError(f"{where}: steps, batch and accum must be >= 1 and lr > 0")
        if s.crop < CROP_MULTIPLE or s.crop % CROP_MULTIPLE:
            raise TrainConfigError(f"{where}: crop must be a multiple of {CROP_MULTIPLE}")
        grid = config.model.colour_grid
        if grid and s.crop % grid:
            raise TrainConfigError(f"{where}: crop must be a multiple of colour_grid ({grid})")
        if s.schedule not in SCHEDULES:
            raise TrainConfigError(f"{where}: schedule must be one of {', '.join(SCHEDULES)}")
        if not s.train:
            raise TrainConfigError(f"{where}: train lists no part")
        for part in s.train:
            if part not in PARTS:
                raise TrainConfigError(f"{where}: unknown part {part!r}{_hint(part, PARTS)}")
        if min(*dataclasses.astuple(s.loss), s.lambda_) < 0:
            raise TrainConfigError(f"{where}: lambda and loss weights must not be negative")


def _read_table(table: Any, where: str, schema: Schema) -> dict[str, Any]:
    """Field values of ``schema``'s keys, defaults filled in; unknown/missing/mistyped keys raise.

    Sub-tables of the schema (such as [lora]) are read into the same dictionary.
    """
    if not isinstance(table, dict):
        raise TrainConfigError(f"{where} must be a table")
    for key in table:
        if key not in schema:
            raise TrainConfigError(f"{where}: unknown key {key!r}{_hint(key, schema)}")
    out = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            out.update(_read_table(table.get(key, {}), f"[{key}]", spec))
        elif key in table:
            out[spec.field] = _typed(where, key, table[key], spec.kind)
        elif spec.default is _REQUIRED:
            raise TrainConfigError(f"{where}: missing key {key!r}")
        else:
            out[spec.field] = spec.default
    return out


def _typed(where: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise TrainConfigError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")


def _hint(key: str, known: Any) -> str:
    near = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _path(base_dir: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _model_section(table: Any, base_dir: Path) -> tuple[ModelConfig, Path | None]:
    """[model]: init_bundle (optionally grown deeper), or preset plus overrides, or every field."""
    if not isinstance(table, dict):
        raise TrainConfigError("[model] must be a table")
    table = dict(table)
    if "init_bundle" in table:
        path = _path(base_dir, _typed("[model]", "init_bundle", table.pop("init_bundle"), str))
        others = sorted(set(table) - set(GROWABLE) - set(TILING) - set(COLOUR_GRID))
        if others:
            raise TrainConfigError(
                "[model]: init_bundle takes the model shape from the bundle; only "
                f"{' and '.join(GROWABLE)} may grow it, {', '.join(TILING)} retile it and "
                f"{' and '.join(COLOUR_GRID)} set its colour grid; remove {', '.join(others)}"
            )
        try:
            config = read_info(path).config
        except BundleError as exc:
            raise TrainConfigError(f"[model] init_bundle: {exc}") from exc
        for key, value in table.items():
            value = _typed("[model]", key, value, int)
            if key in GROWABLE and value < getattr(config, key):
                raise TrainConfigError(
                    f"[model] {key} = {value} would shrink the bundle's {getattr(config, key)}"
                )
        try:
            return config.replace(**table), path
        except ValueError as exc:
            raise TrainConfigError(f"[model]: {exc}") from exc
    presets = {**PRESETS, "tiny": tiny_config()}
    preset = table.pop("preset", None)
    if preset is None:
        needed = {f.name for f in dataclasses.fields(ModelConfig)} - {"extra"}
        missing = sorted(needed - set(table))
        if missing:
            raise TrainConfigError(
                f"[model]: without a preset every field is needed; missing {', '.join(missing)} "
                f"(or set preset to one of {', '.join(presets)})"
            )
        base: dict[str, Any] = {}
    elif preset in presets:
        base = dataclasses.asdict(presets[preset])
    else:
        raise TrainConfigError(
            f"[model]: unknown preset {preset!r}; choose one of {', '.join(presets)}"
        )
    try:
        return ModelConfig.from_dict({**base, **table}), None
    except (TypeError, ValueError) as exc:
        raise TrainConfigError(f"[model]: {exc}") from exc


def _stage(index: int, table: Any, run_name: str) -> StageConfig:
    where = f"[[stages]] #{index + 1}"
    s = _read_table(table, where, _STAGE_KEYS)
    s["loss"] = LossWeights(**_read_table(s["loss"], f"{where} [stages.loss]", _LOSS_KEYS))
    for part in s["train"]:
        if not isinstance(part, str):
            raise TrainConfigError(f"{where}: train must list part names, got {part!r}")
    s["train"] = tuple(s["train"])
    s["name"] = s["name"] or f"stage{index + 1}"
    s["export"] = s["export"] or f"{run_name}-{s['name']}"
    return StageConfig(**s)
