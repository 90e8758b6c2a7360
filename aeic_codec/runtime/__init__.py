"""The process around the codec: CPU, devices, memory, start-up, files, images, progress.

The bottom layer: it imports nothing of aeic and no torch at import time.
"""

from __future__ import annotations

from .lazy import lazy_exports

_EXPORTS = {
    "HEAP_BLOCKS": "allocator",
    "KEPT_TOP": "allocator",
    "M_MMAP_THRESHOLD": "allocator",
    "M_TRIM_THRESHOLD": "allocator",
    "keep_freed_memory": "allocator",
    "AVX2_LIBRARY_VARIABLES": "cpu",
    "ISA_VARIABLE": "cpu",
    "avx2_ceiling": "cpu",
    "capabilities": "cpu",
    "has": "cpu",
    "limit_libraries": "cpu",
    "PRECISIONS": "devices",
    "check_device": "devices",
    "cpu_has_native_bf16": "devices",
    "resolve_precision": "devices",
    "atomic_path": "files",
    "atomic_write": "files",
    "DEFAULT_MAX_PIXELS": "imageio",
    "FORMATS": "imageio",
    "IMAGE_SUFFIXES": "imageio",
    "ImageError": "imageio",
    "PNG_LEVEL": "imageio",
    "image_shape": "imageio",
    "png_bytes": "imageio",
    "read_image": "imageio",
    "BatchProgress": "progress",
    "REDRAW_S": "progress",
    "defer_collection": "startup",
    "resume_collection": "startup",
    "skipped_init": "startup",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
