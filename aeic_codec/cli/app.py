"""The ``aeic`` command line: parses arguments, reports, and calls ``aeic_codec.api``.

Exit codes: 0 all done, 1 some inputs failed (each named on stderr, the rest still
processed), 2 usage errors (found before any work), 130 interrupted. Every error is one
line starting "aeic: error:"; tracebacks only with --debug.

This module is the group; each command lives in its own module, imported only when that
command runs (or the help lists it), so a command loads what it uses and no more.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
from typing import Any

import click

from aeic_codec.runtime import allocator, startup

from .common import INTERRUPTED, Refused, error

# Each command's module; the command is the attribute of the command's name.
COMMANDS = {
    "decode": "decode_command",
    "encode": "encode_command",
    "info": "info_command",
    "train": "train_command",
    "weights": "weights_commands",
}


# What writing to standard output can meet: a reader gone, a full or failing device.
STDOUT_ERRORS = (errno.EPIPE, errno.ENOSPC, errno.EIO)


def _stdout_to_devnull() -> None:
    """Point standard output at /dev/null, dropping what is still buffered for it."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _Aeic(click.Group):
    """The command group: click's own errors get the same one-line form as ours."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command: click.Command = getattr(
            importlib.import_module(f"{__package__}.{module}"), cmd_name
        )
        return command

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:  # the caller handles click's exceptions itself
            return super().main(*args, standalone_mode=False, **kwargs)
        help_errors = getattr(click.exceptions, "NoArgsIsHelpError", ())
        argv = args[0] if args else kwargs.get("args")
        said = set(sys.argv[1:] if argv is None else argv)
        if sys.stdout is None and said & {"-h", "--help", "--version"}:
            error("standard output is closed: help and version are written there")
            sys.exit(2)
        startup.defer_collection()  # until the first file is done (startup.py)
        allocator.keep_freed_memory()  # the process is ours (allocator.py)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except help_errors as exc:  # `aeic` alone: click shows the help
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            hint = ""
            if not isinstance(exc, Refused):  # click's own: how to spell the command
                hint = f" (see '{exc.ctx.command_path if exc.ctx else 'aeic'} --help')"
            error(exc.format_message() + hint)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            error(exc.format_message())
            sys.exit(exc.exit_code)
        except click.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
            click.echo("aeic: interrupted", err=True)
            sys.exit(INTERRUPTED)
        except OSError as exc:
            if exc.errno not in STDOUT_ERRORS:
                raise
            # Standard output went away (a closed pipe) or is full: one line, no traceback,
            # and no second failure when Python flushes it at exit.
            _stdout_to_devnull()
            if not isinstance(exc, BrokenPipeError):  # a reader that left knows it
                error(f"cannot write to standard output: {exc.strerror}")
            sys.exit(1)
        finally:  # a command that ran no file, or a caller in this process (tests)
            startup.resume_collection()
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Aeic, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aeic")
def main() -> None:
    """aeic: ultra-low-bitrate image compression (AEIC, shallow encoder, generative decoder)."""
