"""Tiled inference for large images (ARCHITECTURE.md section 6).

MEASUREMENTS_PLACEHOLDER
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Progress = Callable[[int, int], None]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``min(tile, size)`` that cover ``0..size-1``.

    The fewest tiles whose neighbours overlap by at least ``overlap``, spread evenly
    so that the last tile ends exactly at ``size`` (no ragged last tile). A size up to
    one tile gives a single tile at 0.
    """
    if size < 1 or tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need size >= 1 and 0 <= overlap < tile, got {size}, {tile}, {overlap}")
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    # Floor division keeps every step <= tile - overlap, so overlaps never shrink.
    return [i * (size - tile) // (count - 1) for i in range(count)]


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
    bounds = [0] + [(a + length + b) // 2 for a, b in zip(starts, starts[1:])] + [size]
    return [(bounds[i] - s, bounds[i + 1] - s) for i, s in enumerate(starts)]


def _run_tiles(
    fn: Callable[[torch.Tensor], torch.Tensor],
    latent: torch.Tensor,
    tile: int,
    overlap: int,
    blend: bool,
    on_tile: Callable[[tuple[int, int, int, int], int, int], None] | None = None,
    progress: Callable[[], None] | None = None,
) -> torch.Tensor | None:
    """Run ``fn`` on overlapping tiles of ``latent`` and, if ``blend``, Gaussian-blend them.

    ``fn`` may upsample by an integer factor; the weights live in its output's
    pixels. ``on_tile(core, th, tw)`` is told each tile's core (latent units) before
    ``fn`` runs on it. Sums are kept in float32 whatever the tile dtype.
    """
    height, width = latent.shape[-2:]
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    row_cores, col_cores = _cores(rows, th, height), _cores(cols, tw, width)
    out = norm = weight = None
    scale = 1
    for y0, (cy0, cy1) in zip(rows, row_cores):
        for x0, (cx0, cx1) in zip(cols, col_cores):
            if on_tile is not None:
                on_tile((cy0, cy1, cx0, cx1), th, tw)
            piece = fn(latent[..., y0 : y0 + th, x0 : x0 + tw])
            if blend:
                if out is None:
                    scale = piece.shape[-2] // th
                    batch, channels = piece.shape[:2]
                    out = piece.new_zeros(
                        (batch, channels, height * scale, width * scale), dtype=torch.float32
                    )
                    norm = out.new_zeros((height * scale, width * scale))
                    weight = gaussian_weight(th * scale)[:, None] * gaussian_weight(tw * scale)
                    weight = weight.to(out.device)
                ys, xs = slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale)
                out[..., ys, xs] += piece.float() * weight
                norm[ys, xs] += weight
                dtype = piece.dtype
            del piece
            if progress is not None:
                progress()
    if not blend:
        return None
    return (out / norm).to(dtype)


def _counter(progress: Progress | None, total: int) -> Callable[[], None] | None:
    """Turn ``progress(done, total)`` into a no-argument step callback."""
    if progress is None:
        return None
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        progress(done, total)

    return step


def _tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    return len(tile_starts(height, tile, overlap)) * len(tile_starts(width, tile, overlap))


def tiled_denoise(
    eps: Callable[[torch.Tensor], torch.Tensor],
    l_t: torch.Tensor,
    tile: int,
    overlap: int,
    progress: Progress | None = None,
) -> torch.Tensor:
    """eps on overlapping latent tiles, Gaussian-blended; one plain call when l_T fits a tile.

    eps has a large receptive field and global attention at its lowest level, so
    tiles are not exact; the Gaussian weight (variance 0.01 * tile**2) hands each
    position to the nearest tile centre, where the tile's context is most complete.
    """
    height, width = l_t.shape[-2:]
    if height <= tile and width <= tile:
        out = eps(l_t)
        if progress is not None:
            progress(1, 1)
        return out
    step = _counter(progress, _tile_count(height, width, tile, overlap))
    return _run_tiles(eps, l_t, tile, overlap, blend=True, progress=step)


def _channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(batch, channel) mean and biased variance of an N x C x H x W tensor, float64.

    Computed in float32 a few channels at a time, so a bf16 tile is never copied whole.
    """
    pieces = [torch.var_mean(c.float(), dim=(-2, -1), correction=0) for c in x.split(8, dim=1)]
    var = torch.cat([v for v, _ in pieces], dim=1)
    mean = torch.cat([m for _, m in pieces], dim=1)
    return mean.double(), var.double()


class _SharedGroupNorms:
    """Forward hooks that give every GroupNorm of a decoder whole-image statistics.

    A GroupNorm inside a tile would normalise with that tile's statistics, so each
    tile would get its own brightness and contrast: the seams of naive tiling.
    While ``fixed`` is set, each GroupNorm's output is replaced by a normalisation
    with the given per-(batch, group) mean and variance. While ``core`` is set, the
    moments of each GroupNorm's input over that part of the tile are accumulated,
    so a pass over a partition of the latent yields whole-image statistics.
    """

    def __init__(self, decoder: nn.Module) -> None:
        self.norms = [m for m in decoder.modules() if isinstance(m, nn.GroupNorm)]
        self.fixed: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.core: tuple[int, int, int, int] | None = None
        self.tile_hw = (1, 1)
        self.sums: dict[nn.GroupNorm, torch.Tensor] = {}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _SharedGroupNorms:
        self.handles = [norm.register_forward_hook(self._hook) for norm in self.norms]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def set_core(self, core: tuple[int, int, int, int], th: int, tw: int) -> None:
        self.core, self.tile_hw = core, (th, tw)

    def _hook(self, norm: nn.GroupNorm, args: tuple[torch.Tensor, ...], output: torch.Tensor):
        x = args[0]
        if self.core is not None:
            self._accumulate(norm, x)
        if self.fixed is None:
            return None
        mean, var = self.fixed[norm]
        return _fixed_group_norm(x, norm, mean, var)

    def _accumulate(self, norm: nn.GroupNorm, x: torch.Tensor) -> None:
        th, tw = self.tile_hw
        if x.ndim == 3:  # the attention's GroupNorm sees N x C x (H*W)
            scale = math.isqrt(x.shape[-1] // (th * tw))
            x = x.reshape(*x.shape[:2], th * scale, tw * scale)
        scale = x.shape[-2] // th
        y0, y1, x0, x1 = (v * scale for v in self.core)
        region = x[..., y0:y1, x0:x1]
        count = region.shape[-2] * region.shape[-1]
        mean, var = _channel_moments(region)
        groups = norm.num_groups
        batch = x.shape[0]
        sums = torch.stack(
            [
                torch.full_like(mean, count),
                mean * count,
                (var + mean**2) * count,
            ]
        ).reshape(3, batch, groups, -1)
        sums = sums.sum(-1)
        self.sums[norm] = self.sums[norm] + sums if norm in self.sums else sums

    def statistics(self) -> dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]]:
        """Per-(batch, group) mean and variance from what was accumulated; resets the sums."""
        stats = {}
        for norm, (count, total, squares) in self.sums.items():
            mean = total / count
            stats[norm] = (mean, (squares / count - mean**2).clamp_min(0))
        self.sums = {}
        return stats


def _fixed_group_norm(
    x: torch.Tensor, norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor
) -> torch.Tensor:
    """GroupNorm of ``x`` with given per-(batch, group) statistics.

    Folded into one per-channel scale and shift, applied in float32 in a single op,
    so the only full-size temporary is the output.
    """
    batch, channels = x.shape[:2]
    per_group = channels // norm.num_groups
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_group, dim=1)
    shift = -mean.repeat_interleave(per_group, dim=1) * scale
    if norm.affine:
        scale = scale * norm.weight.double()
        shift = shift * norm.weight.double() + norm.bias.double()
    view = (batch, channels) + (1,) * (x.ndim - 2)
    scale, shift = scale.float().view(view), shift.float().view(view)
    return torch.addcmul(shift, x, scale).to(x.dtype)


def tiled_vae_decode(
    decoder: nn.Module,
    l_0: torch.Tensor,
    tile: int,
    progress: Progress | None = None,
    overlap: int | None = None,
    mode: str = "refine",
) -> torch.Tensor:
    """D on latent tiles of ``tile`` with whole-image GroupNorm statistics and blended overlaps."""
    height, width = l_0.shape[-2:]
    if height <= tile and width <= tile:
        out = decoder(l_0)
        if progress is not None:
            progress(1, 1)
        return out
    overlap = tile // 4 if overlap is None else overlap
    count = _tile_count(height, width, tile, overlap)
    passes = 2 if mode in ("refine", "local") else 1
    step = _counter(progress, count * passes + (mode != "local"))
    with _SharedGroupNorms(decoder) as norms:
        if mode != "local":
            factor = max(height, width) / tile
            small = F.interpolate(
                l_0,
                size=(max(1, round(height / factor)), max(1, round(width / factor))),
                mode="area",
            )
            norms.set_core((0, small.shape[-2], 0, small.shape[-1]), *small.shape[-2:])
            decoder(small)
            norms.fixed = norms.statistics()
            if step is not None:
                step()
        if mode in ("refine", "local"):
            _run_tiles(decoder, l_0, tile, overlap, blend=False, on_tile=norms.set_core, progress=step)
            norms.fixed = norms.statistics()
        norms.core = None
        return _run_tiles(decoder, l_0, tile, overlap, blend=True, progress=step)
