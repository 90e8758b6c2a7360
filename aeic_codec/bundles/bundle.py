"""Weight bundles: one safetensors file per model, with everything needed to code.

A bundle holds the tensors and, in its metadata, the bundle format version, the model
configuration, variant, lambda, the integer frequency tables, provenance and the model
identity: the first 4 bytes of a SHA-256 over the configuration and every tensor (but
an optional realism decoder's, see realism.py, and an optional fast encoder's stem,
nn/stem.py), which each .aeic header carries. Each
side (encoder and entropy model; generative decoder) is stored as float32, bfloat16 or
int8. int8 applies to weight matrices and kernels (one float32 scale per output channel,
under ``int8_scale.<key>``); biases, norms and the z prior of an int8 side stay
bfloat16. Loading restores float32 values, the same on the encoder and the decoder, so
any storage type keeps the entropy parameters bit-exact.

Reading the metadata needs no torch (``aeic info`` and ``aeic weights list`` use it),
and loading never unpickles anything: safetensors holds only raw arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aeic_codec.nn.config import ModelConfig, StemConfig
from aeic_codec.nn.int8 import SCALE_PREFIX, dequantize_int8, quantize_int8

if TYPE_CHECKING:
    import torch

    from aeic_codec.codec.model import AEIC

# Format 2 added int8 tensors; a bundle without them is still written as format 1, so
# that older aeic versions keep reading it.
BUNDLE_FORMATS = ("1", "2")
STORAGE_DTYPES = ("fp32", "bf16", "int8")
INTEGER_PREFIX = "integer."  # the integer entropy path (intnet.py); outside the identity
SUFFIX = ".safetensors"
ENV_VAR = "AEIC_WEIGHTS"
# The shipped bundles: weights/ beside the package in a source checkout (or editable
# install), <prefix>/share/aeic/weights after `pip install .` (pyproject data-files).
SHIPPED_WEIGHTS = (
    Path(__file__).resolve().parents[2] / "weights",
    Path(sys.prefix) / "share" / "aeic" / "weights",
)
STEM_PREFIX = "stem."  # the optional fast encoder's stem (nn/stem.py), outside the identity
ENCODER_PARTS = ("g_a.", "h_a.", STEM_PREFIX)
SHARED_PARTS = ("h_s.", "context.", "entropy_bottleneck.")
REALISM_PREFIX = "realism."  # the optional realism decoder (realism.py), outside the identity
DECODER_PARTS = ("g_s.", "denoiser.", "vae.", REALISM_PREFIX)
_MAX_HEADER = 64 << 20


class BundleError(ValueError):
    """A bundle that cannot be used, or no bundle where one was needed."""


@dataclass(frozen=True)
class BundleInfo:
    """What the metadata of a bundle says, read without torch."""

    path: Path
    identity: str
    config: ModelConfig
    lambda_: float | None
    provenance: dict[str, Any]
    size: int
    metadata: dict[str, str]
    realism: ModelConfig | None = None  # the realism decoder's configuration, if it has one
    stem: StemConfig | None = None  # the fast encoder's stem, if it has one

    @property
    def variant(self) -> str:
        return self.config.name

    @property
    def integer_identity(self) -> str | None:
        """The identity files of the integer entropy path name (None: no integer path)."""
        return self.metadata.get("integer_identity") or None

    @property
    def file_identity(self) -> str:
        """The identity its files name when encoded by default (the integer path where it has
        one): the one ``aeic weights list`` shows, so that it matches ``aeic info``'s."""
        return self.integer_identity or self.identity

    def has_identity(self, identity: str) -> bool:
        return identity in (self.identity, self.integer_identity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "identity": self.identity,
            "integer_identity": self.integer_identity,
            "variant": self.variant,
            "lambda": self.lambda_,
            "size_bytes": self.size,
            "realism": self.realism is not None,
            "fast_encoder": self.stem is not None,
            "provenance": self.provenance,
        }


