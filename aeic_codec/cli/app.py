"""The ``aeic`` command line: parses arguments, reports, and calls ``aeic_codec.api``.

Exit codes: 0 all done, 1 some inputs failed (each named on stderr, the rest still
processed), 2 usage errors (found before any work), 130 interrupted. Every error is one
line starting "aeic: error:"; tracebacks only with --debug.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, NoReturn

import click

from aeic_codec.bundles.bundle import BundleError
from aeic_codec.format.container import QSTEP_ONE, FormatError, check_magic
from aeic_codec.runtime import allocator, startup
from aeic_codec.runtime.imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from aeic_codec.runtime.progress import BatchProgress

from . import batch
from .batch import Outcome, Task, TaskFailed, read_source

INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)
DEVICES = ("cpu", "cuda", "mps")


def _error(message: str) -> None:
    click.echo(f"aeic: error: {message}", err=True)


class _Refused(click.UsageError):
    """A command line that cannot work (its weights, outputs, device): exit 2, no hint."""


class _Aeic(click.Group):
    """The command group: click's own errors get the same one-line form as ours."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:  # the caller handles click's exceptions itself
            return super().main(*args, standalone_mode=False, **kwargs)
        help_errors = getattr(click.exceptions, "NoArgsIsHelpError", ())
        startup.defer_collection()  # until the first file is done (startup.py)
        allocator.keep_freed_memory()  # the process is ours (allocator.py)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except help_errors as exc:  # `aeic` alone: click shows the help
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            hint = ""
            if not isinstance(exc, _Refused):  # click's own: how to spell the command
                hint = f" (see '{exc.ctx.command_path if exc.ctx else 'aeic'} --help')"
            _error(exc.format_message() + hint)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            _error(exc.format_message())
            sys.exit(exc.exit_code)
        except click.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
            click.echo("aeic: interrupted", err=True)
            sys.exit(INTERRUPTED)
        finally:  # a command that ran no file, or a caller in this process (tests)
            startup.resume_collection()
        sys.exit(rv if isinstance(rv, int) else 0)


def _debug_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--debug", is_flag=True, help="Show tracebacks on errors.")(f)


