"""Colour fix: the six transmitted numbers, the colour grid, and the output taking them on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aeic_codec.codec import colour
from aeic_codec.codec.colour import apply_colour_fix, apply_grid, grid_levels, source_stats
from aeic_codec.format.grid_coder import GridError, decode_grid, encode_grid, grid_shape
from tests.conftest import make_image


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


def test_source_stats_equal_float64_summation(monkeypatch) -> None:
    """The histogram path gives what float64 sums give; values near a .5 go to those."""
    reference = colour._float_stats
    calls = []
    monkeypatch.setattr(colour, "_float_stats", lambda img: calls.append(1) or reference(img))
    rng = np.random.default_rng(3)
    images = [make_image(150, 200, seed=s) for s in range(3)]
    for _ in range(300):
        h, w = rng.integers(1, 24, 2)
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    for img in images:
        assert source_stats(img) == reference(img)
    assert 0 < len(calls) < len(images) // 2  # both paths ran (ties come with few pixels)


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
    code = "import sys, aeic_codec.codec.colour; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


def test_grid_levels_are_quantized_cell_means_in_ycbcr() -> None:
    img = np.zeros((70, 130, 3), dtype=np.uint8)
    img[:64, :64] = (255, 0, 0)  # red cell: Y 76.2, Cb 85.0, Cr 255.5 -> clamped
    img[64:, 64:128] = (10, 200, 30)  # a partial row of cells: 6 rows of green
    levels = grid_levels(img, 64, 4)
    assert levels.shape == (3, 2, 3) == (3, *grid_shape(70, 130, 64))
    assert levels[:, 0, 0].tolist() == [19, 21, 63]  # round(76.245/4), round(84.97/4), top
    assert levels[:, 1, 1].tolist() == [31, 19, 12]  # 123.8, 75.1, 46.8 over 6 x 64 pixels
    assert levels[:, 0, 2].tolist() == [0, 32, 32]  # black, 2 columns wide
    assert levels.min() >= 0 and levels.max() <= 63


@pytest.mark.parametrize(
    "colour,step,plane,level",
    [
        ((175, 39, 213), 1, 0, 100),  # Y = 99.5 exactly: to even
        ((1, 139, 172), 1, 0, 102),  # Y = 101.5
        ((158, 170, 170), 4, 2, 30),  # Cr = 122 = 30.5 steps
        ((10, 140, 95), 64, 0, 2),  # Y = 96 = 1.5 steps
    ],
)
def test_grid_levels_round_exact_ties_to_even(
    colour: tuple[int, int, int], step: int, plane: int, level: int
) -> None:
    # Float sums of the matrix land on either side of these ties (review of session 7).
    img = np.full((9, 13, 3), colour, dtype=np.uint8)
    assert (grid_levels(img, 8, step)[plane] == level).all()


def test_grid_coding_matches_the_documented_example() -> None:
    levels = np.array([[[30, 31]], [[32, 32]], [[32, 33]]])
    data = encode_grid(levels, 4)
    assert data == bytes.fromhex("360030")
    assert decode_grid(data, 64, 128, 64, 4).tolist() == levels.tolist()


@pytest.mark.parametrize(
    "height,width,cell,step", [(512, 768, 64, 4), (37, 50, 16, 1), (1, 1, 64, 4), (300, 9, 8, 64)]
)
def test_grid_round_trip(height: int, width: int, cell: int, step: int) -> None:
    rng = np.random.default_rng(height)
    levels = grid_levels(make_image(height, width), cell, step)
    assert np.array_equal(decode_grid(encode_grid(levels, step), height, width, cell, step), levels)
    # Extreme residuals (0 next to the top level) take the 9-bit escape and come back too.
    wild = rng.integers(0, 255 // step + 1, size=levels.shape)
    assert np.array_equal(decode_grid(encode_grid(wild, step), height, width, cell, step), wild)


def test_grid_of_a_photo_like_image_is_small() -> None:
    levels = grid_levels(make_image(512, 768), 64, 4)
    assert len(encode_grid(levels, 4)) < 3 * 96  # fewer than 8 bits a level


def test_corrupt_grids_are_refused() -> None:
    levels = grid_levels(make_image(128, 192), 64, 4)
    data = encode_grid(levels, 4)
    with pytest.raises(GridError, match="ends early"):
        decode_grid(data[:-2], 128, 192, 64, 4)
    with pytest.raises(GridError, match="after its last level"):
        decode_grid(data + b"\x00", 128, 192, 64, 4)
    with pytest.raises(GridError, match=r"ends early|outside"):
        decode_grid(data, 192, 192, 64, 4)  # one more row of cells than coded
    # k = 0, sixteen ones, then u = 200 in 9 bits: level 32 + 100, past the top of step 4.
    bits = "000" + "1" * 16 + f"{200:09b}" + "0" * 4
    forged = int(bits, 2).to_bytes(4, "big")
    with pytest.raises(GridError, match=r"level 132 outside 0\.\.63"):
        decode_grid(forged, 64, 64, 64, 4)


def test_apply_grid_moves_cell_means_onto_the_levels() -> None:
    rng = np.random.default_rng(3)
    source = make_image(128, 192, seed=1)
    levels = grid_levels(source, 64, 4)
    # A colour cast that a grid of 64 px cells can see: constant plus a slow ramp.
    yy, xx = np.mgrid[0:128, 0:192] / 192.0
    cast = np.stack([0.08 + 0.05 * xx, -0.04 + 0.0 * yy, -0.06 + 0.05 * yy], axis=-1)
    decoded = np.clip(source / 255.0 + cast + rng.normal(0, 0.01, source.shape), 0, 1)
    fixed = apply_grid(decoded.astype(np.float32), levels, 64, 4)
    assert fixed.dtype == np.float32 and fixed.min() >= 0 and fixed.max() <= 1
    err = lambda img: np.abs(img * 255.0 - source).mean()  # noqa: E731
    assert err(fixed) < 0.25 * err(decoded)
    # Cell means land within the quantization step of the levels (the image is not clipped
    # much, and the interpolated shift varies slowly).
    assert np.abs(grid_levels(np.round(fixed * 255).astype(np.uint8), 64, 4) - levels).max() <= 1
    with pytest.raises(ValueError, match="shape"):
        apply_grid(decoded, levels[:, :1], 64, 4)


def test_colour_fix_and_grid_in_bands_equal_one_pass(monkeypatch) -> None:
    """A large picture is fixed in bands of rows (no float64 copy of it): the same values,
    and the statistics are the image's mean and unbiased std."""
    rng = np.random.default_rng(3)
    img = rng.random((70, 45, 3)).astype(np.float32)
    transposed = np.ascontiguousarray(img.transpose(2, 0, 1)).transpose(1, 2, 0)  # a CHW view
    levels = grid_levels((img * 255).astype(np.uint8), 16, 4)
    stats = (30000, 31000, 32000, 12000, 13000, 14000)
    whole = apply_colour_fix(img, stats), apply_grid(img, levels, 16, 4)
    monkeypatch.setattr(colour, "BAND_PIXELS", 100)  # bands of 2 rows: 35 of them
    assert len(colour._bands(img)) == 35
    mean, std = colour._mean_std(transposed)
    x = img.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, np.sqrt(x.var(0, ddof=1) + 1e-5), rtol=1e-12)
    banded = apply_colour_fix(transposed, stats), apply_grid(transposed, levels, 16, 4)
    for one, many in zip(whole, banded, strict=True):
        assert many.dtype == np.float32 and many.flags.c_contiguous
        np.testing.assert_allclose(many, one, rtol=0, atol=1e-6)
