"""The ``aeic`` command line: parses arguments, reports, and calls ``aeic_codec.api``.

Exit codes: 0 all done, 1 some inputs failed (each named on stderr, the rest still
processed), 2 usage errors. Tracebacks only with --debug.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .bundle import BundleError
from .container import FormatError
from .imageio import DEFAULT_MAX_PIXELS, ImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"}
EXPECTED = (BundleError, FormatError, ImageError, OSError, ValueError)


@dataclass
class Job:
    """One input and where its output goes ('-' for the standard streams)."""

    source: str
    target: str


class Failure(Exception):
    """A per-input failure with a one-line reason."""


def _debug_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--debug", is_flag=True, help="Show tracebacks on errors.")(f)


def _common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("-o", "--output", "output", help="Output file, directory, or - for stdout."),
        click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs."),
        click.option("-q", "--quiet", is_flag=True, help="Print nothing on success."),
        click.option("--json", "as_json", is_flag=True, help="One JSON line per file on stdout."),
        click.option(
            "--weights",
            type=click.Path(dir_okay=True, file_okay=True),
            help="Bundle file or directory (default: $AEIC_WEIGHTS, then the shipped weights/).",
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aeic")
def main() -> None:
    """aeic: ultra-low-bitrate image compression (AEIC, shallow encoder, generative decoder)."""


# ------------------------------------------------------------------ helpers
def _plan(inputs: tuple[str, ...], output: str | None, suffix: str, accept: set[str]) -> list[Job]:
    """Map inputs (files, directories, '-') to outputs, mirroring directory layouts."""
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
    if output == "-" and many:
        raise click.UsageError("-o - (standard output) takes a single input")
    if many and output is not None and Path(output).exists() and not Path(output).is_dir():
        raise click.UsageError(f"-o {output}: several inputs need an output directory")
    jobs = []
    for source, rel in expanded:
        if source == "-":
            if output is None:
                raise click.UsageError("reading standard input needs -o FILE or -o -")
            jobs.append(Job("-", output))
        elif not many and output is not None and not Path(output).is_dir():
            jobs.append(Job(source, output))
        else:
            name = rel if rel is not None else Path(Path(source).name).with_suffix(suffix)
            base = Path(output) if output is not None else Path(source).parent
            if rel is not None and output is None:
                base = Path(source).parent
                name = Path(name.name)
            jobs.append(Job(source, str(base / name)))
    return jobs


def _read_input(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise Failure(f"{source}: no such file") from None
    except IsADirectoryError:
        raise Failure(f"{source}: is a directory") from None
    except OSError as exc:
        raise Failure(f"{source}: cannot read ({exc.strerror})") from None


def _write_output(target: str, data: bytes, force: bool) -> None:
    from .files import atomic_write

    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(target)
    if path.exists() and not force:
        raise Failure(f"{target}: exists (use --force to overwrite)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    except OSError as exc:
        raise Failure(f"{target}: cannot write ({exc.strerror or exc})") from None


def _precheck(jobs: list[Job], force: bool) -> Iterator[tuple[Job, str | None]]:
    """Refuse existing outputs before any model is loaded."""
    for job in jobs:
        if job.target != "-" and Path(job.target).exists() and not force:
            yield job, f"{job.target}: exists (use --force to overwrite)"
        else:
            yield job, None


class _Reporter:
    """Warnings, per-file lines, failures and the summary; quiet/json aware."""

    def __init__(self, quiet: bool, as_json: bool, to_stdout: bool) -> None:
        self.quiet, self.as_json, self.to_stdout = quiet, as_json, to_stdout
        self.failures = 0
        self.files = 0
        self.bytes = 0
        self.pixels = 0
        self.start = time.perf_counter()

    def warn(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"aeic: warning: {message}", err=True)

    def fail(self, message: str) -> None:
        self.failures += 1
        click.echo(f"aeic: error: {message}", err=True)
        if self.as_json and not self.to_stdout:
            click.echo(json.dumps({"error": message}))

    def done(self, record: dict[str, Any], size: int, pixels: int) -> None:
        self.files += 1
        self.bytes += size
        self.pixels += pixels
        if self.as_json and not self.to_stdout:
            click.echo(json.dumps(record))

    def summary(self, verb: str) -> None:
        if self.quiet or self.as_json:
            return
        secs = time.perf_counter() - self.start
        bpp = f", mean {8 * self.bytes / self.pixels:.4f} bpp" if self.pixels else ""
        failed = f", {self.failures} failed" if self.failures else ""
        click.echo(
            f"aeic: {verb} {self.files} file(s), {self.bytes} bytes{bpp}{failed}, {secs:.2f} s",
            err=True,
        )


def _fail_hard(exc: BaseException, debug: bool) -> None:
    if debug:
        raise exc
    raise click.ClickException(str(exc)) from None


def _progress_bar(quiet: bool) -> Callable[[int, int], None] | None:
    """A tile progress line on terminals only."""
    if quiet or not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done >= total else ""
        click.echo(
            f"\r  tiles [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}",
            err=True,
            nl=False,
        )

    return show


# ------------------------------------------------------------------ encode
@main.command()
@click.argument("inputs", nargs=-1)
@_common_options
@click.option(
    "--lambda", "lambda_", type=float, help="Rate point: picks the bundle with this lambda."
)
@click.option("--variant", help="Model variant when several match (e.g. AEIC-SE).")
@click.option(
    "--colour-fix/--no-colour-fix",
    default=None,
    help="Send colour statistics (default: only for images over 768x768).",
)
def encode(
    inputs: tuple[str, ...],
    output: str | None,
    force: bool,
    quiet: bool,
    as_json: bool,
    weights: str | None,
    max_pixels: int,
    debug: bool,
    lambda_: float | None,
    variant: str | None,
    colour_fix: bool | None,
) -> None:
    """Compress images (PNG, JPEG, WebP, TIFF; files or directories) to .aeic."""
    from . import api
    from .imageio import read_image

    jobs = _plan(inputs, output, ".aeic", IMAGE_SUFFIXES)
    report = _Reporter(quiet, as_json, output == "-")
    todo = []
    for job, problem in _precheck(jobs, force):
        if problem:
            report.fail(problem)
        else:
            todo.append(job)
    if todo:
        try:
            model = api.load_model(weights, lambda_=lambda_, variant=variant, decoder=False)
        except EXPECTED as exc:
            _fail_hard(exc, debug)
    for job in todo:
        try:
            image, notes = (
                read_image(_read_input(job.source), max_pixels=max_pixels)
                if (job.source == "-")
                else read_image(job.source, max_pixels=max_pixels)
            )
            for note in notes:
                report.warn(note)
            result = api.encode_image(image, model, colour_fix=colour_fix)
            _write_output(job.target, result.data, force)
        except Failure as exc:
            report.fail(str(exc))
            continue
        except EXPECTED as exc:
            if debug:
                raise
            report.fail(f"{job.source}: {exc}")
            continue
        h, w = image.shape[:2]
        report.done(
            {
                "input": job.source,
                "output": job.target,
                "width": w,
                "height": h,
                "bytes": len(result.data),
                "bpp": 8 * len(result.data) / (w * h),
                "model": model.identity,
            },
            len(result.data),
            w * h,
        )
    report.summary("encoded")
    sys.exit(1 if report.failures else 0)


# ------------------------------------------------------------------ decode
@main.command()
@click.argument("inputs", nargs=-1)
@_common_options
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Precision of the generative decoder (auto: bf16 where the CPU has it).",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--tile", type=click.IntRange(min=8), help="Latent tile size (default: the model's).")
def decode(
    inputs: tuple[str, ...],
    output: str | None,
    force: bool,
    quiet: bool,
    as_json: bool,
    weights: str | None,
    max_pixels: int,
    debug: bool,
    precision: str,
    device: str,
    tile: int | None,
) -> None:
    """Decompress .aeic files to PNG."""
    from . import api
    from .imageio import png_bytes

    jobs = _plan(inputs, output, ".png", {".aeic"})
    report = _Reporter(quiet, as_json, output == "-")
    models: dict[str, Any] = {}
    for job, problem in _precheck(jobs, force):
        if problem:
            report.fail(problem)
            continue
        try:
            data = _read_input(job.source)
            header = api.read_header(data, max_pixels=max_pixels)
            key = header.model_id_hex
            if key not in models:
                models[key] = api.load_model(weights, identity=key, encoder=False)
            image = api.decode(
                data,
                models[key],
                precision=precision,
                device=device,
                tile=tile,
                progress=_progress_bar(quiet),
            )
            _write_output(job.target, png_bytes(image), force)
        except Failure as exc:
            report.fail(str(exc))
            continue
        except EXPECTED as exc:
            if debug:
                raise
            report.fail(f"{job.source}: {exc}")
            continue
        report.done(
            {
                "input": job.source,
                "output": job.target,
                "width": header.width,
                "height": header.height,
                "bytes": len(data),
                "bpp": header.bpp,
                "model": key,
            },
            len(data),
            header.pixels,
        )
    report.summary("decoded")
    sys.exit(1 if report.failures else 0)


# ------------------------------------------------------------------ info
@main.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
@click.option("--weights", type=click.Path(), help="Also search this bundle file/directory.")
def info(files: tuple[str, ...], as_json: bool, weights: str | None) -> None:
    """Show the header of .aeic files (no model needed)."""
    from .bundle import iter_bundles, search_paths
    from .container import info_dict

    names = {
        b.identity: f"{b.variant} lambda={b.lambda_:g}" if b.lambda_ is not None else b.variant
        for b in iter_bundles(search_paths(weights))
        if not isinstance(b, BundleError)
    }
    failures = 0
    for name in files:
        try:
            d = info_dict(_read_input(name))
        except (Failure, FormatError) as exc:
            failures += 1
            click.echo(
                f"aeic: error: {name}: {exc}"
                if isinstance(exc, FormatError)
                else f"aeic: error: {exc}",
                err=True,
            )
            continue
        d = {"file": name, **d, "model_name": names.get(d["model_id"])}
        if as_json:
            click.echo(json.dumps(d))
            continue
        click.echo(f"{name}:")
        click.echo(f"  format version  {d['format_version']}")
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
    sys.exit(1 if failures else 0)


# ------------------------------------------------------------------ weights
@main.group()
def weights() -> None:
    """Manage weight bundles."""


@weights.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per bundle.")
@click.option("--weights", "where", type=click.Path(), help="Also search this file/directory.")
def weights_list(as_json: bool, where: str | None) -> None:
    """List every bundle found (--weights, $AEIC_WEIGHTS, the shipped weights/)."""
    from .bundle import iter_bundles, search_paths

    for b in iter_bundles(search_paths(where)):
        if isinstance(b, BundleError):
            click.echo(f"aeic: warning: {b}", err=True)
        elif as_json:
            click.echo(json.dumps(b.to_dict()))
        else:
            lam = f"{b.lambda_:g}" if b.lambda_ is not None else "-"
            click.echo(
                f"{b.identity}  {b.variant:<12} lambda {lam:<6} {b.size / 1e6:8.1f} MB  {b.path}"
            )


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
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The bundle to write (.safetensors).",
)
@click.option("--lambda", "lambda_", type=float, help="Rate weight (default: from the file name).")
@click.option(
    "--decoder-dtype",
    type=click.Choice(["bf16", "fp32"]),
    default="bf16",
    show_default=True,
    help="Storage type of the generative decoder.",
)
@click.option("-f", "--force", is_flag=True, help="Overwrite the output.")
@_debug_option
def weights_import(
    aeic_pkl: str,
    sd_turbo: str,
    vae_decoder: str,
    output: str,
    lambda_: float | None,
    decoder_dtype: str,
    force: bool,
    debug: bool,
) -> None:
    """Turn the published AEIC checkpoints into one bundle."""
    from .importer import import_published

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
    except EXPECTED as exc:
        _fail_hard(exc, debug)
    click.echo(f"aeic: wrote {output} (identity {identity})", err=True)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
