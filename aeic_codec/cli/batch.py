"""Encoding and decoding many files, in this process or in worker processes.

Each worker loads its model once and turns whole files into output bytes; results come
back in input order, so the output of ``--jobs 2`` is the same as ``--jobs 1`` byte for
byte (the coder is thread-count independent, docs/format.md). Only the main process
writes files, so stopping the workers (Ctrl-C) can never leave an output behind. A
failure is reported per file and never stops the batch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from aeic_codec.bundles.bundle import BundleError
from aeic_codec.format.container import QSTEP_ONE, FormatError
from aeic_codec.runtime import allocator, startup
from aeic_codec.runtime.files import too_long
from aeic_codec.runtime.imageio import ImageError

if TYPE_CHECKING:
    from aeic_codec.codec.tiling import Progress

EXPECTED = (BundleError, FormatError, ImageError, OSError, ValueError)
_START = 16  # bytes of an input that preflight's check_start sees


@dataclass(frozen=True)
class Task:
    """One input and where its output goes ('-' for the standard streams)."""

    source: str
    target: str


@dataclass
class Outcome:
    """What happened to one task: a record and the output's bytes, or a one-line error.

    Messages never name the input: whoever reports them does, once.
    """

    task: Task
    record: dict[str, Any] | None = None
    data: bytes | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


class TaskFailed(Exception):
    """A per-file failure whose message is complete (without the input's name)."""


def _read_problem(exc: OSError) -> str:
    """Why a source cannot be read, in the same words before the work and during it."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    return f"cannot read ({exc.strerror})"


def read_source(source: str, check_start: Callable[[bytes], None] | None = None) -> bytes:
    """An input's bytes; ``check_start`` (raising FormatError) sees its first bytes before
    the rest is read, so that an endless or huge input of another kind is never read whole."""
    if source == "-":
        if sys.stdin is None:
            raise TaskFailed("standard input is closed")
        return _checked_read(sys.stdin.buffer, check_start)
    try:
        with open(source, "rb") as fh:
            return _checked_read(fh, check_start)
    except OSError as exc:
        raise TaskFailed(_read_problem(exc)) from None


def _checked_read(fh: BinaryIO, check_start: Callable[[bytes], None] | None) -> bytes:
    start = fh.read(_START)
    if check_start is not None:
        check_start(start)
    return start + fh.read()


def _input_problem(source: str, check_start: Callable[[bytes], None] | None) -> str | None:
    """Why ``source`` cannot be the input, from opening it (None: it can, or it is '-')."""
    if source == "-":
        return None
    try:
        if not stat.S_ISFIFO(os.stat(source).st_mode):  # opening a FIFO waits for a writer
            with open(source, "rb") as fh:
                if check_start is not None:
                    check_start(fh.read(_START))
    except OSError as exc:
        return _read_problem(exc)
    except FormatError as exc:
        return str(exc)
    return None


def preflight(
    tasks: list[Task], force: bool, check_start: Callable[[bytes], None] | None = None
) -> dict[Task, str]:
    """Inputs that cannot be read and outputs that could not be written: {task: why}.

    Found before any work, and before torch is imported, so that such a mistake costs
    no start-up. ``check_start`` raises FormatError for an input whose first bytes are
    of another kind of file (an image given to decode), which is said before its output.
    """
    problems: dict[Task, str] = {}
    writable: dict[Path, str | None] = {}  # one probe per folder
    for task in tasks:
        unusable = _input_problem(task.source, check_start)
        if unusable:
            problems[task] = unusable
            continue
        if task.target == "-":
            continue
        path = Path(task.target)
        if os.path.isdir(path):  # never raises, a name too long included
            problems[task] = f"{path} is a folder"
            continue
        if os.path.lexists(path) and not force:  # a dangling link is an output too
            problems[task] = f"{path} exists (use --force to overwrite)"
            continue
        # Folders that mirror the input layout are made on writing: probe the nearest one.
        folder = path.parent
        while not os.path.exists(folder) and folder != folder.parent:
            folder = folder.parent
        if folder not in writable:
            writable[folder] = _probe(folder)
        if writable[folder]:
            problems[task] = f"cannot write {path} ({writable[folder]})"
        elif too_long(path):
            problems[task] = f"cannot write {path} (file name too long)"
    return problems


def _probe(folder: Path) -> str | None:
    """Create and drop a nameless file in ``folder``: the one sure test of writing there."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return f"folder {folder}: {exc.strerror or exc}"


def write_target(target: str, data: bytes, force: bool) -> None:
    from aeic_codec.runtime.files import atomic_write

    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(target)
    if os.path.lexists(path) and not force:
        raise TaskFailed(f"{target} exists (use --force to overwrite)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    except OSError as exc:
        raise TaskFailed(f"cannot write {target} ({exc.strerror or exc})") from None


class _Work:
    """Runs one task, turning the expected failures into a one-line Outcome error."""

    debug: bool
    force: bool

    def __call__(self, task: Task, progress: Progress | None = None) -> Outcome:
        outcome = Outcome(task)
        try:
            outcome.record = self.run(task, outcome, progress)
        except TaskFailed as exc:
            outcome.error = str(exc)
        except EXPECTED as exc:
            if self.debug:
                raise
            outcome.error = str(exc)
        return outcome

    def run(self, task: Task, outcome: Outcome, progress: Progress | None) -> dict[str, Any]:
        """Fill ``outcome.data`` with the output's bytes; return the report record."""
        raise NotImplementedError


@dataclass
class EncodeWork(_Work):
    """Settings of an encode batch; called once per file in whichever process runs it."""

    bundle: str | None  # None: a budget, met from ``ladder``
    force: bool
    max_pixels: int
    colour_fix: bool | None = None
    colour_grid: bool | None = None
    integer: bool | None = None
    device: str = "cpu"
    precision: str = "auto"
    verify: bool = False
    qstep: int = QSTEP_ONE  # y's quantisation step in 1/256 (rate.py)
    ladder: Any = None  # a rate.Ladder: the bundles a budget chooses from
    size: int | None = None
    bpp: float | None = None
    texture: bool = False
    fast: bool | None = None  # None: api.resolve_fast decides
    debug: bool = False
    _model: Any = None

    def run(self, task: Task, outcome: Outcome, progress: Progress | None) -> dict[str, Any]:
        from aeic_codec import api
        from aeic_codec.runtime.imageio import read_image

        if self._model is None:
            if self.ladder is not None:
                self._model = api.ModelLadder(self.ladder)
            else:
                self._model = api.load_model(self.bundle, decoder=False)
        raw = read_source(task.source) if task.source == "-" else task.source
        image, outcome.warnings = read_image(raw, max_pixels=self.max_pixels)
        result = api.encode_image(
            image,
            self._model,
            colour_fix=self.colour_fix,
            colour_grid=self.colour_grid,
            integer=self.integer,
            device=self.device,
            precision=self.precision,
            verify=self.verify,
            qstep=self.qstep,
            size=self.size,
            texture=self.texture,
            bpp=self.bpp,
            fast=self.fast,
        )
        outcome.data = result.data
        h, w = image.shape[:2]
        return {
            "input": task.source,
            "output": task.target,
            "width": w,
            "height": h,
            "bytes": len(result.data),
            "bpp": 8 * len(result.data) / (w * h),
            "model": result.model_id,
            "qstep": result.qstep / 256,
            "entropy_digest": result.entropy_digest,
            "encoder": "fast" if result.fast else "g_a",
        }


@dataclass
class DecodeWork(_Work):
    """Settings of a decode batch; models are loaded on first use, one per identity."""

    weights: str | None
    force: bool
    max_pixels: int
    precision: str = "auto"
    device: str = "cpu"
    tile: int | None = None
    realism: float = 0.0  # 0: the bundle's own decoder, 1: its realism decoder or texture
    debug: bool = False
    _models: dict[tuple[str, bool], Any] = field(default_factory=dict)
    _texture: Any = None

    def run(self, task: Task, outcome: Outcome, progress: Progress | None) -> dict[str, Any]:
        from aeic_codec import api
        from aeic_codec.runtime.imageio import png_bytes

        data = read_source(task.source)
        header = api.read_header(data, max_pixels=self.max_pixels)
        key = header.model_id_hex
        # A file with texture statistics takes its texture from the texture file, at any
        # realism above 0, and needs the bundle's fidelity decoder only.
        synthesis = self.realism > 0 and header.texture is not None
        if (key, synthesis) not in self._models:
            realism = 0.0 if synthesis else self.realism
            self._models[key, synthesis] = api.load_decoder(self.weights, key, realism)
        if synthesis and self._texture is None:
            self._texture = api.load_texture(self.weights)
        result = api.decode_image(
            header,
            self._models[key, synthesis],
            precision=self.precision,
            device=self.device,
            tile=self.tile,
            progress=progress,
            realism=self.realism,
            texture=self._texture if synthesis else None,
        )
        outcome.data = png_bytes(result.image)
        return {
            "input": task.source,
            "output": task.target,
            "width": header.width,
            "height": header.height,
            "bytes": len(data),
            "bpp": header.bpp,
            "model": key,
            "realism": self.realism,
            "entropy_digest": result.entropy_digest,
        }


_WORK: Any = None


def _init_worker(work: Any, threads: int) -> None:
    startup.defer_collection()
    allocator.keep_freed_memory()
    import torch

    global _WORK
    # Ctrl-C reaches the whole process group: the main process alone handles it (by
    # stopping the workers), so a worker never prints a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _WORK = work


def _run_in_worker(task: Task) -> Outcome:
    try:
        return _WORK(task)
    finally:
        startup.resume_collection()


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # Ctrl-C, kill's default, a closed terminal


@contextlib.contextmanager
def _signals_handled(names: tuple[str, ...], handler: Any) -> Iterator[dict[int, Any]]:
    """The signals ``names`` (those this platform has) go to ``handler`` inside the block,
    back to their handlers after it; yields those handlers. Signal handlers can only be
    changed from the main thread: elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return
    signums = [getattr(signal, name) for name in names if hasattr(signal, name)]
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield previous
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _sigint_ignored() -> contextlib.AbstractContextManager[dict[int, Any]]:
    """Ignore Ctrl-C while workers start: an ignored signal stays ignored across exec (and
    Python then installs no handler), so a worker cannot print a traceback even while it
    is still importing, before its initializer runs."""
    return _signals_handled(("SIGINT",), signal.SIG_IGN)


def stopped_like_ctrl_c() -> contextlib.AbstractContextManager[dict[int, Any]]:
    """SIGTERM and SIGHUP stop a batch as Ctrl-C does: the file being written is removed,
    worker processes are stopped, and what was written is reported. Without this, their
    default action killed the process with a half-written temporary file beside the
    output and left the workers of ``--jobs`` running."""
    return _signals_handled(STOP_SIGNALS[1:], signal.default_int_handler)


def _outcomes(
    work: _Work, tasks: list[Task], jobs: int, threads: int | None, progress: Progress | None
) -> Iterator[Outcome]:
    if jobs == 1:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        for task in tasks:
            yield work(task, progress)
        return
    import multiprocessing

    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")
    with _sigint_ignored():  # inherited by the workers from their first instruction
        pool = ctx.Pool(jobs, initializer=_init_worker, initargs=(work, threads))
    # Leaving the block (done, an error, Ctrl-C) terminates the workers at once.
    with pool:
        yield from pool.imap(_run_in_worker, tasks)


@contextlib.contextmanager
def _stops_deferred() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP until the block ends, so that a file on disk is also
    a file reported; then act on the first one caught as its own handler would."""
    caught: list[int] = []
    with _signals_handled(STOP_SIGNALS, lambda signum, frame: caught.append(signum)) as previous:
        yield
    if not caught:
        return
    handler = previous[caught[0]]
    if callable(handler):  # Python's own for Ctrl-C raises KeyboardInterrupt
        handler(caught[0], None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), caught[0])


def run(
    work: _Work,
    tasks: list[Task],
    deliver: Callable[[Outcome], None],
    jobs: int = 1,
    progress: Progress | None = None,
    threads: int | None = None,
) -> None:
    """Run every task in order, write its output and hand its Outcome to ``deliver``.

    Writing a file and delivering its outcome happen with Ctrl-C held back, so an
    interrupted batch has reported exactly the files it wrote. ``jobs`` > 1 uses
    processes; ``progress`` (tiles done, tiles in all) is called for the current file
    when jobs is 1. ``threads`` is torch's thread count in each process (None: torch's
    own in this process, the cores shared out among workers).
    """
    jobs = max(1, min(jobs, len(tasks)))
    outcomes = _outcomes(work, tasks, jobs, threads, progress if jobs == 1 else None)
    with contextlib.closing(outcomes):  # on Ctrl-C or an error: the workers stop at once
        for outcome in outcomes:
            with _stops_deferred():
                if outcome.data is not None:
                    try:
                        write_target(outcome.task.target, outcome.data, work.force)
                    except TaskFailed as exc:
                        outcome.error, outcome.record = str(exc), None
                    outcome.data = None
                deliver(outcome)
            startup.resume_collection()
