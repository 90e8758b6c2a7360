"""Image quality figures for training, benchmarks and tests: PSNR, MS-SSIM, band spectra.

numpy only at import. ``ms_ssim`` takes numpy arrays or torch tensors and computes in
the namespace of what it is given, so training backpropagates through the same function
that benchmarks call on decoded pictures, and torch is never imported here.
"""

from __future__ import annotations

import math
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np

from .colour import YCC

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Octave bands of spatial frequency, in cycles per pixel, from the coarsest detail a
# 64 px cell holds to the finest a pixel grid holds.
SPECTRUM_BANDS = tuple((2.0**-k, 2.0 ** (1 - k)) for k in (6, 5, 4, 3, 2))


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two 8-bit images of one shape (peak 255); equal images give 148 dB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def _namespace(x: Any) -> ModuleType:
    """numpy for arrays, torch for tensors (already imported by whoever made them)."""
    if isinstance(x, np.ndarray):
        return np
    import torch

    return torch


def _like(x: Any) -> dict[str, Any]:
    """Keyword arguments that make a new array of x's dtype (and device, for tensors)."""
    if isinstance(x, np.ndarray):
        return {"dtype": x.dtype}
    return {"dtype": x.dtype, "device": x.device}


def _gaussian_kernel(size: int, sigma: float, like: Any) -> Any:
    xp = _namespace(like)
    x = xp.arange(size, **_like(like)) - (size - 1) / 2
    k = xp.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _band(size: int, k: Any) -> Any:
    """(size, size - len(k) + 1) matrix whose columns are k shifted down by one row each."""
    xp = _namespace(k)
    n = k.shape[0]
    out = xp.zeros((size, size - n + 1), **_like(k))
    cols = xp.arange(size - n + 1) if xp is np else xp.arange(size - n + 1, device=k.device)
    for j in range(n):
        out[cols + j, cols] = k[j]
    return out


