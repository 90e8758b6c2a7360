"""Encoding and decoding many files, in this process or in worker processes.

Each worker loads its model once and handles whole files; results come back in input
order. Decoding gives the same output with any ``--jobs`` (the entropy parameters are
thread-count independent, docs/format.md); encoding does wherever oneDNN's convolution
rounds alike with 1 and 2 threads, as it does on the reference machine. A failure is
reported per file and never stops the batch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bundle import BundleError
from .container import FormatError
from .imageio import ImageError

if TYPE_CHECKING:
    from .tiling import Progress

EXPECTED = (BundleError, FormatError, ImageError, OSError, ValueError)


@dataclass(frozen=True)
class Task:
    """One input and where its output goes ('-' for the standard streams)."""

    source: str
    target: str


@dataclass
class Outcome:
    """What happened to one task: a record for reports, or a one-line error."""

    task: Task
    record: dict[str, Any] | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


class TaskFailed(Exception):
    """A per-file failure whose message is already a complete line."""


def read_source(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise TaskFailed(f"{source}: no such file") from None
    except IsADirectoryError:
        raise TaskFailed(f"{source}: is a directory") from None
    except OSError as exc:
        raise TaskFailed(f"{source}: cannot read ({exc.strerror})") from None


def write_target(target: str, data: bytes, force: bool) -> None:
    from .files import atomic_write

    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(target)
    if path.exists() and not force:
        raise TaskFailed(f"{target}: exists (use --force to overwrite)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    except OSError as exc:
        raise TaskFailed(f"{target}: cannot write ({exc.strerror or exc})") from None


class _Work:
    """Runs one task, turning the expected failures into a one-line Outcome error."""

    debug: bool

    def __call__(self, task: Task, progress: Progress | None = None) -> Outcome:
        outcome = Outcome(task)
        try:
            outcome.record = self.run(task, outcome, progress)
        except TaskFailed as exc:
            outcome.error = str(exc)
        except EXPECTED as exc:
            if self.debug:
                raise
            outcome.error = f"{task.source}: {exc}"
        return outcome

    def run(self, task: Task, outcome: Outcome, progress: Progress | None) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class EncodeWork(_Work):
    """Settings of an encode batch; called once per file in whichever process runs it."""

    bundle: str
    force: bool
    max_pixels: int
    colour_fix: bool | None = None
    colour_grid: bool | None = None
    integer: bool | None = None
    device: str = "cpu"
    debug: bool = False
    _model: Any = None

    def run(self, task: Task, outcome: Outcome, progress: Progress | None) -> dict[str, Any]:
        from . import api
        from .imageio import read_image

        if self._model is None:
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
        )
        write_target(task.target, result.data, self.force)
        h, w = image.shape[:2]
        return {
            "input": task.source,
            "output": task.target,
            "width": w,
            "height": h,
            "bytes": len(result.data),
            "bpp": 8 * len(result.data) / (w * h),
            "model": self._model.identity
            if result.digest is None
            else self._model.integer_identity,
            "entropy_digest": result.entropy_digest,
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
    realism: float = 0.0  # 0: the bundle's own decoder, 1: its realism decoder
    debug: bool = False
    _models: dict[str, Any] = field(default_factory=dict)

    def run(self, task: Task, outcome: Outcome, progress: Progress | None) -> dict[str, Any]:
        from . import api
        from .imageio import png_bytes

        data = read_source(task.source)
        header = api.read_header(data, max_pixels=self.max_pixels)
        key = header.model_id_hex
        if key not in self._models:
            self._models[key] = api.load_decoder(self.weights, key, self.realism)
        result = api.decode_image(
            data,
            self._models[key],
            precision=self.precision,
            device=self.device,
            tile=self.tile,
            progress=progress,
            realism=self.realism,
        )
        write_target(task.target, png_bytes(result.image), self.force)
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
    import torch

    global _WORK
    torch.set_num_threads(threads)
    _WORK = work


def _run_in_worker(task: Task) -> Outcome:
    return _WORK(task)


def run(
    work: Callable[..., Outcome],
    tasks: list[Task],
    jobs: int = 1,
    progress: Progress | None = None,
) -> Iterator[Outcome]:
    """Yield one Outcome per task, in order; ``jobs`` > 1 uses that many processes."""
    jobs = max(1, min(jobs, len(tasks)))
    if jobs == 1:
        for task in tasks:
            yield work(task, progress)
        return
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, ctx, initializer=_init_worker, initargs=(work, threads)) as pool:
        yield from pool.map(_run_in_worker, tasks)
