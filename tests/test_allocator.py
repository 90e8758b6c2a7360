"""keep_freed_memory: large blocks come from the heap afterwards (glibc), set by the CLI."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

# A fresh process reports whether a malloc is served by mmap: of 20 MiB before SETUP runs,
# of 28 MiB after. glibc's automatic threshold starts at 128 KiB and rises to the size of
# each mapped block freed (here 20 MiB), so 28 MiB is mapped again unless SETUP raised the
# threshold (keep_freed_memory: 32 MiB).
PROBE = """
import contextlib, ctypes, io
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def mapped(size):
    block = libc.malloc(size)
    count = libc.mallinfo2().hblks
    libc.free(block)
    return count - libc.mallinfo2().hblks
before = mapped(20 << 20)
{setup}
print(before, mapped(28 << 20))
"""


def _probe(setup: str) -> tuple[int, int]:
    code = PROBE.format(setup=setup)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = out.stdout.split()[-2:]
    return int(before), int(after)


def test_large_blocks_come_from_the_heap_afterwards():
    setup = (
        "from aeic_codec.runtime.allocator import keep_freed_memory\n"
        "assert keep_freed_memory() and keep_freed_memory()"
    )
    assert _probe(setup) == (1, 0)


def test_the_command_sets_it():
    setup = (
        "from aeic_codec.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--version'])"
    )
    assert _probe(setup) == (1, 0)


def test_without_it_nothing_changes():
    assert _probe("import aeic_codec.cli") == (1, 1)
