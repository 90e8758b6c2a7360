"""``aeic decode``: .aeic files to PNG images, with the fidelity or realism decoder."""

from __future__ import annotations

import click

from aeic_codec.bundles.bundle import BundleError
from aeic_codec.format.container import check_magic

from . import batch
from .coding import BatchOptions, Coding, Direction, batch_options
from .common import FiniteRange, device_option, refuse

DECODING = Direction(".png", frozenset({".aeic"}), "PNG data", "decoded", check_magic)


@click.command()
@click.argument("inputs", nargs=-1)
@batch_options
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Precision of the generative decoder (auto: bf16 where the CPU computes it natively).",
)
@device_option("Where the generative decoder runs.")
@click.option(
    "--tile", type=click.IntRange(min=8), help="Largest latent tile of eps (default: the model's)."
)
@click.option(
    "--realism",
    type=FiniteRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="0: the bundle's fidelity decoder (faithful, smooth). Above 0, a file with texture "
    "statistics (aeic encode --texture) gets that much of the detail its statistics "
    "describe, copied from photographs; other files get the realism decoder "
    "(experimental: draws texture as strokes), blended with the fidelity picture.",
)
def decode(
    inputs: tuple[str, ...],
    options: BatchOptions,
    precision: str,
    device: str,
    tile: int | None,
    realism: float,
) -> None:
    """Decompress .aeic files to PNG."""
    from aeic_codec.bundles.bundle import bundles_at

    coding = Coding(inputs, options, DECODING)
    try:
        if options.weights:  # named weights must hold a bundle; which one is per file
            bundles_at(options.weights)
    except BundleError as exc:
        refuse(exc, options.debug)
    work = batch.DecodeWork(
        options.weights, options.force, options.max_pixels, precision, device, tile, realism
    )
    coding.run(work, device, precision)
