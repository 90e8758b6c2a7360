"""Tools over the API: converting a bundle to the integer entropy path and measuring the cost."""

from __future__ import annotations

from aeic_codec.runtime.lazy import lazy_exports

_EXPORTS = {
    "AUTO_RATE_LIMIT": "integerize",
    "CALIBRATION_IMAGES": "integerize",
    "Cost": "integerize",
    "IMAGE_SUFFIXES": "integerize",
    "PLAN_WORDS": "integerize",
    "image_files": "integerize",
    "integer_cost": "integerize",
    "integerize_bundle": "integerize",
    "integerize_choosing": "integerize",
    "integerize_measured": "integerize",
    "padded": "integerize",
    "read_rgb": "integerize",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