def _device_option(text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """One --device for encode and decode: the same choices, each saying what runs there."""
    return click.option(
        "--device", type=click.Choice(DEVICES), default="cpu", show_default=True, help=text
    )


def _common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
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
            type=click.IntRange(min=1),
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
        _debug_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.group(cls=_Aeic, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aeic")
def main() -> None:
    """aeic: ultra-low-bitrate image compression (AEIC, shallow encoder, generative decoder)."""


# ------------------------------------------------------------------ helpers
def _plan(
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
    for item in inputs:
        p = Path(item)
        if item != "-" and p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in accept)
            expanded.extend((str(f), f.relative_to(p).with_suffix(suffix)) for f in files)
        else:
            expanded.append((item, None))
    many = len(expanded) > 1 or any(rel is not None for _, rel in expanded)
    into: Path | None = None  # the output folder, when outputs go into one
    if output == "-":
        if many:
            raise _Refused("-o - (standard output) takes a single input")
    elif output is not None and (many or Path(output).is_dir()):
        into = Path(output)
        if not into.is_dir():
            what = "is a file" if into.exists() else "does not exist"
            raise _Refused(
                f"-o {output}: {len(expanded)} inputs need an existing output folder, "
                f"and {output} {what}"
            )
    elif output is not None:
        _check_output_file(Path(output), suffix)
    tasks = []
    for source, rel in expanded:
        if source == "-" and (output is None or into is not None):
            raise _Refused("reading standard input needs -o FILE or -o -")
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
        raise _Refused(
            f"-o {path}: this command writes {kind}; name the output *{suffix} "
            "(or give an existing folder)"
        )
    if not path.parent.is_dir():
        raise _Refused(f"-o {path}: folder {path.parent} does not exist")


def _refuse_collisions(tasks: list[Task]) -> None:
    """Two inputs mapped to one output: refused, or one would silently replace the other."""
    first: dict[str, str] = {}
    for task in tasks:
        if task.target == "-":
            continue
        key = os.path.normcase(os.path.abspath(task.target))
        if key in first:
            raise _Refused(
                f"{first[key]} and {task.source} would both be written to {task.target}; "
                "rename one or run them separately"
            )
        first[key] = task.source


def _refuse_terminal(output: str | None, force: bool, what: str) -> None:
    """No binary data into a terminal (as gzip refuses): it garbles the screen and is lost."""
    if output == "-" and not force and sys.stdout.isatty():
        raise _Refused(f"-o -: {what} not written to a terminal; redirect it (or use --force)")


def _shown(source: str) -> str:
    return "<stdin>" if source == "-" else source


def _on_terminal() -> bool:
    return sys.stderr.isatty()


class _Reporter:
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
        if total and not (self.quiet or self.as_json) and _on_terminal():
            self.progress = BatchProgress(total, sys.stderr)

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress.clear()
        click.echo(line, err=True)

    def fail(self, task: Task, message: str) -> None:
        self.failures += 1
        self.say(f"aeic: error: {_shown(task.source)}: {message}")
        if self.as_json and not self.to_stdout:
            click.echo(json.dumps({"input": task.source, "output": task.target, "error": message}))

    def outcome(self, outcome: Outcome) -> None:
        if not self.quiet:
            for note in outcome.warnings:
                self.say(f"aeic: warning: {_shown(outcome.task.source)}: {note}")
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


def _fail_hard(exc: BaseException, debug: bool) -> NoReturn:
    if debug:
        raise exc
    raise click.ClickException(str(exc)) from None


def _usage(exc: BaseException, debug: bool) -> NoReturn:
    """A problem with the command line as a whole (its weights, its device): exit 2."""
    if debug:
        raise exc
    raise _Refused(str(exc)) from None


def _todo(
    tasks: list[Task],
    force: bool,
    report: _Reporter,
    check_start: Callable[[bytes], None] | None = None,
) -> list[Task]:
    """Refuse inputs that cannot be read and outputs that exist or cannot be written,
    before any model is loaded (batch.preflight)."""
    problems = batch.preflight(tasks, force, check_start)
    for task, problem in problems.items():
        report.fail(task, problem)
    return [task for task in tasks if task not in problems]


def _check_machine(device: str, precision: str, debug: bool) -> None:
    """Refuse a device or precision this machine lacks (exit 2).

    It may import torch, so it comes after the checks that need none.
    """
    from aeic_codec import api

    try:
        api.check_device(device)
        api.resolve_precision(precision, device)
    except ValueError as exc:
        _usage(exc, debug)


def _run(
    work: Any, todo: list[Task], jobs: int, threads: int | None, report: _Reporter, debug: bool
) -> None:
    """Run the batch with its status line; Ctrl-C stops it at once (exit 130)."""
    work.debug = debug
    report.show_progress(len(todo))
    progress = report.progress
    jobs = 1 if todo and todo[0].source == "-" else jobs
    names = iter(todo)

    def deliver(outcome: Outcome) -> None:
        report.outcome(outcome)
        if progress is not None:
            progress.finished()
            following = next(names, None)
            if following is not None:
                progress.begin(_shown(following.source))

    try:
        if progress is not None and todo:
            progress.begin(_shown(next(names).source))
        batch.run(work, todo, deliver, jobs, progress.tiles if progress else None, threads)
    except KeyboardInterrupt:  # the workers are stopped by now (closing the batch)
        report.say(f"aeic: interrupted; {report.files} of {len(todo)} file(s) written")
        sys.exit(INTERRUPTED)


LAMBDA_HELP = (
    "Rate: a larger lambda gives smaller files and less detail. A bundle's own lambda "
    "(shipped: 12, 64, 500; default: the middle one, 64) uses that bundle; any other lambda "
    "in the range of the bundles' rate curves (shipped: about 0.54 to 4350) the bundle best "
    "at that rate, with a finer or coarser quantisation step. 'aeic weights list' shows what "
    "is installed."
)


# ------------------------------------------------------------------ encode
@main.command()
@click.argument("inputs", nargs=-1)
@_common_options
@click.option("--lambda", "lambda_", type=float, help=LAMBDA_HELP)
@click.option(
    "--size",
    type=click.IntRange(min=1),
    help="Byte budget: the best file of at most this many bytes (container included), "
    "whatever lambda that takes; per file in a batch.",
)
@click.option(
    "--bpp",
    type=click.FloatRange(min=0.0, min_open=True),
    help="Budget in bits per pixel: --size of bpp * width * height / 8 bytes.",
)
@click.option("--variant", help="Model variant when several match (e.g. AEIC-SE).")
@click.option(
    "--colour-fix/--no-colour-fix",
    default=None,
    help="Send the source's colour statistics (default: as the model says; AEIC-SE and "
    "AEIC-ME for images over 768x768, aeic-small always).",
)
@click.option(
    "--colour-grid/--no-colour-grid",
    default=None,
    help="Send the source's mean colour over a grid of cells (about 0.002 bpp at 64 px cells; "
    "default: as the model says).",
)
@_device_option(
    "Where the analysis networks run; the integer entropy path gives the same file anywhere."
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Precision of the analysis transform (auto: bf16 where the CPU computes it natively); "
    "any decoder reads the files of any precision.",
)
@click.option(
    "--float-entropy",
    is_flag=True,
    help="Use the float entropy path (format version 1/2, as the published pipeline) even "
    "when the bundle has the integer one; such files decode reliably only on a like machine.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Decode each file's latents again before writing it and fail unless they (and the "
    "entropy digest) are the encoder's; about half the encode time again.",
)
def encode(
    inputs: tuple[str, ...],
    output: str | None,
    force: bool,
    quiet: bool,
    as_json: bool,
    jobs: int,
    threads: int | None,
    weights: str | None,
    max_pixels: int,
    debug: bool,
    lambda_: float | None,
    size: int | None,
    bpp: float | None,
    variant: str | None,
    colour_fix: bool | None,
    colour_grid: bool | None,
    device: str,
    precision: str,
    float_entropy: bool,
    verify: bool,
) -> None:
    """Compress images (PNG, JPEG, WebP, TIFF; files or directories) to .aeic."""
    from aeic_codec.bundles.rate import find_ladder, resolve_rate

    report = _Reporter(quiet, as_json, output == "-")
    tasks = _plan(inputs, output, ".aeic", IMAGE_SUFFIXES)
    _refuse_terminal(output, force, "compressed data")
    budget = size is not None or bpp is not None
    try:
        if budget and (lambda_ is not None or (size is not None and bpp is not None)):
            raise click.UsageError("give one of --lambda, --size and --bpp")
        if budget and float_entropy:
            raise click.UsageError("--size and --bpp need the integer entropy path")
        ladder = find_ladder(weights, variant=variant) if budget else None
        info, qstep = (
            (None, QSTEP_ONE) if budget else resolve_rate(weights, lambda_=lambda_, variant=variant)
        )
        if float_entropy and qstep != QSTEP_ONE:
            raise click.UsageError(
                f"lambda {lambda_:g} is no bundle's own: it needs the integer entropy path"
            )
    except (BundleError, ValueError, click.UsageError) as exc:
        _usage(exc, debug)
    todo = _todo(tasks, force, report)
    if todo:
        _check_machine(device, precision, debug)
        work = batch.EncodeWork(
            str(info.path) if info is not None else None,
            force,
            max_pixels,
            colour_fix,
            colour_grid,
            integer=False if float_entropy else None,
            device=device,
            precision=precision,
            verify=verify,
            qstep=qstep,
            ladder=ladder,
            size=size,
            bpp=bpp,
        )
        _run(work, todo, jobs, threads, report, debug)
    report.finish("encoded")


# ------------------------------------------------------------------ decode
@main.command()
@click.argument("inputs", nargs=-1)
@_common_options
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Precision of the generative decoder (auto: bf16 where the CPU computes it natively).",
)
@_device_option("Where the generative decoder runs.")
@click.option("--tile", type=click.IntRange(min=8), help="Latent tile size (default: the model's).")
@click.option(
    "--realism",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="0: the bundle's fidelity decoder (faithful, smooth); 1: its realism decoder "
    "(experimental: draws texture, as strokes); between: a blend of the two pictures.",
)
def decode(
    inputs: tuple[str, ...],
    output: str | None,
    force: bool,
    quiet: bool,
    as_json: bool,
    jobs: int,
    threads: int | None,
    weights: str | None,
    max_pixels: int,
    debug: bool,
    precision: str,
    device: str,
    tile: int | None,
    realism: float,
) -> None:
    """Decompress .aeic files to PNG."""
    from aeic_codec.bundles.bundle import bundles_at

    report = _Reporter(quiet, as_json, output == "-")
    tasks = _plan(inputs, output, ".png", {".aeic"})
    _refuse_terminal(output, force, "PNG data")
    try:
        if weights:
            bundles_at(weights)  # named weights must hold a bundle; which one is per file
    except BundleError as exc:
        _usage(exc, debug)
    todo = _todo(tasks, force, report, check_magic)
    if todo:
        _check_machine(device, precision, debug)
        work = batch.DecodeWork(weights, force, max_pixels, precision, device, tile, realism)
        _run(work, todo, jobs, threads, report, debug)
    report.finish("decoded")


# ------------------------------------------------------------------ info
@main.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
@click.option(
    "--weights", type=click.Path(exists=True), help="Also search this bundle file/directory."
)
def info(files: tuple[str, ...], as_json: bool, weights: str | None) -> None:
    """Show the header of .aeic files (no model needed)."""
    from aeic_codec.bundles.bundle import iter_bundles, search_paths
    from aeic_codec.format.container import info_dict

    names = {
        identity: f"{b.variant} lambda={b.lambda_:g}" if b.lambda_ is not None else b.variant
        for b in iter_bundles(search_paths(weights))
        if not isinstance(b, BundleError)
        for identity in (b.identity, b.integer_identity)
        if identity is not None
    }
    failures = 0
    for name in files:
        try:
            d = info_dict(read_source(name))
        except (TaskFailed, FormatError) as exc:
            failures += 1
            _error(f"{_shown(name)}: {exc}")
            continue
        d = {"file": name, **d, "model_name": names.get(d["model_id"])}
        if as_json:
            click.echo(json.dumps(d))
            continue
        click.echo(f"{name}:")
        click.echo(f"  format version  {d['format_version']}")
        entropy = d["entropy_path"]
        if d["entropy_digest"]:
            entropy += f" (digest {d['entropy_digest']})"
        click.echo(f"  entropy path    {entropy}")
        if d["qstep"] is not None:
            own = " (the bundle's own)" if d["qstep"] == 1 else ""
            click.echo(f"  quant. step     {d['qstep']:g}{own}")
        click.echo(f"  image           {d['width']}x{d['height']} ({d['pixels']} pixels)")
        model = d["model_id"] + (f" ({d['model_name']})" if d["model_name"] else " (not found)")
        click.echo(f"  model           {model}")
        click.echo(f"  size            {d['file_bytes']} bytes, {d['bpp']:.5f} bpp")
        click.echo(f"  overhead        {d['overhead_bytes']} bytes")
        streams = ", ".join(f"{k} {v}" for k, v in d["streams"].items())
        click.echo(f"  streams         {streams}")
        if d["colour"]:
            mean = " ".join(f"{v:.4f}" for v in d["colour"]["mean"])
            std = " ".join(f"{v:.4f}" for v in d["colour"]["std"])
            click.echo(f"  colour fix      mean {mean} / std {std}")
        else:
            click.echo("  colour fix      no")
        grid = d["colour_grid"]
        if grid:
            cells = f"{grid['cell']} px cells, step {grid['step']}, {grid['bytes']} bytes"
            click.echo(f"  colour grid     {cells}")
        else:
            click.echo("  colour grid     no")
    sys.exit(1 if failures else 0)


# ------------------------------------------------------------------ weights
_bundle_output = click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The bundle to write (.safetensors).",
)


