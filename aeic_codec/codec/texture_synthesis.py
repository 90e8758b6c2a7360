"""Texture at decode: detail copied from real photographs, placed by the file's statistics.

The fidelity decoder's picture is smooth where the photograph had fine texture. Noise
added there reads as grain or crumpled glass, and a network trained against a critic on
this machine guessed strokes; what reads as a photograph is detail taken from
photographs. An exemplar book made from training photographs (``tools/texture_book.py``)
holds, for many places of many photos, the latent neighbourhood of the codec's own decode
of that place in TAEF2's latent space (the key) and what the photo had there that the
decode lost (the value: the sharp photo's latent minus the decode's). At decode, TAEF2's
encoder maps the fidelity picture to its latent; every position takes the value of its
nearest key; TAEF2's decoder renders the latent with and without those values, and their
difference is photographic detail in pixels, on TAEF2's manifold. The file's texture
statistics then decide how much of it goes where (``texture_match.py``): nothing where
the photograph was smooth. Deterministic: no random numbers. docs/architecture.md
section 12.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aeic_codec.format.texture_coder import TextureLevels
from aeic_codec.nn.config import ModelConfig, TinyEncoderConfig
from aeic_codec.nn.tiny_vae import TinyDecoder, TinyEncoder

from . import layerwise
from .texture import LUMA, luma
from .texture_match import matched_detail, upsample

FORMAT = "3"  # the texture file's layout (metadata ``aeic_texture``)
# Format 2 files are read too: they are format 3 with TAEF2's encoder, whose shape they
# do not store (``encoder_config``).
READABLE = ("2", FORMAT)
SCALE = 8  # TAEF2's latent is 1/8 of the picture
ENCODE_CORE = 256  # px: side of the kept core of a tile of TAEF2's encoder, per stage
PROBES = 2  # clusters of the book searched per position
# TAEF2's decoder and the decoders distilled from it draw part of their detail as short
# horizontal and vertical strokes, which at 1:1 read as a woven mesh on fur, skin and
# plaster: on Kodak at lambda 12, 38 % of the detail's fine-band power lay within 8 degrees
# of the axes (the photographs: 31 %, more on facades, less on fur; isotropic: 18 %).
# ``axis_weight`` dips there before the detail is matched to the statistics.
AXIS_DEPTH = 0.8  # the amplitude weight on the axes is 1 - AXIS_DEPTH
AXIS_SQUARINGS = 4  # the dip is cos(2 angle) ** (2 ** AXIS_SQUARINGS): half depth at 8.4 degrees


class TextureFileError(ValueError):
    """A file that is not a usable texture file; the message is one line for the user."""


@dataclass
class ExemplarBook:
    """Keys and the detail latents they stand for, grouped in clusters for the search.

    A key is a place's 3x3 latent neighbourhood (standardised, projected on a few
    principal directions) and, scaled by ``level_weight``, the two band levels (dB) the
    photograph had there: a place the statistics call smooth takes detail from smooth
    places of photographs (skin, sky), a textured one from textured places. Keys are
    stored sorted by their nearest centroid; cluster j holds rows offsets[j] to
    offsets[j + 1]."""

    mean: torch.Tensor  # (9C,) per-feature mean of the neighbourhoods
    std: torch.Tensor  # (9C,)
    projection: torch.Tensor  # (9C, dims)
    level_weight: float
    keys: torch.Tensor  # (N, dims + 2)
    values: torch.Tensor  # (N, C)
    centroids: torch.Tensor  # (K, dims + 2)
    offsets: torch.Tensor  # (K + 1,) int64

    def query(self, latent: torch.Tensor, levels: TextureLevels) -> torch.Tensor:
        """(h w, dims + 2): the keys of every position of a (1, C, h, w) latent."""
        _, _, h, w = latent.shape
        z = (neighbourhoods(latent) - self.mean) / self.std @ self.projection
        level = latent_levels(levels.db(), levels.block, h, w) * self.level_weight
        return torch.cat([z, level], 1)

    def nearest(self, query: torch.Tensor) -> torch.Tensor:
        """Index of the nearest key of every query row, among the members of its PROBES
        nearest clusters (exact within them; 1/50 of a search of the whole book)."""
        probes = min(PROBES, len(self.centroids))
        clusters = torch.cdist(query, self.centroids).topk(probes, largest=False).indices
        best = torch.full((len(query),), torch.inf)
        index = torch.zeros(len(query), dtype=torch.long)
        for p in range(probes):
            for j in torch.unique(clusters[:, p]).tolist():
                rows = (clusters[:, p] == j).nonzero()[:, 0]
                start, end = int(self.offsets[j]), int(self.offsets[j + 1])
                if end == start:
                    continue
                dist, at = torch.cdist(query[rows], self.keys[start:end]).min(1)
                better = dist < best[rows]
                best[rows[better]] = dist[better]
                index[rows[better]] = at[better] + start
        return index

    def detail(self, latent: torch.Tensor, levels: TextureLevels) -> torch.Tensor:
        """The value of the nearest key at every position of a (1, C, h, w) latent."""
        _, c, h, w = latent.shape
        return self.values[self.nearest(self.query(latent, levels))].T.reshape(1, c, h, w)


def latent_levels(db: np.ndarray, block: int, height: int, width: int) -> torch.Tensor:
    """(height width, 2): band levels (2, rows, cols) in dB of ``block`` px blocks, spread
    over a latent of that size as ``texture_match`` spreads gains over pixels."""
    grid = db.astype(np.float32)
    spread = [upsample(band, block / SCALE, height, width).reshape(-1) for band in grid]
    return torch.from_numpy(np.stack(spread, 1))


def cluster(keys: torch.Tensor, count: int, seed: int = 0, rounds: int = 12) -> torch.Tensor:
    """Centroids of ``count`` k-means clusters of ``keys`` (seeded: a book is reproducible)."""
    g = torch.Generator().manual_seed(seed)
    centroids = keys[torch.randperm(len(keys), generator=g)[:count]].clone()
    for _ in range(rounds):
        member = torch.cdist(keys, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, member, keys)
        counts = torch.bincount(member, minlength=len(centroids))[:, None]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


def grouped(
    keys: torch.Tensor, values: torch.Tensor, centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys and values sorted by nearest centroid, and each cluster's first row."""
    member = torch.cdist(keys, centroids).argmin(1)
    order = torch.argsort(member, stable=True)
    offsets = torch.searchsorted(member[order], torch.arange(len(centroids) + 1))
    return keys[order], values[order], offsets


