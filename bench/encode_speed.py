"""Encode speed, side by side in one run: the shallow encoder against AVIF, integer against float.

Two comparisons, each timed in alternating rounds (one call of each per round, so that a
change in the machine's load hits both alike), reporting the median and the best round:

- ``small``: ``api.encode_image`` of kodim23 (768x512) with a shipped bundle (default
  ``aeic-small-l12``; integer entropy path, file bytes included; the default encoder,
  which is the fast one on a CPU without native bf16 (``api.resolve_fast``), g_a in
  precision auto and in fp32, and the fast encoder where the bundle has one) against
  Pillow's AVIF encoder at quality 0 on the same image, and their ratio (issues 19 and
  31: at most 2.5).
- ``se``: a full-size AEIC-SE with random weights, integerized in memory after the fact as
  the importer does for a published checkpoint (calibrated on the 768x512 timing image;
  8-bit integer weights, "mixed" ones, 8-bit in the context model's blocks, and 16-bit
  ones: the importer takes the first that costs at most 1 % in rate), encoding a
  1920x1088 image (``AEIC.compress``) through the float entropy path with g_a in fp32
  (the published pipeline, and aeic's before the integer path), and through the integer
  path with g_a in fp32 and in the precision ``auto`` picks here. The payload bytes of
  each are printed too (random weights: a check that the paths agree, not a rate figure).

Like the ``aeic`` command, the process first sets glibc's malloc to keep freed memory
(``aeic_codec/runtime/allocator.py``); ``--glibc-defaults`` leaves it as it is.

Usage: python -m bench.encode_speed [--only small|se] [--rounds 5] [--threads 2]
                                    [--bundle weights/aeic-small-l12.safetensors]
                                    [--glibc-defaults]

With ``AEIC_MAX_CPU_ISA=AVX2`` in the environment it measures the paths of a CPU with AVX2
alone (``aeic_codec/runtime/cpu.py``; the machine line says so).
"""

from __future__ import annotations

import argparse
import io
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aeic_codec.runtime.allocator import keep_freed_memory
from bench import ROOT
from bench._machine import machine_line
from bench._timing import side_by_side

IMAGE = ROOT / "docs" / "kodim23.png"


def small(rounds: int, bundle: Path) -> dict[str, list[float]]:
    """A bundle's api.encode_image against Pillow AVIF q0, on kodim23."""
    from aeic_codec import api
    from aeic_codec.bundles.bundle import load_bundle

    model = load_bundle(bundle, decoder=False)
    image = np.asarray(Image.open(IMAGE).convert("RGB"))
    pil = Image.fromarray(image)
    default = "fast encoder" if api.resolve_fast(None, model.stem is not None) else "g_a"
    runs: dict[str, Callable[[], object]] = {
        "AVIF q0 (Pillow)": lambda: pil.save(io.BytesIO(), "AVIF", quality=0),
        f"{bundle.stem} default ({default})": lambda: api.encode_image(image, model),
        f"{bundle.stem} g_a": lambda: api.encode_image(image, model, fast=False),
        f"{bundle.stem} g_a fp32": lambda: api.encode_image(
            image, model, precision="fp32", fast=False
        ),
    }
    if model.stem is not None:
        runs[f"{bundle.stem} --fast"] = lambda: api.encode_image(image, model, fast=True)
    return side_by_side(runs, rounds)


def aeic_se(rounds: int, height: int = 1088, width: int = 1920) -> dict[str, list[float]]:
    """AEIC-SE with random weights: AEIC.compress through the integer and the float path."""
    from aeic_codec import api
    from aeic_codec.codec.model import AEIC
    from aeic_codec.entropy_models.intnet import IntegerEntropy, integerize
    from aeic_codec.entropy_models.quantize import WEIGHT_PLANS
    from aeic_codec.nn.config import PRESETS
    from aeic_codec.tools.integerize import padded

    torch.manual_seed(0)
    model = AEIC(PRESETS["AEIC-SE"], decoder=False).eval()
    model.build_tables()
    photo = np.asarray(Image.open(IMAGE).convert("RGB"))
    paths = {
        plan: IntegerEntropy(model.cfg, integerize(model, [padded(photo)], weight_plan=plan))
        for plan in WEIGHT_PLANS
    }
    big = np.asarray(Image.fromarray(photo).resize((width, height), Image.BICUBIC))
    dtype = api.resolve_precision("auto")
    auto = f"auto ({str(dtype).removeprefix('torch.')})"
    x = padded(big)

    def integer(plan: str, dtype: torch.dtype) -> Callable[[], object]:
        def run() -> object:
            model.integer = paths[plan]
            return model.compress(x, integer=True, dtype=dtype)

        return run

    runs = {
        "AEIC-SE float path, fp32": lambda: model.compress(x, integer=False),
        "AEIC-SE integer 8-bit, fp32": integer("8", torch.float32),
        f"AEIC-SE integer 8-bit, {auto}": integer("8", dtype),
        f"AEIC-SE integer mixed, {auto}": integer("mixed", dtype),
        f"AEIC-SE integer 16-bit, {auto}": integer("16", dtype),
    }
    for name, run in runs.items():
        print(f"  {name:38s} payload {sum(len(s) for s in run().streams)} bytes")
    return side_by_side(runs, rounds)


def report(title: str, times: dict[str, list[float]]) -> None:
    """Median and best seconds of each, and its ratio to the first: of the medians, and
    the median of the rounds' own ratios (steadier when the machine's load drifts, as
    the two calls of a round run back to back)."""
    print(title)
    medians = {name: statistics.median(t) for name, t in times.items()}
    first_name = next(iter(times))
    first = medians[first_name]
    for name, t in times.items():
        rounds = statistics.median(a / b for a, b in zip(t, times[first_name], strict=True))
        print(
            f"  {name:38s} median {medians[name]:8.3f} s  best {min(t):8.3f} s  "
            f"({medians[name] / first:.2f}x the first; {rounds:.2f}x round by round)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("small", "se"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bundle", type=Path, default=ROOT / "weights" / "aeic-small-l12.safetensors")
    p.add_argument("--glibc-defaults", action="store_true", help="Leave malloc as it is.")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kept = False if args.glibc_defaults else keep_freed_memory()
    print(machine_line(), "| malloc keeps freed memory" if kept else "| malloc defaults")
    if args.only in (None, "small"):
        report("kodim23 768x512, side by side:", small(args.rounds, args.bundle))
    if args.only in (None, "se"):
        report("AEIC-SE (random weights) 1920x1088, side by side:", aeic_se(args.rounds))


if __name__ == "__main__":
    main()