@main.group()
def weights() -> None:
    """Manage weight bundles."""


@weights.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per bundle.")
@click.option(
    "--weights", "where", type=click.Path(exists=True), help="Also search this file/directory."
)
def weights_list(as_json: bool, where: str | None) -> None:
    """List every bundle found (--weights, $AEIC_WEIGHTS, the shipped weights/), by lambda.

    The identity shown is the one its files carry (and aeic info shows).
    """
    from aeic_codec.bundles.bundle import BundleInfo, iter_bundles, rate_order, search_paths

    found = list(iter_bundles(search_paths(where)))
    for problem in found:
        if isinstance(problem, BundleError):
            click.echo(f"aeic: warning: {problem}", err=True)
    for b in sorted((b for b in found if isinstance(b, BundleInfo)), key=rate_order):
        if as_json:
            click.echo(json.dumps(b.to_dict()))
        else:
            lam = f"{b.lambda_:g}" if b.lambda_ is not None else "-"
            realism = "realism" if b.realism is not None else "-"
            click.echo(
                f"{b.file_identity}  {b.variant:<12} lambda {lam:<6} {realism:<7} "
                f"{b.size / 1e6:8.1f} MB  {b.path}"
            )


_INTEGER_WEIGHTS_HELP = (
    "Integer weights of the entropy networks: 8-bit halves their work, 16-bit costs less "
    "rate, mixed is 8-bit in the context model's blocks and 16-bit elsewhere; auto takes "
    "the first of 8, mixed, 16 whose files come out at most 1 % above the float path's on "
    "the calibration images."
)