def read_info(path: str | os.PathLike[str]) -> BundleInfo:
    """Parse a bundle's safetensors header (8-byte length + JSON) and its metadata."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise BundleError(f"{path}: not an aeic bundle (not a safetensors file)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise BundleError(f"{path}: not an aeic bundle (not a safetensors file)")
            header = json.loads(fh.read(n))
        size = path.stat().st_size
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not an aeic bundle (not a safetensors file)") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or "aeic_bundle" not in meta:
        raise BundleError(f"{path}: a safetensors file but not an aeic bundle")
    if meta["aeic_bundle"] not in BUNDLE_FORMATS:
        raise BundleError(
            f"{path}: bundle format {meta['aeic_bundle']} is not supported "
            f"(this aeic reads formats {', '.join(BUNDLE_FORMATS)}; a newer aeic wrote it?)"
        )
    try:
        config = ModelConfig.from_json(meta["config"])
        realism = meta.get("realism_config")
        stem = meta.get("stem_config")
        lam = meta.get("lambda")
        return BundleInfo(
            path=path,
            identity=meta["identity"],
            config=config,
            lambda_=float(lam) if lam not in (None, "") else None,
            provenance=json.loads(meta.get("provenance", "{}")),
            size=size,
            metadata=meta,
            realism=ModelConfig.from_json(realism) if realism else None,
            stem=StemConfig.from_json(stem) if stem else None,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise BundleError(f"{path}: malformed aeic bundle metadata ({exc})") from exc


def is_realism_key(key: str) -> bool:
    """A tensor of the realism decoder (or the int8 scale of one)."""
    return key.removeprefix(SCALE_PREFIX).startswith(REALISM_PREFIX)


def is_stem_key(key: str) -> bool:
    """A tensor of the fast encoder's stem (or the int8 scale of one)."""
    return key.removeprefix(SCALE_PREFIX).startswith(STEM_PREFIX)


def identity_of(config_json: str, tensors: dict[str, torch.Tensor]) -> str:
    """First 4 bytes (8 hex digits) of SHA-256 over the config and every tensor.

    A realism decoder's tensors are left out: files never depend on it, so adding or
    retraining one keeps every file of the bundle decodable; likewise a fast encoder's
    stem, which only the encoder runs. So are the integer entropy path's (``integer.``
    keys): adding them keeps the identity, so files of the float path still find their
    bundle (integer-path files name ``integer_identity_of``).
    """
    h = hashlib.sha256(config_json.encode())
    kept = {
        k: v
        for k, v in tensors.items()
        if not is_realism_key(k) and not is_integer_key(k) and not is_stem_key(k)
    }
    _hash_tensors(h, kept)
    return h.hexdigest()[:8]


def is_integer_key(key: str) -> bool:
    """A tensor of the integer entropy path."""
    return key.startswith(INTEGER_PREFIX)


def integer_identity_of(identity: str, tensors: dict[str, torch.Tensor]) -> str:
    """The identity integer-path files carry: SHA-256 over the identity and every
    ``integer.`` tensor (which, with the float tensors it covers, pins every integer)."""
    h = hashlib.sha256(f"aeic-integer|{identity}|".encode())
    _hash_tensors(h, {k: v for k, v in tensors.items() if is_integer_key(k)})
    return h.hexdigest()[:8]


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (16 hex digits) over named tensors, hashed as identities hash them."""
    h = hashlib.sha256()
    _hash_tensors(h, tensors)
    return h.hexdigest()[:16]


def _hash_tensors(h: Any, tensors: dict[str, torch.Tensor]) -> None:
    import torch

    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())


def _storage_of(key: str, value: torch.Tensor, encoder_dtype: str, decoder_dtype: str) -> str:
    """How one tensor is stored: "fp32", "bf16", "int8" or "as-is" (integer buffers)."""
    if not value.is_floating_point():
        return "as-is"
    side = decoder_dtype if key.startswith(DECODER_PARTS) else encoder_dtype
    if side == "int8" and (value.dim() < 2 or key.startswith("entropy_bottleneck.")):
        return "bf16"
    return side


def stored_tensors(
    key: str, value: torch.Tensor, encoder_dtype: str, decoder_dtype: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The tensors a bundle writes for ``value``, and the value loading gives back."""
    import torch

    kind = _storage_of(key, value, encoder_dtype, decoder_dtype)
    if kind == "int8":
        q, scale = quantize_int8(value)
        return {key: q, SCALE_PREFIX + key: scale}, dequantize_int8(q, scale)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(kind, value.dtype)
    kept = value.detach().to(dtype).contiguous().clone()
    return {key: kept}, kept.float() if kept.is_floating_point() else kept


def stored_value(
    key: str, value: torch.Tensor, encoder_dtype: str = "fp32", decoder_dtype: str = "bf16"
) -> torch.Tensor:
    """The tensor a bundle gives back for ``value`` (float32 if floating): what loading sees."""
    return stored_tensors(key, value, encoder_dtype, decoder_dtype)[1]


