"""What encode and decode share: their nine options, inputs mapped to outputs, the checks
before any model is loaded, the batch run with its progress, and the report.

A coding command plans and refuses first (no torch imported yet), then checks its own
settings, then hands its batch work to ``Coding.run``, which ends the process.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, NoReturn

import click

from aeic_codec.runtime.imageio import DEFAULT_MAX_PIXELS
from aeic_codec.runtime.progress import BatchProgress

from . import batch
from .batch import Outcome, Task
from .common import (
    INTERRUPTED,
    SEPARATORS,
    Refused,
    debug_option,
    on_terminal,
    refuse,
    require_stdout,
    shown,
)

# More threads than any CPU this runs on has cores: beyond some tens of thousands, OpenMP's
# thread creation fails or crashes the process instead of saying so.
MAX_THREADS = 1024


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """The options every coding command takes, given to it as one argument."""

    output: str | None
    force: bool
    quiet: bool
    as_json: bool
    jobs: int
    threads: int | None
    weights: str | None
    max_pixels: int
    debug: bool


_BATCH_FIELDS = tuple(f.name for f in dataclasses.fields(BatchOptions))


def batch_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the BatchOptions' options to a command; it receives them as ``options``."""

    @functools.wraps(f)  # keeps the options already declared below this decorator
    def command(**kwargs: Any) -> Any:
        options = BatchOptions(**{name: kwargs.pop(name) for name in _BATCH_FIELDS})
        return f(options=options, **kwargs)

    declared = [
        click.option(
            "-o",
            "--output",
            "output",
            help="Output file (one input), existing folder (any number), or - for stdout.",
        ),
        click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs."),
        click.option("-q", "--quiet", is_flag=True, help="Print nothing on success."),
        click.option("--json", "as_json", is_flag=True, help="One JSON line per file on stdout."),
        click.option(
            "-j",
            "--jobs",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Worker processes, each loading the model once.",
        ),
        click.option(
            "--threads",
            type=click.IntRange(min=1, max=MAX_THREADS),
            help="Threads of each process (default: the CPU's cores, shared among the jobs).",
        ),
        click.option(
            "--weights",
            type=click.Path(dir_okay=True, file_okay=True),
            help="Bundle file or folder: the only place searched "
            "(default: $AEIC_WEIGHTS, then the shipped weights/).",
        ),
        click.option(
            "--max-pixels",
            type=click.IntRange(min=1),
            default=DEFAULT_MAX_PIXELS,
            show_default=True,
            help="Refuse larger images.",
        ),
        debug_option,
    ]
    wrapped: Callable[..., Any] = command
    for option in reversed(declared):
        wrapped = option(wrapped)
    return wrapped


@dataclasses.dataclass(frozen=True)
class Direction:
    """What a coding command reads and writes."""

    suffix: str  # of the files it writes
    accept: AbstractSet[str]  # suffixes of the files it takes from a folder
    data: str  # what it writes, as a refusal to write it into a terminal names it
    verb: str  # of the summary line
    check_start: Callable[[bytes], None] | None = None  # refuses a wrong input up front


