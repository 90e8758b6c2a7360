"""The Python API: load a model, encode an image, decode a file, read a header.

The CLI is a thin layer over these functions. Heavy modules (torch, diffusers) are
imported inside the functions that need them, so ``read_header`` stays cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .bundle import BundleError, find_bundle, load_bundle
from .container import DIGEST_SIZE, AeicFile, ColourGrid, FormatError, pack, unpack
from .imageio import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    import torch

    from .config import ModelConfig
    from .model import AEIC
    from .realism import RealismDecoder
    from .tiling import Progress

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class ModelMismatch(BundleError):
    """The file was encoded with another model than the one given for decoding."""


class DigestMismatch(FormatError):
    """The decoder's integer entropy parameters differ from the encoder's."""


class VerifyError(ValueError):
    """An encoded file that does not decode to the encoder's latents (``verify=True``)."""


@dataclass
class EncodeResult:
    data: bytes
    stream_bits: list[float]  # information estimate per stream (z, steps 0-3)
    y_hat: torch.Tensor
    digest: bytes | None = None  # entropy digest (integer path), None on the float path

    @property
    def entropy_digest(self) -> str | None:
        return self.digest.hex() if self.digest is not None else None

    @property
    def estimated_bits(self) -> float:
        return sum(self.stream_bits)


def load_model(
    weights: str | os.PathLike[str] | None = None,
    *,
    lambda_: float | None = None,
    identity: str | None = None,
    variant: str | None = None,
    encoder: bool = True,
    decoder: bool = True,
    realism: bool = False,
) -> AEIC:
    """Find a bundle (see ``bundle.find_bundle``) and load the parts a side needs.

    ``decoder`` is the bundle's own (fidelity) decoder, ``realism`` its realism decoder.
    """
    info = find_bundle(weights, lambda_=lambda_, identity=identity, variant=variant)
    return load_bundle(info.path, encoder=encoder, decoder=decoder, realism=realism)


def check_realism(realism: float) -> float:
    """A realism setting: 0 (the bundle's own decoder) to 1 (its realism decoder)."""
    if not 0.0 <= realism <= 1.0:
        raise ValueError(f"realism must be between 0 and 1, got {realism:g}")
    return realism


def load_decoder(
    weights: str | os.PathLike[str] | None, identity: str, realism: float = 0.0
) -> AEIC:
    """The decoder side of the bundle a file names, with the decoders ``realism`` needs."""
    info = find_bundle(weights, identity=identity)
    r = check_realism(realism)
    if r > 0 and info.realism is None:
        raise BundleError(
            f"{info.path}: this bundle has no realism decoder; decode with --realism 0"
        )
    from .realism import needs_fidelity

    fidelity = needs_fidelity(r, info.realism)
    return load_bundle(info.path, encoder=False, decoder=fidelity, realism=r > 0)


