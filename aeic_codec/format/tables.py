"""Integer frequency tables: the only form in which the coder sees probabilities.

Tables are built once (when weights are made or imported) from the float models and
stored in the weight bundle. Encoder and decoder both read the stored integers, so
the arithmetic coder never depends on floating-point evaluation of a CDF. Every bin
has a frequency of at least 1 out of 2**16; the last bin of each table is the escape
bin for values outside the table's range. No torch here: only numpy.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

PRECISION = 16
TOTAL = 1 << PRECISION
MAX_BINS = 1 << 14


def quantize_pmf(pmf: np.ndarray) -> np.ndarray:
    """Turn probabilities (escape bin last) into integer frequencies summing to 2**16.

    Every bin gets 1, the rest is shared in proportion to the probabilities, and the
    remainder after flooring goes to the largest fractional parts (ties to the lower
    index) so that the result is a pure function of the input.
    """
    pmf = np.asarray(pmf, dtype=np.float64)
    n = pmf.size
    if n < 2 or n > MAX_BINS:
        raise ValueError(f"a table needs 2..{MAX_BINS} bins, got {n}")
    pmf = np.clip(np.nan_to_num(pmf, nan=0.0), 0.0, None)
    total = pmf.sum()
    pmf = pmf / total if total > 0 else np.full(n, 1.0 / n)
    share = pmf * (TOTAL - n)
    freqs = np.floor(share).astype(np.int64) + 1
    rest = TOTAL - int(freqs.sum())
    if rest:
        order = np.argsort(-(share - np.floor(share)), kind="stable")
        freqs[order[:rest]] += 1
    return freqs


@dataclass(frozen=True)
class FreqTables:
    """A set of tables: ``freqs`` concatenated, ``starts[i]:starts[i+1]`` is table i.

    ``lows[i]`` is the symbol value of bin 0 of table i; its last bin is the escape.
    """

    freqs: np.ndarray  # uint16 (each frequency is at most 2**16 - 1 since n >= 2)
    starts: np.ndarray  # int64, len T + 1
    lows: np.ndarray  # int64, len T

    @classmethod
    def from_pmfs(cls, pmfs: list[np.ndarray], lows: list[int]) -> FreqTables:
        quantized = [quantize_pmf(p) for p in pmfs]
        starts = np.zeros(len(quantized) + 1, dtype=np.int64)
        starts[1:] = np.cumsum([q.size for q in quantized])
        freqs = np.concatenate(quantized).astype(np.uint16)
        return cls(freqs, starts, np.asarray(lows, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.lows)

    def table(self, i: int) -> np.ndarray:
        return self.freqs[self.starts[i] : self.starts[i + 1]]

    def to_text(self) -> str:
        """Compact text for bundle metadata: base64 of little-endian arrays."""
        parts = (
            self.freqs.astype("<u2").tobytes(),
            np.diff(self.starts).astype("<u2").tobytes(),
            self.lows.astype("<i4").tobytes(),
        )
        return ".".join(base64.b64encode(p).decode("ascii") for p in parts)

    @classmethod
    def from_text(cls, text: str) -> FreqTables:
        try:
            raw = [base64.b64decode(p, validate=True) for p in text.split(".")]
            freqs = np.frombuffer(raw[0], dtype="<u2").astype(np.uint16)
            sizes = np.frombuffer(raw[1], dtype="<u2").astype(np.int64)
            lows = np.frombuffer(raw[2], dtype="<i4").astype(np.int64)
        except (ValueError, IndexError) as exc:
            raise ValueError("malformed frequency tables") from exc
        starts = np.zeros(sizes.size + 1, dtype=np.int64)
        starts[1:] = np.cumsum(sizes)
        tables = cls(freqs, starts, lows)
        tables.validate()
        return tables

    def validate(self) -> None:
        """Refuse tables the coder could not use (wrong sums, sizes, counts)."""
        if len(self.starts) != len(self.lows) + 1 or self.starts[-1] != self.freqs.size:
            raise ValueError("frequency tables: sizes do not match")
        for i in range(len(self)):
            t = self.table(i)
            if t.size < 2 or int(t.astype(np.int64).sum()) != TOTAL or (t == 0).any():
                raise ValueError(f"frequency table {i} is not a valid 16-bit distribution")