def neighbourhoods(latent: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) -> (h w, 9 C): each position's 3x3 neighbourhood, borders replicated."""
    padded = F.pad(latent, (1, 1, 1, 1), mode="replicate")
    return F.unfold(padded, 3)[0].T.contiguous()


class TextureSynthesis:
    """TAEF2's encoder and decoder with an exemplar book: what texture synthesis runs."""

    def __init__(
        self, encoder: TinyEncoder, decoder: TinyDecoder, book: ExemplarBook, config: ModelConfig
    ) -> None:
        # channels-last: oneDNN skips a layout reorder around every convolution (3x here)
        self.encoder = encoder.to(memory_format=torch.channels_last)
        self.decoder = decoder.to(memory_format=torch.channels_last)
        self.book, self.config = book, config

    @torch.no_grad()
    def detail(
        self, picture: np.ndarray, levels: TextureLevels, dtype: torch.dtype = torch.float32
    ) -> np.ndarray:
        """Photographic detail for a picture (H x W x 3 float on 0-255), as luma (H x W):
        TAEF2's rendering of its latent with the exemplars' detail, less the picture. (Less
        TAEF2's rendering without the detail instead measured the same on Kodak at twice
        the cost: only the two finest bands of the difference are used, where TAEF2 loses
        little.) Only luma is kept, and no full-size copy more than needed, so that a 12
        megapixel picture stays within 3 GB."""
        h, w = picture.shape[:2]
        padded = np.pad(picture, ((0, -h % SCALE), (0, -w % SCALE), (0, 0)), mode="edge")
        padded = padded.astype(np.float32, copy=False)
        padded /= 255
        x = torch.from_numpy(padded).permute(2, 0, 1)[None]  # channels-last strides
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            latent = tiled_encode(self.encoder, x).float().contiguous()
            del x, padded
            detailed = latent + self.book.detail(latent, levels)
            layout = torch.channels_last
            rendered = layerwise.decode(self.decoder, detailed.contiguous(memory_format=layout))
        weights = torch.from_numpy(LUMA.astype(np.float32) * 127.5)
        y = torch.einsum("c,chw->hw", weights, rendered[0, :, :h, :w].float())
        y += 127.5 * float(LUMA.sum())  # [-1, 1] -> 0-255
        return y.numpy() - luma(picture)

    def __call__(
        self,
        picture: np.ndarray,
        levels: TextureLevels,
        strength: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ) -> np.ndarray:
        """``picture`` (H x W x 3 on 0-255) with texture where ``levels`` put it, luma only."""
        h, w = picture.shape[:2]
        detail = self.detail(picture, levels, dtype)
        change = matched_detail(picture, detail, levels, axis_weight(h, w))
        change = without_lattice(change, SCALE)
        change *= strength
        return picture + change[..., None]


