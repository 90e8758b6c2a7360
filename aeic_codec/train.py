"""Training: the published loss ``lambda * R + D`` on any folder of images, CPU or GPU.

``train(config, data_dir, out_dir)`` runs the stages of a ``TrainConfig`` (read from TOML
by ``load_train_config``) and writes into the run folder: ``config.json``, ``log.jsonl``,
``checkpoint.pt`` and one bundle per stage. The training forward pass goes through the
same ``QuadtreeContext.run`` as the coder, only with another ``code_step`` (noisy
likelihoods for the rate, straight-through rounding for the values), so what is trained
is what is coded.

A run is reproducible: crops are drawn from (seed, stage, step), checkpoints hold every
weight, optimizer and RNG state, and evaluation and export leave the RNG untouched, so a
run stopped and resumed ends on the same bits as one that never stopped (same device and
thread count).

Scales: images are in [-1, 1] for the networks; MSE and MS-SSIM are taken on [0, 1]
(MSE not multiplied by 255**2), the scale on which the published lambdas 1..32 against
rates below 0.05 bpp balance the distortion terms. Relative paths in a TOML file are
taken from the file's folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import random
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .blocks import BasicBlock, Down, GatedCNN, InceptionNeXt, StarBlock
from .bundle import STORAGE_DTYPES, BundleError, load_bundle, read_info, save_bundle, stored_value
from .colorfix import YCC, YCC_OFFSET
from .config import PRESETS, ModelConfig, tiny_config
from .entropy_models import gaussian_likelihood
from .files import atomic_path, atomic_write
from .imageio import read_image
from .lora import FULLY_TRAINED, add_lora, merge_and_unload
from .model import AEIC

PARTS = ("encoder", "context", "g_s", "denoiser_lora", "denoiser", "vae")
SCHEDULES = ("constant", "cosine")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
CHECKPOINT = "checkpoint.pt"
CALIBRATION_STAGE = 1 << 16  # the crops of latent_std calibration come from their own stream
LOG = "log.jsonl"
CROP_MULTIPLE = 64  # y (1/32) must have an even size for the 2x2 quadtree cells
ENCODER_FEATURES = ("y", "z", "base", "y_hat")
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
VGG16_FILE = "vgg16-397923af.pth"  # torchvision's VGG-16, which LPIPS and DISTS build on
# Fields of the config that fix the trajectory: a resumed run must match them.
RESUME_KEYS = ("model", "stages", "seed", "lora_rank", "lora_alpha", "disc_width")


class TrainConfigError(ValueError):
    """A training configuration or run folder that cannot be used; the message says why."""


class TrainingStopped(Exception):
    """Training stopped early (signal or ``stop_at``) after writing a checkpoint."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(
            f"stopped after step {step}; checkpoint {checkpoint} (continue with --resume)"
        )
        self.step = step
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------- config


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

    name: str
    steps: int
    lr: float
    lambda_: float
    crop: int
    batch: int
    train: tuple[str, ...]
    export: str
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
    name: str = "aeic"
    init_bundle: Path | None = None
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
    lora_rank: int = 32
    lora_alpha: float = 8.0
    disc_width: int = 64
    eval_dir: Path | None = None
    eval_every: int = 0
    eval_images: int = 8
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 30.0

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def uses(self, loss: str) -> bool:
        """Whether any stage gives this loss term a weight."""
        return any(getattr(s.loss, loss) > 0 for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (paths as strings), for config.json and resume checks."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


_REQUIRED = object()
_TOP_KEYS: dict[str, tuple[Any, Any]] = {
    "name": (str, None),
    "seed": (int, 0),
    "threads": (int, 0),
    "bf16": (bool, False),
    "latent_std": (float, 0.0),
    "encoder_dtype": (str, "fp32"),
    "decoder_dtype": (str, "bf16"),
    "device": (str, "auto"),
    "workers": (int, 1),
    "log_every": (int, 10),
    "teacher_bundle": (str, None),
    "model": (dict, _REQUIRED),
    "stages": (list, _REQUIRED),
    "lora": (dict, {}),
    "discriminator": (dict, {}),
    "eval": (dict, {}),
    "checkpoint": (dict, {}),
}
_LORA_KEYS = {"rank": (int, 32), "alpha": (float, 8.0)}
_DISC_KEYS = {"width": (int, 64)}
_EVAL_KEYS = {"dir": (str, None), "every": (int, 0), "images": (int, 8)}
_CHECKPOINT_KEYS = {"every": (int, 1000), "minutes": (float, 30.0)}
_STAGE_KEYS: dict[str, tuple[Any, Any]] = {
    "name": (str, None),
    "steps": (int, _REQUIRED),
    "lr": (float, _REQUIRED),
    "schedule": (str, "constant"),
    "warmup": (int, 0),
    "lr_min": (float, 0.0),
    "lambda": (float, _REQUIRED),
    "lambda_start": (float, None),
    "lambda_ramp": (int, 0),
    "crop": (int, _REQUIRED),
    "batch": (int, _REQUIRED),
    "accum": (int, 1),
    "clip": (float, 0.0),
    "train": (list, _REQUIRED),
    "aux_lr": (float, 1e-3),
    "disc_lr": (float, None),
    "export": (str, None),
    "export_lambda": (float, None),
    "loss": (dict, {}),
}
_LOSS_KEYS = {f.name: (float, f.default) for f in dataclasses.fields(LossWeights)}


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a TOML training configuration; errors name the file and the offending key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TrainConfigError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"{path}: not valid TOML ({exc})") from exc
    try:
        return parse_train_config(data, path.resolve().parent, default_name=path.stem)
    except TrainConfigError as exc:
        raise TrainConfigError(f"{path}: {exc}") from exc


