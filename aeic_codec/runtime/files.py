"""Writing output files so that a crash or a full disk never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TEMP_NAME_BYTES = 200  # of the output's name in its temporary file's (mkstemp adds 8 + 7)


def too_long(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``'s name or the whole path is longer than the file system takes (its
    limits read on the nearest folder that exists): writing it would fail only after the
    work."""
    path = Path(path)
    folder = path.parent
    while not os.path.isdir(folder) and folder != folder.parent:
        folder = folder.parent
    name_max = _limit(folder, "PC_NAME_MAX", 255)
    path_max = _limit(folder, "PC_PATH_MAX", 4096)  # with the terminating NUL
    whole = os.fsencode(os.path.abspath(path))
    return len(os.fsencode(path.name)) > name_max or len(whole) >= path_max


def _limit(folder: Path, name: str, usual: int) -> int:
    """A file system limit of ``folder`` (``os.pathconf``), or the usual one where unsaid."""
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError, AttributeError):  # unknown here (or not POSIX)
        return usual


def _umask_mode() -> int:
    """The mode a plainly created file would get (mkstemp makes them 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in ``path``'s folder; a missing folder is named plainly."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist")
    # The name's start only: the temporary name must fit wherever the output's name fits.
    prefix = f".{os.fsencode(path.name)[:TEMP_NAME_BYTES].decode(errors='ignore')}."
    return tempfile.mkstemp(prefix=prefix, suffix=".part", dir=path.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        os.fchmod(fd, _umask_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]):
    """Yield a temporary path beside ``path`` for a writer that needs a file name."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        # After the writer: safetensors replaces the file it is given with a new 0600 one.
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
