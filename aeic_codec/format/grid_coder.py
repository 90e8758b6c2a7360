"""The colour grid's bytes: Rice codes of predicted levels (docs/format.md, "Colour grid").

Beside the container: the .aeic file carries these bytes, and decoding them is part of
checking a file (``api.read_grid``), before any picture is made. numpy only.
"""

from __future__ import annotations

import numpy as np

from .container import AeicFile, FormatError

RICE_LIMIT = 16  # a unary prefix of this many ones is followed by the value in 9 bits
_RAW_BITS = 9


class GridError(ValueError):
    """The bytes of a colour grid do not decode (corrupt file)."""


def grid_shape(height: int, width: int, cell: int) -> tuple[int, int]:
    """Rows and columns of cells; the last row and column may be partial."""
    return -(-height // cell), -(-width // cell)


def _residuals(levels: np.ndarray, mid: int) -> np.ndarray:
    """Prediction residuals of one channel (raster order, JPEG-LS's median predictor)."""
    a = np.empty_like(levels)  # the left neighbour, or above on the first column
    a[:, 1:], a[1:, 0], a[0, 0] = levels[:, :-1], levels[:-1, 0], mid
    b, c = levels[:-1, 1:], levels[:-1, :-1]  # above and upper left, from the second row
    left = levels[1:, :-1]
    median = np.where(
        c >= np.maximum(left, b),
        np.minimum(left, b),
        np.where(c <= np.minimum(left, b), np.maximum(left, b), left + b - c),
    )
    a[1:, 1:] = median
    return levels - a


def _predict(levels: np.ndarray, y: int, x: int, mid: int) -> int:
    if y == 0 and x == 0:
        return mid
    if y == 0:
        return int(levels[y, x - 1])
    if x == 0:
        return int(levels[y - 1, x])
    a, b, c = int(levels[y, x - 1]), int(levels[y - 1, x]), int(levels[y - 1, x - 1])
    if c >= max(a, b):
        return min(a, b)
    if c <= min(a, b):
        return max(a, b)
    return a + b - c


def _rice_bits(u: np.ndarray, k: int) -> int:
    q = u >> k
    return int(np.where(q < RICE_LIMIT, q + 1 + k, RICE_LIMIT + _RAW_BITS).sum())


def encode_grid(levels: np.ndarray, step: int) -> bytes:
    """Levels -> bytes: per channel a 3-bit Rice parameter, then Rice codes of the residuals.

    Bits are packed most significant first; the last byte is padded with zeros.
    """
    codes: list[str] = []
    mid = 128 // step
    for channel in levels:
        r = _residuals(channel.astype(np.int64), mid).ravel()
        u = np.where(r >= 0, 2 * r, -2 * r - 1)
        k = min(range(8), key=lambda k: _rice_bits(u, k))
        codes.append(format(k, "03b"))
        for value in u.tolist():
            q = value >> k
            if q < RICE_LIMIT:  # q ones, a zero, then the k low bits
                low = format(value & ((1 << k) - 1), f"0{k}b") if k else ""
                codes.append("1" * q + "0" + low)
            else:
                codes.append("1" * RICE_LIMIT + format(value, f"0{_RAW_BITS}b"))
    bits = "".join(codes)
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


def decode_grid(data: bytes, height: int, width: int, cell: int, step: int) -> np.ndarray:
    """Bytes -> levels (3 x gh x gw); GridError for anything encode_grid cannot have written."""
    gh, gw = grid_shape(height, width, cell)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).tolist()
    pos = 0

    def take(count: int) -> int:
        nonlocal pos
        if pos + count > len(bits):
            raise GridError("colour grid ends early")
        value = 0
        for b in bits[pos : pos + count]:
            value = value << 1 | b
        pos += count
        return value

    mid, top = 128 // step, 255 // step
    levels = np.zeros((3, gh, gw), dtype=np.int64)
    for channel in levels:
        k = take(3)
        for y in range(gh):
            for x in range(gw):
                q = 0
                while q < RICE_LIMIT and take(1):
                    q += 1
                value = take(_RAW_BITS) if q == RICE_LIMIT else q << k | take(k)
                r = value // 2 if value % 2 == 0 else -(value + 1) // 2
                level = _predict(channel, y, x, mid) + r
                if not 0 <= level <= top:
                    raise GridError(f"colour grid level {level} outside 0..{top}")
                channel[y, x] = level
    if len(bits) - pos >= 8 or any(bits[pos:]):
        raise GridError("colour grid has bytes or bits after its last level")
    return levels


def read_grid(f: AeicFile) -> np.ndarray | None:
    """The colour grid's levels (3 x rows x columns), None without a grid; no torch needed."""
    if f.grid is None:
        return None
    try:
        return decode_grid(f.grid.data, f.height, f.width, f.grid.cell, f.grid.step)
    except GridError as exc:
        raise FormatError(f"corrupt file: {exc}") from exc
