"""Training speed of the small default model on this CPU: 1 and 2 processes, fp32 and bf16.

configs/small-default.toml at a global batch of 8 random crops; with N processes each
takes a share of 8 // N, on one thread of its own (so N processes use N cores), joined
by gloo as torchrun would join them. Building the model and one warm-up step are left
out of the timing. Prints the machine, then steps/s per process count and precision.
Usage: python -m bench.train_speed [--steps 3] [--processes 1,2] [--crop 256] [--fp32-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aeic_codec.training import Trainer, load_train_config
from aeic_codec.training.distributed import join, leave
from bench._machine import machine_line

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "small-default.toml"
BATCH = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, bf16: bool, steps: int, crop: int, out) -> None:
    """One process: join the group, train ``steps`` timed steps on random crops."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    config = load_train_config(CONFIG)
    stage = dataclasses.replace(config.stages[0], batch=BATCH, crop=crop, accum=1)
    config = dataclasses.replace(config, stages=(stage,), bf16=bf16, device="cpu")
    group = join("cpu")
    try:
        trainer = Trainer(config, "cpu", group)
        share = group.share(BATCH)
        generator = torch.Generator().manual_seed(rank)
        n = share.stop - share.start
        batches = [torch.rand(n, 3, crop, crop, generator=generator) * 2 - 1 for _ in range(steps)]
        trainer.train_step(batches[:1])  # warm-up: first-call allocations and kernel selection
        if size > 1:
            dist.barrier()
        began = time.perf_counter()
        for batch in batches:
            trainer.train_step([batch])
        if size > 1:
            dist.barrier()
        if group.main:
            out.put(steps / (time.perf_counter() - began))
    finally:
        leave(group)


def steps_per_second(processes: int, bf16: bool, steps: int, crop: int) -> float:
    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    args = (processes, _free_port(), bf16, steps, crop, out)
    mp.start_processes(_worker, args=args, nprocs=processes, start_method="spawn")
    return out.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--fp32-only", action="store_true", help="skip the bf16 rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_line())
    print(f"native bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print(f"small-default, global batch {BATCH}, {args.crop}x{args.crop} crops, 1 thread a process")
    precisions = [("fp32", False)] + ([] if args.fp32_only else [("bf16", True)])
    for processes in (int(n) for n in args.processes.split(",")):
        for name, bf16 in precisions:
            rate = steps_per_second(processes, bf16, args.steps, args.crop)
            print(f"{processes} process(es), {name}: {rate:.3f} steps/s ({1 / rate:.2f} s/step)")


if __name__ == "__main__":
    main()
