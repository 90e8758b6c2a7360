"""Time aeic's encode work on a 1920x1088 image with a full-size random-weight AEIC-SE.

Prints seconds per image (best of N runs) of the float entropy path, split into the
networks (g_a, h_a, h_s and the four context passes, timed alone) and the rest (entropy
coding and bookkeeping: total minus networks), and of the integer entropy path (the model
integerized in memory, calibrated on the same random image). Model construction is
excluded.

Usage: python -m bench.encode_speed [--runs 3] [--size 1088x1920] [--variant AEIC-SE]
"""

from __future__ import annotations

import argparse
import time

import torch

from aeic_codec.config import PRESETS
from aeic_codec.intnet import IntegerEntropy, integerize
from aeic_codec.model import AEIC
from bench._machine import machine_line


def _best(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@torch.no_grad()
def measure(variant: str, height: int, width: int, runs: int) -> dict[str, float]:
    """Whole compress, and the networks alone (g_a, h_a, h_s, 4 context passes)."""
    torch.manual_seed(0)
    model = AEIC(PRESETS[variant], decoder=False).eval()
    model.build_tables()
    x = torch.rand(1, 3, height, width) * 2 - 1

    def networks() -> None:
        y = model.g_a(x)
        base = model.h_s(model.h_a(y), y.shape[-2:])
        for k in range(4):
            model.context.params(k, base)

    total = _best(lambda: model.compress(x, integer=False), runs)
    nets = _best(networks, runs)
    size = sum(map(len, model.compress(x, integer=False).streams))
    model.integer = IntegerEntropy(model.cfg, integerize(model, [x]))
    integer = _best(lambda: model.compress(x, integer=True), runs)
    return {
        "total": total,
        "networks": nets,
        "coding": max(total - nets, 0.0),
        "bytes": size,
        "integer": integer,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size", default="1088x1920", help="HxW")
    p.add_argument("--variant", default="AEIC-SE", choices=sorted(PRESETS))
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    print(machine_line())
    r = measure(args.variant, h, w, args.runs)
    print(
        f"{args.variant} {w}x{h}: {r['total']:.3f} s per image "
        f"on the float entropy path (networks {r['networks']:.3f} s, entropy coding "
        f"{r['coding']:.3f} s), {r['bytes']} payload bytes with random weights; "
        f"{r['integer']:.3f} s on the integer path"
    )


if __name__ == "__main__":
    main()
