"""Fuzzing the .aeic reader: any input ends in a valid file or FormatError, cheaply.

Mutated files are often resealed with a fresh CRC, so that the checks behind the CRC see
hostile fields too; without that, almost every mutation would stop at the CRC.
"""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aeic_codec.format.container import (
    MAGIC,
    MAX_DIM,
    NUM_STREAMS,
    AeicFile,
    FormatError,
    pack,
    unpack,
)
from aeic_codec.format.container import _varint as leb128

# No example database: it would litter the working tree, and failures print their seed.
FUZZ = settings(max_examples=300, deadline=None, database=None)
# unpack may hold the input and one copy of the streams; anything above that plus a little
# bookkeeping would mean it allocated for a length it had not checked.
SLACK = 64 * 1024

files = st.builds(
    AeicFile,
    width=st.integers(1, MAX_DIM),
    height=st.integers(1, MAX_DIM),
    model_id=st.binary(min_size=4, max_size=4),
    streams=st.tuples(*[st.binary(max_size=150)] * NUM_STREAMS),
    colour=st.none() | st.tuples(*[st.integers(0, 0xFFFF)] * 6),
)


def seal(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "big")


def parse_or_reject(data: bytes, max_pixels: int | None = None) -> AeicFile | None:
    """Run unpack under tracemalloc: it must succeed or raise FormatError, and stay small."""
    tracemalloc.start()
    try:
        f = unpack(data, max_pixels=max_pixels)
    except FormatError as err:
        assert str(err) and "\n" not in str(err)
        f = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= len(data) + SLACK
    if f is not None:
        assert pack(f) == data  # the format is canonical: accepted bytes are exactly pack's
    return f


def flip_bits(data: bytes, draw: Callable) -> bytes:
    out = bytearray(data)
    for bit in draw(st.lists(st.integers(0, 8 * len(data) - 1), min_size=1, max_size=8)):
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def truncate(data: bytes, draw: Callable) -> bytes:
    return data[: draw(st.integers(0, len(data) - 1))]


def insert(data: bytes, draw: Callable) -> bytes:
    pos = draw(st.integers(0, len(data)))
    return data[:pos] + draw(st.binary(min_size=1, max_size=16)) + data[pos:]


def delete(data: bytes, draw: Callable) -> bytes:
    pos = draw(st.integers(0, len(data) - 1))
    return data[:pos] + data[pos + draw(st.integers(1, 16)) :]


MUTATIONS = [flip_bits, truncate, insert, delete]


def header_with_lengths(f: AeicFile, lengths: list[int]) -> bytes:
    """f's header with other stream lengths: claims the payload does not back up."""
    header = f.header_bytes()
    dims = leb128(f.width) + leb128(f.height)
    colour = header[len(header) - 12 :] if f.colour is not None else b""
    return header[:9] + dims + b"".join(map(leb128, lengths)) + colour


@st.composite
def mutated_files(draw: Callable) -> bytes:
    data = pack(draw(files))
    mutate = draw(st.sampled_from(MUTATIONS))
    data = mutate(data, draw)
    if len(data) >= 4 and draw(st.booleans()):
        data = seal(data[:-4])
    return data


@st.composite
def relengthed_files(draw: Callable) -> bytes:
    f = draw(files)
    lengths = [
        draw(st.sampled_from([n, n + 1, max(n - 1, 0), 0]) | st.integers(0, (1 << 35) - 1))
        for n in f.stream_sizes
    ]
    return seal(header_with_lengths(f, lengths) + b"".join(f.streams))


@FUZZ
@given(files)
def test_round_trip(f: AeicFile) -> None:
    assert parse_or_reject(pack(f)) == f


@FUZZ
@given(mutated_files())
def test_mutated_files(data: bytes) -> None:
    parse_or_reject(data)


@FUZZ
@given(relengthed_files())
def test_changed_stream_lengths(data: bytes) -> None:
    parse_or_reject(data)


@FUZZ
@given(st.sampled_from([b"\x00", b"\x01"]), st.binary(min_size=11, max_size=48))
def test_arbitrary_headers_behind_a_valid_crc(flags: bytes, tail: bytes) -> None:
    parse_or_reject(seal(MAGIC + b"\x01" + flags + tail))


@FUZZ
@given(st.binary(max_size=64))
def test_arbitrary_bytes(data: bytes) -> None:
    parse_or_reject(data)


def test_huge_claimed_lengths_cost_nothing() -> None:
    f = AeicFile(768, 512, b"abcd", (b"x" * 1000,) + (b"",) * 4)
    for claim in (1001, (1 << 32) - 1, 1 << 32, 1 << 60):
        data = seal(header_with_lengths(f, [claim, 0, 0, 0, 0]) + f.streams[0])
        with pytest.raises(FormatError):
            unpack(data)
        assert parse_or_reject(data) is None


def test_max_pixels_is_checked_before_copying_streams() -> None:
    data = pack(AeicFile(MAX_DIM, MAX_DIM, b"abcd", (bytes(1 << 20),) * NUM_STREAMS))
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="over the limit"):
            unpack(data, max_pixels=4096 * 4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < SLACK
