"""``python -m aeic_codec.training.realism``: train, or export, a realism decoder.

An alias of the one entry point (``run.train``, which ``aeic train`` calls) for realism
configurations, with the options it always had:

    python -m aeic_codec.training.realism --config configs/realism-l12.toml \\
        --data DIR --out RUN [--resume]
    python -m aeic_codec.training.realism --config configs/realism-l12.toml \\
        --out RUN --export BUNDLE [--step N]

``--export`` writes the base bundle with the run's realism decoder attached, from its
checkpoint or from the one kept at evaluated step N (``realism_trainer.export``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .base import checkpoint_path
from .config import RealismConfig, TrainConfigError, load_train_config
from .realism_trainer import export
from .run import TrainingStopped, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", help="training images (a folder)")
    parser.add_argument("--out", required=True, help="the run folder")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--export", metavar="BUNDLE", help="write the bundle from the run's checkpoint"
    )
    parser.add_argument(
        "--step", type=int, help="with --export: the checkpoint kept at this evaluated step"
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_train_config(args.config)
        if not isinstance(cfg, RealismConfig):
            parser.error(f"{args.config} is not a realism configuration (no base_bundle)")
        if args.export:
            checkpoint = checkpoint_path(args.out, args.step)
            print(export(cfg, checkpoint, Path(args.export), Path(args.config).name))
        elif not args.data:
            parser.error("--data is needed to train")
        else:
            # As it always did here, --resume without a checkpoint starts the run.
            resume = args.resume and checkpoint_path(args.out).exists()
            train(cfg, args.data, args.out, resume=resume)
    except TrainingStopped as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(130) from None
    except TrainConfigError as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
