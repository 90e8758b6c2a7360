"""The fast encoder (``aeic encode --fast``) against the bundle's own g_a, on Kodak.

For each shipped bundle with a fast encoder, every Kodak image is encoded with g_a and with
the stem in front of g_a's remaining levels, and both files are decoded at realism 0.
Reported as means over the images: bpp, PSNR, MS-SSIM, the file size change, and what the
PSNR lost is worth in bytes: the bytes g_a's own files need for the fast encoder's PSNR,
read off the bundles' rate curve (the lambda sweep of ``docs/rate-kodak.json``,
``bench.rate_kodak``: log bpp interpolated in PSNR, anchored at this run's g_a). Then,
on kodim23 in alternating rounds (median seconds): g_a alone and ``api.encode_image``
both ways, and Pillow's AVIF at quality 0 for scale.

Usage:
    python -m bench.fast_encoder [--lambdas 12 64 500] [--limit N] [--rounds 9]
                                 [--json docs/fast-encoder.json] [--save DIR]

With ``AEIC_MAX_CPU_ISA=AVX2`` in the environment it measures the paths of a CPU with AVX2
alone (``aeic_codec/runtime/cpu.py``; the machine line says so).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aeic_codec import api
from aeic_codec.codec.metrics import ms_ssim_u8, psnr_u8
from aeic_codec.runtime.allocator import keep_freed_memory
from aeic_codec.tools.integerize import padded
from bench import ROOT
from bench._machine import machine_line
from bench._tables import md_table
from bench._timing import side_by_side

KODAK = ROOT.parent / "shared" / "data" / "kodak"
SAMPLE = ROOT / "docs" / "kodim23.png"
RATE_CURVE = ROOT / "docs" / "rate-kodak.json"


def rate_distortion(lam: float, images: list[Path], save: Path | None) -> list[dict[str, float]]:
    """Per image and encoder: bpp, PSNR and MS-SSIM of the realism-0 decode (saved as PNG
    under ``save``/l<lambda>-<encoder>/ if given, for looking at them)."""
    model = api.load_model(lambda_=lam)
    rows = []
    for path in images:
        src, _ = api.read_image(path)
        h, w = src.shape[:2]
        for fast in (False, True):
            data = api.encode(src, model, fast=fast)
            out = api.decode(data, model)
            if save is not None:
                folder = save / f"l{lam:g}-{'fast' if fast else 'g_a'}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(out).save(folder / f"{path.stem}.png")
            rows.append(
                {
                    "lambda": lam,
                    "image": path.stem,
                    "fast": fast,
                    "bpp": 8 * len(data) / (h * w),
                    "psnr": psnr_u8(out, src),
                    "msssim": ms_ssim_u8(out, src),
                }
            )
        print(f"lambda {lam:g} {path.stem}", flush=True)
    return rows


def speed(lam: float, rounds: int) -> dict[str, float]:
    """Median seconds on kodim23: g_a and the fast encoder alone and in the whole encode
    (``encode_image`` with ``fast=False`` and True: not the default, which depends on the
    CPU), and AVIF q0."""
    model = api.load_model(lambda_=lam, decoder=False)
    image = np.asarray(Image.open(SAMPLE).convert("RGB"))
    x = padded(image)
    pil = Image.fromarray(image)
    times = side_by_side(
        {
            "AVIF q0 (Pillow)": lambda: pil.save(io.BytesIO(), "AVIF", quality=0),
            "g_a": lambda: model.analyse(x),
            "g_a, fast": lambda: model.analyse(x, fast=True),
            "encode_image": lambda: api.encode_image(image, model, fast=False),
            "encode_image, fast": lambda: api.encode_image(image, model, fast=True),
        },
        rounds,
    )
    return {name: statistics.median(t) for name, t in times.items()}


def g_a_bytes_at(psnr: float, anchor: tuple[float, float], sweep: list[dict]) -> float:
    """bpp of g_a's files at ``psnr`` on the rate curve ``sweep`` (rows with bpp and psnr),
    scaled so that the curve passes through ``anchor`` (g_a's psnr and bpp in this run)."""
    points = sorted((s["psnr"], np.log(s["bpp"])) for s in sweep)
    psnrs, log_bpp = zip(*points, strict=True)
    at = float(np.interp(psnr, psnrs, log_bpp) - np.interp(anchor[0], psnrs, log_bpp))
    return anchor[1] * float(np.exp(at))


def summary(rows: list[dict[str, float]], sweep: list[dict] | None) -> str:
    head = [
        "lambda",
        "encoder",
        "bpp",
        "PSNR",
        "MS-SSIM",
        "bytes vs g_a",
        "g_a's bytes at this PSNR",
    ]
    lines = []
    for lam in sorted({r["lambda"] for r in rows}):
        full = [r for r in rows if r["lambda"] == lam and not r["fast"]]
        fast = [r for r in rows if r["lambda"] == lam and r["fast"]]
        growth = np.mean([f["bpp"] / g["bpp"] - 1 for f, g in zip(fast, full, strict=True)])
        for name, group in (("g_a", full), ("fast", fast)):
            m = {k: float(np.mean([g[k] for g in group])) for k in ("bpp", "psnr", "msssim")}
            change, worth = "-", "-"
            if group is fast:
                change = f"{100 * growth:+.2f} %"
                g = {k: float(np.mean([r[k] for r in full])) for k in ("bpp", "psnr")}
                if sweep:
                    need = g_a_bytes_at(m["psnr"], (g["psnr"], g["bpp"]), sweep)
                    worth = f"{100 * (need / m['bpp'] - 1):+.1f} %"
            row = [f"{lam:g}", name, f"{m['bpp']:.4f}", f"{m['psnr']:.2f}", f"{m['msssim']:.4f}"]
            lines.append([*row, change, worth])
    return md_table(head, lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lambdas", type=float, nargs="+", default=[12.0, 64.0, 500.0])
    p.add_argument("--kodak", type=Path, default=KODAK)
    p.add_argument("--limit", type=int)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--save", type=Path, help="write the decoded pictures under this folder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    images = sorted(args.kodak.glob("*.png"))[: args.limit]
    if not images:
        raise SystemExit(f"no PNG images in {args.kodak}")
    print(machine_line(), flush=True)
    times = {f"{lam:g}": speed(lam, args.rounds) for lam in args.lambdas}
    for lam, t in times.items():
        avif = t["AVIF q0 (Pillow)"]
        print(f"lambda {lam}, kodim23, median s (x AVIF q0):")
        for name, s in t.items():
            print(f"  {name:20s} {s:7.3f}  ({s / avif:.2f}x)")
    rows = [row for lam in args.lambdas for row in rate_distortion(lam, images, args.save)]
    sweep = json.loads(RATE_CURVE.read_text())["lambda_sweep"] if RATE_CURVE.exists() else None
    print(summary(rows, sweep))
    if args.json:
        data = {"machine": machine_line(), "speed": times, "rows": rows}
        args.json.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