# ------------------------------------------------------------------ planning
def plan(
    inputs: tuple[str, ...], output: str | None, suffix: str, accept: AbstractSet[str]
) -> list[Task]:
    """Map inputs (files, directories, '-') to outputs, mirroring directory layouts.

    Refuses, before any work, what cannot end well: an output file named for another
    format, several inputs without an existing output folder, a missing folder, and two
    inputs that would be written to one output.
    """
    if not inputs:
        raise click.UsageError("no input given")
    if "-" in inputs and len(inputs) > 1:
        raise click.UsageError("'-' (standard input) must be the only input")
    expanded: list[tuple[str, Path | None]] = []
    # os.path.isdir, not Path.is_dir: a name too long to look up is no folder, not a raise.
    for item in inputs:
        p = Path(item)
        if item != "-" and os.path.isdir(p):
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in accept)
            expanded.extend((str(f), f.relative_to(p).with_suffix(suffix)) for f in files)
        else:
            expanded.append((item, None))
    many = len(expanded) > 1 or any(rel is not None for _, rel in expanded)
    into: Path | None = None  # the output folder, when outputs go into one
    if output == "-":
        if many:
            raise Refused("-o - (standard output) takes a single input")
    elif output == "":
        raise Refused("-o '': an empty name")
    elif output is not None and output.endswith(SEPARATORS) and not os.path.isdir(output):
        exists = os.path.lexists(output.rstrip("".join(SEPARATORS)))
        raise Refused(
            f"-o {output}: "
            + ("is a file, not a folder" if exists else "folder does not exist (make it first)")
        )
    elif output is not None and (many or os.path.isdir(output)):
        into = Path(output)
        if not os.path.isdir(into):
            what = "is a file" if os.path.exists(into) else "does not exist"
            raise Refused(
                f"-o {output}: {len(expanded)} inputs need an existing output folder, "
                f"and {output} {what}"
            )
    elif output is not None:
        _check_output_file(Path(output), suffix)
    tasks = []
    for source, rel in expanded:
        if source == "-" and (output is None or into is not None):
            raise Refused("reading standard input needs -o FILE or -o -")
        if into is not None:
            name = rel or Path(Path(source).name).with_suffix(suffix)
            tasks.append(Task(source, str(into / name)))
        elif output is not None:
            tasks.append(Task(source, output))
        else:
            tasks.append(Task(source, str(Path(source).with_suffix(suffix))))
    _refuse_collisions(tasks)
    return tasks


def _check_output_file(path: Path, suffix: str) -> None:
    if path.suffix.lower() != suffix:
        kind = "PNG images" if suffix == ".png" else f"{suffix} files"
        raise Refused(
            f"-o {path}: this command writes {kind}; name the output *{suffix} "
            "(or give an existing folder)"
        )
    if not os.path.isdir(path.parent):
        raise Refused(f"-o {path}: folder {path.parent} does not exist")


def _refuse_collisions(tasks: list[Task]) -> None:
    """Two inputs mapped to one output: refused, or one would silently replace the other."""
    first: dict[str, str] = {}
    for task in tasks:
        if task.target == "-":
            continue
        key = os.path.normcase(os.path.abspath(task.target))
        if key in first:
            raise Refused(
                f"{first[key]} and {task.source} would both be written to {task.target}; "
                "rename one or run them separately"
            )
        first[key] = task.source


def refuse_terminal(output: str | None, force: bool, what: str) -> None:
    """No binary data into a terminal (as gzip refuses): it garbles the screen and is lost."""
    if output == "-":
        require_stdout(f"-o - writes the {what} there")
    if output == "-" and not force and sys.stdout.isatty():
        raise Refused(f"-o -: {what} not written to a terminal; redirect it (or use --force)")


# ------------------------------------------------------------------ reporting
class Reporter:
    """Warnings, per-file lines, failures, progress and the summary; quiet/json aware."""

    def __init__(self, quiet: bool, as_json: bool, to_stdout: bool) -> None:
        self.quiet, self.as_json, self.to_stdout = quiet, as_json, to_stdout
        self.failures = 0
        self.files = 0
        self.bytes = 0
        self.pixels = 0
        self.start = time.perf_counter()
        self.progress: BatchProgress | None = None

    def show_progress(self, total: int) -> None:
        """A status line for ``total`` files, on a terminal only (never quiet or json)."""
        if total and not (self.quiet or self.as_json) and on_terminal():
            self.progress = BatchProgress(total, sys.stderr)

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress.clear()
        click.echo(line, err=True)

    def fail(self, task: Task, message: str) -> None:
        self.failures += 1
        self.say(f"aeic: error: {shown(task.source)}: {message}")
        if self.as_json and not self.to_stdout:
            click.echo(json.dumps({"input": task.source, "output": task.target, "error": message}))

    def outcome(self, outcome: Outcome) -> None:
        if not self.quiet:
            for note in outcome.warnings:
                self.say(f"aeic: warning: {shown(outcome.task.source)}: {note}")
        if outcome.error is not None or outcome.record is None:
            self.fail(outcome.task, outcome.error or "failed")
            return
        record = outcome.record
        self.files += 1
        self.bytes += record["bytes"]
        self.pixels += record["width"] * record["height"]
        if self.as_json and not self.to_stdout:
            click.echo(json.dumps(record))

    def finish(self, verb: str) -> NoReturn:
        """The summary line, unless nothing was done: then the error lines said it all."""
        if self.progress is not None:
            self.progress.clear()
        if not (self.quiet or self.as_json or (self.failures and not self.files)):
            secs = time.perf_counter() - self.start
            bpp = f", mean {8 * self.bytes / self.pixels:.4f} bpp" if self.pixels else ""
            failed = f", {self.failures} failed" if self.failures else ""
            click.echo(
                f"aeic: {verb} {self.files} file(s), {self.bytes} bytes{bpp}{failed}, {secs:.2f} s",
                err=True,
            )
        sys.exit(1 if self.failures else 0)


