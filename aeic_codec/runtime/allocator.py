"""Keep freed tensor memory in the process instead of handing it back to the kernel.

glibc's malloc serves every block above its mmap threshold (128 KiB at first, raised on
the fly up to 32 MiB) with a fresh ``mmap`` and unmaps it again on ``free``; it also trims
the heap's free top back to the kernel. A CPU tensor of a few MB is such a block, so every
new temporary page-faults all its pages in again, and the entropy networks (thousands of
MB-sized temporaries per image) spend a third of their time there: AEIC-SE's integer
entropy path (8-bit weights) at 1920x1088 took 0.95 s with the defaults and 0.65 s with
the settings below (two cores, one run). A process that owns its allocator (the ``aeic``
command, its batch workers, the benchmarks) calls ``keep_freed_memory`` once at start;
the library itself never changes a process-wide setting on import. The threshold stays
at glibc's own ceiling, 32 MiB: serving larger blocks from the heap too fragments it (a
2048x2048 decode with aeic-small-l64 then peaked at 2921 MB instead of 1872 MB; with the
settings below, 2007 MB). What the process holds after a peak stays mapped for reuse.
"""

from __future__ import annotations

import ctypes
import functools

# mallopt parameters (malloc.h) and the values set: blocks up to 32 MiB come from the heap
# from the start, and up to 1 GiB of free heap top stays with the process.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
HEAP_BLOCKS = 32 << 20
KEPT_TOP = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed memory; False (nothing changed) without glibc.

    Cached: one call per process does it; later calls return the first answer.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already runs on
    except (OSError, AttributeError, TypeError):  # no handle on the process, or no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    heap = mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS)  # both are set, whatever the first answers
    kept = mallopt(M_TRIM_THRESHOLD, KEPT_TOP)
    return bool(heap and kept)
