"""Tiled eps for large images (docs/architecture.md section 6).

eps runs on overlapping latent tiles blended with a separable Gaussian weight
(variance 0.01 * tile**2); it is a single plain call when the latent fits one tile.
D is not tiled: ``layerwise.py`` runs it over the whole latent, exactly, at a cost
linear in the pixels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

Progress = Callable[[int, int], None]  # told (done, total) as work units finish
Core = tuple[int, int, int, int]  # tile-local y0, y1, x0, x1 in latent pixels


def tile_length(size: int, tile: int, overlap: int) -> int:
    """The length of the tiles that cover ``0..size-1``: the fewest tiles of at most
    ``tile`` whose neighbours overlap by ``overlap``, each made as short as that count
    allows. Full-size tiles spread over the picture instead overlapped by up to a tile's
    half: at 4000 x 3000 eps computed 2.1 times the latent's area, with these 1.2 times.
    A size up to one tile gives one tile of that size.
    """
    if size < 1 or tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need size >= 1 and 0 <= overlap < tile, got {size}, {tile}, {overlap}")
    if size <= tile:
        return size
    count = math.ceil((size - overlap) / (tile - overlap))
    return math.ceil((size - overlap) / count) + overlap


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles of ``tile_length`` that cover ``0..size-1``, spread
    evenly so that the last tile ends exactly at ``size``; neighbours overlap by at least
    ``overlap``."""
    length = tile_length(size, tile, overlap)
    if length == size:
        return [0]
    count = math.ceil((size - overlap) / (length - overlap))
    # Floor division keeps every step <= length - overlap, so overlaps never shrink.
    return [i * (size - length) // (count - 1) for i in range(count)]


def gaussian_weight(length: int) -> torch.Tensor:
    """1-D blending weight over a tile: Gaussian centred on it, variance 0.01 * length**2."""
    x = torch.arange(length, dtype=torch.float64)
    centre = (length - 1) / 2
    return torch.exp(-((x - centre) ** 2) / (2 * 0.01 * length**2)).float()


def _cores(starts: list[int], length: int, size: int) -> list[tuple[int, int]]:
    """Tile-local [begin, end) of each tile's share of a partition of 0..size-1.

    Shares meet in the middle of each overlap, so every position belongs to exactly
    one tile and lies as far from that tile's border as the grid allows.
    """
    bounds = [0] + [(a + length + b) // 2 for a, b in itertools.pairwise(starts)] + [size]
    return [(bounds[i] - s, bounds[i + 1] - s) for i, s in enumerate(starts)]


def _grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, Core]]:
    """Every tile as (row start, column start, core)."""
    th, tw = tile_length(height, tile, overlap), tile_length(width, tile, overlap)
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    return [
        (y0, x0, (*row_core, *col_core))
        for y0, row_core in zip(rows, _cores(rows, th, height), strict=True)
        for x0, col_core in zip(cols, _cores(cols, tw, width), strict=True)
    ]


class Ticker:
    """Counts finished tiles for an optional ``progress(done, total)`` callback."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _blend(
    fn: Callable[[torch.Tensor], torch.Tensor],
    latent: torch.Tensor,
    tile: int,
    overlap: int,
    tick: Ticker,
) -> torch.Tensor:
    """``fn`` on every tile, outputs averaged with Gaussian weights (summed in float32).

    ``fn`` may upsample by an integer factor; the weights then live in output pixels.
    """
    height, width = latent.shape[-2:]
    th, tw = tile_length(height, tile, overlap), tile_length(width, tile, overlap)
    out = total = weight = None
    for y0, x0, _core in _grid(height, width, tile, overlap):
        piece = fn(latent[..., y0 : y0 + th, x0 : x0 + tw])
        if out is None:
            scale = piece.shape[-2] // th
            dtype = piece.dtype
            size = (height * scale, width * scale)
            out = piece.new_zeros((*piece.shape[:2], *size), dtype=torch.float32)
            total = out.new_zeros(size)
            weight = gaussian_weight(th * scale)[:, None] * gaussian_weight(tw * scale)
            weight = weight.to(out.device)
        rows = slice(y0 * scale, (y0 + th) * scale)
        cols = slice(x0 * scale, (x0 + tw) * scale)
        out[..., rows, cols] += piece.float() * weight
        total[rows, cols] += weight
        del piece
        tick()
    return (out / total).to(dtype)


def denoise_steps(height: int, width: int, tile: int, overlap: int) -> int:
    """How many progress ticks ``tiled_denoise`` gives for a latent of this size."""
    if height <= tile and width <= tile:
        return 1
    return len(_grid(height, width, tile, overlap))


def tiled_denoise(
    eps: Callable[[torch.Tensor], torch.Tensor],
    l_t: torch.Tensor,
    tile: int,
    overlap: int,
    progress: Progress | None = None,
) -> torch.Tensor:
    """eps on overlapping latent tiles, Gaussian-blended; one plain call when l_T fits a tile.

    eps has a large receptive field, global attention and GroupNorm, so tiles are
    not exact; the steep Gaussian hands each position to the nearest tile centre,
    where that tile's context is most complete.
    """
    height, width = l_t.shape[-2:]
    if height <= tile and width <= tile:
        out = eps(l_t)
        if progress is not None:
            progress(1, 1)
        return out
    tick = Ticker(progress, len(_grid(height, width, tile, overlap)))
    return _blend(eps, l_t, tile, overlap, tick)