# ------------------------------------------------------------------ running
class Coding:
    """One encode or decode command: its tasks planned (on construction), then run."""

    def __init__(
        self, inputs: tuple[str, ...], options: BatchOptions, direction: Direction
    ) -> None:
        self.options, self.direction = options, direction
        self.report = Reporter(options.quiet, options.as_json, options.output == "-")
        self.tasks = plan(inputs, options.output, direction.suffix, direction.accept)
        refuse_terminal(options.output, options.force, direction.data)
        if options.as_json:
            require_stdout("--json writes there")
        if not options.quiet:
            self._say_empty_folders(inputs)

    def _say_empty_folders(self, inputs: tuple[str, ...]) -> None:
        """A folder that gave no file is said: nothing of it fails, and it was a mistake."""
        sources = [Path(t.source) for t in self.tasks]
        kinds = ", ".join(sorted(self.direction.accept))
        for item in inputs:
            if item == "-" or not os.path.isdir(item):
                continue
            if not any(s.is_relative_to(item) for s in sources):
                self.report.say(f"aeic: warning: {item}: no {kinds} files in it")

    def run(self, work: Any, device: str, precision: str) -> NoReturn:
        """Refuse the tasks that cannot be done, run the others with ``work``, report."""
        todo = self._todo()
        if todo:
            _check_machine(device, precision, self.options.debug)
            self._run(work, todo)
        self.report.finish(self.direction.verb)

    def _todo(self) -> list[Task]:
        """Refuse inputs that cannot be read and outputs that exist or cannot be written,
        before any model is loaded (batch.preflight)."""
        problems = batch.preflight(self.tasks, self.options.force, self.direction.check_start)
        for task, problem in problems.items():
            self.report.fail(task, problem)
        return [task for task in self.tasks if task not in problems]

    def _run(self, work: Any, todo: list[Task]) -> None:
        """Run the batch with its status line; Ctrl-C stops it at once (exit 130)."""
        report, options = self.report, self.options
        work.debug = options.debug
        report.show_progress(len(todo))
        progress = report.progress
        jobs = 1 if todo and todo[0].source == "-" else options.jobs
        names = iter(todo)

        def deliver(outcome: Outcome) -> None:
            report.outcome(outcome)
            if progress is not None:
                progress.finished()
                following = next(names, None)
                if following is not None:
                    progress.begin(shown(following.source))

        try:
            if progress is not None and todo:
                progress.begin(shown(next(names).source))
            tiles = progress.tiles if progress else None
            with batch.stopped_like_ctrl_c():
                batch.run(work, todo, deliver, jobs, tiles, options.threads)
        except KeyboardInterrupt:  # the workers are stopped by now (closing the batch)
            report.say(f"aeic: interrupted; {report.files} of {len(todo)} file(s) written")
            sys.exit(INTERRUPTED)


def _check_machine(device: str, precision: str, debug: bool) -> None:
    """Refuse a device or precision this machine lacks (exit 2).

    It may import torch, so it comes after the checks that need none.
    """
    from aeic_codec import api

    try:
        api.check_device(device)
        api.resolve_precision(precision, device)
    except ValueError as exc:
        refuse(exc, debug)
