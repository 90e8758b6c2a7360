"""Colour fix and colour grid: what the encoder measures of the source's colours, and
the decoder's output taking it on (docs/architecture.md section 6), numpy only.

Tiled decoding of a large image can drift in global colour. The encoder sends the
source's per-channel mean and standard deviation as six 16-bit numbers, and the
decoder moves its output's mean and std onto them. numpy only, so that ``aeic info``
and container code can read and show the numbers without torch. The grid's levels
travel as bytes coded by grid_coder.py, beside the container.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from aeic_codec.format.container import ColourGrid
from aeic_codec.format.grid_coder import encode_grid, grid_shape

if TYPE_CHECKING:
    from aeic_codec.nn.config import ModelConfig

STD_EPS = 1e-5  # added to the variance, as the reference does
LEVELS = 65535  # 16-bit quantisation of each transmitted number
BAND_PIXELS = 1 << 16  # pixels per band of a pass over the image: its temporaries stay in cache


def _bands(img: np.ndarray) -> list[slice]:
    """Row bands of about BAND_PIXELS: no float64 copy of the image, fast temporaries."""
    height, width = img.shape[:2]
    rows = max(BAND_PIXELS // max(width, 1), 1)
    return [slice(top, min(top + rows, height)) for top in range(0, height, rows)]


def _mean_std(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and sqrt(unbiased variance + 1e-5) of an H x W x C float image.

    Float64 sums over bands of rows, two passes (mean, then squared deviations). A
    one-pixel image has no unbiased variance; it counts as zero there.
    """
    channels = img.shape[-1]
    count = img.size // channels
    total = np.zeros(channels)
    for rows in _bands(img):
        total = total + img[rows].reshape(-1, channels).astype(np.float64).sum(axis=0)
    mean = total / count
    squares = np.zeros(channels)
    for rows in _bands(img):
        band = img[rows].reshape(-1, channels).astype(np.float64)
        squares = squares + ((band - mean) ** 2).sum(axis=0)
    return mean, np.sqrt(squares / max(count - 1, 1) + STD_EPS)


def source_stats(img_uint8_hwc: np.ndarray) -> tuple[int, ...]:
    """Six uint16 values: mean R, G, B then std R, G, B of the image in [0, 1].

    The values are those of ``_float_stats`` (float64 sums over the pixels), found about
    eight times faster from each channel's histogram: its mean and variance are exact
    ratios of integers, and wherever float64 summation could round across a .5 boundary
    (the exact value lies within its error bound, 65535 * pixels * 1e-15, of one),
    ``_float_stats`` decides.
    """
    if img_uint8_hwc.ndim != 3 or img_uint8_hwc.shape[-1] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {img_uint8_hwc.shape}")
    pixels = img_uint8_hwc.reshape(-1, 3)
    n = len(pixels)
    margin = max(1e-3, LEVELS * n * 1e-15)
    levels = np.arange(256, dtype=np.int64)
    means, stds = [], []
    for c in range(3):
        hist = np.bincount(pixels[:, c], minlength=256).astype(np.int64)
        s1, s2 = int(hist @ levels), int(hist @ (levels * levels))
        mean = Fraction(257 * s1, n)  # the mean times 65535 (= 255 * 257)
        var = Fraction(n * s2 - s1 * s1, 255 * 255 * n * max(n - 1, 1))
        std = float(np.sqrt(float(var) + STD_EPS)) * LEVELS
        for v in (float(mean - math.floor(mean)), std - math.floor(std)):
            if abs(v - 0.5) < margin:
                return _float_stats(img_uint8_hwc)
        means.append(min(round(mean), LEVELS))
        stds.append(min(round(std), LEVELS))
    return (*means, *stds)


def _float_stats(img_uint8_hwc: np.ndarray) -> tuple[int, ...]:
    """``source_stats`` as defined: float64 mean and std of the pixels scaled to [0, 1]."""
    mean, std = _mean_std(img_uint8_hwc.astype(np.float64) / 255.0)
    values = np.clip(np.round(np.concatenate([mean, std]) * LEVELS), 0, LEVELS)
    return tuple(int(v) for v in values)


def apply_colour_fix(img_float01_hwc: np.ndarray, stats: tuple[int, ...]) -> np.ndarray:
    """Map each channel's mean and std onto the transmitted ones, clamped to [0, 1].

    Returns float32 (the dtype the caller quantises to 8 bits from).
    """
    if len(stats) != 6:
        raise ValueError(f"expected six colour statistics, got {len(stats)}")
    target = np.asarray(stats, dtype=np.float64) / LEVELS
    mean, std = _mean_std(img_float01_hwc)
    out = np.empty(img_float01_hwc.shape, dtype=np.float32)
    for rows in _bands(img_float01_hwc):
        band = (img_float01_hwc[rows].astype(np.float64) - mean) / std * target[3:] + target[:3]
        out[rows] = np.clip(band, 0.0, 1.0)
    return out


# --------------------------------------------------------------------------- local grid
#
# The global fix above moves six numbers. The small models also miss the image's low
# frequencies locally (a red region turns orange, a green one grey), so a model may ask
# for a grid: the encoder sends the source's mean Y, Cb and Cr over cells of ``cell`` x
# ``cell`` pixels, quantized with ``step``, and the decoder shifts its output so that its
# own cell means land on them (the shift is interpolated bilinearly between cell centres).
# Like the global fix it needs only the source on the encoder side (a box average), not
# a decode. docs/format.md, "Colour grid", is the normative description.