def _integer_weights_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--integer-weights",
        type=click.Choice(["auto", "8", "mixed", "16"]),
        default="auto",
        show_default=True,
        help=_INTEGER_WEIGHTS_HELP,
    )(f)


def _weight_plan(choice: str) -> str | None:
    return None if choice == "auto" else choice


@weights.command("import")
@click.option(
    "--aeic",
    "aeic_pkl",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="AEIC_SE_ft{L}.pkl or AEIC_ME_ft{L}.pkl.",
)
@click.option(
    "--sd-turbo",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="SD-Turbo folder in diffusers layout (unet/config.json + weights).",
)
@click.option(
    "--vae-decoder",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="halfDecoder.ckpt.",
)
@_bundle_output
@click.option("--lambda", "lambda_", type=float, help="Rate weight (default: from the file name).")
@click.option(
    "--decoder-dtype",
    type=click.Choice(["bf16", "fp32", "int8"]),
    default="bf16",
    show_default=True,
    help="Storage type of the generative decoder.",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, file_okay=False),
    help="Images to give the bundle an integer entropy path with (format 3 files); its rate "
    "cost and PSNR against the float path are measured on them and printed.",
)
@click.option("--calibration-count", type=click.IntRange(min=1), default=4, show_default=True)
@_integer_weights_option
@click.option("-f", "--force", is_flag=True, help="Overwrite the output.")
@_debug_option
def weights_import(
    aeic_pkl: str,
    sd_turbo: str,
    vae_decoder: str,
    output: str,
    lambda_: float | None,
    decoder_dtype: str,
    calibration: str | None,
    calibration_count: int,
    integer_weights: str,
    force: bool,
    debug: bool,
) -> None:
    """Turn the published AEIC checkpoints into one bundle."""
    from aeic_codec.bundles.importer import import_published

    if Path(output).exists() and not force:
        raise click.ClickException(f"{output}: exists (use --force to overwrite)")
    step = {"n": 0}

    def progress(message: str) -> None:
        step["n"] += 1
        click.echo(f"[{step['n']}/6] {message}", err=True)

    try:
        identity = import_published(
            aeic_pkl, sd_turbo, vae_decoder, output, lambda_, progress, decoder_dtype
        )
        click.echo(f"aeic: wrote {output} (identity {identity})", err=True)
        if calibration:
            from aeic_codec.tools.integerize import (
                PLAN_WORDS,
                image_files,
                integerize_measured,
                read_rgb,
            )

            images = [read_rgb(p) for p in image_files(calibration, calibration_count)]
            model, cost, plan = integerize_measured(
                output, images, Path(calibration).name, _weight_plan(integer_weights)
            )
            click.echo(
                f"aeic: integer entropy path added ({PLAN_WORDS[plan]}, integer identity "
                f"{model.integer_identity}); {cost.summary()}",
                err=True,
            )
    except (BundleError, OSError, ValueError) as exc:
        _fail_hard(exc, debug)


