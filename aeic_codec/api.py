"""The Python API: load a model, encode an image, decode a file, read a header.

The CLI is a thin layer over these functions. Heavy modules (torch, diffusers) are
imported inside the functions that need them, so ``read_header`` stays cheap. The
decoder's generative half (``synthesize``, codec/synthesis.py) and the device and
precision choices (runtime/devices.py) live in their layers and are named here too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from aeic_codec.bundles.budget import fit_budget, rate_ratio
from aeic_codec.bundles.bundle import BundleError, find_bundle, load_bundle
from aeic_codec.bundles.rate import Ladder, RateError, find_ladder
from aeic_codec.bundles.rate import resolve_rate as resolve_rate
from aeic_codec.codec.colour import side_info
from aeic_codec.codec.synthesis import synthesize as synthesize
from aeic_codec.format.container import (
    DIGEST_SIZE,
    QSTEP_ONE,
    AeicFile,
    FormatError,
    pack,
    unpack,
)
from aeic_codec.format.grid_coder import read_grid as read_grid
from aeic_codec.format.texture_coder import read_texture as read_texture
from aeic_codec.runtime.devices import PRECISIONS as PRECISIONS
from aeic_codec.runtime.devices import check_device as check_device
from aeic_codec.runtime.devices import cpu_has_native_bf16 as cpu_has_native_bf16
from aeic_codec.runtime.devices import resolve_fast as resolve_fast
from aeic_codec.runtime.devices import resolve_precision
from aeic_codec.runtime.imageio import DEFAULT_MAX_PIXELS
from aeic_codec.runtime.imageio import read_image as read_image  # for callers of the API
from aeic_codec.runtime.progress import ENTROPY_SHARE, ENTROPY_STEPS, phases

if TYPE_CHECKING:
    import torch

    from aeic_codec.codec.model import AEIC
    from aeic_codec.codec.texture import SourceTexture
    from aeic_codec.codec.texture_synthesis import TextureSynthesis
    from aeic_codec.codec.tiling import Progress
    from aeic_codec.entropy_models.intnet import Start


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
    model_id: str = ""  # the identity the file names (the integer one on the integer path)
    qstep: int = QSTEP_ONE  # y's quantisation step in 1/256 (rate control)
    trials: int = 1  # files a budget search made to find this one
    fast: bool = False  # whether the bundle's fast encoder made y (``resolve_fast``)

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


class ModelLadder:
    """The bundles of a ladder (rate.Ladder) with their encoders, loaded on first use."""

    def __init__(self, ladder: Ladder, models: dict[int, AEIC] | None = None) -> None:
        self.ladder = ladder
        self._models = dict(models or {})

    def model(self, rung: int) -> AEIC:
        if rung not in self._models:
            info = self.ladder.rungs[rung].info
            if info is None:
                raise ValueError(f"rung {rung} of the ladder has neither a bundle nor a model")
            self._models[rung] = load_bundle(info.path, encoder=True, decoder=False)
        return self._models[rung]


def load_ladder(
    weights: str | os.PathLike[str] | None = None, *, variant: str | None = None
) -> ModelLadder:
    """The ladder of bundles (one variant) that ``encode_image``'s budgets choose from."""
    return ModelLadder(find_ladder(weights, variant=variant))