def _blur_slices(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The 'valid' separable filter by k along the last two axes, as sums of shifted slices."""
    n = k.shape[0]
    h, w = x.shape[-2] - n + 1, x.shape[-1] - n + 1
    cols = sum(k[j] * x[..., j : j + w] for j in range(n))
    return sum(k[j] * cols[..., j : j + h, :] for j in range(n))


def _halve(x: Any) -> Any:
    """2x2 box average (odd sizes drop their last row or column), as avg_pool2d adds."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    top, bottom = x[..., 0::2, :], x[..., 1::2, :]
    return (((top[..., 0::2] + top[..., 1::2]) + bottom[..., 0::2]) + bottom[..., 1::2]) / 4


def _ssim_terms(a: Any, b: Any, k: Any) -> tuple[Any, Any]:
    """(SSIM, contrast-structure) per image and channel, for data range 1.

    The separable Gaussian filter ('valid' borders, as in the SSIM paper) runs, on torch
    tensors, as two products with banded matrices built once per scale: several times
    faster on the CPU than a depthwise convolution over three channels, forward and
    backward. On numpy arrays (benchmarks, nothing to differentiate) it runs as sums of
    shifted slices: about a hundred times fewer operations than the dense products.
    """
    if isinstance(a, np.ndarray):
        blur = partial(_blur_slices, k=k)
    else:
        rows, cols = _band(a.shape[-2], k).T, _band(a.shape[-1], k)

        def blur(x: Any) -> Any:
            return rows @ (x @ cols)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return (luminance * cs).mean((2, 3)), cs.mean((2, 3))


def ms_ssim_scales(side: int, window: int = 11) -> int:
    """How many of the 5 MS-SSIM scales fit: the window must fit the coarsest one.

    A 256 px side gets all 5, a 64 px crop 3, a 128 px crop 4; the weights of the
    scales used are rescaled to the full set's sum, so small crops still get a usable value.
    """
    n = 0
    while n < len(MS_SSIM_WEIGHTS) and side >> n >= window:
        n += 1
    return max(n, 1)


def ms_ssim(a: Any, b: Any, scales: int | None = None) -> Any:
    """MS-SSIM of N x C x H x W images in [0, 1] (Wang et al. 2003), mean over images and channels.

    numpy arrays give a numpy scalar; torch tensors a differentiable 0-d tensor.
    """
    xp = _namespace(a)
    side = min(a.shape[-2:])
    scales = scales or ms_ssim_scales(side)
    window = min(11, side if side % 2 else side - 1)
    k = _gaussian_kernel(window, 1.5, a)
    weights = xp.asarray(MS_SSIM_WEIGHTS[:scales], **_like(a))
    weights = weights * (sum(MS_SSIM_WEIGHTS) / weights.sum())
    factors = []
    for i in range(scales):
        ssim, cs = _ssim_terms(a, b, k)
        if i == scales - 1:
            factors.append(ssim)
        else:
            factors.append(cs)
            a, b = _halve(a), _halve(b)
    # Negative terms (anti-correlated patches) have no real power; 1e-6 keeps gradients finite.
    stacked = xp.stack(factors).clip(1e-6)
    return (stacked ** weights[:, None, None]).prod(0).mean()


def ms_ssim_u8(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two H x W x 3 uint8 images, in float64."""
    pair = [x.astype(np.float64).transpose(2, 0, 1)[None] / 255.0 for x in (a, b)]
    return float(ms_ssim(*pair))


def lattice_cell(x: Any, period: int = 8) -> Any:
    """The mean ``period`` x ``period`` cell of images (..., C, H, W), its mean removed.

    Every position within the cell is averaged over all cells (and over a batch's leading
    axes), so a pattern that repeats every ``period`` pixels (an upsampling decoder's grid)
    adds up while photo content averages out. H and W must be multiples of ``period``.
    """
    ch, h, w = x.shape[-3:]
    cells = x.reshape(-1, ch, h // period, period, w // period, period)
    cell = cells.mean(axis=(0, 2, 4))
    return cell - cell.mean(axis=(1, 2), keepdims=True)


def lattice_rms(decoded: np.ndarray, original: np.ndarray, period: int = 8) -> float:
    """RMS (0..255 scale) of the mean-cell difference of two H x W x 3 images.

    A periodic-artefact figure: about 1 for a faithful decoder on Kodak, several times more
    where a decoder paints its 8-pixel grid over the picture. Borders beyond the last whole
    cell are left out.
    """
    h, w = (decoded.shape[0] // period) * period, (decoded.shape[1] // period) * period
    a, b = (img[:h, :w].astype(np.float64).transpose(2, 0, 1) for img in (decoded, original))
    return float(np.sqrt(np.mean((lattice_cell(a, period) - lattice_cell(b, period)) ** 2)))


def _check_pair(decoded: np.ndarray, original: np.ndarray) -> None:
    """A decoded picture and its original: two H x W x 3 images of one shape."""
    if decoded.shape != original.shape or decoded.ndim != 3 or decoded.shape[2] != 3:
        raise ValueError(
            f"expected two H x W x 3 images of one shape, got {decoded.shape} and {original.shape}"
        )


def _luma(image: np.ndarray) -> np.ndarray:
    """BT.601 luma (the grid's Y) of an H x W x 3 image, float64 on its own scale."""
    return image.astype(np.float64) @ YCC[0]


def _luma_power(image: np.ndarray) -> np.ndarray:
    """|FFT|^2 of the image's luma (0..255 scale), mean removed, under a 2-D Hann window.

    The window keeps the jump between opposite borders (the FFT wraps around) from
    spreading power into every band.
    """
    y = _luma(image)
    y = y - y.mean()
    window = np.outer(np.hanning(y.shape[0]), np.hanning(y.shape[1]))
    return np.abs(np.fft.fft2(y * window)) ** 2


def _hann(n: int, like: Any) -> Any:
    w = np.hanning(n)
    if isinstance(like, np.ndarray):
        return w.astype(like.dtype)
    import torch

    return torch.as_tensor(w, dtype=like.dtype, device=like.device)


def oriented_band_power(y: Any, window: int = 0, sectors: int = 1, bands: int = 3) -> Any:
    """Luma power per band and orientation sector, over the whole picture or per window.

    ``y`` is luma (..., H, W), numpy or torch (the result is of the same kind, so the
    training loss and the benchmark figure share this). Each picture, or each ``window``
    x ``window`` window of it (half overlapping), has its mean removed and a Hann window
    applied; the result (..., [rows, cols,] bands * sectors) is the mean |FFT|^2 / area over
    the frequencies of the finest ``bands`` bands of SPECTRUM_BANDS (ends included), each
    band split into ``sectors`` equal sectors of orientation (sector 0 centred on
    horizontal frequencies, that is vertical structure; a frequency on a sector's edge
    counts in both).
    """
    if window:
        step = window // 2
        if isinstance(y, np.ndarray):
            view = np.lib.stride_tricks.sliding_window_view(y, (window, window), axis=(-2, -1))
            y = view[..., ::step, ::step, :, :]
        else:
            y = y.unfold(-2, window, step).unfold(-2, window, step)
    h, w = y.shape[-2:]
    xp = _namespace(y)
    t = (y - y.mean(axis=(-2, -1), keepdims=True)) * (_hann(h, y)[:, None] * _hann(w, y)[None, :])
    power = xp.abs(xp.fft.rfft2(t)) ** 2 / (h * w)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    radius, angle = np.hypot(fy, fx), np.remainder(np.arctan2(fy, fx), math.pi)
    out = []
    for low, high in SPECTRUM_BANDS[-bands:]:
        for k in range(sectors):
            offset = np.remainder(angle - k * math.pi / sectors + math.pi / 2, math.pi)
            cell = (radius >= low) & (radius <= high)
            cell &= np.abs(offset - math.pi / 2) <= math.pi / (2 * sectors)
            if xp is not np:
                cell = xp.as_tensor(cell, device=y.device)
            out.append(power[..., cell].mean(-1))
    return xp.stack(out, -1)


def one_level_power(window: int) -> float:
    """The power oriented_band_power gives white noise of one 8-bit level rms (0..255
    scale) in ``window`` x ``window`` windows: weaker detail is not told from noise."""
    return float((np.hanning(window) ** 2).mean() ** 2)


def orientation_error(decoded: np.ndarray, original: np.ndarray, window: int = 32) -> float:
    """How far detail runs in other directions than the photo's, per local window.

    In each ``window`` x ``window`` window and each of the two finest bands where the
    original has detail (power above one_level_power), the log power of the four 45-degree
    orientation sectors less their mean (the direction of the detail, not its strength),
    decoded against original: the mean absolute difference. About 0.2 for TAEF2's own round
    trip of a Kodak photo; detail in no particular direction (strokes) and hardly any
    detail (blur) both score near the spread of the photo's own shares, about 0.7.
    Both images H x W x 3 of one shape; NaN where no window fits or none has detail.
    """
    _check_pair(decoded, original)
    if min(decoded.shape[:2]) < window:
        return math.nan
    p_dec, p_orig = (
        oriented_band_power(_luma(img), window, 4, 2).reshape(-1, 2, 4)
        for img in (decoded, original)
    )
    floor = one_level_power(window)
    shares = [np.log(p + floor) for p in (p_dec, p_orig)]
    shares = [s - s.mean(-1, keepdims=True) for s in shares]
    textured = p_orig.mean(-1) > floor
    if not textured.any():
        return math.nan
    return float(np.abs(shares[0] - shares[1]).mean(-1)[textured].mean())


def band_power_db(decoded: np.ndarray, original: np.ndarray) -> list[float]:
    """10 log10(luma power of decoded / of original) per band of SPECTRUM_BANDS, in dB.

    Radially averaged: each band pools the frequencies whose radius (cycles per pixel)
    lies in [low, high), the last band including 1/2. 0 dB keeps the original's energy
    at that scale; a blurry decoder falls below 0 in the fine bands, a noisy one rises
    above. A band the image is too small to hold, or where the original has no power,
    gives NaN; a decoded image with none there, -inf. Both images are H x W x 3 of one
    shape, on the 0..255 scale.
    """
    _check_pair(decoded, original)
    fy = np.fft.fftfreq(decoded.shape[0])[:, None]
    fx = np.fft.fftfreq(decoded.shape[1])[None, :]
    radius = np.hypot(fy, fx)
    power_dec, power_orig = _luma_power(decoded), _luma_power(original)
    out = []
    for i, (low, high) in enumerate(SPECTRUM_BANDS):
        last = i == len(SPECTRUM_BANDS) - 1
        band = (radius >= low) & ((radius <= high) if last else (radius < high))
        dec, orig = power_dec[band].sum(), power_orig[band].sum()
        if not band.any() or orig == 0:
            out.append(math.nan)
        else:
            out.append(10 * math.log10(dec / orig) if dec > 0 else -math.inf)
    return out


# Issue 29's local figures of texture: where the decoded picture has fine detail, and of
# what kind, against the original (docs/architecture.md section 12).
LOCAL_BLOCK = 32
LOCAL_FLOOR = 0.05  # added to both block powers (luma on 0-255): flat blocks stay finite
LOCAL_CLIP_DB = 20.0


def local_band_error(decoded: np.ndarray, original: np.ndarray) -> float:
    """Mean |dB| between decoded and original luma power per 32 px block in the two finest
    octave bands (1/8-1/4 and 1/4-1/2 cycles per pixel, band-passed over the whole
    picture), each dB clipped to +-20. 0: texture exactly where the photo has it, and none
    where it is smooth; a blurry decode scores about 15 at 0.035 bpp."""
    from .texture import fine_bands

    _check_pair(decoded, original)
    errors = []
    for d, o in zip(fine_bands(_luma(decoded)), fine_bands(_luma(original)), strict=True):
        pd, po = _block_power(d) + LOCAL_FLOOR, _block_power(o) + LOCAL_FLOOR
        errors.append(np.clip(10 * np.log10(pd / po), -LOCAL_CLIP_DB, LOCAL_CLIP_DB))
    return float(np.mean(np.abs(np.stack(errors))))


def _block_power(x: np.ndarray, block: int = LOCAL_BLOCK) -> np.ndarray:
    """Mean of x^2 per whole block (partial blocks at the borders left out)."""
    h, w = x.shape[0] // block * block, x.shape[1] // block * block
    return (x[:h, :w] ** 2).reshape(h // block, block, w // block, block).mean(axis=(1, 3))


def coherence_excess(decoded: np.ndarray, original: np.ndarray) -> float:
    """How much more oriented the decoded fine detail is than the original's: the
    structure-tensor coherence (l1 - l2) / (l1 + l2) of the luma high-passed above 1/8
    cycles per pixel (Sobel gradients, tensor smoothed by a Gaussian of sigma 6 px),
    decoded minus original, averaged where the decoded tensor's trace is above its 25th
    percentile. Blur leaves only edges (positive); isotropic noise where the photo has
    oriented texture is strongly negative."""
    _check_pair(decoded, original)
    cd, trace = _coherence(_luma(decoded))
    co, _ = _coherence(_luma(original))
    keep = trace > np.percentile(trace, 25)
    return float((cd - co)[keep].mean())


def _coherence(y: np.ndarray, sigma: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Coherence and trace of the structure tensor of y's detail above 1/8 cycles/px."""
    from .texture import band_mask

    h, w = y.shape
    detail = np.fft.irfft2(np.fft.rfft2(y) * band_mask(h, w, 1 / 8, 1.0, real=True), s=(h, w))
    gx, gy = _sobel(detail)
    jxx, jyy, jxy = (_gaussian(v, sigma) for v in (gx * gx, gy * gy, gx * gy))
    trace = jxx + jyy
    return np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / np.maximum(trace, 1e-12), trace


def _sobel(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal and vertical Sobel derivatives, edges mirrored (d c b a | a b c d)."""
    p = np.pad(y, 1, mode="symmetric")
    smooth_rows = p[:-2] + 2 * p[1:-1] + p[2:]  # [1 2 1] down the columns
    smooth_cols = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
    return smooth_rows[:, 2:] - smooth_rows[:, :-2], smooth_cols[2:] - smooth_cols[:-2]


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (radius 4 sigma, edges mirrored), separable, by FFTs of the padded rows
    and columns: exact linear convolution inside, as the pad covers the kernel."""
    r = int(4 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        n = x.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = np.pad(x, pad, mode="symmetric")
        size = n + 4 * r
        kernel = np.fft.rfft(taps, size)
        spectrum = np.fft.rfft(padded, size, axis=axis)
        shape = [1, 1]
        shape[axis] = -1
        full = np.fft.irfft(spectrum * kernel.reshape(shape), size, axis=axis)
        x = np.take(full, np.arange(2 * r, 2 * r + n), axis=axis)
    return x
