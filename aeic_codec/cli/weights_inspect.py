"""``aeic weights list`` and ``aeic weights check``: what bundles there are, and whether
they are intact. Neither writes anything; ``list`` reads headers alone (no torch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from aeic_codec.bundles.bundle import (
    SUFFIX,
    BundleError,
    BundleInfo,
    check_bundle,
    iter_bundles,
    rate_order,
    search_paths,
)

from .common import error, require_stdout


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per bundle.")
@click.option(
    "--weights", "where", type=click.Path(exists=True), help="Also search this file/directory."
)
def weights_list(as_json: bool, where: str | None) -> None:
    """List every bundle found (--weights, $AEIC_WEIGHTS, the shipped weights/), by lambda.

    The identity shown is the one its files carry (and aeic info shows).
    """
    require_stdout("weights list writes there")
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
            fast = "fast" if b.stem is not None else "-"
            click.echo(
                f"{b.file_identity}  {b.variant:<12} lambda {lam:<6} {realism:<7} {fast:<4} "
                f"{b.size / 1e6:8.1f} MB  {b.path}"
            )


@click.command("check")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
def weights_check(paths: tuple[str, ...]) -> None:
    """Check that bundles are intact: recompute their identities from every tensor.

    PATHS are bundles or folders of them; without any, every bundle found ($AEIC_WEIGHTS,
    the shipped weights/). Each intact bundle is one "ok" line with the identity its
    files carry; a damaged or unreadable one is an error line, and the exit code 1.
    A realism decoder and a fast encoder carry no digest (no file depends on them).
    """
    require_stdout("weights check writes there")
    searched = [Path(p) for p in paths] or search_paths()
    failures = 0
    for folder in (p for p in searched if p.is_dir() and not any(p.glob(f"*{SUFFIX}"))):
        error(f"{folder}: no aeic bundle (*{SUFFIX}) in this folder")
        failures += 1
    bundles = list(iter_bundles(searched))
    if not bundles and not failures:
        error(f"no bundle found; searched: {', '.join(str(p) for p in searched)}")
        failures += 1
    for found in bundles:
        try:
            if isinstance(found, BundleError):
                raise found
            info = check_bundle(found.path)
        except BundleError as exc:
            error(str(exc))
            failures += 1
            continue
        click.echo(f"ok  {info.file_identity}  {info.path}")
    sys.exit(1 if failures else 0)
