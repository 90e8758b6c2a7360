"""Several processes training one model: torchrun's environment and what the ranks share.

``torchrun --nproc_per_node N -m aeic_codec.cli train ...`` starts N copies of the
command with RANK, WORLD_SIZE, LOCAL_RANK and a rendezvous address in the environment;
``join`` turns that into a process group (NCCL between GPUs, gloo on CPUs) and a
``Group``. Each process takes an equal share of every global batch; DistributedDataParallel
averages the gradients, so every process holds the same weights, optimizer and RNG state
after each step, and the checkpoint rank 0 writes resumes under any process count.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from .config import TrainConfigError


class Share(NamedTuple):
    """The items ``start..stop-1`` of a global batch of ``total`` that one process takes."""

    start: int
    stop: int
    total: int


@dataclass(frozen=True)
class Group:
    """This process's place among the processes of a run, and the device it trains on."""

    rank: int
    size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder and talks to the user."""
        return self.rank == 0

    def share(self, batch: int) -> Share:
        """This process's part of a global batch; every process gets as many items."""
        if batch % self.size:
            raise TrainConfigError(
                f"a batch of {batch} does not split evenly over {self.size} processes"
            )
        n = batch // self.size
        return Share(self.rank * n, (self.rank + 1) * n, batch)

    def any(self, flag: bool) -> bool:
        """Whether any process says so (all get the same answer)."""
        if self.size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def mean_terms(
        self, rows: Sequence[dict[str, torch.Tensor]], decibels: Iterable[str] = ()
    ) -> list[dict[str, float]]:
        """Each row's loss terms averaged over the processes (their shares are equal).

        Terms named in ``decibels`` are averaged as powers, so that the result is what one
        process would have computed on the whole batch.
        """
        plain = [{key: value.item() for key, value in row.items()} for row in rows]
        if self.size == 1:
            return plain
        keys, db = list(plain[0]), set(decibels)

        def power(key: str, value: float) -> float:
            return 10 ** (-value / 10) if key in db else value

        table = [[power(k, row[k]) for k in keys] for row in plain]
        values = torch.tensor(table, dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        values = (values / self.size).tolist()
        return [
            {k: -10 * math.log10(v) if k in db else v for k, v in zip(keys, row, strict=True)}
            for row in values
        ]

    def wrap(self, module: nn.Module, ignore: Sequence[str] = ()) -> nn.Module:
        """``module`` under DistributedDataParallel; itself when there is one process.

        ``ignore`` names parameters each process updates alone (identically: they get
        their gradients from the weights only, not from the data).
        """
        if self.size == 1:
            return module
        ddp = nn.parallel.DistributedDataParallel
        ddp._set_params_and_buffers_to_ignore_for_model(module, list(ignore))
        # 1x1 convolution weights in channels_last have strides that DDP's gradient
        # buckets take for another layout; it copies instead of aliasing, which is harmless.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        return ddp(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    @staticmethod
    def accumulating(modules: Iterable[nn.Module], more: bool) -> contextlib.ExitStack:
        """Skip the gradient exchange while ``more`` micro-batches follow (DDP's no_sync)."""
        stack = contextlib.ExitStack()
        if more:
            for module in modules:
                if isinstance(module, nn.parallel.DistributedDataParallel):
                    stack.enter_context(module.no_sync())
        return stack


def resolve_device(name: str) -> torch.device:
    """auto: a GPU when there is one, else the CPU; a device that is not here is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError(f"device {name}: this machine has no CUDA GPU that torch can use")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainConfigError(f"device {name}: this machine has no MPS device that torch can use")
    return device


def is_main_process() -> bool:
    """False in the processes torchrun starts besides rank 0 (they stay quiet)."""
    return os.environ.get("RANK", "0") == "0"


def join(device: str) -> Group:
    """This process's Group: alone, or the process group torchrun's environment describes.

    A GPU run puts each process on the GPU of its LOCAL_RANK.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    where = resolve_device(device)
    if size == 1:
        return Group(0, 1, where)
    if where.type == "mps":
        raise TrainConfigError("mps trains in one process; run without torchrun")
    if where.type == "cuda":
        where = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(where)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
    return Group(dist.get_rank(), dist.get_world_size(), where)


def leave(group: Group) -> None:
    """Close the process group ``join`` opened."""
    if group.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
