"""What every command shares: the one-line error form, --debug and --device.

Below the group (``app``) and the command modules, so that they import it and not each
other (commands are looked up by ``app`` lazily, by module name).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)
SEPARATORS = tuple(s for s in (os.sep, os.altsep) if s)  # an output name ending so: a folder
DEVICES = ("cpu", "cuda", "mps")


def error(message: str) -> None:
    """Say one error as every error of aeic is said: one line on stderr."""
    click.echo(f"aeic: error: {message}", err=True)


class FiniteRange(click.FloatRange):
    """A float option in a range that also refuses nan and inf (every comparison with nan
    is false, so click's own range lets it through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{rv} is not a finite number.", param, ctx)
        return rv


class Refused(click.UsageError):
    """A command line that cannot work (its weights, outputs, device): exit 2, no hint."""


def require_stdout(what: str) -> None:
    """Refuse a command whose output goes to a closed standard output (``>&-``): Python
    then has no ``sys.stdout``, and click would print nothing and exit 0."""
    if sys.stdout is None:
        raise Refused(f"standard output is closed: {what}")


def fail_hard(exc: BaseException, debug: bool) -> NoReturn:
    """A failure that ends the command (exit 1); its traceback only with --debug."""
    if debug:
        raise exc
    raise click.ClickException(str(exc)) from None


def refuse(exc: BaseException, debug: bool) -> NoReturn:
    """A problem with the command line as a whole (its weights, its device): exit 2."""
    if debug:
        raise exc
    raise Refused(str(exc)) from None


def debug_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--debug", is_flag=True, help="Show tracebacks on errors.")(f)


def device_option(text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """One --device for encode and decode: the same choices, each saying what runs there."""
    return click.option(
        "--device", type=click.Choice(DEVICES), default="cpu", show_default=True, help=text
    )


def shown(source: str) -> str:
    """An input as messages name it."""
    return "<stdin>" if source == "-" else source


def on_terminal() -> bool:
    """Whether progress may be drawn (stderr is a terminal)."""
    return sys.stderr.isatty()


def check_output(output: str, force: bool) -> None:
    """Refuse an output that exists (without --force) or whose folder does not, before any
    work: a weights command may run for minutes before it writes."""
    from pathlib import Path

    from aeic_codec.runtime.files import too_long

    path = Path(output)
    if not output or output.endswith(SEPARATORS):  # Path() would drop the separator
        raise click.ClickException(f"{output!r}: not a file name")
    if os.path.lexists(path) and not force:  # a dangling link is an output too
        raise click.ClickException(f"{output}: exists (use --force to overwrite)")
    if not os.path.isdir(path.parent):
        raise click.ClickException(f"{output}: folder {path.parent} does not exist")
    if too_long(path):
        raise click.ClickException(f"{output}: file name too long")
