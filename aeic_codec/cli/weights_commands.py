"""``aeic weights``: import bundles, and copy them with a colour grid, an integer entropy
path or a rate curve added (list and check: weights_inspect.py)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from aeic_codec.bundles.bundle import BundleError
from aeic_codec.nn.config import StemConfig
from aeic_codec.runtime.progress import BatchProgress

from .batch import stopped_like_ctrl_c
from .common import check_output, debug_option, fail_hard, on_terminal
from .weights_inspect import weights_check, weights_list


def _output_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """-o/--output FILE: the file a weights command writes."""
    return click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(dir_okay=False),
        help=f"The {what} to write (.safetensors).",
    )


_bundle_output = _output_option("bundle")
_texture_output = _output_option("texture file")

_photos_option = click.option(
    "--photos",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Training photographs (never the images you evaluate on).",
)

_checkpoint_option = click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    help="Training state, written every 2 minutes; a run given the same file goes on from it.",
)


def _wrote(output: str, after: str = "") -> None:
    """Report a written bundle by the identity its files carry (as aeic info and aeic
    weights list show it: the integer path's where the bundle has one)."""
    from aeic_codec.bundles.bundle import read_info

    click.echo(f"aeic: wrote {output} (model {read_info(output).file_identity}){after}", err=True)


@contextlib.contextmanager
def _terminal_progress(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """One long piece of work's progress bar on a terminal (its ``tiles`` callback; None
    elsewhere), cleared when the work ends."""
    bar = BatchProgress(1, sys.stderr) if on_terminal() else None
    if bar is None:
        yield None
        return
    bar.begin(label)
    try:
        yield bar.tiles
    finally:
        bar.clear()


def _without_loss(tick: Callable[[int, int], None] | None) -> Callable[..., None] | None:
    """A distillation's ``progress(step, steps, loss)`` that moves the bar ``tick``."""
    return None if tick is None else lambda done, total, _loss: tick(done, total)


@click.group()
@click.pass_context
def weights(ctx: click.Context) -> None:
    """Manage weight bundles."""
    ctx.with_resource(stopped_like_ctrl_c())  # as Ctrl-C: the file being written is removed


weights.add_command(weights_list)
weights.add_command(weights_check)


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
@debug_option
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

    if calibration is None:  # these shape the integer path, which --calibration builds
        source = click.get_current_context().get_parameter_source
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("integer_weights", "calibration_count")
            if source(name) is click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            raise click.UsageError(
                f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} "
                "--calibration: without it the bundle has the float entropy path only"
            )
    check_output(output, force)
    step = {"n": 0}

    def progress(message: str) -> None:
        step["n"] += 1
        click.echo(f"[{step['n']}/6] {message}", err=True)

    try:
        import_published(aeic_pkl, sd_turbo, vae_decoder, output, lambda_, progress, decoder_dtype)
        _wrote(output)
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
        fail_hard(exc, debug)


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
@debug_option
def weights_set_grid(
    bundle: str, output: str, cell: int, step: int | None, force: bool, debug: bool
) -> None:
    """Copy a bundle with another colour grid for its encoder to send.

    The weights and the identity are kept: the copy decodes the original's files too.
    """
    from aeic_codec.bundles.copies import set_colour_grid

    check_output(output, force)
    try:
        set_colour_grid(bundle, output, cell, step)
        _wrote(output)
    except (OSError, ValueError) as exc:  # BundleError is a ValueError
        fail_hard(exc, debug)


@weights.command("set-window")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@_bundle_output
@click.option(
    "--pixels",
    required=True,
    type=click.IntRange(min=1),
    help="Area in image pixels that each query of eps's and D's self-attention sees "
    "(e.g. 65536 for 256 x 256: the shipped bundles' training crops).",
)
@click.option("-f", "--force", is_flag=True, help="Overwrite the output.")
@debug_option
def weights_set_window(bundle: str, output: str, pixels: int, force: bool, debug: bool) -> None:
    """Copy a bundle with another attention window for its decoders.

    The weights and the identity are kept: the copy decodes the original's files, the
    same wherever a picture fits the window and with local attention beyond it.
    """
    from aeic_codec.bundles.copies import set_attention_window

    check_output(output, force)
    try:
        set_attention_window(bundle, output, pixels)
        _wrote(output)
    except (OSError, ValueError) as exc:  # BundleError is a ValueError
        fail_hard(exc, debug)


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
@debug_option
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

    check_output(output, force)
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
        fail_hard(exc, debug)


@weights.command("calibrate-rate")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@_bundle_output
@_images_options("Images to measure on (the shipped curves: the 24 Kodak images)", 24)
@click.option("-f", "--force", is_flag=True, help="Overwrite the output (it may be BUNDLE).")
@debug_option
def weights_calibrate_rate(
    bundle: str, output: str, images: str, count: int, force: bool, debug: bool
) -> None:
    """Copy a bundle with its rate curve: bpp and PSNR against the quantisation step.

    The encoder needs the curves of a ladder's bundles for lambdas between theirs and for
    byte budgets across bundles (docs/architecture.md, section 11). Identity unchanged.
    """
    from aeic_codec import api
    from aeic_codec.bundles.bundle import load_bundle
    from aeic_codec.bundles.rate import mean_curve, set_rate_curve
    from aeic_codec.tools.integerize import image_files, read_rgb

    check_output(output, force)
    try:
        files = image_files(images, count)
        model = load_bundle(bundle, encoder=True, decoder=True)
        with _terminal_progress(f"calibrating {Path(bundle).name} on {len(files)} images") as tick:
            measured = api.measure_rate_curve(
                model,
                {p.relative_to(images).as_posix(): read_rgb(p) for p in files},
                progress=tick,
            )
        source = {"images": Path(images).name, "count": len(files)}
        set_rate_curve(bundle, output, measured, source)
        curve = mean_curve(measured)
        points = ", ".join(f"{q / 256:g}: {b:.4f} bpp {p:.2f} dB" for q, b, p in curve)
        _wrote(output, f"; step: {points}")
    except (OSError, ValueError) as exc:  # BundleError and ImageError are ValueErrors
        fail_hard(exc, debug)


@weights.command("texture-book")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@_photos_option
@click.option(
    "--taef2",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder with taef2_encoder.safetensors and taef2_decoder.safetensors.",
)
@click.option(
    "--size",
    type=click.IntRange(min=16),
    default=32768,
    show_default=True,
    help="Exemplars in the book.",
)
@_texture_output
@click.option("-f", "--force", is_flag=True, help="Overwrite the output.")
@debug_option
def weights_texture_book(
    bundles: tuple[str, ...],
    photos: str,
    taef2: str,
    size: int,
    output: str,
    force: bool,
    debug: bool,
) -> None:
    """Make the texture synthesis' file from photographs and the BUNDLES' fidelity decodes
    (the shipped one: the finest and the coarsest rate).

    Decoders read it from texture/ beside the bundles (docs/architecture.md, section 12).
    """
    from aeic_codec.bundles.bundle import load_bundle
    from aeic_codec.codec.texture_synthesis import save_texture
    from aeic_codec.tools.texture_book import build_book, photo_files

    check_output(output, force)
    try:
        files = photo_files(photos)
        models = [load_bundle(b, encoder=True, decoder=True) for b in bundles]
        with _terminal_progress(f"exemplars from {len(files)} photographs") as tick:
            made = build_book(files, models, taef2, size, progress=tick)
        names = [Path(b).name for b in bundles]
        source = {"bundles": names, "photos": len(files), "size": size}
        save_texture(output, made, source)
        click.echo(f"aeic: wrote {output} ({len(made.book.keys)} exemplars)", err=True)
    except (OSError, ValueError) as exc:
        fail_hard(exc, debug)


@weights.command("texture-renderer")
@click.argument("texture", type=click.Path(exists=True, dir_okay=False))
@_texture_output
@_photos_option
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Training steps, each on 8 random 128 px crops (about 0.8 s on 2 cores with bf16).",
)
@_checkpoint_option
@click.option("-f", "--force", is_flag=True, help="Overwrite the output (it may be TEXTURE).")
@debug_option
def weights_texture_renderer(
    texture: str,
    output: str,
    photos: str,
    steps: int,
    checkpoint: str | None,
    force: bool,
    debug: bool,
) -> None:
    """Copy a texture file with a lighter encoder and decoder distilled from its own.

    The copy keeps the exemplar book; its networks cost a fraction of TAEF2's, which is
    what texture synthesis needs on CPUs without bf16 (docs/architecture.md, section 12).
    """
    from aeic_codec.codec.texture_synthesis import load_texture, save_texture, texture_provenance
    from aeic_codec.runtime.devices import resolve_precision
    from aeic_codec.tools.renderer import distil_renderer
    from aeic_codec.tools.texture_book import photo_files

    check_output(output, force)
    try:
        teacher = load_texture(texture)
        files = photo_files(photos)
        with _terminal_progress(f"distilling a renderer from {Path(texture).name}") as tick:
            made = distil_renderer(
                teacher,
                files,
                steps,
                dtype=resolve_precision("auto"),
                checkpoint=checkpoint,
                progress=_without_loss(tick),
            )
        renderer = {"from": Path(texture).name, "photos": len(files), "steps": steps}
        save_texture(output, made, dict(texture_provenance(texture), renderer=renderer))
        click.echo(f"aeic: wrote {output} (a distilled renderer, the same book)", err=True)
    except (OSError, ValueError) as exc:  # TextureFileError is a ValueError
        fail_hard(exc, debug)


