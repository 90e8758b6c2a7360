"""The .aeic container: a small, self-checking wrapper around the five coded streams.

This module is the reference reader and writer of format versions 1 to 5 (docs/format.md):
version 3 files come from the integer entropy path and carry a short entropy digest,
version 4 files add the quantisation step of a continuous rate setting (written only when
the step is not the trained one, so that such files stay version 3 byte for byte),
version 5 files add the texture statistics (``texture_coder.py``); the
float path writes version 2 only when a file carries a colour grid, so its files without
one stay byte for byte what earlier versions wrote. It imports only the standard library
because ``aeic info`` parses files with it and must start without paying for torch or numpy.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any, NamedTuple

from aeic_codec.runtime.imageio import pixel_limit_message

MAGIC = b"AEI"
FORMAT_VERSION = 5  # the newest this module reads and writes
READ_VERSIONS = (1, 2, 3, 4, 5)
INTEGER_VERSION = 3  # the integer entropy path; the header carries the entropy digest
QSTEP_VERSION = 4  # the integer path with a quantisation step other than the trained one
TEXTURE_VERSION = 5  # the integer path with texture statistics (and always its step)
# y's quantisation step is qstep / QSTEP_ONE (a dyadic rational: the integer path stays exact).
QSTEP_ONE = 256
QSTEP_RANGE = (16, 4096)  # steps 1/16 .. 16
DIGEST_SIZE = 2
MAX_DIM = 1 << 18
NUM_STREAMS = 5
STREAM_NAMES = ("z", "step0", "step1", "step2", "step3")
TEXTURE_BYTES = (1, 1 << 16)  # a texture stream's length
MAX_STREAM_BYTES = (1 << 32) - 1
FLAG_COLOUR = 0x01
FLAG_GRID = 0x02  # versions 2 to 5
GRID_CELLS = (8, 4096)  # allowed cell sizes in pixels
GRID_STEPS = (1, 64)

_MODEL_ID_SIZE = 4
_CRC_SIZE = 4
_COLOUR = struct.Struct(">6H")
# magic, version, flags and model id; the varints start here.
_FIXED_SIZE = len(MAGIC) + 2 + _MODEL_ID_SIZE
# Every varint one byte, no colour statistics, empty streams: nothing valid is shorter.
_MIN_SIZE = _FIXED_SIZE + 2 + NUM_STREAMS + _CRC_SIZE


class FormatError(ValueError):
    """Bytes that are not a valid .aeic file; the message is one line meant for the user."""


class _EndsEarly(FormatError):
    """A header that runs past the end of the bytes: a cut file, if its CRC fails too."""


# What is given instead of an .aeic file most often: the images that `aeic encode` reads.
_IMAGE_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


class _Header(NamedTuple):
    """The parsed header, before the payload is trusted or copied."""

    model_id: bytes
    width: int
    height: int
    lengths: tuple[int, ...]
    colour: tuple[int, ...] | None
    grid: tuple[int, int, int] | None  # cell, step, byte length
    end: int
    digest: bytes | None
    qstep: int
    texture: int | None  # byte length of the texture statistics (version 5)

    @property
    def declared(self) -> int:
        """Bytes the header promises between itself and the CRC: streams, grid, texture."""
        grid = self.grid[2] if self.grid is not None else 0
        return sum(self.lengths) + grid + (self.texture or 0)


@dataclass(frozen=True)
class ColourGrid:
    """Local colour means (colour.py): cell size and step, and their bytes (grid_coder.py)."""

    cell: int
    step: int
    data: bytes


@dataclass(frozen=True)
class AeicFile:
    """One decoded .aeic file; it validates itself, so every instance can be packed."""

    width: int
    height: int
    model_id: bytes
    streams: tuple[bytes, ...]
    colour: tuple[int, ...] | None = None
    grid: ColourGrid | None = None
    digest: bytes | None = None  # short entropy digest: integer entropy path (versions 3, 4)
    qstep: int = QSTEP_ONE  # y's quantisation step in 1/256 (integer path; version 4 if not 256)
    texture: bytes | None = None  # texture statistics (texture_coder.py; version 5)

    def __post_init__(self) -> None:
        for name, value in (("width", self.width), ("height", self.height)):
            if not isinstance(value, int) or not 1 <= value <= MAX_DIM:
                raise ValueError(f"{name} must be an int in 1..{MAX_DIM}, got {value!r}")
        if not isinstance(self.model_id, bytes) or len(self.model_id) != _MODEL_ID_SIZE:
            raise ValueError(f"model_id must be {_MODEL_ID_SIZE} bytes, got {self.model_id!r}")
        if (
            not isinstance(self.streams, tuple)
            or len(self.streams) != NUM_STREAMS
            or not all(isinstance(s, bytes) for s in self.streams)
        ):
            raise ValueError(f"streams must be a tuple of {NUM_STREAMS} bytes objects")
        if any(len(s) > MAX_STREAM_BYTES for s in self.streams):
            raise ValueError(f"a stream is longer than {MAX_STREAM_BYTES} bytes")
        if self.colour is not None and (
            not isinstance(self.colour, tuple)
            or len(self.colour) != 6
            or not all(isinstance(c, int) and 0 <= c <= 0xFFFF for c in self.colour)
        ):
            raise ValueError("colour must be None or a tuple of six ints in 0..65535")
        g = self.grid
        if g is not None and (
            not isinstance(g, ColourGrid)
            or not isinstance(g.cell, int)
            or not GRID_CELLS[0] <= g.cell <= GRID_CELLS[1]
            or not isinstance(g.step, int)
            or not GRID_STEPS[0] <= g.step <= GRID_STEPS[1]
            or not isinstance(g.data, bytes)
            or len(g.data) > MAX_STREAM_BYTES
        ):
            raise ValueError(
                f"grid must be None or a ColourGrid with cell in {GRID_CELLS[0]}..{GRID_CELLS[1]}"
                f", step in {GRID_STEPS[0]}..{GRID_STEPS[1]} and bytes data"
            )
        if self.digest is not None and (
            not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE
        ):
            raise ValueError(f"digest must be None or {DIGEST_SIZE} bytes, got {self.digest!r}")
        if not isinstance(self.qstep, int) or not QSTEP_RANGE[0] <= self.qstep <= QSTEP_RANGE[1]:
            raise ValueError(f"qstep must be an int in {QSTEP_RANGE[0]}..{QSTEP_RANGE[1]}")
        if self.qstep != QSTEP_ONE and self.digest is None:
            raise ValueError("a quantisation step other than 256 needs the integer entropy path")
        if self.texture is not None:
            lo, hi = TEXTURE_BYTES
            if not isinstance(self.texture, bytes) or not lo <= len(self.texture) <= hi:
                raise ValueError(f"texture must be None or {lo}..{hi} bytes")
            if self.digest is None:
                raise ValueError("texture statistics need the integer entropy path")

    @property
    def version(self) -> int:
        """3 for the integer entropy path (4 with another step, 5 with texture statistics);
        else 2 with a grid, 1 without."""
        if self.texture is not None:
            return TEXTURE_VERSION
        if self.digest is not None:
            return INTEGER_VERSION if self.qstep == QSTEP_ONE else QSTEP_VERSION
        return 2 if self.grid is not None else 1

    @property
    def integer(self) -> bool:
        """Whether the streams were coded with the integer entropy path."""
        return self.digest is not None

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def stream_sizes(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.streams)

    @property
    def payload_size(self) -> int:
        return sum(self.stream_sizes)

    @property
    def model_id_hex(self) -> str:
        return self.model_id.hex()

    def header_bytes(self) -> bytes:
        """Everything before the payload; the CRC follows the payload (and the grid)."""
        flags = FLAG_COLOUR if self.colour is not None else 0
        flags |= FLAG_GRID if self.grid is not None else 0
        parts = [MAGIC, bytes((self.version, flags)), self.model_id, self.digest or b""]
        if self.qstep != QSTEP_ONE or self.texture is not None:
            parts.append(_varint(self.qstep))
        parts += [_varint(v) for v in (self.width, self.height, *self.stream_sizes)]
        if self.colour is not None:
            parts.append(_COLOUR.pack(*self.colour))
        if self.grid is not None:
            g = self.grid
            parts += [_varint(g.cell), bytes((g.step,)), _varint(len(g.data))]
        if self.texture is not None:
            parts.append(_varint(len(self.texture)))
        return b"".join(parts)

    @property
    def grid_size(self) -> int:
        return len(self.grid.data) if self.grid is not None else 0

    @property
    def texture_size(self) -> int:
        return len(self.texture) if self.texture is not None else 0

    @property
    def overhead(self) -> int:
        """Bytes spent on anything but the streams, grid and texture: header plus CRC."""
        return len(self.header_bytes()) + _CRC_SIZE

    @property
    def size(self) -> int:
        """Size of the packed file; the encoding is canonical, so this is exact."""
        return self.overhead + self.payload_size + self.grid_size + self.texture_size

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole file, the rate figure codecs are compared on."""
        return 8 * self.size / self.pixels