def read_header(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> AeicFile:
    """Parse and check an .aeic file without decoding it (no torch)."""
    return unpack(data, max_pixels=max_pixels)


def encode_image(
    image: np.ndarray,
    model: AEIC,
    *,
    colour_fix: bool | None = None,
    colour_grid: bool | None = None,
    integer: bool | None = None,
    device: str = "cpu",
    precision: str = "auto",
    verify: bool = False,
) -> EncodeResult:
    """Code an H x W x 3 uint8 image.

    colour_fix and colour_grid default to what the model's configuration asks for (the
    statistics for images above its threshold, the grid when it names a cell size); True
    sends the grid with the model's cell and step, or 64 and 4 for a model without one.
    ``integer`` picks the entropy path: the integer one (format version 3) whenever the
    model has it, unless False; ``device`` runs the analysis networks there, in
    ``precision`` (``resolve_precision``; auto is bf16 where the CPU computes it natively,
    1.6x faster for g_a on such a CPU, +0.1 % bytes on Kodak). Files from either decode
    anywhere, but one image encodes to other bytes in another precision. ``verify``
    decodes the file's latents as a decoder would and raises VerifyError unless they and
    the entropy digest are the encoder's (about half the encode time again).
    """
    import torch

    from .model import PAD
    from .transforms import from_pixels, pad_reflect

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("image must be an H x W x 3 uint8 array")
    if model.identity is None:
        raise BundleError("the model has no identity: load it from a bundle or save it first")
    h, w = image.shape[:2]
    # A copy when read-only (Pillow's arrays are): torch warns about non-writable arrays.
    pixels = np.ascontiguousarray(image) if image.flags.writeable else image.copy()
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    x = pad_reflect(from_pixels(x), PAD)
    if colour_fix is None:
        colour_fix = h * w > model.cfg.colorfix_min_pixels
    if colour_grid is None:
        colour_grid = bool(model.cfg.colour_grid)
    dtype = resolve_precision(precision, device)
    result = model.compress(x, integer=integer, device=device, dtype=dtype)
    colour, grid = _colour_info(image, model.cfg, colour_fix, colour_grid)
    digest = result.digest[:DIGEST_SIZE] if result.digest is not None else None
    model_id = model.identity if digest is None else model.integer_identity
    if model_id is None:
        raise BundleError("the model's integer path has no identity: load it from a bundle")
    f = AeicFile(w, h, bytes.fromhex(model_id), tuple(result.streams), colour, grid, digest)
    data = pack(f)
    if verify:
        try:
            y_hat, full_digest = latent_and_digest(unpack(data), model)
        except FormatError as exc:
            raise VerifyError(f"the encoded file does not decode ({exc})") from exc
        if full_digest != result.digest or not torch.equal(y_hat, result.y_hat):
            raise VerifyError("the encoded file decodes to other latents than the encoder's")
    return EncodeResult(data, result.stream_bits, result.y_hat, result.digest)


def _colour_info(
    image: np.ndarray, cfg: ModelConfig, colour_fix: bool, colour_grid: bool
) -> tuple[tuple[int, ...] | None, ColourGrid | None]:
    """The colour statistics and the coded colour grid a file carries (None: not sent)."""
    from .colour import DEFAULT_GRID, grid_levels, source_stats
    from .grid_coder import encode_grid

    colour = source_stats(image) if colour_fix else None
    if not colour_grid:
        return colour, None
    cell, step = (cfg.colour_grid, cfg.colour_grid_step) if cfg.colour_grid else DEFAULT_GRID
    return colour, ColourGrid(cell, step, encode_grid(grid_levels(image, cell, step), step))


def encode(
    image: np.ndarray,
    model: AEIC,
    *,
    colour_fix: bool | None = None,
    colour_grid: bool | None = None,
    integer: bool | None = None,
    precision: str = "auto",
    verify: bool = False,
) -> bytes:
    """Code an H x W x 3 uint8 image into the bytes of an .aeic file (see encode_image)."""
    return encode_image(
        image,
        model,
        colour_fix=colour_fix,
        colour_grid=colour_grid,
        integer=integer,
        precision=precision,
        verify=verify,
    ).data


def decode_latent(f: AeicFile, model: AEIC) -> torch.Tensor:
    """The y_hat a file carries (bit-exact with the encoder's)."""
    return latent_and_digest(f, model)[0]


def latent_and_digest(
    f: AeicFile, model: AEIC, progress: Progress | None = None
) -> tuple[torch.Tensor, bytes | None]:
    """y_hat and, for the integer path, the entropy digest, checked against the file's.

    A digest that differs from the one the file carries raises DigestMismatch: the
    latents would be garbage, so nothing is decoded further. ``progress`` hears of each
    of the four context steps: (1, 4) to (4, 4).
    """
    from .coder import CodingError
    from .model import LatentError, latent_size

    expected = model.integer_identity if f.integer else model.identity
    if model.identity is not None and f.model_id_hex != expected:
        path = "integer" if f.integer else "float"
        raise ModelMismatch(
            f"file was encoded with model {f.model_id_hex} ({path} entropy path), not with "
            f"this bundle ({expected or 'which has no integer path'}); decode it with the "
            "bundle it was encoded with"
        )
    size = latent_size(f.height, f.width)
    step = None
    if progress is not None:
        report, done = progress, [0]

        def step() -> None:
            done[0] += 1
            report(done[0], ENTROPY_STEPS)

    try:
        if not f.integer:
            return model.decompress(f.streams, size, step), None
        y_hat, digest = model.decompress_integer(f.streams, size, step)
    except (CodingError, LatentError) as exc:
        raise FormatError(f"corrupt file: {exc}") from exc
    if f.digest != digest[:DIGEST_SIZE]:
        raise DigestMismatch(
            f"entropy digest mismatch (file {f.digest.hex()}, computed {digest[:DIGEST_SIZE].hex()}"
            "): the entropy parameters differ from the encoder's (corrupt file or another "
            "bundle with this identity); nothing decoded"
        )
    return y_hat, digest


def read_grid(f: AeicFile) -> np.ndarray | None:
    """The colour grid's levels (3 x rows x columns), None without a grid; no torch needed."""
    from .grid_coder import GridError, decode_grid

    if f.grid is None:
        return None
    try:
        return decode_grid(f.grid.data, f.height, f.width, f.grid.cell, f.grid.step)
    except GridError as exc:
        raise FormatError(f"corrupt file: {exc}") from exc


def check_device(device: str) -> None:
    """Raise ValueError (one line) when ``device`` cannot run here; cpu always can."""
    if device == "cpu":
        return
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA GPU is available to torch here")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps: no Apple GPU is available to torch here")