@weights.command("fast-encoder")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@_bundle_output
@_photos_option
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=4000,
    show_default=True,
    help="Training steps, each on 8 random 256 px crops (about 0.33 s on 2 cores).",
)
@click.option(
    "--level",
    type=click.IntRange(min=1),
    default=StemConfig.level,
    show_default=True,
    help="How many of g_a's levels (from the image side) the stem stands in for.",
)
@click.option(
    "--blocks",
    type=click.IntRange(min=0),
    default=StemConfig.blocks,
    show_default=True,
    help="StarBlocks in it.",
)
@click.option(
    "--kernel",
    type=click.Choice(["1", "3"]),
    default=str(StemConfig.kernel),
    show_default=True,
    help="Size of its convolution over the pixel patches (1: each patch alone, cheaper).",
)
@click.option(
    "--further",
    is_flag=True,
    help="Distil the bundle's own stem further instead of starting from random weights "
    "(its stem must be the one --level, --blocks and --kernel describe).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Learning rate of the first step (it falls to 0 on a cosine).",
)
@_checkpoint_option
@click.option("-f", "--force", is_flag=True, help="Overwrite the output (it may be BUNDLE).")
@debug_option
def weights_fast_encoder(
    bundle: str,
    output: str,
    photos: str,
    steps: int,
    level: int,
    blocks: int,
    kernel: str,
    further: bool,
    lr: float,
    checkpoint: str | None,
    force: bool,
    debug: bool,
) -> None:
    """Copy a bundle with a fast encoder: a stem distilled from its g_a (aeic encode --fast).

    The stem stands in for g_a's finest levels; the copy keeps the identity and decodes
    every file the bundle made (docs/architecture.md, section 3). With --further, the
    bundle's stem is distilled further (the provenance keeps what made it before).
    """
    from aeic_codec.bundles.bundle import load_bundle
    from aeic_codec.bundles.copies import attach_stem
    from aeic_codec.tools.stem import distil_stem
    from aeic_codec.tools.texture_book import photo_files

    check_output(output, force)
    try:
        config = StemConfig(level=level, blocks=blocks, kernel=int(kernel))
        model = load_bundle(bundle, decoder=False)
        config.check(model.cfg)
        start = model.stem if further else None
        if further and start is None:
            raise ValueError(f"{bundle}: no fast encoder to distil further")
        files = photo_files(photos)
        with _terminal_progress(f"distilling a stem from {Path(bundle).name}") as tick:
            stem = distil_stem(
                model,
                files,
                config,
                steps,
                lr=lr,
                start=start,
                checkpoint=checkpoint,
                progress=_without_loss(tick),
            )
        source: dict[str, object] = {"photos": len(files), "steps": steps, "lr": lr}
        if further:
            source["after"] = model.provenance.get("stem", {})
        attach_stem(bundle, stem, output, provenance=source)
        _wrote(output, ", with a fast encoder")
    except (OSError, ValueError) as exc:  # BundleError is a ValueError
        fail_hard(exc, debug)