def pack(f: AeicFile) -> bytes:
    """Serialise f; AeicFile validated its fields on construction."""
    grid = f.grid.data if f.grid is not None else b""
    body = f.header_bytes() + b"".join(f.streams) + grid + (f.texture or b"")
    return body + zlib.crc32(body).to_bytes(_CRC_SIZE, "big")


def unpack(data: bytes, max_pixels: int | None = None) -> AeicFile:
    """Parse and fully validate a file; raise FormatError for anything but a valid file.

    max_pixels lets a caller refuse images it could not afford to decode; it is checked
    before any stream is copied.
    """
    if not isinstance(data, bytes):
        data = bytes(memoryview(data))  # never bytes(n): an int must not allocate n bytes
    _check_preamble(data)
    body_end = len(data) - _CRC_SIZE
    if zlib.crc32(memoryview(data)[:body_end]) != int.from_bytes(data[body_end:], "big"):
        raise _crc_failure(data)
    head = _parse_header(data, body_end)
    if max_pixels is not None and head.width * head.height > max_pixels:
        raise FormatError(pixel_limit_message(head.width, head.height, max_pixels))
    payload = body_end - head.end
    declared = head.declared
    if declared > payload:
        raise FormatError("stream lengths exceed the file size")
    if declared < payload:
        raise FormatError(f"{payload - declared} unexplained bytes after the streams")
    streams = []
    pos = head.end
    for n in head.lengths:
        streams.append(data[pos : pos + n])
        pos += n
    grid = None
    if head.grid is not None:
        grid = ColourGrid(head.grid[0], head.grid[1], data[pos : pos + head.grid[2]])
        pos += head.grid[2]
    texture = data[pos:body_end] if head.texture is not None else None
    return AeicFile(
        head.width,
        head.height,
        head.model_id,
        tuple(streams),
        head.colour,
        grid,
        head.digest,
        head.qstep,
        texture,
    )


