"""``aeic encode``: images to .aeic files, at a lambda or within a byte budget."""

from __future__ import annotations

import click

from aeic_codec.bundles.bundle import BundleError
from aeic_codec.format.container import QSTEP_ONE
from aeic_codec.runtime.imageio import IMAGE_SUFFIXES

from . import batch
from .coding import BatchOptions, Coding, Direction, batch_options
from .common import FiniteRange, device_option, refuse

LAMBDA_HELP = (
    "Rate: a larger lambda gives smaller files and less detail. A bundle's own lambda "
    "(shipped: 12, 64, 500; default: the middle one, 64) uses that bundle; any other lambda "
    "in the range of the bundles' rate curves (shipped: about 0.54 to 4350) the bundle best "
    "at that rate, with a finer or coarser quantisation step. 'aeic weights list' shows what "
    "is installed."
)
ENCODING = Direction(".aeic", IMAGE_SUFFIXES, "compressed data", "encoded")


@click.command()
@click.argument("inputs", nargs=-1)
@batch_options
@click.option("--lambda", "lambda_", type=FiniteRange(min=0.0, min_open=True), help=LAMBDA_HELP)
@click.option(
    "--size",
    type=click.IntRange(min=1),
    help="Byte budget: the best file of at most this many bytes (container included), "
    "whatever lambda that takes; per file in a batch.",
)
@click.option(
    "--bpp",
    type=FiniteRange(min=0.0, min_open=True, max=24.0),
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
@click.option(
    "--texture/--no-texture",
    default=False,
    show_default=True,
    help="Send the source's fine-detail power per block (format version 5, a few dozen "
    "bytes), from which a decoder at --realism above 0 synthesises texture.",
)
@device_option(
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
    "--fast/--no-fast",
    default=None,
    help="Use the bundle's fast encoder (or g_a): a distilled stem in place of g_a's three "
    "finest levels, about a third of g_a's time; on Kodak, files 1.5 to 3.4 % smaller and "
    "0.12 to 0.16 dB lower in PSNR (aeic weights list shows which bundles have one). "
    "Default: on where the CPU has no native bf16 and the bundle has one.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Decode each file's latents again before writing it and fail unless they (and the "
    "entropy digest) are the encoder's; about half the encode time again.",
)
def encode(
    inputs: tuple[str, ...],
    options: BatchOptions,
    lambda_: float | None,
    size: int | None,
    bpp: float | None,
    variant: str | None,
    colour_fix: bool | None,
    colour_grid: bool | None,
    texture: bool,
    device: str,
    precision: str,
    float_entropy: bool,
    fast: bool | None,
    verify: bool,
) -> None:
    """Compress images (PNG, JPEG, WebP, TIFF; files or directories) to .aeic."""
    from aeic_codec.bundles.rate import find_ladder, resolve_rate

    coding = Coding(inputs, options, ENCODING)
    weights = options.weights
    budget = size is not None or bpp is not None
    try:
        if budget and (lambda_ is not None or (size is not None and bpp is not None)):
            raise click.UsageError("give one of --lambda, --size and --bpp")
        if budget and float_entropy:
            raise click.UsageError("--size and --bpp need the integer entropy path")
        if texture and float_entropy:
            raise click.UsageError("--texture needs the integer entropy path")
        ladder = find_ladder(weights, variant=variant) if budget else None
        info, qstep = (
            (None, QSTEP_ONE) if budget else resolve_rate(weights, lambda_=lambda_, variant=variant)
        )
        if float_entropy and qstep != QSTEP_ONE:
            raise click.UsageError(
                f"lambda {lambda_:g} is no bundle's own: it needs the integer entropy path"
            )
        chosen = [r.info for r in ladder.rungs] if ladder is not None else [info]
        slow = [str(b.path) for b in chosen if b is not None and b.stem is None]
        if fast and slow:
            raise BundleError(f"{slow[0]}: no fast encoder (aeic weights fast-encoder adds one)")
    except (BundleError, ValueError, click.UsageError) as exc:
        refuse(exc, options.debug)
    work = batch.EncodeWork(
        str(info.path) if info is not None else None,
        options.force,
        options.max_pixels,
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
        texture=texture,
        fast=fast,
    )
    coding.run(work, device, precision)
