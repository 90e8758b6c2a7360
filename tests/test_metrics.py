"""Quality figures: PSNR, MS-SSIM on arrays and tensors alike, luma power per octave band."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aeic_codec.codec.metrics import (
    SPECTRUM_BANDS,
    band_power_db,
    lattice_cell,
    lattice_rms,
    ms_ssim,
    ms_ssim_u8,
    orientation_error,
    oriented_band_power,
    psnr_u8,
)

from .conftest import make_image


def test_no_torch_import() -> None:
    code = "import sys, aeic_codec.codec.metrics; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


def test_psnr_of_a_one_level_error_everywhere() -> None:
    a = make_image(40, 60)
    b = np.where(a < 255, a + 1, a - 1).astype(np.uint8)
    assert psnr_u8(a, b) == pytest.approx(20 * math.log10(255))
    assert psnr_u8(a, a) == pytest.approx(10 * math.log10(255**2 / 1e-10))


def test_ms_ssim_gives_the_same_number_for_arrays_and_tensors() -> None:
    rng = np.random.default_rng(2)
    a = rng.random((2, 3, 96, 80))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    from_numpy = ms_ssim(a, b)
    from_torch = ms_ssim(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(from_numpy, np.floating) and isinstance(from_torch, torch.Tensor)
    assert float(from_numpy) == pytest.approx(float(from_torch), abs=1e-12)
    x, y = make_image(64, 96, seed=1), make_image(64, 96, seed=2)
    assert ms_ssim_u8(x, x) == pytest.approx(1.0)
    assert 0 < ms_ssim_u8(x, y) < 1


def picture(size: int, fine: float, coarse: float = 40.0) -> np.ndarray:
    """Grey with a coarse wave (1/48 cycle per pixel) and a fine one (1/6) of the given sizes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    luma = 128 + coarse * np.sin(2 * np.pi * xx / 48) + fine * np.sin(2 * np.pi * yy / 6)
    return np.repeat(luma[..., None], 3, axis=2)


def test_band_power_finds_the_band_a_decoder_lost() -> None:
    original, halved = picture(192, 40.0), picture(192, 20.0)
    bands = band_power_db(halved, original)
    assert len(bands) == len(SPECTRUM_BANDS) == 5
    assert bands[0] == pytest.approx(0.0, abs=0.05)  # 1/48 lies in 1/64..1/32
    assert bands[3] == pytest.approx(20 * math.log10(0.5), abs=0.05)  # 1/6 lies in 1/8..1/4
    assert band_power_db(original, original) == [0.0] * 5


def test_band_power_of_bands_an_image_cannot_hold() -> None:
    small = make_image(32, 32).astype(np.float64)
    bands = band_power_db(small * 0.5 + 64, small)
    assert math.isnan(bands[0])  # no frequency of a 32 px image lies in 1/64..1/32
    assert all(b == pytest.approx(20 * math.log10(0.5)) for b in bands[1:])
    flat = np.full((32, 32, 3), 100.0)
    assert band_power_db(flat, small)[1:] == [-math.inf] * 4
    with pytest.raises(ValueError, match="one shape"):
        band_power_db(small[:16], small)


def test_lattice_finds_an_eight_pixel_grid_and_ignores_other_content() -> None:
    rng = np.random.default_rng(0)
    assert np.abs(lattice_cell(0.3 * rng.standard_normal((8, 3, 256, 256)))).max() < 0.02
    grid = np.zeros((2, 3, 64, 64))
    grid[..., ::8, :] = 0.8  # one bright row in every 8
    cell = lattice_cell(grid)
    assert cell.shape == (3, 8, 8)
    assert np.allclose(cell[:, 0], 0.7) and np.allclose(cell[:, 1:], -0.1)
    as_tensor = lattice_cell(torch.from_numpy(grid))
    assert isinstance(as_tensor, torch.Tensor) and np.allclose(as_tensor.numpy(), cell)


def test_lattice_rms_measures_a_painted_grid_in_8_bit_units() -> None:
    image = make_image(64, 96)
    assert lattice_rms(image, image) == 0.0
    painted = image.astype(np.int16)
    painted[::8] += 16  # every 8th row 16 levels brighter (no clipping below 240)
    painted = np.clip(painted, 0, 255).astype(np.uint8)
    assert lattice_rms(painted, image) == pytest.approx(16 * math.sqrt(7) / 8, rel=0.05)
    with_border = np.pad(painted, ((0, 5), (0, 3), (0, 0)))
    assert lattice_rms(with_border, np.pad(image, ((0, 5), (0, 3), (0, 0)))) == lattice_rms(
        painted, image
    )


def _stripes_u8(angle: float, period: float = 5.0, side: int = 96) -> np.ndarray:
    """Grey sine stripes (amplitude 60 levels) whose wave vector points along ``angle``."""
    yy, xx = np.mgrid[:side, :side]
    wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    return np.repeat((128 + 60 * wave).round().astype(np.uint8)[..., None], 3, axis=2)


def test_oriented_band_power_is_the_same_on_arrays_and_tensors() -> None:
    y = make_image(80, 112).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    for window, sectors in ((0, 1), (32, 4), (16, 2)):
        array = oriented_band_power(y, window, sectors)
        tensor = oriented_band_power(torch.from_numpy(y), window, sectors)
        assert isinstance(tensor, torch.Tensor)
        assert np.allclose(tensor.numpy(), array, rtol=1e-9)
    assert oriented_band_power(y).shape == (3,)
    # 80 x 112 in half-overlapping 32-px windows: 4 rows, 6 columns; 3 bands x 4 sectors.
    assert oriented_band_power(y, 32, 4).shape == (4, 6, 12)


def test_orientation_error_sees_detail_in_the_wrong_direction() -> None:
    across = _stripes_u8(0.0)
    assert orientation_error(across, across) == 0.0
    turned = orientation_error(_stripes_u8(math.pi / 2), across)
    diagonal = orientation_error(_stripes_u8(math.pi / 4), across)
    assert turned > 2.0 and diagonal > 2.0
    # The same stripes a little off their direction cost less than turned ones.
    assert orientation_error(_stripes_u8(0.15), across) < turned / 4
    # A flat original has no detail whose direction could be missed.
    flat = np.full_like(across, 128)
    assert math.isnan(orientation_error(across, flat))
    assert math.isnan(orientation_error(across[:20], across[:20]))  # no whole window
    with pytest.raises(ValueError, match="one shape"):
        orientation_error(across, across[:64])


def test_local_band_error_and_coherence_excess_see_blur_and_noise() -> None:
    from aeic_codec.codec.metrics import coherence_excess, local_band_error

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:192, 0:256]
    stripes = 128 + 60 * np.sin(xx * 1.9 + yy * 0.3)  # fine oriented texture
    photo = np.repeat(np.clip(stripes, 0, 255)[..., None], 3, axis=2).astype(np.uint8)
    assert local_band_error(photo, photo) == 0.0 and coherence_excess(photo, photo) == 0.0
    blurred = (photo.astype(np.float64) + np.roll(photo, 1, 1) + np.roll(photo, 2, 1)) / 3
    assert local_band_error(blurred.astype(np.uint8), photo) > 10  # the fine bands are gone
    noise = rng.normal(0, 40, photo.shape[:2])[..., None]
    noisy = np.clip(np.full(photo.shape, 128.0) + noise, 0, 255).astype(np.uint8)
    assert coherence_excess(noisy, photo) < -0.5  # isotropic where the photo is oriented
    with pytest.raises(ValueError, match="one shape"):
        local_band_error(photo, photo[:-1])