def info_dict(data: bytes) -> dict[str, Any]:
    """What ``aeic info --json`` prints: the header, the sizes and the rate, all JSON types."""
    f = unpack(data)
    colour = None
    if f.colour is not None:
        scaled = [c / 0xFFFF for c in f.colour]
        colour = {"mean": scaled[:3], "std": scaled[3:]}
    return {
        "format_version": f.version,
        "entropy_path": "integer" if f.integer else "float",
        "entropy_digest": f.digest.hex() if f.digest is not None else None,
        "qstep": f.qstep / QSTEP_ONE if f.integer else None,
        "model_id": f.model_id_hex,
        "width": f.width,
        "height": f.height,
        "pixels": f.pixels,
        "file_bytes": f.size,
        "bpp": f.bpp,
        "overhead_bytes": f.overhead,
        "payload_bytes": f.payload_size,
        "streams": dict(zip(STREAM_NAMES, f.stream_sizes, strict=True)),
        "colour": colour,
        "colour_grid": (
            {"cell": f.grid.cell, "step": f.grid.step, "bytes": f.grid_size} if f.grid else None
        ),
        "texture_bytes": f.texture_size if f.texture is not None else None,
    }


def _varint(value: int) -> bytes:
    """Unsigned LEB128: the dimensions and most stream lengths fit in one or two bytes."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int, end: int, limit: int, too_large: str) -> tuple[int, int]:
    """Decode one canonical varint <= limit from data[pos:end]; return it and the next pos.

    Reading stops after the bytes that limit needs, so hostile input never builds big ints.
    """
    value = 0
    for i in range(max(1, -(-limit.bit_length() // 7))):
        if pos + i >= end:
            raise _EndsEarly("truncated file: header ends early")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if byte == 0 and i > 0:
                raise FormatError("non-canonical (overlong) varint in header")
            if value > limit:
                raise FormatError(too_large)
            return value, pos + i + 1
    raise FormatError(too_large)


def _image_kind(data: bytes) -> str | None:
    """The image format ``data`` starts with, of those aeic encode reads (None: another)."""
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _IMAGE_MAGIC.items() if data.startswith(magic)), None)


def check_magic(data: bytes) -> None:
    """Refuse bytes that do not start as an .aeic file does, naming an image given instead.

    A start of a file is enough: ``aeic decode`` checks its inputs with it before any work.
    """
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        kind = _image_kind(data)
        if kind is not None:
            raise FormatError(f"not an .aeic file but a {kind} image (to compress it: aeic encode)")
        raise FormatError("not an .aeic file (bad magic)")


def _check_preamble(data: bytes) -> None:
    """Magic, minimal length and version: what must hold before the CRC position is known."""
    check_magic(data)
    if len(data) < _MIN_SIZE:
        raise FormatError(
            f"truncated file: {len(data)} bytes, no .aeic file is shorter than {_MIN_SIZE}"
        )
    version = data[len(MAGIC)]
    if version not in READ_VERSIONS:
        hint = "; upgrade aeic" if version > FORMAT_VERSION else ""
        raise FormatError(
            f"unsupported format version {version} (this aeic reads versions "
            f"{', '.join(map(str, READ_VERSIONS))})" + hint
        )


def _parse_header(data: bytes, end: int) -> _Header:
    """Parse the fields between the version byte and the payload, validating each."""
    version, flags = data[len(MAGIC)], data[len(MAGIC) + 1]
    known = FLAG_COLOUR | (FLAG_GRID if version >= 2 else 0)
    if flags & ~known:
        raise FormatError(f"reserved flag bits set (flags 0x{flags:02x})")
    if version == 2 and not flags & FLAG_GRID:
        raise FormatError("a version 2 file must carry a colour grid (without one it is version 1)")
    model_id = data[len(MAGIC) + 2 : _FIXED_SIZE]
    pos = _FIXED_SIZE
    digest = None
    qstep = QSTEP_ONE
    if version >= INTEGER_VERSION:
        if pos + DIGEST_SIZE > end:
            raise _EndsEarly("truncated file: header ends early")
        digest = bytes(data[pos : pos + DIGEST_SIZE])
        pos += DIGEST_SIZE
    if version in (QSTEP_VERSION, TEXTURE_VERSION):
        lo, hi = QSTEP_RANGE
        qstep, pos = _read_varint(data, pos, end, hi, f"quantisation step above {hi}")
        if qstep < lo:
            raise FormatError(f"quantisation step {qstep} out of range ({lo}..{hi})")
        if qstep == QSTEP_ONE and version == QSTEP_VERSION:
            raise FormatError(
                f"a version 4 file must not carry step {QSTEP_ONE} (such a file is version 3)"
            )
    dims = []
    for name in ("width", "height"):
        value, pos = _read_varint(data, pos, end, MAX_DIM, f"image {name} above {MAX_DIM}")
        dims.append(value)
    width, height = dims
    if width == 0 or height == 0:
        raise FormatError(f"image dimensions {width}x{height} out of range (1..{MAX_DIM} each)")
    lengths = []
    for _ in range(NUM_STREAMS):
        n, pos = _read_varint(
            data, pos, end, MAX_STREAM_BYTES, f"stream length above {MAX_STREAM_BYTES}"
        )
        lengths.append(n)
    colour = None
    if flags & FLAG_COLOUR:
        if pos + _COLOUR.size > end:
            raise _EndsEarly("truncated file: header ends early")
        colour = _COLOUR.unpack_from(data, pos)
        pos += _COLOUR.size
    grid = None
    if flags & FLAG_GRID:
        lo, hi = GRID_CELLS
        cell, pos = _read_varint(data, pos, end, hi, f"colour grid cell above {hi}")
        if cell < lo:
            raise FormatError(f"colour grid cell {cell} out of range ({lo}..{hi})")
        if pos >= end:
            raise _EndsEarly("truncated file: header ends early")
        step = data[pos]
        if not GRID_STEPS[0] <= step <= GRID_STEPS[1]:
            raise FormatError(
                f"colour grid step {step} out of range ({GRID_STEPS[0]}..{GRID_STEPS[1]})"
            )
        n, pos = _read_varint(
            data, pos + 1, end, MAX_STREAM_BYTES, f"colour grid length above {MAX_STREAM_BYTES}"
        )
        grid = (cell, step, n)
    texture = None
    if version == TEXTURE_VERSION:
        lo, hi = TEXTURE_BYTES
        texture, pos = _read_varint(data, pos, end, hi, f"texture statistics above {hi} bytes")
        if texture < lo:
            raise FormatError(
                "a version 5 file must carry texture statistics (without, version 3 or 4)"
            )
    return _Header(
        model_id, width, height, tuple(lengths), colour, grid, pos, digest, qstep, texture
    )


def _crc_failure(data: bytes) -> FormatError:
    """Say "truncated" when the unverified header promises more bytes than the file has.

    An interrupted copy is the commonest way to damage a file, and the user should know.
    """
    try:
        head = _parse_header(data, len(data))
    except _EndsEarly:
        return FormatError(f"truncated file: its {len(data)} bytes end inside the header")
    except FormatError:
        return FormatError("CRC mismatch: file is corrupt")
    promised = head.end + head.declared + _CRC_SIZE
    if promised > len(data):
        return FormatError(
            f"CRC mismatch: file is truncated or corrupt (header promises {promised} bytes, "
            f"found {len(data)})"
        )
    return FormatError("CRC mismatch: file is corrupt")
