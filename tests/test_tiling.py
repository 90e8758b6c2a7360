"""Tiling: the grid covers everything, one tile is the plain call, tiles blend without seams."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aeic_codec.config import tiny_config
from aeic_codec.denoiser import Denoiser
from aeic_codec.tiling import tile_starts, tiled_denoise, tiled_vae_decode
from aeic_codec.vae import LiteVAEDecoder


def test_grid_covers_every_position_with_the_asked_overlap() -> None:
    for tile, overlap in [(16, 4), (192, 64), (96, 32), (160, 40), (7, 0), (5, 4)]:
        for size in list(range(1, 3 * tile + 5)) + [10 * tile + 3, 1000]:
            starts = tile_starts(size, tile, overlap)
            length = min(tile, size)
            covered = torch.zeros(size, dtype=torch.bool)
            for start in starts:
                assert 0 <= start and start + length <= size
                covered[start : start + length] = True
            assert covered.all(), (size, tile, overlap)
            assert starts == sorted(set(starts))
            gaps = [b - a for a, b in zip(starts, starts[1:])]
            assert all(gap <= tile - overlap for gap in gaps), (size, tile, overlap)
            if size <= tile:
                assert starts == [0]
            else:  # no tile could be dropped: one fewer could not reach the end
                assert (len(starts) - 1) * (tile - overlap) + overlap < size


def test_one_tile_is_the_plain_call() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    eps = Denoiser(cfg).eval()
    decoder = LiteVAEDecoder(cfg).eval()
    l_t = torch.randn(1, cfg.denoiser_in, cfg.eps_tile, cfg.eps_tile - 3)
    l_0 = torch.randn(1, cfg.decoder_latent, cfg.vae_tile - 1, cfg.vae_tile)
    calls = []
    with torch.no_grad():
        out = tiled_denoise(eps, l_t, cfg.eps_tile, cfg.eps_overlap, lambda *a: calls.append(a))
        assert torch.equal(out, eps(l_t))
        assert torch.equal(tiled_vae_decode(decoder, l_0, cfg.vae_tile), decoder(l_0))
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