def tiled_encode(encoder: TinyEncoder, x: torch.Tensor, core: int = ENCODE_CORE) -> torch.Tensor:
    """``encoder(x)`` for a (1, 3, H, W) picture, H and W multiples of SCALE, in bounded
    memory and in cache: its convolutions before the first GroupNorm run in two stages on
    tiles whose halo covers each stage's receptive field (the full-resolution layers up
    to the first stride, then the rest; cores of ``core`` of each stage's input pixels,
    aligned to its stride so that every stride sees the same phase), the latent-sized
    rest on the whole. A tile's activations then stay in the CPU's cache: at 768 x 512 in
    bf16 0.61 s per megapixel against 0.90 for the plain call (one run, 2-core Xeon), the
    same values on Kodak; in general equal to it up to float rounding."""
    layers = list(encoder)
    split = next(
        i
        for i, layer in enumerate(layers)
        if any(isinstance(m, nn.GroupNorm) for m in layer.modules())
    )
    strided = next(
        i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d) and layer.stride[0] > 1
    )
    for stage in (layers[: strided + 1], layers[strided + 1 : split]):
        x = _tiled_down(nn.Sequential(*stage), x, core)
    return nn.Sequential(*layers[split:])(x)


def _tiled_down(stage: nn.Sequential, x: torch.Tensor, core: int) -> torch.Tensor:
    """``stage(x)`` on tiles of x with a halo of its reach (both aligned to its stride)."""
    stride = math.prod(m.stride[0] for m in stage.modules() if isinstance(m, nn.Conv2d))
    halo = -(-layerwise.reach(list(stage)) // stride) * stride
    core = max(core // stride, 1) * stride
    return layerwise.tiled(stage, x, core, halo, down=stride)


def axis_weight(height: int, width: int) -> np.ndarray:
    """Amplitude weights on the rFFT grid of an H x W picture: 1 - AXIS_DEPTH on the
    horizontal and vertical frequency axes, rising to 1 on the diagonals (float32)."""
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None] ** 2
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :] ** 2
    radius = fx + fy
    radius[0, 0] = 1.0  # the mean has no angle
    weight = np.subtract(fx, fy)
    weight /= radius  # cos(2 angle); in place, by squarings: 0.02 s instead of 0.3 at 12 MP
    for _ in range(AXIS_SQUARINGS):
        weight *= weight
    weight *= -AXIS_DEPTH
    weight += 1
    return weight


