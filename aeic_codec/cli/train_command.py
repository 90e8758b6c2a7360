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
    type=click.Path(exists=True, file_okay=False),
    help="Folder of training images (searched recursively); needed unless --export.",
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
@click.option(
    "--export",
    "export_to",
    type=click.Path(dir_okay=False),
    help="Realism runs: instead of training, write the base bundle with the run's realism "
    "decoder attached to this file.",
)
@click.option(
    "--step",
    type=click.IntRange(min=1),
    help="With --export: the checkpoint kept at this evaluated step (default: the latest).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@debug_option
def train(
    config_path: str,
    data: str | None,
    out: str | None,
    resume: bool,
    device: str | None,
    export_to: str | None,
    step: int | None,
    quiet: bool,
    debug: bool,
) -> None:
    """Train or fine-tune a model; every stage ends in a bundle in the run folder.

    A realism configuration (one with a top-level base_bundle) trains a realism decoder
    for that bundle and keeps checkpoints; --export then writes the bundle carrying it.
    Under torchrun (torchrun --nproc_per_node N -m aeic_codec.cli train ...) N processes
    share every batch; rank 0 writes the run folder and alone reports.
    """
    import dataclasses

    realism = _is_realism(config_path)
    if step is not None and export_to is None:
        raise click.UsageError("--step goes with --export")
    if export_to is not None and not realism:
        raise click.UsageError("--export is for realism configurations (with a base_bundle)")
    if export_to is None and data is None:
        raise click.UsageError("Missing option '--data'.")
    if not realism and importlib.util.find_spec("peft") is None:  # LoRA: not in the plain install
        raise Refused(
            "aeic train needs the training extra: pip install '.[train]' in aeic's folder"
        )
    from aeic_codec.training import (
        TrainConfigError,
        TrainingStopped,
        checkpoint_path,
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
        if export_to is not None:
            from aeic_codec.training.realism_trainer import export

            identity = export(
                config, checkpoint_path(run, step), Path(export_to), Path(config_path).name
            )
            click.echo(f"aeic: wrote {export_to} (model {identity})", err=True)
            return
        made = run_training(config, data, run, resume=resume, progress=not quiet)
    except TrainingStopped as exc:
        if talk:
            click.echo(f"aeic: {exc}", err=True)
        sys.exit(130)
    except (TrainConfigError, BundleError, OSError, ValueError) as exc:
        fail_hard(exc, debug)
    if talk:
        kind = "checkpoint" if realism else "bundle"
        click.echo(f"aeic: training done; {kind} {made}", err=True)


def _is_realism(config_path: str) -> bool:
    """Whether the TOML names a base bundle (a realism run), read without torch; a file
    that does not parse counts as not, and its loader reports why."""
    import tomllib

    try:
        with open(config_path, "rb") as fh:
            return "base_bundle" in tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return False