def save_bundle(
    path: str | os.PathLike[str],
    model: AEIC,
    lambda_: float | None = None,
    provenance: dict[str, Any] | None = None,
    decoder_dtype: str = "bf16",
    encoder_dtype: str = "fp32",
) -> str:
    """Write ``model`` (encoder and decoder) as a bundle, atomically; returns its identity.

    ``decoder_dtype`` and ``encoder_dtype`` (one of STORAGE_DTYPES) are the storage types
    of the decoder side (g_s, eps, D) and of the rest (g_a, h_a, h_s, context, z prior).
    Both sides always compute the entropy parameters in float32 from the stored values,
    so smaller storage shrinks the file without touching bit-exactness; with it, the
    model's encoder-side weights are rounded in place first, so that the tables built
    here match the weights in the file.
    """
    import torch
    from safetensors.torch import save_file

    from aeic_codec.runtime.files import atomic_path

    if model.g_a is None or model.g_s is None:
        raise BundleError("a bundle needs the whole model (encoder and decoder)")
    if decoder_dtype not in STORAGE_DTYPES or encoder_dtype not in STORAGE_DTYPES:
        raise ValueError(f"decoder_dtype and encoder_dtype must be one of {STORAGE_DTYPES}")
    # Each tensor is converted once; the encoder side's values are then written back in
    # place, so that the tables built here come from exactly what the file holds.
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in model.state_dict().items():
            written, restored = stored_tensors(key, value, encoder_dtype, decoder_dtype)
            tensors.update(written)
            if value.is_floating_point() and not key.startswith(DECODER_PARTS):
                value.copy_(restored)
    z_tables, y_tables = model.build_tables()
    config_json = model.cfg.to_json()
    identity = identity_of(model.cfg.identity_json(), tensors)
    int8 = any(t.dtype == torch.int8 for t in tensors.values())
    metadata = {
        "aeic_bundle": BUNDLE_FORMATS[1] if int8 else BUNDLE_FORMATS[0],
        "config": config_json,
        "lambda": "" if lambda_ is None else repr(float(lambda_)),
        "identity": identity,
        "z_tables": z_tables.to_text(),
        "y_tables": y_tables.to_text(),
        "provenance": json.dumps(provenance or {}, sort_keys=True),
    }
    if model.realism is not None:
        metadata["realism_config"] = model.realism.cfg.to_json()
    if model.stem is not None:
        metadata["stem_config"] = model.stem.config.to_json()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    model.identity = identity
    return identity


def load_bundle(
    path: str | os.PathLike[str],
    encoder: bool = True,
    decoder: bool = True,
    realism: bool = False,
) -> AEIC:
    """Build the model a bundle describes and load the tensors the requested side needs.

    ``decoder`` loads the bundle's own (fidelity) decoder, ``realism`` its realism
    decoder, which a bundle without one refuses with a BundleError.
    """
    import torch
    from safetensors import safe_open

    from aeic_codec.codec.model import AEIC
    from aeic_codec.format.tables import FreqTables

    info = read_info(path)
    if realism and info.realism is None:
        raise BundleError(f"{info.path}: this bundle has no realism decoder (use realism 0)")
    from aeic_codec.runtime.startup import skipped_init

    with skipped_init():  # every tensor is filled from the bundle below (or it is refused)
        model = AEIC(info.config, encoder=encoder, decoder=decoder)
        if realism and info.realism is not None:
            from aeic_codec.codec.realism import RealismDecoder

            model.realism = RealismDecoder(info.realism)
        if encoder and info.stem is not None:
            from aeic_codec.nn.stem import AnalysisStem

            model.stem = AnalysisStem(info.config, info.stem)
    # Filled in place: the parameters' own memory is written once, with no temporaries.
    targets = model.state_dict()
    try:
        with safe_open(str(info.path), framework="pt") as fh, torch.no_grad():
            present = set(fh.keys())
            missing = sorted(set(targets) - present)
            if missing:
                raise BundleError(
                    f"{info.path}: bundle lacks {len(missing)} tensors, e.g. {missing[0]}"
                )
            for key, target in targets.items():
                value = fh.get_tensor(key)
                if value.shape != target.shape:
                    raise BundleError(
                        f"{info.path}: {key} has shape {tuple(value.shape)}, the model's "
                        f"configuration needs {tuple(target.shape)}"
                    )
                if target.is_floating_point() and value.dtype == torch.int8:
                    if SCALE_PREFIX + key not in present:
                        raise BundleError(f"{info.path}: int8 tensor {key} has no scale")
                    dequantize_int8(value, fh.get_tensor(SCALE_PREFIX + key), out=target)
                else:
                    target.copy_(value)
            if info.integer_identity is not None:
                model.integer = _load_integer(info, fh, present)
        model.z_tables = FreqTables.from_text(info.metadata["z_tables"])
        model.y_tables = FreqTables.from_text(info.metadata["y_tables"])
    except BundleError:
        raise
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise BundleError(f"{info.path}: cannot load bundle ({exc})") from exc
    model.identity = info.identity
    model.integer_identity = info.integer_identity
    model.lambda_ = info.lambda_
    model.provenance = info.provenance
    return model.eval()


