"""Fuzz the decoder with many mutated .aeic files (bit flips, truncation, insertion,
length-field changes, random streams and colour grids), each resealed with a fresh CRC
so that it reaches the entropy decoder. Every case must end in success or FormatError;
anything else is counted and printed. Uses a tiny random-weight model so that 10,000
cases take minutes.

Usage: python -m bench.fuzz_decode [--cases 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from aeic_codec import api
from aeic_codec.bundles.bundle import load_bundle, save_bundle
from aeic_codec.codec.model import AEIC
from aeic_codec.format.container import AeicFile, FormatError, pack, unpack
from aeic_codec.nn.config import tiny_config
from bench._machine import machine_line, peak_rss_mb


def mutate(good: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(good[:-4])
    kind = rng.integers(0, 5)
    if kind == 0:  # bit flips anywhere after the magic
        for _ in range(int(rng.integers(1, 8))):
            pos = int(rng.integers(3, len(data)))
            data[pos] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:  # truncation
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == 2:  # insertion
        pos = int(rng.integers(0, len(data) + 1))
        data[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8).tobytes()
    else:  # one stream or the colour grid replaced by random bytes, lengths consistent
        f = unpack(good)
        streams = list(f.streams)
        i = int(rng.integers(0, 6))
        new = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        grid = f.grid
        if i == 5 and grid is not None:
            grid = dataclasses.replace(grid, data=new)
        else:
            streams[i % 5] = new
        return pack(AeicFile(f.width, f.height, f.model_id, tuple(streams), f.colour, grid))
    return bytes(data) + zlib.crc32(bytes(data)).to_bytes(4, "big")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(machine_line())
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.safetensors"
        save_bundle(path, AEIC(tiny_config()))
        model = load_bundle(path, encoder=True, decoder=False)
    rng = np.random.default_rng(args.seed)
    img = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    good = api.encode(img, model, colour_grid=True)
    outcomes: Counter[str] = Counter()
    slowest = 0.0
    start = time.perf_counter()
    for _ in range(args.cases):
        data = mutate(good, rng)
        t = time.perf_counter()
        try:
            f = api.read_header(data, max_pixels=1 << 18)
            api.read_grid(f)
            api.decode_latent(f, model)
            outcomes["decoded"] += 1
        except FormatError:
            outcomes["FormatError"] += 1
        except api.ModelMismatch:
            outcomes["ModelMismatch"] += 1
        except Exception as exc:  # the point of the benchmark: anything else is a bug
            outcomes[f"BUG {type(exc).__name__}"] += 1
            print("BUG:", type(exc).__name__, exc)
        slowest = max(slowest, time.perf_counter() - t)
    total = time.perf_counter() - start
    rss = peak_rss_mb()
    print(
        f"{args.cases} cases in {total:.0f} s, slowest {slowest * 1000:.0f} ms, "
        f"peak RSS {rss:.0f} MB"
    )
    for name, count in sorted(outcomes.items()):
        print(f"  {name}: {count}")
    bugs = sum(v for k, v in outcomes.items() if k.startswith("BUG"))
    raise SystemExit(1 if bugs else 0)


if __name__ == "__main__":
    main()