def measure_rate_curve(
    model: AEIC,
    images: Mapping[str, np.ndarray],
    qsteps: tuple[int, ...] | list[int] | None = None,
    *,
    precision: str = "auto",
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """Each named image's rate probe and [qstep, bpp, PSNR] rows, coded at each step and
    decoded (realism 0).

    What a bundle's rate curves hold (rate.py, ``set_rate_curve``): their mean says which
    step gives a lambda between the bundles' own; each image's, with its probe (bpp of
    y's first quadtree step, ``_FileCoder.probe``), says where, for a picture whose probe
    reads that, the next bundle's pictures become the better ones.
    """
    from aeic_codec.bundles.rate import CALIBRATION_STEPS
    from aeic_codec.codec.metrics import psnr_u8

    steps = list(qsteps or CALIBRATION_STEPS)
    out: dict[str, dict[str, Any]] = {}
    for n, (name, image) in enumerate(images.items()):
        x, dtype = _padded(image), resolve_precision(precision)
        coder = _FileCoder(model, image, x, None, None, None, None, "cpu", dtype, False)
        rows = []
        for k, q in enumerate(steps):
            data = coder.encode(q).data
            bpp = 8 * len(data) / (image.shape[0] * image.shape[1])
            quality = psnr_u8(decode(data, model, precision=precision), image)
            rows.append([q, bpp, quality])
            if progress is not None:
                progress(n * len(steps) + k + 1, len(images) * len(steps))
        out[name] = {"probe": coder.probe(), "curve": rows}
    return out


def _padded(image: np.ndarray) -> torch.Tensor:
    """The encoder's input: (1, 3, H, W) in [-1, 1], mirror-padded to a multiple of 64."""
    import torch

    from aeic_codec.codec.model import PAD
    from aeic_codec.nn.transforms import from_pixels, pad_reflect

    # A copy when read-only (Pillow's arrays are): torch warns about non-writable arrays.
    pixels = np.ascontiguousarray(image) if image.flags.writeable else image.copy()
    return pad_reflect(from_pixels(torch.from_numpy(pixels).permute(2, 0, 1)[None]), PAD)


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
    from aeic_codec.codec.realism import needs_fidelity

    fidelity = needs_fidelity(r, info.realism)
    return load_bundle(info.path, encoder=False, decoder=fidelity, realism=r > 0)


def load_texture(weights: str | os.PathLike[str] | None = None) -> TextureSynthesis:
    """The texture synthesis for files with texture statistics: the first
    ``texture/*.safetensors`` beside the bundles (``bundle.find_texture``; with ``weights``,
    beside those bundles only)."""
    from aeic_codec.bundles.bundle import find_texture
    from aeic_codec.codec.texture_synthesis import load_texture as read

    return read(find_texture(weights))


def read_header(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> AeicFile:
    """Parse and check an .aeic file without decoding it (no torch)."""
    return unpack(data, max_pixels=max_pixels)


def encode_image(
    image: np.ndarray,
    model: AEIC | ModelLadder,
    *,
    colour_fix: bool | None = None,
    colour_grid: bool | None = None,
    integer: bool | None = None,
    device: str = "cpu",
    precision: str = "auto",
    verify: bool = False,
    qstep: int = QSTEP_ONE,
    size: int | None = None,
    bpp: float | None = None,
    texture: bool = False,
    fast: bool | None = None,
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

    ``qstep`` quantises y with step qstep / 256 instead of the trained 1 (integer path;
    ``resolve_rate`` turns a lambda into a bundle and a step). ``size`` (bytes) or ``bpp``
    asks instead for the best file of at most that many bytes (``bpp * width * height /
    8``, rounded down): the finest fitting step of ``model``, or of the bundle of a
    ``ModelLadder`` that ``budget.fit_budget`` picks (near a handover after probing the
    image with the finer bundle); g_a runs once per bundle and only the entropy coding
    per step. A budget that nothing fits raises RateError naming the smallest file.
    ``texture`` also sends the source's fine-band power per block (format version 5,
    ``codec/texture.py``; a few dozen bytes, inside a budget too), which a decoder's
    texture synthesis reads. ``fast`` runs the bundle's fast encoder (``nn/stem.py``:
    the shipped ones run g_a in about a third of the time; on Kodak 1.5 to 3.4 % fewer
    bytes and 0.12 to 0.16 dB less PSNR); a bundle without one raises ValueError. None
    (the default) runs it where ``resolve_fast`` says: on a CPU without native bf16, if
    the bundle has one.
    """
    import torch

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("image must be an H x W x 3 uint8 array")
    h, w = image.shape[:2]
    budget = _budget(size, bpp, h * w)
    if budget is None and isinstance(model, ModelLadder):
        raise ValueError("a ladder of models needs a budget (size or bpp)")
    x = _padded(image)
    dtype = resolve_precision(precision, device)
    ladder = model if isinstance(model, ModelLadder) else None
    if budget is not None and ladder is None:
        ladder = ModelLadder(Ladder.solo(model), {0: model})
    if texture and integer is False:
        raise ValueError("texture statistics need the integer entropy path")
    source = None
    if texture:
        from aeic_codec.codec.texture import SourceTexture

        source = SourceTexture(image)
    sides = (colour_fix, colour_grid, source, device, dtype, fast)
    if ladder is None:
        coder = _FileCoder(model, image, x, integer, *sides)
        result = coder.encode(qstep)
    else:
        if integer is False:
            raise ValueError("a byte budget needs the integer entropy path")
        coders: dict[int, _FileCoder] = {}
        results: dict[tuple[int, int], EncodeResult] = {}

        def coder(rung: int) -> _FileCoder:
            if rung not in coders:  # g_a once per bundle
                coders[rung] = _FileCoder(ladder.model(rung), image, x, None, *sides)
            return coders[rung]

        def encode(rung: int, q: int) -> bytes:
            results[rung, q] = coder(rung).encode(q)
            return results[rung, q].data

        fit = fit_budget(
            ladder.ladder, budget, h * w, encode, rate_ratio(image), lambda r: coder(r).probe()
        )
        result = results[fit.rung, fit.qstep]
        result.trials = fit.trials
        model = ladder.model(fit.rung)
    if verify:
        try:
            y_hat, full_digest = latent_and_digest(unpack(result.data), model)
        except FormatError as exc:
            raise VerifyError(f"the encoded file does not decode ({exc})") from exc
        if full_digest != result.digest or not torch.equal(y_hat, result.y_hat):
            raise VerifyError("the encoded file decodes to other latents than the encoder's")
    return result


def _budget(size: int | None, bpp: float | None, pixels: int) -> int | None:
    """The byte budget that ``size`` or ``bpp`` asks for (None: no budget)."""
    if size is not None and bpp is not None:
        raise ValueError("give a budget as size or as bpp, not both")
    if bpp is not None:
        if not bpp > 0:
            raise ValueError(f"bpp must be positive, got {bpp}")
        size = int(bpp * pixels / 8)
    if size is not None and size < 1:
        raise RateError(f"a budget of {size} bytes is too small for any file")
    return size


class _FileCoder:
    """One image under one model: g_a once, then a file per quantisation step."""

    def __init__(
        self,
        model: AEIC,
        image: np.ndarray,
        x: torch.Tensor,
        integer: bool | None,
        colour_fix: bool | None,
        colour_grid: bool | None,
        texture: SourceTexture | None,
        device: str,
        dtype: torch.dtype,
        fast: bool | None,
    ) -> None:
        if model.identity is None:
            raise BundleError("the model has no identity: load it from a bundle or save it first")
        self.model = model
        self.height, self.width = image.shape[:2]
        if colour_fix is None:
            colour_fix = self.height * self.width > model.cfg.colorfix_min_pixels
        if colour_grid is None:
            colour_grid = bool(model.cfg.colour_grid)
        self.fast = resolve_fast(fast, model.stem is not None, device)
        self.y, self.z = model.analyse(x, device, dtype, self.fast)
        self.codec = model.latent_codec(integer)
        self.colour, self.grid = side_info(image, model.cfg, colour_fix, colour_grid)
        self.texture = texture
        if texture is not None and not self.codec.integer:
            raise ValueError("texture statistics need the integer entropy path")
        self._start: Start | None = None  # h_s and step 0: the same at every step

    def probe(self) -> float:
        """bpp of y's first quadtree step at step 1 (``IntegerLatentCodec.probe``)."""
        probe = getattr(self.codec, "probe", None)
        if probe is None:
            raise ValueError("a probe of the rate needs the integer entropy path")
        bits, self._start = probe(self.y, self.z, start=self._start)
        return bits / (self.height * self.width)

    def encode(self, qstep: int) -> EncodeResult:
        result = self.codec.compress(self.y, self.z, qstep, self._start)
        self._start = result.start
        digest = result.digest[:DIGEST_SIZE] if result.digest is not None else None
        model = self.model
        model_id = model.identity if digest is None else model.integer_identity
        if model_id is None:
            raise BundleError("the model's integer path has no identity: load it from a bundle")
        f = AeicFile(
            self.width,
            self.height,
            bytes.fromhex(model_id),
            tuple(result.streams),
            self.colour,
            self.grid,
            digest,
            qstep,
        )
        full_digest = result.digest
        if self.texture is not None and full_digest is not None:
            from aeic_codec.codec.texture import choose_texture, texture_budget, texture_digest

            data, levels = choose_texture(self.texture, texture_budget(f.size))
            full_digest = texture_digest(full_digest, levels)
            f = replace(f, digest=full_digest[:DIGEST_SIZE], texture=data)
        return EncodeResult(
            pack(f), result.stream_bits, result.y_hat, full_digest, model_id, qstep, fast=self.fast
        )


def encode(
    image: np.ndarray,
    model: AEIC | ModelLadder,
    *,
    colour_fix: bool | None = None,
    colour_grid: bool | None = None,
    integer: bool | None = None,
    precision: str = "auto",
    verify: bool = False,
    qstep: int = QSTEP_ONE,
    size: int | None = None,
    bpp: float | None = None,
    texture: bool = False,
    fast: bool | None = None,
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
        qstep=qstep,
        size=size,
        bpp=bpp,
        texture=texture,
        fast=fast,
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
    from aeic_codec.codec.model import latent_size
    from aeic_codec.format.coder import CodingError
    from aeic_codec.latent_codecs.base import LatentError

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
        y_hat, digest = model.decompress(f.streams, size, f.integer, f.qstep, step)
    except (CodingError, LatentError) as exc:
        raise FormatError(f"corrupt file: {exc}") from exc
    if digest is None:
        return y_hat, None
    if f.texture is not None:
        from aeic_codec.codec.texture import texture_digest

        digest = texture_digest(digest, read_texture(f))
    if f.digest != digest[:DIGEST_SIZE]:
        raise DigestMismatch(
            f"entropy digest mismatch (file {f.digest.hex()}, computed {digest[:DIGEST_SIZE].hex()}"
            "): the entropy parameters differ from the encoder's (corrupt file or another "
            "bundle with this identity); nothing decoded"
        )
    return y_hat, digest


@dataclass
class DecodeResult:
    image: np.ndarray  # H x W x 3 uint8
    digest: bytes | None  # entropy digest (integer path), None on the float path

    @property
    def entropy_digest(self) -> str | None:
        return self.digest.hex() if self.digest is not None else None


def decode(
    data: bytes | AeicFile,
    model: AEIC,
    *,
    precision: str = "auto",
    device: str = "cpu",
    tile: int | None = None,
    progress: Progress | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    realism: float = 0.0,
    texture: TextureSynthesis | None = None,
) -> np.ndarray:
    """Decode an .aeic file (bytes or parsed) into an H x W x 3 uint8 image (see decode_image)."""
    return decode_image(
        data,
        model,
        precision=precision,
        device=device,
        tile=tile,
        progress=progress,
        max_pixels=max_pixels,
        realism=realism,
        texture=texture,
    ).image


def decode_image(
    data: bytes | AeicFile,
    model: AEIC,
    *,
    precision: str = "auto",
    device: str = "cpu",
    tile: int | None = None,
    progress: Progress | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    realism: float = 0.0,
    texture: TextureSynthesis | None = None,
) -> DecodeResult:
    """Decode an .aeic file into an image, with the entropy digest of the integer path.

    ``data`` is the file's bytes or, so that they are parsed once, the AeicFile that
    ``read_header`` made of them (``max_pixels`` applies to bytes: read_header checked
    the file's). ``realism`` 0 renders with the bundle's own (fidelity) decoder, 1 with
    its realism decoder, values between blend the two pictures (both decoders run; also
    at 1 when the realism decoder gives only detail, realism.detail_blend). 0 is the
    default: on Kodak at 1:1 the realism decoders of the shipped models draw texture as
    strokes and bend faces, which looks less like a photograph than the fidelity
    decoder's blur (README, "Default models"). A file with texture statistics (format
    version 5) decodes at ``realism`` r > 0 with the fidelity decoder plus r times the
    detail ``texture`` (``load_texture``) synthesises where the statistics put it.
    """
    from aeic_codec.codec.colour import apply_colour_fix, apply_grid
    from aeic_codec.codec.realism import detail_blend, needs_fidelity

    r = check_realism(realism)
    f = data if isinstance(data, AeicFile) else unpack(data, max_pixels=max_pixels)
    levels = read_grid(f)  # before the slow part, so that a corrupt grid fails at once
    stats = read_texture(f) if r > 0 else None
    if stats is not None and texture is None:
        raise ValueError("realism > 0 on a file with texture statistics needs the texture file")
    if r > 0 and stats is None and model.realism is None:
        raise ValueError("realism > 0 needs a model loaded with its realism decoder")
    realism_cfg = model.realism.cfg if stats is None and r > 0 and model.realism else None
    fidelity = stats is not None or needs_fidelity(r, realism_cfg)
    if fidelity and model.g_s is None:
        raise ValueError("this realism setting needs a model loaded with its own decoder")
    parts = [model] if fidelity else []
    parts += [model.realism] if r > 0 and stats is None else []
    entropy_progress, *decoder_progress = phases(progress, [ENTROPY_SHARE] + [1.0] * len(parts))
    y_hat, digest = latent_and_digest(f, model, entropy_progress)
    dtype = resolve_precision(precision, device)
    pictures = [
        synthesize(
            decoder,
            y_hat,
            f.height,
            f.width,
            dtype=dtype,
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
    img = img * 255.0
    if stats is not None and texture is not None:
        img = texture(img, stats, r, dtype)
    return DecodeResult(np.clip(np.round(img), 0, 255).astype(np.uint8), digest)
