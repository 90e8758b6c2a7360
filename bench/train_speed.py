"""Training speed of the small default model on this CPU, in fp32 and bf16.

configs/small-default.toml at batch 8 of random 256x256 crops; building the model and
one warm-up step are left out of the timing. Prints the machine, then steps/s per
precision. Usage: python -m bench.train_speed [--steps 3] [--threads T]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from aeic_codec.training import Trainer, load_train_config
from bench._machine import machine_line

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "small-default.toml"


def steps_per_second(bf16: bool, steps: int) -> float:
    config = load_train_config(CONFIG)
    stage = dataclasses.replace(config.stages[0], batch=8, crop=256, accum=1)
    config = dataclasses.replace(config, stages=(stage,), bf16=bf16, device="cpu")
    trainer = Trainer(config)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(8, 3, 256, 256, generator=generator) * 2 - 1 for _ in range(steps + 1)]
    trainer.train_step(batches[:1])  # warm-up: first-call allocations and kernel selection
    began = time.perf_counter()
    for batch in batches[1:]:
        trainer.train_step([batch])
    return steps / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"native bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print("small-default, batch 8, 256x256 crops")
    for name, bf16 in (("fp32", False), ("bf16", True)):
        rate = steps_per_second(bf16, args.steps)
        print(f"{name}: {rate:.3f} steps/s ({1 / rate:.2f} s/step)")


if __name__ == "__main__":
    main()