def resolve_precision(precision: str, device: str = "cpu") -> torch.dtype:
    """auto: bfloat16 where the CPU has native bf16 (or on CUDA), else float32.

    Native means bf16 dot-product instructions (AVX512-BF16 or AMX). oneDNN also runs
    bf16 on plain AVX-512 by converting, which measured about twice as slow as float32
    on such a CPU, so that does not count.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device == "cpu":
            raise ValueError("fp16 is for CUDA; use bf16 or fp32 on the CPU")
        return torch.float16
    if device != "cpu":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX)."""
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def synthesize(
    model: AEIC | RealismDecoder,
    y_hat: torch.Tensor,
    height: int,
    width: int,
    *,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    tile: int | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The generative half: g_s, eps on l_T plus l_res, D; returns (3, H, W) in [-1, 1].

    ``model`` is a whole model (its own decoder) or a realism decoder: both have these parts.
    """
    import torch

    from . import layerwise
    from .attention import local_attention
    from .tiling import denoise_steps, tiled_denoise

    if model.g_s is None or model.denoiser is None or model.vae is None:
        raise RuntimeError("this model was loaded without its decoder")
    dtype = dtype or torch.float32
    cfg = model.cfg
    eps_tile = tile or cfg.eps_tile
    overlap = max(1, min(eps_tile * cfg.eps_overlap // cfg.eps_tile, (eps_tile - 1) // 2))
    # channels-last lets oneDNN skip a layout reorder around every convolution (1.5-2x).
    layout = torch.channels_last
    for part in (model.g_s, model.denoiser, model.vae):
        part.to(device=device, dtype=dtype, memory_format=layout)
    with torch.no_grad(), local_attention(model.denoiser, 8), local_attention(model.vae, 8):
        y = y_hat.to(device=device, dtype=dtype).contiguous(memory_format=layout)
        l_t, l_res = model.g_s(y)
        l_t = model.denoiser.with_noise(l_t)  # whole l_T before tiling: the tiles agree
        # One progress count over both phases, so that a bar never starts over.
        lh, lw = l_t.shape[-2:]
        n_eps = denoise_steps(lh, lw, eps_tile, overlap)
        total = n_eps + layerwise.decoder_steps(model.vae, lh, lw)
        eps_progress = vae_progress = None
        if progress is not None:
            report = progress

            def eps_progress(done: int, _total: int) -> None:
                report(done, total)

            def vae_progress(done: int, _total: int) -> None:
                report(n_eps + done, total)

        l_0 = tiled_denoise(model.denoiser, l_t, eps_tile, overlap, eps_progress) + l_res
        del l_t, l_res
        x = layerwise.decode(model.vae, l_0, vae_progress)
    return x[0, :, :height, :width].float().clamp(-1, 1).cpu()


@dataclass
class DecodeResult:
    image: np.ndarray  # H x W x 3 uint8
    digest: bytes | None  # entropy digest (integer path), None on the float path

    @property
    def entropy_digest(self) -> str | None:
        return self.digest.hex() if self.digest is not None else None


def decode(
    data: bytes,
    model: AEIC,
    *,
    precision: str = "auto",
    device: str = "cpu",
    tile: int | None = None,
    progress: Progress | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    realism: float = 0.0,
) -> np.ndarray:
    """Decode .aeic bytes into an H x W x 3 uint8 image (see decode_image)."""
    return decode_image(
        data,
        model,
        precision=precision,
        device=device,
        tile=tile,
        progress=progress,
        max_pixels=max_pixels,
        realism=realism,
    ).image


ENTROPY_STEPS = 4  # progress ticks of the entropy decoding (its context steps)
# The entropy decoding's share of a decode's progress, against 1 for each decoder run:
# about what it takes at any size (it is linear too), 0.3 to 1 of a decoder by the CPU.
ENTROPY_SHARE = 0.5


def _phases(progress: Progress | None, shares: list[float]) -> list[Progress | None]:
    """One progress callback per phase of a decode, reported as one count out of 1000 in
    which each phase takes its share, so that a bar moves all along and never starts
    over (a phase's own count can have any total)."""
    if progress is None:
        return [None] * len(shares)
    report, whole = progress, sum(shares)
    starts = [sum(shares[:i]) for i in range(len(shares))]

    def phase(start: float, share: float) -> Progress:
        def tell(done: int, total: int) -> None:
            report(round(1000 * (start + share * done / max(total, 1)) / whole), 1000)

        return tell

    return [phase(a, b) for a, b in zip(starts, shares, strict=True)]


def decode_image(
    data: bytes,
    model: AEIC,
    *,
    precision: str = "auto",
    device: str = "cpu",
    tile: int | None = None,
    progress: Progress | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    realism: float = 0.0,
) -> DecodeResult:
    """Decode .aeic bytes into an image, with the entropy digest of the integer path.

    ``realism`` 0 renders with the bundle's own (fidelity) decoder, 1 with its realism
    decoder, values between blend the two pictures (both decoders run; also at 1 when
    the realism decoder gives only detail, realism.detail_blend). 0 is the default:
    on Kodak at 1:1 the realism decoders of the shipped models draw texture as strokes and
    bend faces, which looks less like a photograph than the fidelity decoder's blur
    (README, "Default models").
    """
    from .colour import apply_colour_fix, apply_grid
    from .realism import detail_blend, needs_fidelity

    r = check_realism(realism)
    if r > 0 and model.realism is None:
        raise ValueError("realism > 0 needs a model loaded with its realism decoder")
    realism_cfg = model.realism.cfg if r > 0 and model.realism is not None else None
    fidelity = needs_fidelity(r, realism_cfg)
    if fidelity and model.g_s is None:
        raise ValueError("this realism setting needs a model loaded with its own decoder")
    f = unpack(data, max_pixels=max_pixels)
    levels = read_grid(f)  # before the slow part, so that a corrupt grid fails at once
    parts = [model] if fidelity else []
    parts += [model.realism] if r > 0 else []
    entropy_progress, *decoder_progress = _phases(progress, [ENTROPY_SHARE] + [1.0] * len(parts))
    y_hat, digest = latent_and_digest(f, model, entropy_progress)
    pictures = [
        synthesize(
            decoder,
            y_hat,
            f.height,
            f.width,
            dtype=resolve_precision(precision, device),
            device=device,
            tile=tile,
            progress=part_progress,
        )
        for decoder, part_progress in zip(parts, decoder_progress, strict=True)
    ]
    if len(pictures) == 1:
        x = pictures[0]
    else:
        x = detail_blend(*pictures, r, realism_cfg.detail_sigma if realism_cfg else 0.0)
    img = ((x + 1) / 2).permute(1, 2, 0).numpy()
    if f.colour is not None:
        img = apply_colour_fix(img, f.colour)
    if f.grid is not None and levels is not None:
        img = apply_grid(img, levels, f.grid.cell, f.grid.step)
    return DecodeResult(np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8), digest)