@weights.command("set-grid")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@_bundle_output
@click.option(
    "--cell", required=True, type=int, help="Cell size in pixels (8-4096); 0 sends no grid."
)
@click.option(
    "--step", type=int, help="Quantization step of the cell means (default: the bundle's)."
)
@click.option("-f", "--force", is_flag=True, help="Overwrite the output.")
@_debug_option
def weights_set_grid(
    bundle: str, output: str, cell: int, step: int | None, force: bool, debug: bool
) -> None:
    """Copy a bundle with another colour grid for its encoder to send.

    The weights and the identity are kept: the copy decodes the original's files too.
    """
    from aeic_codec.bundles.bundle import set_colour_grid

    if Path(output).exists() and not force:
        raise click.ClickException(f"{output}: exists (use --force to overwrite)")
    try:
        identity = set_colour_grid(bundle, output, cell, step)
    except (OSError, ValueError) as exc:  # BundleError is a ValueError
        _fail_hard(exc, debug)
    click.echo(f"aeic: wrote {output} (identity {identity})", err=True)


def _images_options(what: str, count: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--images DIR and --count N: the images a weights command measures on."""

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option("--count", type=click.IntRange(min=1), default=count, show_default=True)(f)
        return click.option(
            "--images",
            required=True,
            type=click.Path(exists=True, file_okay=False),
            help=f"{what} (folder, searched recursively; the first --count in name order).",
        )(f)

    return apply


@weights.command("integerize")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@_bundle_output
@_images_options("Calibration images", 16)
@click.option(
    "--measure",
    type=click.Path(exists=True, file_okay=False),
    help="Also encode these images with both entropy paths and print the rate cost.",
)
@_integer_weights_option
@click.option("-f", "--force", is_flag=True, help="Overwrite the output (it may be BUNDLE).")
@_debug_option
def weights_integerize(
    bundle: str,
    output: str,
    images: str,
    count: int,
    measure: str | None,
    integer_weights: str,
    force: bool,
    debug: bool,
) -> None:
    """Copy a bundle with an integer entropy path (format 3 files decode on any machine).

    Every other tensor and metadata entry is kept; rerunning replaces the integer part.
    """
    from aeic_codec.tools.integerize import (
        PLAN_WORDS,
        image_files,
        integer_cost,
        integerize_choosing,
        read_rgb,
    )

    if Path(output).exists() and not force:
        raise click.ClickException(f"{output}: exists (use --force to overwrite)")
    try:
        calibration = [read_rgb(p) for p in image_files(images, count)]
        model, plan = integerize_choosing(
            bundle, output, calibration, Path(images).name, _weight_plan(integer_weights)
        )
        click.echo(
            f"aeic: wrote {output} (identity {model.identity}, integer identity "
            f"{model.integer_identity}; float weights made integer: {PLAN_WORDS[plan]})",
            err=True,
        )
        if measure:
            cost = integer_cost(model, [read_rgb(p) for p in image_files(measure)])
            click.echo(f"aeic: {cost.summary()}", err=True)
    except (OSError, ValueError) as exc:  # BundleError and ImageError are ValueErrors
        _fail_hard(exc, debug)


@weights.command("calibrate-rate")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@_bundle_output
@_images_options("Images to measure on (the shipped curves: the 24 Kodak images)", 24)
@click.option("-f", "--force", is_flag=True, help="Overwrite the output (it may be BUNDLE).")
@_debug_option
def weights_calibrate_rate(
    bundle: str, output: str, images: str, count: int, force: bool, debug: bool
) -> None:
    """Copy a bundle with its rate curve: bpp and PSNR against the quantisation step.

    The encoder needs the curves of a ladder's bundles for lambdas between theirs and for
    byte budgets across bundles (docs/architecture.md, section 11). Identity unchanged.
    """
    from aeic_codec import api
    from aeic_codec.bundles.bundle import load_bundle
    from aeic_codec.bundles.rate import set_rate_curve
    from aeic_codec.tools.integerize import image_files, read_rgb

    if Path(output).exists() and not force:
        raise click.ClickException(f"{output}: exists (use --force to overwrite)")
    try:
        files = image_files(images, count)
        model = load_bundle(bundle, encoder=True, decoder=True)
        bar = BatchProgress(1, sys.stderr) if _on_terminal() else None
        if bar:
            bar.begin(f"calibrating {Path(bundle).name} on {len(files)} images")
        curve = api.measure_rate_curve(
            model, [read_rgb(p) for p in files], progress=bar.tiles if bar else None
        )
        if bar:
            bar.clear()
        source = {"images": Path(images).name, "count": len(files)}
        identity = set_rate_curve(bundle, output, curve, source)
        points = ", ".join(f"{q / 256:g}: {b:.4f} bpp {p:.2f} dB" for q, b, p in curve)
        click.echo(f"aeic: wrote {output} (identity {identity}); step: {points}", err=True)
    except (OSError, ValueError) as exc:  # BundleError and ImageError are ValueErrors
        _fail_hard(exc, debug)


# ------------------------------------------------------------------ train
@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True),
    help="Training configuration (TOML; examples in configs/).",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of training images (searched recursively).",
)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Run folder (default: runs/<config name>)."
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    help="Train on this device instead of the config's (its bf16 = true: where supported).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_debug_option
def train(
    config_path: str,
    data: str,
    out: str | None,
    resume: bool,
    device: str | None,
    quiet: bool,
    debug: bool,
) -> None:
    """Train or fine-tune a model; every stage ends in a bundle in the run folder.

    Under torchrun (torchrun --nproc_per_node N -m aeic_codec.cli train ...) N processes
    share every batch; rank 0 writes the run folder and alone reports.
    """
    import dataclasses

    if importlib.util.find_spec("peft") is None:  # LoRA training; not in the plain install
        raise _Refused(
            "aeic train needs the training extra: pip install '.[train]' in aeic's folder"
        )
    from aeic_codec.training import (
        TrainConfigError,
        TrainingStopped,
        is_main_process,
        load_train_config,
    )
    from aeic_codec.training import train as run_training

    talk = is_main_process()
    try:
        config = load_train_config(config_path)
        if device:
            config = dataclasses.replace(config, device=device)
        run = Path(out) if out else Path("runs") / config.name
        bundle = run_training(config, data, run, resume=resume, progress=not quiet)
    except TrainingStopped as exc:
        if talk:
            click.echo(f"aeic: {exc}", err=True)
        sys.exit(130)
    except (TrainConfigError, BundleError, OSError, ValueError) as exc:
        _fail_hard(exc, debug)
    if talk:
        click.echo(f"aeic: training done; bundle {bundle}", err=True)
