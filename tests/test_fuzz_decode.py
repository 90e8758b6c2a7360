"""Fuzzing the whole decoder: mutated files that pass the CRC still fail cleanly.

Every mutation is resealed with a fresh CRC so that it reaches the entropy decoder and
the networks. Each case must decode or raise FormatError (ModelMismatch for a changed
model id), quickly and without other exceptions. ``bench/fuzz_decode.py`` runs the same
cases by the ten thousand.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aeic_codec import api
from aeic_codec.bundles.bundle import load_bundle
from aeic_codec.format.container import AeicFile, ColourGrid, FormatError, pack, unpack

from .conftest import make_image

FUZZ = settings(
    max_examples=200,
    deadline=2000,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def model_and_file(tiny_bundle):
    model = load_bundle(tiny_bundle)
    return model, api.encode(make_image(70, 90), model, colour_grid=True)


def reseal(data: bytes) -> bytes:
    body = data[:-4]
    return body + zlib.crc32(body).to_bytes(4, "big")


def decode_or_reject(model, data: bytes, full: bool = False) -> None:
    try:
        if full:
            out = api.decode(data, model, precision="fp32", max_pixels=1 << 20)
            f = unpack(data)
            assert out.shape == (f.height, f.width, 3)
        else:
            f = api.read_header(data, max_pixels=1 << 20)
            levels = api.read_grid(f)
            assert levels is None or levels.shape == (3, -(-f.height // 64), -(-f.width // 64))
            y_hat = api.decode_latent(f, model)
            assert np.isfinite(y_hat.numpy()).all()
    except FormatError as err:
        assert str(err) and "\n" not in str(err)
    except api.ModelMismatch:
        pass


@FUZZ
@given(data=st.data())
def test_mutated_streams_decode_or_fail_cleanly(model_and_file, data):
    model, good = model_and_file
    f = unpack(good)
    streams = list(f.streams)
    i = data.draw(st.integers(0, 5))  # 5: the colour grid
    s = bytearray(streams[i] if i < 5 else f.grid.data)
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "replace"]))
    if kind == "flip" and s:
        for bit in data.draw(st.lists(st.integers(0, 8 * len(s) - 1), min_size=1, max_size=6)):
            s[bit // 8] ^= 1 << (bit % 8)
    elif kind == "truncate":
        s = s[: data.draw(st.integers(0, len(s)))]
    elif kind == "insert":
        at = data.draw(st.integers(0, len(s)))
        s[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        s = bytearray(data.draw(st.binary(max_size=64)))
    grid = f.grid
    if i < 5:
        streams[i] = bytes(s)
    else:
        grid = ColourGrid(f.grid.cell, f.grid.step, bytes(s))
    mutated = AeicFile(f.width, f.height, f.model_id, tuple(streams), f.colour, grid)
    decode_or_reject(model, pack(mutated))


@FUZZ
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    colour=st.none() | st.tuples(*[st.integers(0, 0xFFFF)] * 6),
)
def test_changed_header_fields_decode_or_fail_cleanly(model_and_file, width, height, colour):
    model, good = model_and_file
    f = unpack(good)
    decode_or_reject(model, pack(AeicFile(width, height, f.model_id, f.streams, colour, f.grid)))


def test_full_decode_of_mutated_files(model_and_file):
    model, good = model_and_file
    rng = np.random.default_rng(0)
    for _ in range(20):
        data = bytearray(good)
        for _ in range(3):
            pos = int(rng.integers(20, len(data) - 4))
            data[pos] ^= 1 << int(rng.integers(0, 8))
        decode_or_reject(model, reseal(bytes(data)), full=True)


def test_foreign_model_id_is_refused(model_and_file):
    model, good = model_and_file
    data = bytearray(good)
    data[5] ^= 0xFF  # first byte of the model id
    with pytest.raises(api.ModelMismatch, match="encoded with model"):
        api.decode_latent(api.read_header(reseal(bytes(data))), model)
