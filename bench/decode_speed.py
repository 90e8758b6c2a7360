"""Decode speed and peak memory with a full-size random-weight model on this CPU.

Times the whole decode of an .aeic file (entropy decoding + g_s + eps + D) for 768x512 in
bf16 and fp32, model loading reported on its own line, and the peak resident memory of
decoding a large image (2048x2048 by default) in a fresh process.

Usage: python -m bench.decode_speed [--variant AEIC-SE] [--large 2048x2048] [--skip-fp32]

With ``AEIC_MAX_CPU_ISA=AVX2`` in the environment it measures the paths of a CPU with AVX2
alone (``aeic_codec/runtime/cpu.py``; the machine line says so).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from aeic_codec import api
from aeic_codec.codec.model import AEIC
from aeic_codec.nn.config import PRESETS
from aeic_codec.runtime.allocator import keep_freed_memory
from bench._machine import machine_line, peak_rss_mb, run_fresh
from bench._timing import best_of


def build(variant: str) -> tuple[AEIC, float]:
    t = time.perf_counter()
    torch.manual_seed(0)
    model = AEIC(PRESETS[variant]).eval()
    model.build_tables()
    model.identity = "00000000"
    return model, time.perf_counter() - t


def image(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack(
        [(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) % 256)], -1
    ).astype(np.uint8)


def time_decode(model: AEIC, h: int, w: int, precision: str, runs: int) -> float:
    data = api.encode(image(h, w), model)
    api.decode(data, model, precision=precision)  # warm-up (and dtype conversion)
    return best_of(lambda: api.decode(data, model, precision=precision), runs)


def peak_child(variant: str, h: int, w: int, precision: str) -> dict[str, float]:
    """Decode once in a fresh process and report its peak RSS (MB) and seconds."""
    code = (
        "import json, time\n"
        "from bench.decode_speed import build, image\n"
        "from aeic_codec import api\n"
        "from aeic_codec.runtime.allocator import keep_freed_memory\n"
        "from bench._machine import peak_rss_mb\n"
        "keep_freed_memory()\n"
        f"m, _ = build({variant!r}); data = api.encode(image({h}, {w}), m)\n"
        f"t = time.perf_counter(); api.decode(data, m, precision={precision!r})\n"
        "print(json.dumps({'seconds': time.perf_counter() - t,"
        " 'peak_mb': peak_rss_mb()}))\n"
    )
    return run_fresh(code)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="AEIC-SE", choices=sorted(PRESETS))
    p.add_argument("--size", default="512x768", help="HxW of the timed decode")
    p.add_argument("--large", default="2048x2048", help="HxW of the memory run ('' to skip)")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--skip-fp32", action="store_true")
    args = p.parse_args()
    keep_freed_memory()  # as the aeic command does (aeic_codec/runtime/allocator.py)
    print(machine_line())
    model, load = build(args.variant)
    print(f"{args.variant}: model build {load:.1f} s (excluded below)")
    h, w = (int(v) for v in args.size.split("x"))
    for precision in ("bf16",) if args.skip_fp32 else ("bf16", "fp32"):
        secs = time_decode(model, h, w, precision, args.runs)
        print(f"decode {w}x{h} {precision}: {secs:.2f} s")
    del model
    if args.large:
        h, w = (int(v) for v in args.large.split("x"))
        r = peak_child(args.variant, h, w, "bf16")
        print(
            f"decode {w}x{h} bf16: {r['seconds']:.1f} s, peak RSS {r['peak_mb']:.0f} MB "
            f"(includes the model)"
        )
    rss = peak_rss_mb()
    print(f"this process peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
