"""Tiling of eps: the grid covers everything, one tile is the plain call, blending is exact
for a pointwise map, and progress counts eps and D on one scale."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aeic_codec.codec.tiling import tile_length, tile_starts, tiled_denoise
from aeic_codec.nn.config import tiny_config
from aeic_codec.nn.denoiser import Denoiser


@st.composite
def grids(draw: st.DrawFn) -> tuple[int, int, int]:
    tile = draw(st.integers(1, 256))
    overlap = draw(st.integers(0, tile - 1))
    size = draw(st.one_of(st.integers(1, 3 * tile + 5), st.integers(1, 5000)))
    return size, tile, overlap


@given(grids())
def test_grid_covers_every_position_with_the_asked_overlap(grid: tuple[int, int, int]) -> None:
    size, tile, overlap = grid
    starts = tile_starts(size, tile, overlap)
    length = tile_length(size, tile, overlap)
    assert length <= min(tile, size)
    covered = torch.zeros(size, dtype=torch.bool)
    for start in starts:
        assert start >= 0 and start + length <= size
        covered[start : start + length] = True
    assert covered.all()
    assert starts == sorted(set(starts))
    assert all(b - a <= length - overlap for a, b in itertools.pairwise(starts))
    if size <= tile:
        assert starts == [0] and length == size
    else:  # one tile fewer could not reach the end, and the tiles are no longer than needed
        count = len(starts)
        assert (count - 1) * (tile - overlap) + overlap < size
        assert count * (length - 1 - overlap) + overlap < size


def test_grid_rejects_impossible_overlaps() -> None:
    with pytest.raises(ValueError):
        tile_starts(10, 4, 4)
    with pytest.raises(ValueError):
        tile_starts(0, 4, 1)


def test_one_tile_is_the_plain_call() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    eps = Denoiser(cfg).eval()
    l_t = torch.randn(1, cfg.denoiser_in, cfg.eps_tile, cfg.eps_tile - 3)
    calls = []
    with torch.no_grad():
        out = tiled_denoise(eps, l_t, cfg.eps_tile, cfg.eps_overlap, lambda *a: calls.append(a))
        assert torch.equal(out, eps(l_t))
    assert calls == [(1, 1)]


def test_blending_is_exact_for_a_pointwise_map() -> None:
    """With no spatial context to lose, tiling must give back the untiled result."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 4, 1)
    l_t = torch.randn(2, 6, 45, 70)
    calls = []
    with torch.no_grad():
        out = tiled_denoise(conv, l_t, 16, 4, lambda *a: calls.append(a))
        torch.testing.assert_close(out, conv(l_t), rtol=0, atol=1e-5)
    tiles = len(tile_starts(45, 16, 4)) * len(tile_starts(70, 16, 4))
    assert calls == [(i, tiles) for i in range(1, tiles + 1)]


def test_tiled_denoise_runs_on_odd_sizes_in_bf16() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    eps = Denoiser(cfg).eval().to(torch.bfloat16)
    l_t = torch.randn(1, cfg.denoiser_in, 37, 23, dtype=torch.bfloat16)
    with torch.no_grad():
        out = tiled_denoise(eps, l_t, cfg.eps_tile, cfg.eps_overlap)
    assert out.shape == (1, cfg.decoder_latent, 37, 23) and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()


def test_decode_progress_counts_both_phases_on_one_scale() -> None:
    """eps tiles and D's layers report into one rising count that ends at its total."""
    from aeic_codec.api import synthesize
    from aeic_codec.codec.model import AEIC

    torch.manual_seed(0)
    model = AEIC(tiny_config(), encoder=False).eval()
    calls: list[tuple[int, int]] = []
    y_hat = torch.randn(1, 16, 8, 10)
    out = synthesize(model, y_hat, 250, 300, tile=12, progress=lambda d, t: calls.append((d, t)))
    assert out.shape == (3, 250, 300)
    totals = {t for _, t in calls}
    assert len(totals) == 1
    (total,) = totals
    done = [d for d, _ in calls]
    assert done == list(range(1, total + 1)) and total > 2  # tiled: more than one call each
