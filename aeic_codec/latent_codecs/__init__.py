"""Latent codecs: a latent and its side streams to bytes and back, float or integer path.

``base`` states the interface (``LatentCodec``: compress, decompress) that ``AEIC``
composes; ``float_path`` and ``integer_path`` are its two implementations.
"""

from __future__ import annotations

from aeic_codec.runtime.lazy import lazy_exports

_EXPORTS = {
    "Compressed": "base",
    "Decompressed": "base",
    "LatentCodec": "base",
    "LatentError": "base",
    "hyper_size": "base",
    "FloatLatentCodec": "float_path",
    "IntegerLatentCodec": "integer_path",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
