"""Exact tests of the .aeic container: layout, round trips and every rejection message."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from aeic_codec.format.container import (
    FORMAT_VERSION,
    MAGIC,
    MAX_DIM,
    NUM_STREAMS,
    AeicFile,
    ColourGrid,
    FormatError,
    info_dict,
    pack,
    unpack,
)

MODEL_ID = bytes.fromhex("a1b2c3d4")
DOC_STREAMS = tuple(bytes.fromhex(h) for h in ("3c9107e2", "d24e", "88", "", "5f10c7"))
DOC_COLOUR = tuple(round(v * 65535) for v in (0.45, 0.425, 0.375, 0.25, 0.24, 0.26))
EMPTY = (b"",) * NUM_STREAMS
# Lengths 0, 1, 127 and 128 (the one- to two-byte varint edge) and 20000 (three bytes).
VARIED = (b"", b"\x00", bytes(range(127)), bytes(128), bytes(20000))
DOC_GRID = ColourGrid(64, 4, bytes.fromhex("9c41"))


def make(width: int = 768, height: int = 512, **changes: object) -> AeicFile:
    return dataclasses.replace(AeicFile(width, height, MODEL_ID, DOC_STREAMS), **changes)


def _varint(value: int) -> bytes:
    """An independent LEB128 writer, so that tests can forge headers with any value."""
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def with_crc(body: bytes) -> bytes:
    """Seal modified bytes so that the reader gets past the CRC to the field checks."""
    return body + zlib.crc32(body).to_bytes(4, "big")


def resealed(data: bytes, offset: int, new: bytes, old_len: int = 1) -> bytes:
    body = data[:-4]
    return with_crc(body[:offset] + new + body[offset + old_len :])


def reject(data: bytes, message: str, **kwargs: object) -> None:
    with pytest.raises(FormatError) as err:
        unpack(data, **kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "width,height",
    [(1, 1), (63, 65), (300, 517), (768, 512), (MAX_DIM, 1), (1, MAX_DIM), (MAX_DIM, MAX_DIM)],
)
@pytest.mark.parametrize("colour", [None, (0, 1, 32768, 65534, 65535, 12345)])
@pytest.mark.parametrize("streams", [EMPTY, DOC_STREAMS, VARIED], ids=["empty", "short", "varied"])
@pytest.mark.parametrize(
    "grid", [None, DOC_GRID, ColourGrid(4096, 64, b""), ColourGrid(8, 1, bytes(300))]
)
@pytest.mark.parametrize(
    "digest,qstep",
    [
        (None, 256),
        (b"\x00\x00", 256),
        (b"\x5e\xa7", 256),
        (b"\x5e\xa7", 16),
        (b"\x01\x02", 4096),
        (b"\x01\x02", 127),
        (b"\x01\x02", 257),
    ],
)
def test_round_trip(
    width: int,
    height: int,
    colour: tuple[int, ...] | None,
    streams: tuple[bytes, ...],
    grid: ColourGrid | None,
    digest: bytes | None,
    qstep: int,
) -> None:
    f = AeicFile(width, height, MODEL_ID, streams, colour, grid, digest, qstep)
    data = pack(f)
    assert unpack(data) == f
    expected = (4 if qstep != 256 else 3) if digest else 1 if grid is None else 2
    assert data[3] == f.version == expected
    assert f.integer == (digest is not None)
    assert len(data) == f.size == f.overhead + sum(map(len, streams)) + f.grid_size
    assert data.startswith(f.header_bytes())
    assert data.endswith(zlib.crc32(data[:-4]).to_bytes(4, "big"))


def test_overhead_of_a_typical_image() -> None:
    # 768x512 at 0.004 bpp (about 200 bytes): every length fits a one-byte varint.
    f = make(streams=(bytes(60), bytes(40), bytes(35), bytes(30), bytes(25)))
    assert f.overhead <= 24
    assert f.overhead == len(pack(f)) - f.payload_size == 22
    # Each stream of 128 bytes or more costs one more length byte.
    assert make(streams=(bytes(300), bytes(200), b"", b"", b"")).overhead == 24
    assert make(colour=DOC_COLOUR).overhead == 34
    # The grid's header fields: cell 64 (one byte), step, length (one byte below 128).
    assert make(grid=DOC_GRID).overhead == 25 and make(grid=DOC_GRID).size == 25 + 10 + 2


def test_properties() -> None:
    f = make()
    assert f.pixels == 768 * 512
    assert f.stream_sizes == (4, 2, 1, 0, 3)
    assert f.payload_size == 10
    assert f.model_id_hex == "a1b2c3d4"
    assert f.version == 1 and make(grid=DOC_GRID).version == 2
    assert make(digest=b"\x5e\xa7").version == 3
    assert make(digest=b"\x5e\xa7", qstep=300).version == 4
    assert make(digest=b"\x5e\xa7", texture=b"\x09").version == FORMAT_VERSION == 5
    assert pack(f).startswith(MAGIC) and MAGIC == b"AEI"
    assert f.bpp == pytest.approx(8 * 32 / (768 * 512))


def test_info_dict() -> None:
    info = info_dict(pack(make(1920, 1080, colour=DOC_COLOUR)))
    assert json.loads(json.dumps(info)) == info
    assert info["width"] == 1920 and info["height"] == 1080
    assert info["model_id"] == "a1b2c3d4"
    assert info["file_bytes"] == 44 and info["overhead_bytes"] == 34 and info["payload_bytes"] == 10
    assert info["bpp"] == pytest.approx(8 * 44 / (1920 * 1080))
    assert info["streams"] == {"z": 4, "step0": 2, "step1": 1, "step2": 0, "step3": 3}
    assert info["colour"]["mean"] == pytest.approx([0.45, 0.425, 0.375], abs=1e-5)
    assert info["colour"]["std"] == pytest.approx([0.25, 0.24, 0.26], abs=1e-5)
    assert info_dict(pack(make()))["colour"] is None
    assert info_dict(pack(make()))["colour_grid"] is None
    assert info_dict(pack(make(grid=DOC_GRID)))["colour_grid"] == {
        "cell": 64,
        "step": 4,
        "bytes": 2,
    }
    assert info_dict(pack(make(grid=DOC_GRID)))["format_version"] == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"width": 0},
        {"height": MAX_DIM + 1},
        {"width": 2.0},
        {"model_id": b"abc"},
        {"model_id": "a1b2c3d4"},
        {"streams": EMPTY[:4]},
        {"streams": list(EMPTY)},
        {"streams": (b"",) * 4 + ("x",)},
        {"colour": (1, 2, 3, 4, 5)},
        {"colour": (0, 0, 0, 0, 0, 65536)},
        {"colour": (0, 0, 0, 0, 0, -1)},
        {"grid": (64, 4, b"")},
        {"grid": ColourGrid(7, 4, b"")},
        {"grid": ColourGrid(4097, 4, b"")},
        {"grid": ColourGrid(64, 0, b"")},
        {"grid": ColourGrid(64, 65, b"")},
        {"grid": ColourGrid(64, 4, "9c41")},
        {"qstep": 300},  # another step needs the integer path (a digest)
        {"qstep": 15, "digest": b"\x00\x00"},
        {"qstep": 4097, "digest": b"\x00\x00"},
        {"qstep": 256.0, "digest": b"\x00\x00"},
    ],
)
def test_invalid_files_cannot_be_built(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        pack(make(**changes))


def test_bad_magic() -> None:
    data = pack(make())
    reject(b"GIF89a" + data[6:], "not an .aeic file (bad magic)")
    reject(b"GIF", "not an .aeic file (bad magic)")
    reject(b"A", "truncated file")


def test_an_image_given_for_a_file_is_named() -> None:
    hint = "image (to compress it: aeic encode)"
    reject(b"\x89PNG\r\n\x1a\n" + bytes(30), f"not an .aeic file but a PNG {hint}")
    reject(b"\xff\xd8\xff\xe0" + bytes(30), f"not an .aeic file but a JPEG {hint}")
    reject(b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(30), f"not an .aeic file but a WebP {hint}")
    reject(b"II*\x00" + bytes(30), f"not an .aeic file but a TIFF {hint}")
    reject(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(30), "not an .aeic file (bad magic)")


def test_versions() -> None:
    data = pack(make())
    reject(
        resealed(data, 3, b"\x07"),
        "unsupported format version 7 (this aeic reads versions 1, 2, 3, 4, 5); upgrade aeic",
    )
    reject(data[:3] + b"\x07" + data[4:], "unsupported format version 7")  # checked before the CRC
    reject(
        resealed(data, 3, b"\x00"),
        "unsupported format version 0 (this aeic reads versions 1, 2, 3, 4, 5)",
    )
    # The grid flag belongs to version 2, and version 2 always has a grid (canonical files).
    reject(resealed(data, 3, b"\x02"), "a version 2 file must carry a colour grid")
    gridded = pack(make(grid=DOC_GRID))
    reject(resealed(gridded, 3, b"\x01"), "reserved flag bits set (flags 0x02)")


def test_digest_field() -> None:
    data = pack(make(digest=bytes.fromhex("5ea7")))  # the digest sits at offsets 9 and 10
    assert data[3] == 3 and data[9:11] == bytes.fromhex("5ea7")
    assert info_dict(data)["entropy_path"] == "integer"
    assert info_dict(data)["entropy_digest"] == "5ea7"
    assert info_dict(pack(make()))["entropy_path"] == "float"
    # A version 1 file relabelled as version 3 reads its width as the digest: nothing fits.
    with pytest.raises(FormatError):
        unpack(resealed(pack(make()), 3, b"\x03"))
    with pytest.raises(ValueError, match="digest must be"):
        make(digest=b"\x01")


def test_qstep_field() -> None:
    data = pack(make(digest=bytes.fromhex("5ea7"), qstep=384))  # the step at offsets 11, 12
    assert data[3] == 4 and data[11:13] == _varint(384) == bytes.fromhex("8003")
    assert info_dict(data)["qstep"] == 1.5 and info_dict(data)["format_version"] == 4
    assert info_dict(pack(make(digest=bytes.fromhex("5ea7"))))["qstep"] == 1.0
    assert info_dict(pack(make()))["qstep"] is None
    reject(resealed(data, 11, _varint(256), 2), "a version 4 file must not carry step 256")
    reject(resealed(data, 11, _varint(15), 2), "quantisation step 15 out of range (16..4096)")
    reject(resealed(data, 11, _varint(4097), 2), "quantisation step above 4096")
    reject(resealed(data, 11, b"\x80\x00", 2), "non-canonical (overlong) varint")
    # A version 3 file relabelled as version 4 reads its width as the step: nothing fits.
    with pytest.raises(FormatError):
        unpack(resealed(pack(make(digest=bytes.fromhex("5ea7"))), 3, b"\x04"))


def test_grid_fields() -> None:
    data = pack(make(grid=DOC_GRID))  # cell at offset 18, step 19, length 20
    assert data[18:21] == bytes.fromhex("400402")
    reject(resealed(data, 18, b"\x07"), "colour grid cell 7 out of range (8..4096)")
    reject(resealed(data, 18, _varint(4097)), "colour grid cell above 4096")
    reject(resealed(data, 19, b"\x00"), "colour grid step 0 out of range (1..64)")
    reject(resealed(data, 19, b"\x41"), "colour grid step 65 out of range (1..64)")
    reject(resealed(data, 20, b"\x03"), "stream lengths exceed the file size")
    reject(resealed(data, 20, b"\x01"), "1 unexplained bytes after the streams")
    reject(resealed(data, 18, b"\x80\x00"), "non-canonical (overlong) varint")


@pytest.mark.parametrize("grid", [None, DOC_GRID])
def test_truncated_at_every_length(grid: ColourGrid | None) -> None:
    data = pack(make(colour=DOC_COLOUR, grid=grid))
    header_end = len(make(colour=DOC_COLOUR, grid=grid).header_bytes())
    for n in range(len(data)):
        with pytest.raises(FormatError) as err:
            unpack(data[:n])
        message = str(err.value)
        assert "truncated" in message, n  # never "corrupt" alone: a cut file is the likely one
        if 20 <= n < header_end:  # 20: the shortest file there can be
            assert message == f"truncated file: its {n} bytes end inside the header", n


def test_truncated_header_behind_a_valid_crc() -> None:
    data = pack(make(colour=DOC_COLOUR))
    reject(with_crc(data[:20]), "truncated file: header ends early")  # inside the colour stats
    # 1x1, four empty streams, then the last length's varint runs into the CRC.
    body = pack(make())[:9] + bytes.fromhex("01010000000080")
    reject(with_crc(body), "truncated file: header ends early")
    reject(with_crc(body[:12]), "truncated file: 16 bytes, no .aeic file is shorter than 20")


def test_crc_mismatch() -> None:
    data = bytearray(pack(make()))
    data[24] ^= 0x10
    reject(bytes(data), "CRC mismatch: file is corrupt")
    data = bytearray(pack(make()))
    data[-1] ^= 0x01
    reject(bytes(data), "CRC mismatch: file is corrupt")


@pytest.mark.parametrize(
    "width,height,message",
    [
        (0, 5, "image dimensions 0x5 out of range"),
        (5, 0, "image dimensions 5x0 out of range"),
        (MAX_DIM + 1, 5, f"image width above {MAX_DIM}"),
        (5, MAX_DIM + 1, f"image height above {MAX_DIM}"),
        ((1 << 21) - 1, 5, f"image width above {MAX_DIM}"),
        (1 << 63, 5, f"image width above {MAX_DIM}"),
    ],
)
def test_absurd_dimensions(width: int, height: int, message: str) -> None:
    data = pack(make(768, 512))
    dims = _varint(width) + _varint(height)
    reject(resealed(data, 9, dims, old_len=4), message)


def test_max_dim_edges() -> None:
    edge = pack(make(MAX_DIM, MAX_DIM))
    assert unpack(edge).pixels == MAX_DIM**2
    assert edge[9:15] == bytes.fromhex("808010808010")


def test_max_pixels() -> None:
    data = pack(make(768, 512))
    assert unpack(data, max_pixels=768 * 512).width == 768
    said = "768x512 is 393,216 pixels, over the limit of 393,215 (raise it with --max-pixels)"
    reject(data, said, max_pixels=393215)


def test_reserved_flag_bits() -> None:
    data = pack(make())
    for bit in range(1, 8):
        reject(resealed(data, 4, bytes((1 << bit,))), "reserved flag bits set")


def test_overlong_varints() -> None:
    data = pack(make(768, 512))
    reject(resealed(data, 9, bytes.fromhex("808600"), old_len=2), "non-canonical (overlong) varint")
    reject(resealed(data, 13, bytes.fromhex("8400")), "non-canonical (overlong) varint")
    reject(resealed(data, 16, bytes.fromhex("8000")), "non-canonical (overlong) varint")


def test_stream_lengths_against_the_file() -> None:
    data = pack(make())  # lengths at offsets 13..17: 4 2 1 0 3
    reject(resealed(data, 13, b"\x05"), "stream lengths exceed the file size")
    reject(resealed(data, 17, b"\x7f"), "stream lengths exceed the file size")
    reject(resealed(data, 13, _varint((1 << 32) - 1)), "stream lengths exceed the file size")
    reject(resealed(data, 13, _varint(1 << 32)), "stream length above 4294967295")
    reject(resealed(data, 13, b"\x03"), "1 unexplained bytes after the streams")
    reject(with_crc(data[:-4] + b"\x00\x00"), "2 unexplained bytes after the streams")


@pytest.mark.parametrize("grid", [None, DOC_GRID])
def test_every_single_bit_flip_is_caught(grid: ColourGrid | None) -> None:
    data = pack(make(63, 65, colour=DOC_COLOUR, grid=grid))
    for bit in range(8 * len(data)):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FormatError):
            unpack(bytes(flipped))


def test_other_bytes_like_inputs() -> None:
    data = pack(make())
    assert unpack(bytearray(data)) == unpack(memoryview(data)) == make()
    with pytest.raises(TypeError):
        unpack(10**12)  # type: ignore[arg-type]


def test_doc_examples_match_pack() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "format.md").read_text()
    section = doc.split("## Worked examples", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```text\n(.*?)```", section, re.DOTALL)
    expected = [
        pack(make()),
        pack(make(1920, 1080, colour=DOC_COLOUR)),
        pack(make(1920, 1080, colour=DOC_COLOUR, grid=DOC_GRID)),
        pack(make(digest=bytes.fromhex("5ea7"))),
        pack(make(digest=bytes.fromhex("5ea7"), qstep=384)),
        pack(make(digest=bytes.fromhex("5ea7"), texture=bytes.fromhex("098a31"))),
    ]
    for block, data in zip(blocks, expected, strict=True):
        hex_parts = [
            re.split(r"\s{2,}", line.strip(), maxsplit=1)[0] for line in block.splitlines()
        ]
        assert bytes.fromhex(" ".join(hex_parts)) == data
    assert "## Stream contents" in doc and "TODO" not in doc


def test_import_is_light() -> None:
    code = (
        "import sys, aeic_codec.format.container; "
        "heavy = {'torch', 'numpy', 'diffusers', 'compressai', 'constriction'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_version_5_carries_texture_after_the_grid_and_always_its_step() -> None:
    grid = ColourGrid(64, 4, b"\x11\x22")
    for qstep in (256, 384):
        f = make(digest=b"\x5e\xa7", qstep=qstep, grid=grid, texture=b"\x09\xaa\xbb")
        data = pack(f)
        assert unpack(data) == f and data[3] == 5
        assert data.endswith(b"\x09\xaa\xbb" + data[-4:]) and info_dict(data)["texture_bytes"] == 3
    assert info_dict(pack(make(digest=b"\x5e\xa7")))["texture_bytes"] is None
    with pytest.raises(ValueError, match="integer entropy path"):
        make(texture=b"\x09")
    with pytest.raises(ValueError, match="texture must be"):
        make(digest=b"\x5e\xa7", texture=b"")


def test_a_version_5_file_without_texture_or_cut_short_is_refused() -> None:
    f = make(digest=b"\x5e\xa7", texture=b"\x09")
    head, payload = f.header_bytes(), b"".join(DOC_STREAMS)
    assert head[-1] == 1  # the texture length ends the header
    with pytest.raises(FormatError, match="must carry texture statistics"):
        unpack(with_crc(head[:-1] + b"\x00" + payload))  # such a file is version 3 or 4
    with pytest.raises(FormatError, match="exceed the file size"):
        unpack(with_crc(head[:-1] + b"\x02" + payload + b"\x09"))
    older = head[:3] + b"\x04" + head[4:]  # version 4 never carries step 256
    with pytest.raises(FormatError, match="must not carry step 256"):
        unpack(with_crc(older + payload + b"\x09"))