def without_lattice(change: np.ndarray, period: int) -> np.ndarray:
    """``change`` (H x W) less its mean ``period`` x ``period`` cell, tiled from the origin.

    TAEF2's decoder upsamples its latent by 8 and leaves a faint 8 px lattice in what it
    draws; averaged over the picture's cells it stands out (on Kodak the detail doubled the
    pictures' lattice RMS, ``metrics.lattice_rms``), while photographic detail averages to
    nothing there. Removing that mean cell brings the lattice back to the fidelity
    decoder's and changes no other figure."""
    h, w = change.shape
    rows, cols = h // period, w // period
    if rows == 0 or cols == 0:
        return change
    cells = change[: rows * period, : cols * period].reshape(rows, period, cols, period)
    cell = cells.mean(axis=(0, 2))
    cell -= cell.mean()
    return change - np.tile(cell, (rows + 1, cols + 1))[:h, :w]


def save_texture(
    path: str | os.PathLike[str],
    synthesis: TextureSynthesis,
    provenance: dict[str, object] | None = None,
) -> None:
    """Write a texture file: TAEF2's two halves (float16) and the exemplar book."""
    from safetensors.torch import save_file

    from aeic_codec.runtime.files import atomic_path

    tensors = {f"encoder.{k}": v.half() for k, v in synthesis.encoder.state_dict().items()}
    tensors |= {f"decoder.{k}": v.half() for k, v in synthesis.decoder.state_dict().items()}
    b = synthesis.book
    tensors |= {f"book.{k}": getattr(b, k).float() for k in _BOOK_FLOAT}
    tensors |= {"book.keys": b.keys.half(), "book.values": b.values.half()}
    tensors["book.offsets"] = b.offsets.long()
    meta = {
        "aeic_texture": FORMAT,
        "decoder_config": synthesis.config.to_json(),
        "encoder_config": synthesis.encoder.config.to_json(),
        "level_weight": repr(float(b.level_weight)),
        "provenance": json.dumps(provenance or {}, sort_keys=True),
    }
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def texture_provenance(path: str | os.PathLike[str]) -> dict[str, object]:
    """What made a texture file (its ``provenance`` metadata); TextureFileError if unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        found = json.loads(meta.get("provenance", "{}"))
    except (OSError, ValueError, RuntimeError) as exc:
        raise TextureFileError(f"{path}: cannot read texture file ({exc})") from exc
    if not isinstance(found, dict):
        raise TextureFileError(f"{path}: malformed provenance")
    return found


def load_texture(path: str | os.PathLike[str]) -> TextureSynthesis:
    """Read a texture file written by ``save_texture``; TextureFileError if it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (OSError, ValueError, RuntimeError) as exc:  # safetensors' own errors included
        raise TextureFileError(f"{path}: cannot read texture file ({exc})") from exc
    found = meta.get("aeic_texture")
    if found is None:
        raise TextureFileError(f"{path}: not an aeic texture file")
    if found not in READABLE:
        raise TextureFileError(
            f"{path}: texture file format {found}, this aeic reads formats "
            f"{' and '.join(READABLE)}; make a new one with aeic weights texture-book"
        )
    try:
        config = ModelConfig.from_json(meta["decoder_config"])
        shape = meta.get("encoder_config")
        encoder_cfg = (
            TinyEncoderConfig(latent=config.decoder_latent)
            if shape is None
            else TinyEncoderConfig.from_json(shape)
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TextureFileError(f"{path}: malformed network shapes ({exc})") from exc
    encoder, decoder = TinyEncoder(encoder_cfg), TinyDecoder(config)
    for name, net in (("encoder", encoder), ("decoder", decoder)):
        prefix = name + "."
        state = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise TextureFileError(f"{path}: its {name} does not fit ({exc})") from exc
        net.eval().requires_grad_(False)
    try:
        parts = {k: tensors[f"book.{k}"] for k in (*_BOOK_FLOAT, "keys", "values", "offsets")}
        book = ExemplarBook(level_weight=float(meta["level_weight"]), **parts)
    except KeyError as exc:
        raise TextureFileError(f"{path}: no exemplar book ({exc})") from exc
    book.keys, book.values = book.keys.float(), book.values.float()
    return TextureSynthesis(encoder, decoder, book, config)


_BOOK_FLOAT = ("mean", "std", "projection", "centroids")
