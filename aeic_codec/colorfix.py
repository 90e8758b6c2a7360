"""Colour fix for large images (ARCHITECTURE.md section 6), numpy only.

Tiled decoding of a large image can drift in global colour. The encoder sends the
source's per-channel mean and standard deviation as six 16-bit numbers, and the
decoder moves its output's mean and std onto them. numpy only, so that ``aeic info``
and container code can read and show the numbers without torch.
"""

from __future__ import annotations

import numpy as np

STD_EPS = 1e-5  # added to the variance, as the reference does
LEVELS = 65535  # 16-bit quantisation of each transmitted number


def _mean_std(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and sqrt(unbiased variance + 1e-5) of an H x W x 3 float image.

    A one-pixel image has no unbiased variance; it counts as zero there.
    """
    pixels = img.reshape(-1, img.shape[-1]).astype(np.float64)
    mean = pixels.mean(axis=0)
    dof = max(pixels.shape[0] - 1, 1)
    var = ((pixels - mean) ** 2).sum(axis=0) / dof
    return mean, np.sqrt(var + STD_EPS)


def source_stats(img_uint8_hwc: np.ndarray) -> tuple[int, ...]:
    """Six uint16 values: mean R, G, B then std R, G, B of the image in [0, 1]."""
    if img_uint8_hwc.ndim != 3 or img_uint8_hwc.shape[-1] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {img_uint8_hwc.shape}")
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
    out = (img_float01_hwc.astype(np.float64) - mean) / std * target[3:] + target[:3]
    return np.clip(out, 0.0, 1.0).astype(np.float32)
