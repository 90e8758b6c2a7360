"""Colour fix: the six transmitted numbers, and the output taking them on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aeic_codec.colorfix import apply_colour_fix, source_stats


def test_source_stats_are_16_bit_mean_and_std() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    stats = source_stats(img)
    assert len(stats) == 6 and all(isinstance(v, int) and 0 <= v <= 65535 for v in stats)
    x = img.astype(np.float64) / 255
    mean = x.reshape(-1, 3).mean(0)
    std = np.sqrt(x.reshape(-1, 3).var(0, ddof=1) + 1e-5)
    assert stats == tuple(round(v * 65535) for v in (*mean, *std))


def test_source_stats_of_flat_and_tiny_images() -> None:
    flat = np.full((8, 8, 3), (0, 128, 255), dtype=np.uint8)
    floor = round(np.sqrt(1e-5) * 65535)
    assert source_stats(flat) == (0, round(128 / 255 * 65535), 65535, floor, floor, floor)
    assert source_stats(flat[:1, :1]) == source_stats(flat)
    with pytest.raises(ValueError):
        source_stats(flat[..., 0])


def test_colour_fix_takes_on_the_given_statistics() -> None:
    rng = np.random.default_rng(1)
    source = np.clip(rng.normal((0.6, 0.4, 0.3), (0.12, 0.08, 0.1), (64, 96, 3)), 0, 1)
    stats = source_stats(np.round(source * 255).astype(np.uint8))
    decoded = np.clip(rng.normal((0.45, 0.5, 0.55), (0.2, 0.15, 0.1), (64, 96, 3)), 0, 1)
    fixed = apply_colour_fix(decoded.astype(np.float32), stats)
    target = np.asarray(stats, dtype=np.float64) / 65535
    pixels = fixed.reshape(-1, 3).astype(np.float64)
    assert np.abs(pixels.mean(0) - target[:3]).max() < 1 / 255
    assert np.abs(np.sqrt(pixels.var(0, ddof=1) + 1e-5) - target[3:]).max() < 1 / 255
    before = decoded.reshape(-1, 3)
    assert np.abs(before.mean(0) - target[:3]).max() > 5 / 255  # the fix had work to do
    assert fixed.dtype == np.float32 and fixed.shape == decoded.shape


def test_colour_fix_clamps() -> None:
    img = np.linspace(0, 1, 300, dtype=np.float32).reshape(10, 10, 3)
    out = apply_colour_fix(img, (60000, 60000, 60000, 30000, 30000, 30000))
    assert out.min() >= 0 and out.max() <= 1 and out.max() == 1


def test_no_torch_import() -> None:
    code = "import sys, aeic_codec.colorfix; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