def _load_integer(info: BundleInfo, fh: Any, present: set[str]) -> Any:
    """The integer entropy path; layers whose weights the bundle stores as int8 use those."""
    import torch

    from aeic_codec.entropy_models.intnet import INTEGER_FORMAT, IntegerEntropy
    from aeic_codec.entropy_models.quantize import integer_weight

    if info.metadata.get("integer_format") != INTEGER_FORMAT:
        raise BundleError(
            f"{info.path}: integer entropy format {info.metadata.get('integer_format')} is not "
            f"supported (this aeic reads {INTEGER_FORMAT})"
        )
    stored = {k: fh.get_tensor(k) for k in present if is_integer_key(k)}
    # 2 ms for the shipped bundles: a damaged integer tensor would make files that every
    # intact copy of the bundle refuses by their digest.
    if integer_identity_of(info.identity, stored) != info.integer_identity:
        raise BundleError(
            f"{info.path}: damaged: its integer entropy tensors do not give its identity "
            f"{info.integer_identity} (install or import the bundle again)"
        )
    n = len(INTEGER_PREFIX)
    tensors = {k[n:]: v for k, v in stored.items()}
    for key in [k for k in tensors if k.endswith(".bias") and not k.startswith("exp.")]:
        layer = key[: -len(".bias")]
        if f"{layer}.weight" in tensors:
            continue
        raw = fh.get_tensor(f"{layer}.weight") if f"{layer}.weight" in present else None
        if raw is None or raw.dtype != torch.int8:
            raise BundleError(f"{info.path}: integer layer {layer} has no integer weights")
        tensors[f"{layer}.weight"] = integer_weight(raw)
    try:
        return IntegerEntropy(info.config, tensors)
    except KeyError as exc:
        raise BundleError(f"{info.path}: integer entropy path lacks {exc.args[0]}") from None


def check_bundle(path: str | os.PathLike[str]) -> BundleInfo:
    """Recompute a bundle's identities from all its tensors; a mismatch is a BundleError.

    Loading checks only the integer entropy tensors (2 ms): hashing all 17 MB of a
    shipped bundle takes 50-90 ms, too much for every encode, so this is the full check
    a user runs after copying or installing weights (``aeic weights check``). The
    realism decoder's and the fast encoder's tensors are outside both identities and
    carry no digest: no file depends on them.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info = read_info(path)
    try:
        tensors = load_file(str(info.path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{info.path}: cannot load bundle ({exc})") from exc
    identity = identity_of(info.config.identity_json(), tensors)
    if identity != info.identity:
        raise BundleError(
            f"{info.path}: damaged: its tensors give identity {identity}, not "
            f"{info.identity} (install or import the bundle again)"
        )
    if info.integer_identity is not None:
        got = integer_identity_of(identity, tensors)
        if got != info.integer_identity:
            raise BundleError(
                f"{info.path}: damaged: its integer entropy tensors give identity {got}, "
                f"not {info.integer_identity} (install or import the bundle again)"
            )
    return info


def search_paths(weights: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where bundles are looked for: ``weights`` (if given), $AEIC_WEIGHTS, then weights/."""
    paths = []
    if weights:
        paths.append(Path(weights))
    env = os.environ.get(ENV_VAR)
    if env:
        paths.extend(Path(p) for p in env.split(os.pathsep) if p)
    paths.extend(p for p in SHIPPED_WEIGHTS if p.is_dir())
    return paths or [SHIPPED_WEIGHTS[0]]


TEXTURE_FOLDER = "texture"  # beside the bundles: the texture synthesis' file


