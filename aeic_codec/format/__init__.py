"""The .aeic bitstream: the container, the range coder, frequency tables, the colour grid.

Below every network: reading a header needs neither torch nor numpy (``container``).
"""

from __future__ import annotations

from aeic_codec.runtime.lazy import lazy_exports

_EXPORTS = {
    "CodingError": "coder",
    "ESCAPE_LIMIT": "coder",
    "Groups": "coder",
    "StreamDecoder": "coder",
    "StreamEncoder": "coder",
    "models_for": "coder",
    "AeicFile": "container",
    "ColourGrid": "container",
    "DIGEST_SIZE": "container",
    "FLAG_COLOUR": "container",
    "FLAG_GRID": "container",
    "FORMAT_VERSION": "container",
    "FormatError": "container",
    "GRID_CELLS": "container",
    "GRID_STEPS": "container",
    "INTEGER_VERSION": "container",
    "MAGIC": "container",
    "MAX_DIM": "container",
    "MAX_STREAM_BYTES": "container",
    "NUM_STREAMS": "container",
    "QSTEP_ONE": "container",
    "QSTEP_RANGE": "container",
    "QSTEP_VERSION": "container",
    "READ_VERSIONS": "container",
    "STREAM_NAMES": "container",
    "check_magic": "container",
    "info_dict": "container",
    "pack": "container",
    "unpack": "container",
    "GridError": "grid_coder",
    "RICE_LIMIT": "grid_coder",
    "decode_grid": "grid_coder",
    "encode_grid": "grid_coder",
    "grid_shape": "grid_coder",
    "FreqTables": "tables",
    "MAX_BINS": "tables",
    "PRECISION": "tables",
    "TOTAL": "tables",
    "quantize_pmf": "tables",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