# JPEG's full-range BT.601 RGB -> YCbCr (Cb and Cr offset by 128, all three in 0..255).
YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
YCC_OFFSET = np.array([0.0, 128.0, 128.0])
DEFAULT_GRID = (64, 4)  # cell and step when a grid is asked of a model that names none


def _cell_sums(img_hwc: np.ndarray, cell: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel sums over each cell (gh x gw x 3) and each cell's pixel count (gh x gw).

    One band of cells at a time, so that a large image needs no wider copy of itself.
    """
    h, w = img_hwc.shape[:2]
    gh, gw = grid_shape(h, w, cell)
    starts = np.arange(0, w, cell)
    sums = np.empty((gh, gw, img_hwc.shape[2]), dtype=dtype)
    for i in range(gh):
        band = img_hwc[i * cell : (i + 1) * cell].sum(axis=0, dtype=dtype)
        sums[i] = np.add.reduceat(band, starts, axis=0)
    rows = np.minimum(cell, h - cell * np.arange(gh))
    cols = np.minimum(cell, w - cell * np.arange(gw))
    return sums, rows[:, None] * cols[None, :]


def _cell_means_ycc(img01_hwc: np.ndarray, cell: int) -> np.ndarray:
    """Cell means of Y, Cb, Cr (0..255 scale) of a float image in [0, 1]: 3 x gh x gw."""
    sums, counts = _cell_sums(img01_hwc, cell, np.float64)
    means = (sums / counts[..., None]).transpose(2, 0, 1) * 255.0
    return np.einsum("ij,jhw->ihw", YCC, means) + YCC_OFFSET[:, None, None]


# The matrix in integers (Y in thousandths, Cb and Cr in millionths), so that the levels an
# encoder sends are exact: a mean that lies halfway between two levels rounds to the even
# one on every machine, whatever order a float library adds in.
_YCC_INT = np.array(
    [[299, 587, 114], [-168736, -331264, 500000], [500000, -418688, -81312]], dtype=np.int64
)
_YCC_INT_SCALE = np.array([1000, 10**6, 10**6], dtype=np.int64)


def grid_levels(img_uint8_hwc: np.ndarray, cell: int, step: int) -> np.ndarray:
    """The levels an encoder sends: round(cell mean of Y, Cb, Cr / step), 3 x gh x gw ints.

    Computed exactly in integers, rounding halves to even.
    """
    sums, counts = _cell_sums(img_uint8_hwc, cell, np.int64)
    num = np.einsum("ij,hwj->ihw", _YCC_INT, sums)
    num += (np.array([0, 128, 128]) * _YCC_INT_SCALE)[:, None, None] * counts
    den = _YCC_INT_SCALE[:, None, None] * counts * step
    q, r = np.divmod(num, den)
    q += (2 * r > den) | ((2 * r == den) & (q % 2 == 1))
    return np.clip(q, 0, 255 // step)


def _interpolation(n: int, cell: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of n pixels: the two cells to interpolate between and the second one's weight.

    Bilinear between cell centres, held constant beyond the outermost ones: the same as
    resizing the grid by ``cell`` with half-pixel centres (torch's ``align_corners=False``)
    and cropping to n.
    """
    pos = np.clip((np.arange(n) + 0.5) / cell - 0.5, 0, cells - 1)
    lo = np.floor(pos).astype(np.int64)
    return lo, np.minimum(lo + 1, cells - 1), pos - lo


def apply_grid(img_float01_hwc: np.ndarray, levels: np.ndarray, cell: int, step: int) -> np.ndarray:
    """Shift the image so that its cell means of Y, Cb, Cr become levels * step; [0, 1] float32.

    Works in bands of rows, so that the extra memory stays small next to the image's own.
    """
    h, w = img_float01_hwc.shape[:2]
    gh, gw = grid_shape(h, w, cell)
    if levels.shape != (3, gh, gw):
        raise ValueError(f"expected levels of shape (3, {gh}, {gw}), got {levels.shape}")
    current = _cell_means_ycc(img_float01_hwc, cell)
    shift = np.einsum("ij,jhw->ihw", np.linalg.inv(YCC), levels * step - current) / 255.0
    row_lo, row_hi, row_f = _interpolation(h, cell, gh)
    col_lo, col_hi, col_f = _interpolation(w, cell, gw)
    shift = np.ascontiguousarray(shift.transpose(1, 2, 0))  # gh x gw x 3, as the image
    col_f = col_f[:, None]
    out = np.empty((h, w, 3), dtype=np.float32)
    for rows in _bands(img_float01_hwc):
        f = row_f[rows][:, None, None]
        band = shift[row_lo[rows]] * (1 - f) + shift[row_hi[rows]] * f
        field = band[:, col_lo] * (1 - col_f) + band[:, col_hi] * col_f
        out[rows] = np.clip(img_float01_hwc[rows] + field, 0.0, 1.0)
    return out


def side_info(
    image: np.ndarray, cfg: ModelConfig, colour_fix: bool, colour_grid: bool
) -> tuple[tuple[int, ...] | None, ColourGrid | None]:
    """The colour statistics and the coded colour grid a file carries (None: not sent):
    the grid with the model's cell and step, or DEFAULT_GRID's for a model without one."""
    colour = source_stats(image) if colour_fix else None
    if not colour_grid:
        return colour, None
    cell, step = (cfg.colour_grid, cfg.colour_grid_step) if cfg.colour_grid else DEFAULT_GRID
    return colour, ColourGrid(cell, step, encode_grid(grid_levels(image, cell, step), step))
