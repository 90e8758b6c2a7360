"""Range coding: round trips with escapes, and the tail trimming against a decoding search."""

from __future__ import annotations

import numpy as np
import pytest

from aeic_codec.format import coder
from aeic_codec.format.coder import StreamDecoder, StreamEncoder
from aeic_codec.format.tables import FreqTables


@pytest.fixture(scope="module")
def tables() -> FreqTables:
    pmfs, lows = [], []
    for width in (1, 2, 4, 9, 30):
        k = np.arange(-width, width + 1)
        p = np.append(np.exp(-0.5 * (k / max(width / 3, 0.4)) ** 2), 1e-4)
        pmfs.append(p / p.sum())
        lows.append(-width)
    return FreqTables.from_pmfs(pmfs, lows)


def _calls(rng: np.random.Generator, tables: FreqTables) -> list[tuple[np.ndarray, np.ndarray]]:
    calls = []
    for _ in range(int(rng.integers(1, 3))):
        n = int(rng.integers(1, 150))
        ids = rng.integers(0, len(tables.lows), n)
        values = np.round(rng.normal(0, rng.choice([0.5, 3, 40]), n)).astype(np.int64)
        if rng.random() < 0.3:
            values[rng.integers(0, n)] = int(rng.integers(-70000, 70000))  # escaped
        calls.append((values, ids))
    return calls


def _decodes(data: bytes, calls, tables: FreqTables) -> bool:
    try:
        dec = StreamDecoder(data)
        return all(np.array_equal(dec.decode(ids, tables), values) for values, ids in calls)
    except coder.CodingError:
        return False


def _searched(data: bytes, calls, tables: FreqTables) -> bytes:
    """The documented trimming, each candidate checked by decoding it."""
    best = data
    for cut in range(1, min(8, len(data)) + 1):
        head = data[: len(data) - cut]
        value = int.from_bytes(head, "big") + 1
        plus = value.to_bytes(len(head), "big") if head and value < 256 ** len(head) else None
        tries = [c for c in (head, plus) if c is not None]
        found = next((c for c in tries if _decodes(c, calls, tables)), None)
        if found is None:
            break
        best = found.rstrip(b"\0")
    return best


def _encode(calls, tables: FreqTables) -> tuple[StreamEncoder, bytes]:
    enc = StreamEncoder()
    for values, ids in calls:
        enc.encode(values, ids, tables)
    return enc, enc.finish()


def test_trimmed_streams_are_what_a_decoding_search_finds(tables):
    rng = np.random.default_rng(11)
    trimmed = 0
    for _ in range(300):
        calls = _calls(rng, tables)
        enc, data = _encode(calls, tables)
        assert _decodes(data, calls, tables)
        full = enc._coder.get_compressed().astype(">u4").tobytes().rstrip(b"\0")
        assert data == _searched(full, calls, tables)
        trimmed += len(data) < len(full)
    assert trimmed > 100  # the trimming is not vacuous


def test_empty_stream(tables):
    enc = StreamEncoder()
    enc.encode(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), tables)
    assert enc.finish() == b""


def test_symbols_group_by_table_in_order_of_position() -> None:
    rng = np.random.default_rng(5)
    for n, top in ((1, 1), (500, 64), (3000, 300), (200, 5)):
        ids = rng.integers(0, top, n) * (1 + (top == 5) * 20)  # sparse ids too
        groups = coder._groups(ids)
        assert [t for t, _ in groups] == sorted(set(ids.tolist()))
        for t, positions in groups:
            assert positions.tolist() == np.flatnonzero(ids == t).tolist()
    assert coder._groups(np.array([], dtype=np.int64)) == []
    with pytest.raises(ValueError, match="2\\*\\*16"):
        coder._groups(np.array([3, 1 << 16]))