def parse_train_config(
    data: dict[str, Any], base_dir: Path, default_name: str = "aeic"
) -> TrainConfig:
    """Build a TrainConfig from parsed TOML; relative paths are taken from ``base_dir``."""
    top = _read_table(data, "top level", _TOP_KEYS)
    model, init_bundle = _model_section(top["model"], base_dir)
    lora = _read_table(top["lora"], "[lora]", _LORA_KEYS)
    disc = _read_table(top["discriminator"], "[discriminator]", _DISC_KEYS)
    ev = _read_table(top["eval"], "[eval]", _EVAL_KEYS)
    ckpt = _read_table(top["checkpoint"], "[checkpoint]", _CHECKPOINT_KEYS)
    if not top["stages"]:
        raise TrainConfigError("at least one [[stages]] table is needed")
    name = top["name"] or default_name
    stages = tuple(_stage(i, table, name) for i, table in enumerate(top["stages"]))
    config = TrainConfig(
        model=model,
        stages=stages,
        name=name,
        init_bundle=init_bundle,
        teacher_bundle=_path(base_dir, top["teacher_bundle"]),
        seed=top["seed"],
        threads=top["threads"],
        bf16=top["bf16"],
        latent_std=top["latent_std"],
        encoder_dtype=top["encoder_dtype"],
        decoder_dtype=top["decoder_dtype"],
        device=top["device"],
        workers=top["workers"],
        log_every=top["log_every"],
        lora_rank=lora["rank"],
        lora_alpha=lora["alpha"],
        disc_width=disc["width"],
        eval_dir=_path(base_dir, ev["dir"]),
        eval_every=ev["every"],
        eval_images=ev["images"],
        checkpoint_every=ckpt["every"],
        checkpoint_minutes=ckpt["minutes"],
    )
    validate_config(config)
    return config


def validate_config(config: TrainConfig) -> None:
    """Reject what would fail (or silently do nothing) only after hours of training."""
    if config.device != "auto" and config.device.split(":")[0] not in ("cpu", "cuda"):
        raise TrainConfigError(f"device must be auto, cpu or cuda[:N], got {config.device!r}")
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