def find_texture(weights: str | os.PathLike[str] | None = None) -> Path:
    """The texture synthesis' file (codec/texture_synthesis.py): the first
    ``texture/*.safetensors`` beside the bundles.

    As for bundles (``find_bundle``), ``weights`` (a folder of bundles, or a bundle file
    for its folder) is the only place searched when given; otherwise $AEIC_WEIGHTS and
    the shipped weights/. No fallback: named weights without a texture file are an error.
    """
    paths = [Path(weights)] if weights else search_paths()
    folders = [(p if p.is_dir() else p.parent) / TEXTURE_FOLDER for p in paths]
    for folder in folders:
        found = sorted(folder.glob(f"*{SUFFIX}"))
        if found:
            return found[0]
    searched = ", ".join(str(folder) for folder in folders)
    raise BundleError(
        f"no texture file ({TEXTURE_FOLDER}/*{SUFFIX} beside the bundles) for texture "
        f"synthesis; searched: {searched}; make one with aeic weights texture-book"
    )


def iter_bundles(paths: Iterable[Path]) -> Iterator[BundleInfo | BundleError]:
    """Every bundle under the given files/directories (errors yielded, not raised)."""
    seen: set[Path] = set()
    for p in paths:
        files = sorted(p.glob(f"*{SUFFIX}")) if p.is_dir() else [p] if p.exists() else []
        for f in files:
            real = f.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                yield read_info(f)
            except BundleError as exc:
                yield exc


def bundles_at(weights: str | os.PathLike[str]) -> list[BundleInfo]:
    """The bundles an explicit --weights FILE|DIR names: the file, or those in the folder.

    A path that does not exist, a file that is not a bundle and a folder without one are
    errors: whoever names weights must get those or none.
    """
    path = Path(weights)
    if not path.exists():
        raise BundleError(f"{path}: no such file or folder")
    if not path.is_dir():
        return [read_info(path)]
    found = [b for b in iter_bundles([path]) if isinstance(b, BundleInfo)]
    if not found:
        raise BundleError(f"{path}: no aeic bundle (*{SUFFIX}) in this folder")
    return found


def find_bundle(
    weights: str | os.PathLike[str] | None = None,
    lambda_: float | None = None,
    identity: str | None = None,
    variant: str | None = None,
) -> BundleInfo:
    """Pick one bundle: by identity (decoding), else by lambda/variant (encoding).

    ``weights`` (a bundle or a folder of bundles) is the only place searched when given
    (see ``bundles_at``); otherwise $AEIC_WEIGHTS and the shipped weights/. Ambiguity and
    absence raise BundleError naming what was searched; there is no fallback.
    """
    if weights:
        found = bundles_at(weights)
        searched = str(weights)
    else:
        paths = search_paths()
        found = [b for b in iter_bundles(paths) if isinstance(b, BundleInfo)]
        searched = ", ".join(str(p) for p in paths)
    if identity is not None:
        for b in found:
            if b.has_identity(identity):
                return b
        hint = "" if weights else " Pass --weights with the bundle used to encode it."
        raise BundleError(
            f"no bundle with model identity {identity} (the model this file was encoded "
            f"with); searched: {searched}.{hint}"
        )
    candidates = found
    if variant is not None:
        candidates = [b for b in candidates if b.variant.lower() == variant.lower()]
    if lambda_ is not None:
        candidates = [b for b in candidates if b.lambda_ is not None and b.lambda_ == lambda_]
    if not candidates:
        what = "bundle" + (f" with lambda {lambda_:g}" if lambda_ is not None else "")
        what += f" of variant {variant}" if variant else ""
        rated = sorted((b for b in found if b.lambda_ is not None), key=rate_order)
        have = list(dict.fromkeys(f"{b.variant}@{b.lambda_:g}" for b in rated))
        hint = f" Available: {', '.join(have)}." if have else ""
        raise BundleError(f"no {what} found; searched: {searched}.{hint}")
    if lambda_ is None:
        candidates = _default_choice(candidates)
    variants = sorted({b.variant for b in candidates})
    if len(variants) > 1:
        raise BundleError(
            f"bundles of several variants match ({', '.join(variants)}); "
            "choose one with --variant or --weights FILE"
        )
    return candidates[0]


def rate_order(b: BundleInfo) -> tuple[str, float, str]:
    """Listing order: by variant, then lambda (a bundle without one last), then path."""
    return (b.variant, b.lambda_ if b.lambda_ is not None else float("inf"), str(b.path))


def _default_choice(candidates: list[BundleInfo]) -> list[BundleInfo]:
    """Without --lambda: the bundle marked default, else the middle lambda per variant."""
    marked = [b for b in candidates if b.provenance.get("default")]
    if marked:
        return marked
    out = []
    for v in sorted({b.variant for b in candidates}):
        group = sorted(
            (b for b in candidates if b.variant == v), key=lambda b: (b.lambda_ or 0, str(b.path))
        )
        out.append(group[len(group) // 2])
    return out
