"""``aeic info``: the headers of .aeic files, read without a model (and without torch)."""

from __future__ import annotations

import json
import sys

import click

from aeic_codec.bundles.bundle import BundleError, iter_bundles, search_paths
from aeic_codec.format.container import FormatError, check_magic, info_dict

from .batch import TaskFailed, read_source
from .common import error, require_stdout, shown


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
@click.option(
    "--weights", type=click.Path(exists=True), help="Also search this bundle file/directory."
)
def info(files: tuple[str, ...], as_json: bool, weights: str | None) -> None:
    """Show the header of .aeic files (no model needed)."""
    require_stdout("info writes there")
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
            d = info_dict(read_source(name, check_magic))
        except (TaskFailed, FormatError) as exc:
            failures += 1
            error(f"{shown(name)}: {exc}")
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
        texture = d["texture_bytes"]
        click.echo(f"  texture stats   {f'{texture} bytes' if texture is not None else 'no'}")
    sys.exit(1 if failures else 0)
