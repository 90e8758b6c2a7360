"""The texture statistics' bytes: predicted band-power levels, range-coded (docs/format.md,
"Texture statistics").

A version 5 file carries, per square block of the source, the luma power of its two finest
octave bands as integer levels (``codec/texture.py`` measures them; the decoder's texture
synthesis reads them). Neighbouring blocks are alike, so each level is predicted from the
levels already coded and only the residual is sent, range-coded under adaptive counts:
the model is integers throughout, so both sides build the same tables on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .coder import CodingError, StreamDecoder, StreamEncoder
from .container import AeicFile, FormatError
from .tables import TOTAL

BLOCKS = (32, 64, 96, 128)  # block sizes in pixels, coded as their index (2 bits)
STEPS_DB = (1, 2, 3, 4)  # level steps in dB, coded as their index (2 bits)
LEVEL_DB = (-13, 40)  # band power range in dB (0.05 to 10^4 on the 0-255 luma scale)
RESIDUAL = 12  # residuals are coded in -RESIDUAL..RESIDUAL (the encoder clamps)
SYMBOLS = 2 * RESIDUAL + 1
PRIOR = (6, 4)  # prior spread of the residuals in dB: band 1, band 2 (see _Counts)
INCREMENT = 32  # what each coded symbol adds to its count (the prior sums to about 256)
START_DB = (6, -8)  # first prediction of band 1, and of band 2 minus band 1, in dB


@dataclass(frozen=True)
class TextureLevels:
    """Band-power levels per block: ``levels[k, i, j]`` is round(dB / step) of band k
    (k = 0: 1/8 to 1/4 cycles per pixel, k = 1: 1/4 to 1/2) of block row i, column j."""

    block: int
    step_db: int
    levels: np.ndarray  # (2, rows, cols) integers

    def __post_init__(self) -> None:
        if self.block not in BLOCKS or self.step_db not in STEPS_DB:
            raise ValueError(f"block must be one of {BLOCKS}, step one of {STEPS_DB} dB")
        lo, hi = level_range(self.step_db)
        lv = self.levels
        if lv.ndim != 3 or lv.shape[0] != 2 or lv.min(initial=lo) < lo or lv.max(initial=hi) > hi:
            raise ValueError(f"levels must be (2, rows, cols) within {lo}..{hi}")

    def db(self) -> np.ndarray:
        """Band power in dB, (2, rows, cols)."""
        return self.levels.astype(np.float64) * self.step_db


def block_grid(height: int, width: int, block: int) -> tuple[int, int]:
    """Rows and columns of blocks (partial blocks at the right and bottom count)."""
    return -(-height // block), -(-width // block)


def level_range(step_db: int) -> tuple[int, int]:
    """The least and greatest level at this step: LEVEL_DB divided by it, inward."""
    return -(-LEVEL_DB[0] // step_db), LEVEL_DB[1] // step_db


def _round_div(a: int, b: int) -> int:
    """a / b (b > 0) rounded half away from zero, in integers."""
    q, r = divmod(abs(a), b)
    q += 2 * r >= b
    return q if a >= 0 else -q


class _Counts:
    """Adaptive counts of one context's residuals, and the frequency table they give.

    The prior is 256 >> (|r| * step / spread) rounded down, at least 1: a two-sided
    geometric law halving every ``spread`` dB of residual.
    """

    def __init__(self, spread_db: int, step_db: int) -> None:
        r = np.abs(np.arange(-RESIDUAL, RESIDUAL + 1, dtype=np.int64))
        self.counts = np.maximum(256 >> np.minimum(r * step_db // spread_db, 9), 1)

    def table(self) -> np.ndarray:
        """Frequencies summing to 2^16, each at least 1, proportional to the counts: each
        bin gets 1 + floor(count * (2^16 - n) / total), and the remainder goes one by one
        to the bins of the largest remainders of that division (ties: the lower bin)."""
        share = self.counts * (TOTAL - SYMBOLS)
        total = int(self.counts.sum())
        freqs = share // total + 1
        rest = TOTAL - int(freqs.sum())
        order = np.argsort(-(share % total), kind="stable")
        freqs[order[:rest]] += 1
        return freqs

    def add(self, symbol: int) -> None:
        self.counts[symbol] += INCREMENT


def _predict(band1: np.ndarray, diff: np.ndarray, i: int, j: int, step: int) -> tuple[int, int]:
    """Predictions of band 1 and of band 2 minus band 1 at block (i, j), from the blocks
    before it in raster order: LOCO-I's median predictor for band 1, the rounded mean of
    the left and upper differences for band 2."""
    if i == 0 and j == 0:
        p1 = _round_div(START_DB[0], step)
    elif i == 0:
        p1 = int(band1[i, j - 1])
    elif j == 0:
        p1 = int(band1[i - 1, j])
    else:
        a, b, c = int(band1[i, j - 1]), int(band1[i - 1, j]), int(band1[i - 1, j - 1])
        p1 = sorted((a, b, a + b - c))[1]
    seen = ([int(diff[i, j - 1])] if j else []) + ([int(diff[i - 1, j])] if i else [])
    pd = _round_div(sum(seen), len(seen)) if seen else _round_div(START_DB[1], step)
    return p1, pd


def encode_texture(t: TextureLevels) -> tuple[bytes, TextureLevels]:
    """The stream for ``t``, and the levels a decoder will read from it (a residual beyond
    the coded range is clamped, so those can differ from ``t``'s where levels jump)."""
    _, rows, cols = t.levels.shape
    lo, hi = level_range(t.step_db)
    out = np.zeros((2, rows, cols), np.int64)
    diff = np.zeros((rows, cols), np.int64)
    counts = [_Counts(PRIOR[k], t.step_db) for k in (0, 1)]
    coder = StreamEncoder()
    for i in range(rows):
        for j in range(cols):
            p1, pd = _predict(out[0], diff, i, j, t.step_db)
            for k in (0, 1):
                predicted = p1 if k == 0 else int(out[0, i, j]) + pd
                value = int(np.clip(t.levels[k, i, j], predicted - RESIDUAL, predicted + RESIDUAL))
                value = min(max(value, lo), hi)
                symbol = value - predicted + RESIDUAL
                coder.encode_symbol(symbol, counts[k].table())
                counts[k].add(symbol)
                out[k, i, j] = value
            diff[i, j] = out[1, i, j] - out[0, i, j]
    head = bytes((BLOCKS.index(t.block) | STEPS_DB.index(t.step_db) << 2,))
    return head + coder.finish(), TextureLevels(t.block, t.step_db, out.astype(np.int16))


def decode_texture(data: bytes, height: int, width: int) -> TextureLevels:
    """The levels of a texture stream for an image of this size; CodingError if corrupt."""
    if not data:
        raise CodingError("the texture stream is empty")
    if data[0] >> 4:
        raise CodingError(f"reserved bits set in the texture stream (first byte 0x{data[0]:02x})")
    block, step = BLOCKS[data[0] & 3], STEPS_DB[data[0] >> 2 & 3]
    rows, cols = block_grid(height, width, block)
    lo, hi = level_range(step)
    levels = np.zeros((2, rows, cols), np.int64)
    diff = np.zeros((rows, cols), np.int64)
    counts = [_Counts(PRIOR[k], step) for k in (0, 1)]
    coder = StreamDecoder(data[1:])
    for i in range(rows):
        for j in range(cols):
            p1, pd = _predict(levels[0], diff, i, j, step)
            for k in (0, 1):
                predicted = p1 if k == 0 else int(levels[0, i, j]) + pd
                symbol = coder.decode_symbol(counts[k].table())
                counts[k].add(symbol)
                value = predicted + symbol - RESIDUAL
                if not lo <= value <= hi:
                    raise CodingError("the texture stream decodes to a level out of range")
                levels[k, i, j] = value
            diff[i, j] = levels[1, i, j] - levels[0, i, j]
    return TextureLevels(block, step, levels.astype(np.int16))


def read_texture(f: AeicFile) -> TextureLevels | None:
    """The texture levels a version 5 file carries (None for older files); FormatError if
    the stream is corrupt."""
    if f.texture is None:
        return None
    try:
        return decode_texture(f.texture, f.height, f.width)
    except CodingError as exc:
        raise FormatError(f"corrupt file: {exc}") from exc