def _read_table(table: Any, where: str, schema: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """Values of ``schema``'s keys with defaults filled in; unknown/missing/mistyped keys raise."""
    if not isinstance(table, dict):
        raise TrainConfigError(f"{where} must be a table")
    for key in table:
        if key not in schema:
            raise TrainConfigError(f"{where}: unknown key {key!r}{_hint(key, schema)}")
    out = {}
    for key, (kind, default) in schema.items():
        if key in table:
            out[key] = _typed(where, key, table[key], kind)
        elif default is _REQUIRED:
            raise TrainConfigError(f"{where}: missing key {key!r}")
        else:
            out[key] = default
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
    loss = LossWeights(**_read_table(s["loss"], f"{where} [stages.loss]", _LOSS_KEYS))
    for part in s["train"]:
        if not isinstance(part, str):
            raise TrainConfigError(f"{where}: train must list part names, got {part!r}")
    name = s["name"] or f"stage{index + 1}"
    return StageConfig(
        name=name,
        steps=s["steps"],
        lr=s["lr"],
        lambda_=s["lambda"],
        crop=s["crop"],
        batch=s["batch"],
        train=tuple(s["train"]),
        export=s["export"] or f"{run_name}-{name}",
        schedule=s["schedule"],
        warmup=s["warmup"],
        lr_min=s["lr_min"],
        lambda_start=s["lambda_start"],
        lambda_ramp=s["lambda_ramp"],
        accum=s["accum"],
        clip=s["clip"],
        aux_lr=s["aux_lr"],
        disc_lr=s["disc_lr"],
        export_lambda=s["export_lambda"],
        loss=loss,
    )


# --------------------------------------------------------------------------- metrics


def _gaussian_kernel(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _band(size: int, k: torch.Tensor) -> torch.Tensor:
    """(size, size - len(k) + 1) matrix whose columns are k shifted down by one row each."""
    n = k.numel()
    out = torch.zeros(size, size - n + 1, dtype=k.dtype, device=k.device)
    cols = torch.arange(size - n + 1, device=k.device)
    for j in range(n):
        out[cols + j, cols] = k[j]
    return out


def _ssim_terms(a: torch.Tensor, b: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(SSIM, contrast-structure) per image and channel, for data range 1.

    The separable Gaussian filter ('valid' borders, as in the SSIM paper) runs as two
    products with banded matrices, built once per scale: several times faster on the CPU
    than a depthwise convolution over three channels, forward and backward.
    """
    rows, cols = _band(a.shape[-2], k).T, _band(a.shape[-1], k)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return rows @ (x @ cols)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return (luminance * cs).mean((2, 3)), cs.mean((2, 3))


def ms_ssim_scales(side: int, window: int = 11) -> int:
    """How many of the 5 MS-SSIM scales fit: the window must fit the coarsest one.

    A 256 px side gets all 5, a 64 px crop 3, a 128 px crop 4; the weights of the
    scales used are rescaled to the full set's sum, so small crops still get a usable value.
    """
    n = 0
    while n < len(MS_SSIM_WEIGHTS) and side >> n >= window:
        n += 1
    return max(n, 1)


def ms_ssim(a: torch.Tensor, b: torch.Tensor, scales: int | None = None) -> torch.Tensor:
    """MS-SSIM of NCHW images in [0, 1] (Wang et al. 2003), averaged over images and channels."""
    side = min(a.shape[-2:])
    scales = scales or ms_ssim_scales(side)
    window = min(11, side if side % 2 else side - 1)
    k = _gaussian_kernel(window, 1.5, a)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=a.dtype, device=a.device)
    weights = weights * (sum(MS_SSIM_WEIGHTS) / weights.sum())
    factors = []
    for i in range(scales):
        ssim, cs = _ssim_terms(a, b, k)
        if i == scales - 1:
            factors.append(ssim)
        else:
            factors.append(cs)
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    # Negative terms (anti-correlated patches) have no real power; 1e-6 keeps gradients finite.
    stacked = torch.stack(factors).clamp_min(1e-6)
    return (stacked ** weights.view(-1, 1, 1)).prod(0).mean()


def colour_grid_fix(x_hat: torch.Tensor, x: torch.Tensor, cell: int, step: int) -> torch.Tensor:
    """What the decoder's colour grid does to x_hat (both in [0, 1]), for the training loss.

    The correction is linear in x_hat, so its gradient reaches the model: what the grid
    carries (cell means) costs the model nothing, and it learns to spend its bits on the
    rest. Crops are whole cells (validate_config checks), so pooling needs no partial cells.
    """
    ycc = torch.tensor(YCC, dtype=torch.float32, device=x.device)
    to_rgb = torch.linalg.inv(ycc)
    offset = torch.tensor(YCC_OFFSET, dtype=torch.float32, device=x.device)[:, None, None]

    def means(img: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(img.float() * 255.0, cell)
        return torch.einsum("ij,bjhw->bihw", ycc, pooled) + offset

    with torch.no_grad():
        target = torch.clamp(torch.round(means(x) / step), 0, 255 // step) * step
    shift = torch.einsum("ij,bjhw->bihw", to_rgb, target - means(x_hat)) / 255.0
    field = F.interpolate(shift, scale_factor=cell, mode="bilinear", align_corners=False)
    return x_hat + field.to(x_hat.dtype)


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


# --------------------------------------------------------------------------- forward


@dataclass
class Forward:
    """One training forward pass: the reconstruction, the estimated bits, the features."""

    x_hat: torch.Tensor
    bits: torch.Tensor
    features: dict[str, torch.Tensor]


def _straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` forward, identity gradient to ``x`` backward."""
    return x + (value - x).detach()


def _noise(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x).uniform_(-0.5, 0.5)


def forward_train(model: AEIC, x: torch.Tensor) -> Forward:
    """The training forward pass of a full model on x in [-1, 1].

    The rate is the likelihood of the latents plus uniform noise (a differentiable
    stand-in for the coded size); what flows on is rounded straight-through, so the
    decoder trains on exactly the values it will be given. Likelihoods run in float32
    even under autocast: bf16 CDF differences are too coarse for rates near 0.01 bpp.
    """
    if model.g_a is None or model.h_a is None or model.g_s is None:
        raise ValueError("training needs the whole model (encoder and decoder)")
    exact = torch.autocast(x.device.type, enabled=False)
    eb = model.entropy_bottleneck
    y = model.g_a(x).float()
    z = model.h_a(y).float()
    with exact:
        bits = -torch.log2(eb.likelihood(z + _noise(z))).sum()
    z_hat = _straight_through(z, eb.quantize_median(z))
    base = model.h_s(z_hat, y.shape[-2:]).float()
    y_noisy = y + _noise(y)
    y_bits: list[torch.Tensor] = []

    def code_step(_k: int, mask: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor):
        mean, scale = mean.float(), scale.float()
        with exact:
            p = gaussian_likelihood(y_noisy, mean, scale)
            y_bits.append(torch.where(mask, -torch.log2(p), 0.0).sum())
        return _straight_through(y, torch.round(y - mean) + mean)

    y_hat = model.context.run(base, code_step)
    l_t, l_res = model.g_s(y_hat)
    l_0 = model.denoiser(l_t) + l_res
    x_hat = model.vae(l_0).float()
    features = {
        "y": y,
        "z": z,
        "base": base,
        "y_hat": y_hat,
        "l_t": l_t,
        "l_res": l_res,
        "l_0": l_0,
    }
    return Forward(x_hat, bits + torch.stack(y_bits).sum(), features)


def teacher_features(teacher: AEIC, x: torch.Tensor, decoder: bool) -> dict[str, torch.Tensor]:
    """The teacher's y, z, h_s output and y_hat (hard rounding), and l_T, l_res, l_0.

    Runs with grad mode on but nothing requiring grad: no graph is kept, and Conv3x3
    takes its fast F.conv2d path instead of the bit-exact inference one.
    """
    eb = teacher.entropy_bottleneck
    y = teacher.g_a(x).float()
    z = teacher.h_a(y).float()
    base = teacher.h_s(eb.quantize_median(z), y.shape[-2:]).float()

    def code_step(_k: int, _mask: torch.Tensor, mean: torch.Tensor, _scale: torch.Tensor):
        return torch.round(y - mean.float()) + mean.float()

    y_hat = teacher.context.run(base, code_step)
    features = {"y": y, "z": z, "base": base, "y_hat": y_hat}
    if decoder:
        l_t, l_res = teacher.g_s(y_hat)
        features.update(l_t=l_t, l_res=l_res, l_0=teacher.denoiser(l_t) + l_res)
    return features


def feature_channels(cfg: ModelConfig) -> dict[str, int]:
    """Channels of every distilled tensor, denoiser block outputs included."""
    m, widths = cfg.latent_channels, cfg.unet_widths
    n = len(widths)
    channels = {"y": m, "z": m // 2, "base": m, "y_hat": m}
    channels.update(l_t=cfg.denoiser_in, l_res=cfg.decoder_latent, l_0=cfg.decoder_latent)
    channels.update({f"down{i}": widths[i] for i in range(n)})
    channels["mid"] = widths[-1]
    channels.update({f"up{i}": widths[n - 1 - i] for i in range(n)})
    return channels


def tap_blocks(denoiser: nn.Module, store: dict[str, torch.Tensor]) -> None:
    """Forward hooks that put every down/mid/up block output of eps into ``store``."""

    def keep(name: str):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            store[name] = output[0] if isinstance(output, tuple) else output

        return hook

    for i, block in enumerate(denoiser.down_blocks):
        block.register_forward_hook(keep(f"down{i}"))
    denoiser.mid_block.register_forward_hook(keep("mid"))
    for i, block in enumerate(denoiser.up_blocks):
        block.register_forward_hook(keep(f"up{i}"))


class Distiller(nn.Module):
    """Learnable 1x1 projections of the student's features onto the teacher's channels.

    Encoder features are always projected (as published); decoder features only where
    the channel counts differ, since the decoders of SE and ME have the same shape.
    """

    def __init__(self, student: ModelConfig, teacher: ModelConfig) -> None:
        super().__init__()
        if len(student.unet_widths) != len(teacher.unet_widths):
            raise TrainConfigError(
                "teacher and student denoisers have different numbers of levels; "
                "their block outputs cannot be paired"
            )
        theirs = feature_channels(teacher)
        self.proj = nn.ModuleDict()
        for name, ours in feature_channels(student).items():
            if name in ENCODER_FEATURES or ours != theirs[name]:
                self.proj[name] = nn.Conv2d(ours, theirs[name], 1)

    def loss(
        self,
        names: Sequence[str],
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Sum over ``names`` of the MSE between projected student and teacher tensors."""
        terms = []
        for name in names:
            s = self.proj[name](student[name]) if name in self.proj else student[name]
            terms.append(F.mse_loss(s.float(), teacher[name].float()))
        return torch.stack(terms).sum()


class PatchDiscriminator(nn.Module):
    """A small PatchGAN critic trained from scratch with the hinge loss.

    Spectral normalisation keeps it Lipschitz without normalisation layers, which would
    couple the patches of a batch.
    """

    def __init__(self, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        blocks: list[nn.Module] = []
        cin = 3
        for i in range(layers):
            cout = width * 2**i
            blocks += [sn(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            cin = cout
        blocks.append(sn(nn.Conv2d(cin, 1, 3, padding=1)))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Perceptual(nn.Module):
    """A frozen perceptual metric; ``unit`` says it wants [0, 1] rather than [-1, 1]."""

    def __init__(self, net: nn.Module, unit: bool) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.unit = unit

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.unit:
            x_hat, x = (x_hat.clamp(-1, 1) + 1) / 2, (x + 1) / 2
        return self.net(x_hat, x).mean()


def _load_perceptual(name: str) -> _Perceptual:
    """LPIPS(VGG) or DISTS, only from weights already on disk: training never downloads."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    files = [VGG16_FILE] + (["dists_weights.pt"] if name == "dists" else [])
    if name == "lpips":
        import lpips
    else:
        import piq
    for f in files:
        if not (hub / f).exists():
            raise FileNotFoundError(f"{hub / f} is missing")
    if name == "lpips":
        return _Perceptual(lpips.LPIPS(net="vgg", verbose=False), unit=False)
    return _Perceptual(piq.DISTS(reduction="none"), unit=True)


# --------------------------------------------------------------------------- trainer


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _rng_state() -> dict[str, Any]:
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Depths a run may raise over its init_bundle: the blocks they add are residual, so they
# can start as identities and the grown model computes exactly what the bundle did.
GROWABLE = ("gs_blocks", "context_depth")
_GROWING = ("g_s.synthesis_transform.", "context.g_c.")  # the state they change
# How a decoder tiles: no weight depends on it, so a run may change it freely.
TILING = ("eps_tile", "eps_overlap", "vae_tile")
# What the encoder sends beside the streams: no weight depends on it either.
COLOUR_GRID = ("colour_grid", "colour_grid_step")
_RESIDUAL_OUT = {StarBlock: "fc2", GatedCNN: "fc2", InceptionNeXt: "conv2"}


def _zero_residuals(block: nn.Module) -> None:
    """Zero the last layer of every residual branch in ``block``: it then passes x through."""
    for module in block.modules():
        name = _RESIDUAL_OUT.get(type(module))
        if name is not None:
            nn.init.zeros_(getattr(module, name).weight)
            nn.init.zeros_(getattr(module, name).bias)


def _align(old: nn.Module, new: nn.Module) -> None:
    """Copy ``old``'s children into ``new``'s in order; extra new blocks become identities.

    Each old child goes to the next new child of the same type and shapes; the new children
    skipped on the way are the added blocks (residual, so the order does not matter).
    """
    fresh = list(new.children())
    shapes = [[p.shape for p in m.parameters()] for m in fresh]
    at = 0
    for child in old.children():
        want = [p.shape for p in child.parameters()]
        while at < len(fresh) and (type(fresh[at]) is not type(child) or shapes[at] != want):
            _added(fresh[at])
            at += 1
        if at == len(fresh):
            raise BundleError(f"cannot place {type(child).__name__} in the grown model")
        fresh[at].load_state_dict(child.state_dict())
        at += 1
    for extra in fresh[at:]:
        _added(extra)


def _added(block: nn.Module) -> None:
    """Start a block the growth added as an identity; only whole residual blocks qualify."""
    if not isinstance(block, (StarBlock, BasicBlock)):
        raise BundleError(f"the grown model differs in more than depth ({type(block).__name__})")
    _zero_residuals(block)


def grown_model(model: AEIC, cfg: ModelConfig) -> AEIC:
    """``model`` deepened to ``cfg`` (more g_s blocks or context blocks), same function."""
    grown = AEIC(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(_GROWING)}
    missing, unexpected = grown.load_state_dict(state, strict=False)
    stray = unexpected + [k for k in missing if not k.startswith(_GROWING)]
    if stray:
        raise BundleError(f"the grown model and the bundle differ beyond depth ({stray[0]})")
    _align(model.g_s.synthesis_transform, grown.g_s.synthesis_transform)
    _align(model.context.g_c.block, grown.context.g_c.block)
    grown.z_tables, grown.y_tables = model.z_tables, model.y_tables
    return grown.eval()


class Trainer:
    """Everything a run holds (model, optimizers, discriminator, teacher), one step at a time.

    ``train`` drives it over data; benchmarks and tests can call ``train_step`` directly.
    """

    def __init__(self, config: TrainConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.notes: list[str] = []
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        if config.init_bundle is not None:
            self.model = load_bundle(config.init_bundle)
            if self.model.cfg != config.model:
                self.model = grown_model(self.model, config.model)
        else:
            self.model = AEIC(config.model)
        self.lora = any("denoiser_lora" in s.train for s in config.stages)
        if self.lora:
            add_lora(self.model.denoiser, rank=config.lora_rank, alpha=config.lora_alpha)
        # channels_last: oneDNN's convolutions on narrow layers run about 10% faster per
        # step without the layout reorders (bundles are saved contiguous).
        self.model.to(self.device, memory_format=torch.channels_last).train()
        self.bf16 = config.bf16 and (
            self.device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
        if config.bf16 and not self.bf16:
            self.notes.append(
                "bf16 asked for, but this CPU has no native bf16 (it would run many times "
                "slower than float32): training in float32"
            )
        self.disc: PatchDiscriminator | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        if config.uses("adv"):
            self.disc = PatchDiscriminator(config.disc_width).to(self.device)
            self.disc_optimizer = torch.optim.Adam(self.disc.parameters(), betas=(0.5, 0.999))
        self.teacher: AEIC | None = None
        self.distiller: Distiller | None = None
        self.student_blocks: dict[str, torch.Tensor] = {}
        self.teacher_blocks: dict[str, torch.Tensor] = {}
        if config.teacher_bundle is not None:
            self._setup_teacher(config.teacher_bundle)
        self.perceptual = nn.ModuleDict()
        for name in ("lpips", "dists"):
            if config.uses(name):
                try:
                    self.perceptual[name] = _load_perceptual(name).to(self.device)
                except (ImportError, FileNotFoundError) as exc:
                    self.notes.append(
                        f"{name.upper()} not available ({exc}); its loss weight is ignored"
                    )
        eb = self.model.entropy_bottleneck
        self.aux_optimizer = torch.optim.Adam([eb.quantiles], lr=config.stages[0].aux_lr)
        self.optimizer: torch.optim.Optimizer | None = None
        self.stage_index = 0
        self.stage_step = 0
        self._plain: AEIC | None = None
        self.begin_stage(0)

    def _setup_teacher(self, path: Path) -> None:
        decoder = self.config.uses("distill_dec")
        self.teacher = load_bundle(path, encoder=True, decoder=decoder).to(self.device)
        self.teacher.requires_grad_(False)
        self.distiller = Distiller(self.config.model, self.teacher.cfg).to(self.device)
        if decoder:
            tap_blocks(self.model.denoiser, self.student_blocks)
            tap_blocks(self.teacher.denoiser, self.teacher_blocks)

    @property
    def stage(self) -> StageConfig:
        return self.config.stages[self.stage_index]

    @property
    def global_step(self) -> int:
        done = self.config.stages[: self.stage_index]
        return sum(s.steps for s in done) + self.stage_step

    @property
    def finished(self) -> bool:
        return self.stage_index >= len(self.config.stages)

    def _part_parameters(self, part: str) -> list[nn.Parameter]:
        m = self.model
        if part == "encoder":
            eb = [p for n, p in m.entropy_bottleneck.named_parameters() if n != "quantiles"]
            return [*m.g_a.parameters(), *m.h_a.parameters(), *m.h_s.parameters(), *eb]
        if part == "denoiser_lora":
            return [
                p
                for n, p in m.denoiser.named_parameters()
                if ".lora_" in n or n.split(".")[0] in FULLY_TRAINED
            ]
        return list(getattr(m, part).parameters())

    def begin_stage(self, index: int) -> None:
        """Freeze all but the stage's parts and give them a fresh optimizer."""
        self.stage_index, self.stage_step = index, 0
        if self.finished:
            self.optimizer = None
            return
        chosen: dict[int, nn.Parameter] = {}
        for part in self.stage.train:
            for p in self._part_parameters(part):
                chosen.setdefault(id(p), p)
        self.model.requires_grad_(False)
        for p in chosen.values():
            p.requires_grad_(True)
        self.model.entropy_bottleneck.quantiles.requires_grad_(True)  # the aux optimizer's
        params = list(chosen.values())
        if self.distiller is not None:
            params += list(self.distiller.parameters())
        self.optimizer = torch.optim.Adam(params, lr=self.stage.lr, foreach=True)

    @torch.no_grad()
    def calibrate_latent(self, x: torch.Tensor) -> float:
        """Scale g_a's last stage so that y has ``latent_std`` on ``x``; returns the gain.

        Default initialisation gives y a std near 0.05, far below the quantization step:
        rounding then erases everything, the decoder learns nothing and the rate term
        drives y to zero for good. The last Down convolution, the depthwise biases and
        the output layers of the StarBlocks after it are multiplied by one gain: their
        LayerNorm makes the residual branches blind to the input's scale, so y scales
        exactly.
        """
        g_a = self.model.g_a
        if g_a is None:
            raise ValueError("calibration needs the analysis transform")
        std = float(g_a(x.to(self.device)).float().std())
        gain = self.config.latent_std / max(std, 1e-12)
        layers = list(g_a.analysis_transform)
        last_down = max(i for i, layer in enumerate(layers) if isinstance(layer, Down))
        tensors = [*layers[last_down].parameters()]
        for block in layers[last_down + 1 :]:
            tensors += [*block.fc2.parameters()]
            tensors += [conv.bias for conv in block.dwconv.children()]
        for tensor in tensors:
            tensor.mul_(gain)
        return gain

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _loss_terms(
        self, out: Forward, x: torch.Tensor, lam: float, teacher: dict[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        w = self.stage.loss
        bpp = out.bits / (x.shape[0] * x.shape[2] * x.shape[3])
        x01, xh01 = (x + 1) / 2, (out.x_hat + 1) / 2
        cfg = self.config.model
        if cfg.colour_grid:
            xh01 = colour_grid_fix(xh01, x01, cfg.colour_grid, cfg.colour_grid_step)
        terms = {"bpp": bpp, "mse": F.mse_loss(xh01, x01)}
        loss = lam * bpp + w.mse * terms["mse"]
        with torch.no_grad():
            terms["psnr"] = -10 * torch.log10(F.mse_loss(xh01.clamp(0, 1), x01).clamp_min(1e-10))
        if w.msssim > 0:
            with torch.autocast(x.device.type, enabled=False):
                terms["msssim"] = ms_ssim(xh01.float().clamp(0, 1), x01)
            loss = loss + w.msssim * (1 - terms["msssim"])
        for name, net in self.perceptual.items():
            weight = getattr(w, name)
            if weight > 0:
                terms[name] = net(out.x_hat, x)
                loss = loss + weight * terms[name]
        if w.adv > 0 and self.disc is not None:
            terms["adv"] = -self.disc(out.x_hat).float().mean()
            loss = loss + w.adv * terms["adv"]
        if teacher is not None and self.distiller is not None:
            student = {**out.features, **self.student_blocks}
            if w.distill_enc > 0:
                terms["distill_enc"] = self.distiller.loss(ENCODER_FEATURES, student, teacher)
                loss = loss + w.distill_enc * terms["distill_enc"]
            if w.distill_dec > 0:
                names = [
                    n for n in feature_channels(self.config.model) if n not in ENCODER_FEATURES
                ]
                terms["distill_dec"] = self.distiller.loss(names, student, teacher)
                loss = loss + w.distill_dec * terms["distill_dec"]
        terms["loss"] = loss
        return terms

    def _teacher_features(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        w = self.stage.loss
        if self.teacher is None or not (w.distill_enc > 0 or w.distill_dec > 0):
            return None
        features = teacher_features(self.teacher, x, decoder=w.distill_dec > 0)
        return {**features, **self.teacher_blocks}

    def train_step(self, batches: Sequence[torch.Tensor]) -> dict[str, float]:
        """One optimizer step over accumulated micro-batches; returns the step's metrics.

        Raises FloatingPointError on a non-finite loss before touching the weights, so
        the last checkpoint stays a good place to resume from.
        """
        if self.optimizer is None:
            raise RuntimeError("all stages are finished")
        stage = self.stage
        lam, lr = stage.lambda_at(self.stage_step), stage.lr_at(self.stage_step)
        _set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        adv = self.disc is not None and self.disc_optimizer is not None and stage.loss.adv > 0
        if adv:
            _set_lr(self.disc_optimizer, stage.disc_lr if stage.disc_lr is not None else lr)
            self.disc_optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {}
        for x in batches:
            x = x.to(self.device, memory_format=torch.channels_last, non_blocking=True)
            with self._autocast():
                teacher = self._teacher_features(x)
                out = forward_train(self.model, x)
                if adv:
                    self.disc.requires_grad_(False)  # the generator's loss must not train it
                terms = self._loss_terms(out, x, lam, teacher)
            (terms["loss"] / len(batches)).backward()
            if adv:
                self.disc.requires_grad_(True)
                with self._autocast():
                    real, fake = self.disc(x).float(), self.disc(out.x_hat.detach()).float()
                    terms["disc"] = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
                (terms["disc"] / len(batches)).backward()
            self.student_blocks.clear()
            self.teacher_blocks.clear()
            for key, value in terms.items():
                metrics[key] = metrics.get(key, 0.0) + value.detach().item() / len(batches)
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"non-finite loss at step {self.global_step + 1}: {metrics}")
        if stage.clip > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            metrics["grad_norm"] = float(nn.utils.clip_grad_norm_(params, stage.clip))
        self.optimizer.step()
        if adv:
            self.disc_optimizer.step()
        _set_lr(self.aux_optimizer, stage.aux_lr)
        self.aux_optimizer.zero_grad(set_to_none=True)
        aux = self.model.entropy_bottleneck.aux_loss()
        aux.backward()
        self.aux_optimizer.step()
        metrics.update({"aux": aux.item(), "lr": lr, "lambda": lam})
        self.stage_step += 1
        return metrics

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue on the same bits.

        The lr and lambda schedules are functions of the step, so the step is their state.
        """
        return {
            "config": json.dumps(self.config.to_dict(), sort_keys=True),
            "stage_index": self.stage_index,
            "stage_step": self.stage_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "disc": self.disc.state_dict() if self.disc else None,
            "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer else None,
            "distiller": self.distiller.state_dict() if self.distiller else None,
            "rng": _rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stored = json.loads(state["config"])
        current = self.config.to_dict()
        changed = [k for k in RESUME_KEYS if stored.get(k) != current[k]]
        if changed:
            raise TrainConfigError(
                f"the checkpoint was made with another {', '.join(changed)}; resuming needs "
                "the configuration the run started with"
            )
        self.model.load_state_dict(state["model"])
        self.begin_stage(state["stage_index"])
        self.stage_step = state["stage_step"]
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        for name in ("disc", "disc_optimizer", "distiller"):
            target = getattr(self, name)
            if target is not None and state[name] is not None:
                target.load_state_dict(state[name])
        _set_rng_state(state["rng"])

    # ------------------------------------------------------------- export
    def plain_state(self, as_stored: bool = False) -> dict[str, torch.Tensor]:
        """The model's state with LoRA folded in, on the CPU in float32.

        ``as_stored`` rounds every tensor as an exported bundle stores it (bf16, int8),
        so that evaluation measures what the bundle will do.
        """
        state = {k: v for k, v in self.model.state_dict().items() if not k.startswith("denoiser.")}
        if self.lora:
            denoiser = merge_and_unload(self.model.denoiser)
        else:
            denoiser = self.model.denoiser.state_dict()
        state.update({f"denoiser.{k}": v for k, v in denoiser.items()})
        config = self.config
        out = {}
        for key, value in state.items():
            value = value.detach().cpu()
            if as_stored:
                value = stored_value(key, value, config.encoder_dtype, config.decoder_dtype)
            out[key] = value.float() if value.is_floating_point() else value
        return out

    def plain_model(self, as_stored: bool = False) -> AEIC:
        """An inference AEIC (no LoRA, CPU, float32) holding the current weights.

        Built once and refilled: at published shapes it is 900 M parameters.
        """
        with torch.random.fork_rng(devices=[]):  # building it draws random initial weights
            if self._plain is None:
                self._plain = AEIC(self.config.model)
            self._plain.float().cpu().load_state_dict(self.plain_state(as_stored))
        return self._plain.eval()

    def export(self, path: Path, provenance: dict[str, Any]) -> str:
        """Write the current stage's bundle (tables built by save_bundle); returns its identity."""
        stage = self.stage
        lam = stage.export_lambda if stage.export_lambda is not None else stage.lambda_
        model = self.plain_model()
        with torch.random.fork_rng(devices=[]):  # the table builder draws random weights too
            return save_bundle(
                path,
                model,
                lam,
                provenance,
                decoder_dtype=self.config.decoder_dtype,
                encoder_dtype=self.config.encoder_dtype,
            )

    def evaluate(self, images: Sequence[np.ndarray]) -> dict[str, float]:
        """Real encode -> file bytes -> decode of each image: mean bpp, PSNR and MS-SSIM."""
        from . import api

        model = self.plain_model(as_stored=True)
        precision = "bf16" if self.bf16 else "fp32"
        with torch.random.fork_rng(devices=[]):
            model.build_tables()
        model.identity = "00000000"  # these files never leave this process
        bpp, psnr, msssim = [], [], []
        for image in images:
            data = api.encode_image(image, model).data
            out = api.decode(data, model, precision=precision, device=self.device.type)
            h, w = image.shape[:2]
            bpp.append(len(data) * 8 / (h * w))
            psnr.append(psnr_u8(out, image))
            pair = [torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255 for a in (out, image)]
            msssim.append(float(ms_ssim(*pair)))
        return {
            "bpp": float(np.mean(bpp)),
            "psnr": float(np.mean(psnr)),
            "msssim": float(np.mean(msssim)),
            "images": len(images),
        }


# --------------------------------------------------------------------------- data


def find_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursive), in a fixed order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainConfigError(f"{folder}: not a directory")
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def _image_sizes(files: Sequence[Path]) -> list[tuple[int, int] | None]:
    """(width, height) from each file's header, None for files that cannot be read."""
    sizes: list[tuple[int, int] | None] = []
    for path in files:
        try:
            with Image.open(path) as img:
                sizes.append(img.size)
        except (OSError, ValueError):
            sizes.append(None)
    return sizes


def reflect_pad(image: np.ndarray, size: int) -> np.ndarray:
    """Mirror an H x W x 3 image around its borders until both sides reach ``size``."""
    ph, pw = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if not ph and not pw:
        return image
    return np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), "symmetric")


class CropDataset(torch.utils.data.Dataset):
    """Item i is micro-batch i of a stage: crops and flips drawn from (seed, stage, i) alone.

    So the data order depends on nothing but the step, and a resumed run sees exactly
    the crops the uninterrupted one would have seen.
    """

    def __init__(self, files: Sequence[Path], crop: int, batch: int, seed: int, stage: int) -> None:
        self.files = list(files)
        self.crop, self.batch, self.seed, self.stage = crop, batch, seed, stage

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng((self.seed, self.stage, index))
        crops = []
        for _ in range(self.batch):
            image, _ = read_image(self.files[int(rng.integers(len(self.files)))])
            image = reflect_pad(image, self.crop)
            top = int(rng.integers(image.shape[0] - self.crop + 1))
            left = int(rng.integers(image.shape[1] - self.crop + 1))
            patch = image[top : top + self.crop, left : left + self.crop]
            crops.append(patch[:, ::-1] if rng.random() < 0.5 else patch)
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(crops)))
        return batch.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _worker_init(_worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which checkpoints and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


def crop_batches(
    dataset: CropDataset, start: int, stop: int, workers: int, seed: int
) -> Iterator[torch.Tensor]:
    """Micro-batches ``start..stop-1``, loaded off the main thread when workers is 1.

    The loader gets its own generator so that starting it never draws from the global
    RNG, which the training noise uses.
    """
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=range(start, stop),
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)


# --------------------------------------------------------------------------- run


class RunLog:
    """log.jsonl: one JSON object per line; training rows average the steps since the last."""

    def __init__(self, path: Path, every: int, echo: bool) -> None:
        self.path, self.every, self.echo = path, every, echo
        self._sums: dict[str, float] = {}
        self._count = 0

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")

    def note(self, step: int, message: str) -> None:
        self.write({"step": step, "time": time.time(), "note": message})
        if self.echo:
            print(f"note: {message}", file=sys.stderr)

    def add(self, step: int, stage: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += 1
        if step % self.every == 0:
            self.flush(step, stage)

    def flush(self, step: int, stage: str) -> None:
        if not self._count:
            return
        means = {k: v / self._count for k, v in self._sums.items()}
        self.write({"step": step, "time": time.time(), "stage": stage, **means})
        self._sums, self._count = {}, 0

    def truncate(self, step: int) -> None:
        """Drop rows past ``step``: a resumed run writes them again."""
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write(self.path, "".join(line + "\n" for line in kept).encode())


class ProgressBar:
    """One self-rewriting status line on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total = total

    def show(self, step: int, stage: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        filled = 20 * step // max(1, self.total)
        line = (
            f"\r{stage} [{'#' * filled}{'-' * (20 - filled)}] {step}/{self.total} "
            f"loss {metrics['loss']:.4g} bpp {metrics['bpp']:.4f} psnr {metrics['psnr']:.2f} "
            f"{metrics['step_time']:.2f} s/step"
        )
        sys.stderr.write(line.ljust(100))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


class StopSignals:
    """The first SIGINT/SIGTERM asks the loop to checkpoint and stop; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _data_key(files: Sequence[Path], root: Path) -> str:
    """A fingerprint of the training file list: a resume on other data is worth a note."""
    names = "\n".join(str(p.relative_to(root)) for p in files)
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def _eval_images(config: TrainConfig) -> list[np.ndarray]:
    if not config.eval_every or config.eval_dir is None:
        return []
    files = find_images(config.eval_dir)[: config.eval_images]
    if not files:
        raise TrainConfigError(f"{config.eval_dir}: no evaluation images found")
    return [read_image(p)[0] for p in files]


def train(
    config: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    *,
    stop_at: int | None = None,
) -> Path:
    """Run (or continue, with ``resume``) every stage of ``config``; returns the last bundle.

    Writes the run folder ``out_dir``. On SIGINT/SIGTERM, or after global step
    ``stop_at``, it writes a checkpoint and raises TrainingStopped. ``progress`` shows
    a status line (on a terminal) and echoes notes to stderr.
    """
    out = Path(out_dir)
    checkpoint = out / CHECKPOINT
    if resume and not checkpoint.exists():
        raise TrainConfigError(f"{out}: no {CHECKPOINT} to resume from")
    if not resume and checkpoint.exists():
        raise TrainConfigError(f"{out} already holds a run: resume it or choose another folder")
    files = find_images(data_dir)
    if not files:
        raise TrainConfigError(f"{data_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    out.mkdir(parents=True, exist_ok=True)
    data_key = _data_key(files, Path(data_dir))
    log = RunLog(out / LOG, config.log_every, echo=progress)
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        trainer = Trainer(config, _device(config.device))
        if resume:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            trainer.load_state_dict(state)
            log.truncate(trainer.global_step)
            if state.get("data") != data_key:
                trainer.notes.append("the data folder differs from the checkpoint's: crops differ")
        else:
            atomic_write(out / "config.json", json.dumps(config.to_dict(), indent=1).encode())
        for message in trainer.notes:
            log.note(trainer.global_step, message)
        return _Run(trainer, files, out, log, progress, stop_at, data_key).run()
    finally:
        torch.set_num_threads(previous_threads)


class _Run:
    """One call of ``train``: drives a Trainer over the stages, logs, evaluates, checkpoints."""

    def __init__(
        self,
        trainer: Trainer,
        files: list[Path],
        out: Path,
        log: RunLog,
        progress: bool,
        stop_at: int | None,
        data_key: str,
    ) -> None:
        self.trainer, self.config, self.out, self.log = trainer, trainer.config, out, log
        self.stop_at, self.data_key = stop_at, data_key
        self.checkpoint = out / CHECKPOINT
        self.eval_images = _eval_images(self.config)
        sizes = _image_sizes(files)
        unreadable = sum(s is None for s in sizes)
        if unreadable:
            log.note(
                trainer.global_step, f"{unreadable} of {len(files)} files cannot be read: skipped"
            )
        self.files = [f for f, s in zip(files, sizes, strict=True) if s is not None]
        self.sizes = [s for s in sizes if s is not None]
        self.bar = ProgressBar(progress, self.config.total_steps)
        self.stop = StopSignals()
        self.saved_at = time.monotonic()

    def run(self) -> Path:
        trainer = self.trainer
        fresh = trainer.global_step == 0 and self.config.init_bundle is None
        if fresh and self.config.latent_std > 0:
            stage = trainer.stage
            x = CropDataset(
                self.files, stage.crop, stage.batch, self.config.seed, CALIBRATION_STAGE
            )[0]
            gain = trainer.calibrate_latent(x)
            self.log.note(
                0, f"g_a scaled by {gain:.4g} so that y starts with std {self.config.latent_std}"
            )
        with self.stop:
            while not self.trainer.finished:
                if self.trainer.stage_step < self.trainer.stage.steps:
                    self._train_stage()
                self._finish_stage()
        self.bar.close()
        return self.out / f"{self.config.stages[-1].export}.safetensors"

    def _train_stage(self) -> None:
        trainer, stage = self.trainer, self.trainer.stage
        small = sum(min(s) < stage.crop for s in self.sizes)
        if small:
            self.log.note(
                trainer.global_step,
                f"{stage.name}: {small} of {len(self.files)} images are smaller than the "
                f"{stage.crop} px crop and are padded by reflection",
            )
        dataset = CropDataset(
            self.files, stage.crop, stage.batch, self.config.seed, trainer.stage_index
        )
        first, last = trainer.stage_step * stage.accum, stage.steps * stage.accum
        batches = crop_batches(dataset, first, last, self.config.workers, self.config.seed)
        try:
            while trainer.stage_step < stage.steps:
                began = time.perf_counter()
                metrics = trainer.train_step([next(batches) for _ in range(stage.accum)])
                metrics["step_time"] = time.perf_counter() - began
                self._after_step(metrics)
        finally:
            del batches  # shuts the loader's worker down now, also on the way out

    def _after_step(self, metrics: dict[str, float]) -> None:
        step, stage = self.trainer.global_step, self.trainer.stage.name
        self.log.add(step, stage, metrics)
        self.bar.show(step, stage, metrics)
        if self.eval_images and step % self.config.eval_every == 0:
            result = self.trainer.evaluate(self.eval_images)
            self.log.write({"step": step, "time": time.time(), "eval": result})
        halt = self.stop.requested or (self.stop_at is not None and step >= self.stop_at)
        every = self.config.checkpoint_every
        late = time.monotonic() - self.saved_at >= self.config.checkpoint_minutes * 60
        if halt or late or (every and step % every == 0):
            self.log.flush(step, stage)
            self._save()
        if halt:
            self.bar.close()
            raise TrainingStopped(step, self.checkpoint)

    def _save(self) -> None:
        state = self.trainer.state_dict()
        state["data"] = self.data_key
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)
        self.saved_at = time.monotonic()

    def _finish_stage(self) -> None:
        trainer, stage = self.trainer, self.trainer.stage
        step = trainer.global_step
        self.log.flush(step, stage.name)
        bundle = self.out / f"{stage.export}.safetensors"
        provenance = {
            "trained_by": "aeic train",
            "run": self.config.name,
            "stage": stage.name,
            "step": step,
            "seed": self.config.seed,
        }
        identity = trainer.export(bundle, provenance)
        self.log.write(
            {"step": step, "time": time.time(), "bundle": bundle.name, "identity": identity}
        )
        trainer.begin_stage(trainer.stage_index + 1)
        self._save()
