"""``aeic train``: a training run from a TOML configuration, ending in bundles."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import click

from aeic_codec.bundles.bundle import BundleError

from .common import DEVICES, Refused, debug_option, fail_hard


@click.command()
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
    type=click.Choice(["auto", *DEVICES]),
    help="Train on this device instead of the config's (its bf16 = true: where supported).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@debug_option
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
        raise Refused(
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
        fail_hard(exc, debug)
    if talk:
        click.echo(f"aeic: training done; bundle {bundle}", err=True)
