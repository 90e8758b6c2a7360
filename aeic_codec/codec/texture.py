"""Texture statistics: what the encoder measures of the source's fine detail.

At the rates aeic codes, the latents keep shapes and colours but little of the two finest
octaves of the picture, so the fidelity decoder's output is smooth where the photograph
had grain, foliage or hair. The encoder therefore also sends, per square block, the luma
power of the source in those two octave bands (1/8 to 1/4 and 1/4 to 1/2 cycles per
pixel) as levels of a few dB: a few dozen bytes that tell the decoder where the photograph
had texture and how much (``texture_synthesis.py`` adds it). Measuring them costs one FFT
of the luma; the encoder stays shallow. The stream's bytes are ``format/texture_coder.py``.
"""

from __future__ import annotations

import hashlib

import numpy as np

from aeic_codec.format.texture_coder import LEVEL_DB, TextureLevels, encode_texture, level_range

LUMA = np.array([0.299, 0.587, 0.114])  # BT.601, on the 0-255 scale
FINE_BANDS = ((1 / 8, 1 / 4), (1 / 4, 1 / 2))  # cycles per pixel; the last includes 1/2
BASE_BLOCK = 32  # band powers are measured per 32 px block, then pooled to the sent blocks
# What the encoder tries, finest first: (block, step dB); the first whose stream fits the
# budget is sent (texture_budget), else the last. 64 px at 4 dB sits between 64 px at 3 dB
# and 96 px: on Kodak at lambda 12 it costs 14 % fewer bytes than 3 dB and 0.06 dB more
# local band error, where 96 px costs 46 % fewer and 0.6 dB more.
CHOICES = ((64, 3), (64, 4), (96, 3), (128, 2), (128, 4))
BUDGET_SHARE = 0.04  # of the whole file ...
BUDGET_MIN = 24  # ... but never fewer bytes than this


def luma(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of an H x W x 3 image, float32 on the 0-255 scale (numpy's FFTs keep
    float32, at half float64's time: the encoder's share of this must stay small)."""
    return image.astype(np.float32) @ LUMA.astype(np.float32)


def band_mask(height: int, width: int, low: float, high: float, real: bool = False) -> np.ndarray:
    """The octave band [low, high) of frequency radius (cycles per pixel) on the FFT grid
    (the rfft grid when ``real``); a band ending at 1/2 includes 1/2."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = (np.fft.rfftfreq(width) if real else np.fft.fftfreq(width))[None, :]
    r = np.hypot(fy, fx)
    return (r >= low) & ((r <= high) if high >= 0.5 else (r < high))


def fine_bands(y: np.ndarray) -> list[np.ndarray]:
    """The luma image band-passed to each of FINE_BANDS, over the whole picture."""
    h, w = y.shape
    spectrum = np.fft.rfft2(y - y.mean())
    return [
        np.fft.irfft2(spectrum * band_mask(h, w, lo, hi, real=True), s=(h, w))
        for lo, hi in FINE_BANDS
    ]


class Bands:
    """Octave bands of pictures of one size (the two finest by default): one float32 rFFT
    and its masks, in torch's threaded FFT (numpy's took 0.68 s a megapixel at 12
    megapixels). The encoder's statistics and the decoder's matching both use it."""

    def __init__(
        self, height: int, width: int, bands: tuple[tuple[float, float], ...] = FINE_BANDS
    ) -> None:
        import torch

        self.shape = (height, width)
        self.masks = [
            torch.from_numpy(band_mask(height, width, lo, hi, real=True).astype(np.float32))
            for lo, hi in bands
        ]

    def __call__(
        self, y: np.ndarray, count: int | None = None, weight: np.ndarray | None = None
    ) -> list[np.ndarray]:
        """The first ``count`` bands (all by default) of ``y`` (H x W), float32; with
        ``weight`` (float32, H x (W // 2 + 1): the rFFT grid) the spectrum is weighted first."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(y, np.float32))
        spectrum = torch.fft.rfft2(t - t.mean())
        if weight is not None:
            spectrum *= torch.from_numpy(weight)
        return [torch.fft.irfft2(spectrum * m, s=self.shape).numpy() for m in self.masks[:count]]


def block_sums(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum of x and count of pixels per block (partial blocks at the borders included)."""
    h, w = x.shape
    rows, cols = -(-h // block), -(-w // block)
    padded = np.zeros((rows * block, cols * block), np.float64)
    count = np.zeros_like(padded)
    padded[:h, :w], count[:h, :w] = x, 1
    shape = (rows, block, cols, block)
    return padded.reshape(shape).sum(axis=(1, 3)), count.reshape(shape).sum(axis=(1, 3))


class SourceTexture:
    """The source's fine-band power per 32 px block, from which every choice is pooled."""

    def __init__(self, image: np.ndarray) -> None:

        # torch's float32 FFTs: a fifth of numpy's float64 time, and the encoder has torch
        # loaded anyway. Block powers agree with ``fine_bands`` (numpy, float64) to 1e-5 dB.
        self.height, self.width = h, w = image.shape[:2]
        self.sums = []
        for band in Bands(h, w)(luma(image)):
            total, self.counts = block_sums(band * band, BASE_BLOCK)
            self.sums.append(total)

    def levels(self, block: int, step_db: int) -> TextureLevels:
        """Mean power per ``block`` px block of each band, as round(dB / step), clipped."""
        k = block // BASE_BLOCK
        rows, cols = -(-self.height // block), -(-self.width // block)
        out = np.zeros((2, rows, cols), np.int16)
        lo, hi = level_range(step_db)
        for b, sums in enumerate(self.sums):
            pad = ((0, rows * k - sums.shape[0]), (0, cols * k - sums.shape[1]))
            s = np.pad(sums, pad).reshape(rows, k, cols, k).sum(axis=(1, 3))
            n = np.pad(self.counts, pad).reshape(rows, k, cols, k).sum(axis=(1, 3))
            db = np.clip(10 * np.log10(np.maximum(s / n, 1e-6)), *LEVEL_DB)
            out[b] = np.clip(np.round(db / step_db), lo, hi)
        return TextureLevels(block, step_db, out)


def texture_budget(rest_bytes: int) -> int:
    """Bytes the texture statistics may take in a file whose other parts take these:
    BUDGET_SHARE of the whole file with them, or BUDGET_MIN."""
    return max(BUDGET_MIN, int(BUDGET_SHARE * rest_bytes / (1 - BUDGET_SHARE)))


def choose_texture(source: SourceTexture, budget: int) -> tuple[bytes, TextureLevels]:
    """The finest of CHOICES whose stream fits ``budget`` bytes (else the coarsest): its
    bytes and the levels a decoder reads from them."""
    for block, step in CHOICES:
        data, levels = encode_texture(source.levels(block, step))
        if len(data) <= budget:
            break
    return data, levels


def texture_digest(latent_digest: bytes, levels: TextureLevels) -> bytes:
    """A version 5 file's entropy digest: SHA-256 over the latents' digest (32 bytes) and
    the texture levels as int16 little-endian, band by band, in raster order."""
    data = np.ascontiguousarray(levels.levels, dtype="<i2").tobytes()
    return hashlib.sha256(latent_digest + data).digest()
