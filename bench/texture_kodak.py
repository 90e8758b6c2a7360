"""Texture statistics and texture synthesis on Kodak: what they cost and what they give.

For each shipped bundle, every Kodak image is encoded with texture statistics
(``aeic encode --texture``) and decoded at realism 0 (the fidelity decoder: the statistics
unused) and 1 (plus the detail the texture file synthesises). Reported per setting, as
means over the images: bpp of the whole file, the statistics' bytes and share of it,
PSNR, MS-SSIM, the luma power kept in the two finest octave bands (dB), issue 29's local
band error and coherence excess (``codec/metrics.py``), and the seconds of a decode.
Files are encoded with the bundle's own g_a on every CPU, as in ``bench.rd_kodak``, or
with ``--fast`` by its fast encoder (``aeic encode``'s default on a CPU without native
bf16).

Usage:
    python -m bench.texture_kodak [--lambdas 12 64 500] [--limit N] [--names kodim23]
        [--json OUT]
        [--save DIR]   # decoded pictures, for looking at them beside the originals
        [--crops PNG]  # original / realism 0 / texture / x2+AVIF at 1:1, lambda 12
        [--texture FILE]  # another texture file than the shipped one
        [--fast]          # files from the fast encoder instead of g_a
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from aeic_codec import api
from aeic_codec.codec.metrics import (
    band_power_db,
    coherence_excess,
    local_band_error,
    ms_ssim_u8,
    psnr_u8,
)
from aeic_codec.codec.texture_synthesis import TextureSynthesis, load_texture
from aeic_codec.format.container import unpack
from bench import ROOT
from bench._machine import machine_line
from bench._tables import md_table
from bench.rd_kodak import downscaled

KODAK = ROOT.parent / "shared" / "data" / "kodak"
FIGURES = ("bpp", "texture_bytes", "texture_share", "psnr", "msssim", "band1", "band2")
FIGURES += ("local_bands", "coherence", "decode_s")
CROP_IMAGES = ("kodim04", "kodim08", "kodim13", "kodim15", "kodim23")
CROP_SIDE = 256


def measure(
    lam: float,
    images: list[Path],
    save: Path | None,
    texture: TextureSynthesis,
    fast: bool = False,
) -> list[dict[str, float]]:
    """Rows of one bundle: realism 0 and 1 for every image (files from g_a, or from the
    fast encoder if ``fast``)."""
    model = api.load_model(lambda_=lam)
    rows = []
    for path in images:
        src, _ = api.read_image(path)
        data = api.encode(src, model, texture=True, fast=fast)
        f = unpack(data)
        for r in (0.0, 1.0):
            t0 = time.perf_counter()
            out = api.decode(data, model, realism=r, texture=texture)
            seconds = time.perf_counter() - t0
            bands = band_power_db(out, src)
            rows.append(
                {
                    "lambda": lam,
                    "image": path.stem,
                    "realism": r,
                    "bpp": f.bpp,
                    "texture_bytes": float(f.texture_size),
                    "texture_share": f.texture_size / f.size,
                    "psnr": psnr_u8(out, src),
                    "msssim": ms_ssim_u8(out, src),
                    "band1": bands[-2],
                    "band2": bands[-1],
                    "local_bands": local_band_error(out, src),
                    "coherence": coherence_excess(out, src),
                    "decode_s": seconds,
                }
            )
            if save is not None:
                from PIL import Image

                folder = save / f"l{lam:g}-r{r:g}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(out).save(folder / f"{path.stem}.png")
        print(f"lambda {lam:g} {path.stem}: {len(data)} bytes", flush=True)
    return rows


def summary(rows: list[dict[str, float]]) -> str:
    """Markdown: one line per lambda and realism, means over the images."""
    head = ["lambda", "realism", "bpp", "stats B", "stats %", "PSNR", "MS-SSIM"]
    head += ["1/8-1/4 dB", "1/4-1/2 dB", "local bands", "coherence", "decode s"]
    lines = []
    for lam in sorted({r["lambda"] for r in rows}):
        for real in (0.0, 1.0):
            group = [r for r in rows if r["lambda"] == lam and r["realism"] == real]
            m = {k: float(np.mean([g[k] for g in group])) for k in FIGURES}
            rate = [f"{m['bpp']:.4f}", f"{m['texture_bytes']:.1f}"]
            rate += [f"{100 * m['texture_share']:.2f}"]
            quality = [f"{m['psnr']:.2f}", f"{m['msssim']:.3f}", f"{m['band1']:+.1f}"]
            quality += [f"{m['band2']:+.1f}", f"{m['local_bands']:.2f}"]
            quality += [f"{m['coherence']:+.3f}", f"{m['decode_s']:.2f}"]
            lines.append([f"{lam:g}", f"{real:g}", *rate, *quality])
    return md_table(head, lines)


def crop_sheet(images: list[Path], out: Path, texture: TextureSynthesis, lam: float = 12.0) -> None:
    """Per image a row at 1:1: original, realism 0, realism 1 (texture), and x2 + AVIF at
    the lowest quality whose file is at least as large as aeic's."""
    from PIL import Image, ImageDraw

    model = api.load_model(lambda_=lam)
    rows = []
    for path in images:
        src, _ = api.read_image(path)
        h, w = src.shape[:2]
        data = api.encode(src, model, texture=True, fast=False)
        bpp = len(data) * 8 / (h * w)
        tiles = [("original", src)]
        for r in (0.0, 1.0):
            out_r = api.decode(data, model, realism=r, texture=texture)
            tiles.append((f"realism {r:g}: {bpp:.4f} bpp, {psnr_u8(out_r, src):.2f} dB", out_r))
        for q in range(0, 101, 2):
            size, avif = downscaled(2, q)(Image.fromarray(src))
            if size >= len(data):
                break
        pixels = np.asarray(avif)
        label = f"x2+AVIF q{q}: {size * 8 / (h * w):.4f} bpp, {psnr_u8(pixels, src):.2f} dB"
        tiles.append((label, pixels))
        y, x = (h - CROP_SIDE) // 2, (w - CROP_SIDE) // 2
        rows.append((path.stem, [(t, p[y : y + CROP_SIDE, x : x + CROP_SIDE]) for t, p in tiles]))
    band = CROP_SIDE + 18
    sheet = Image.new("RGB", (CROP_SIDE * 4, band * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (name, tiles) in enumerate(rows):
        for i, (label, pixels) in enumerate(tiles):
            sheet.paste(Image.fromarray(pixels), (i * CROP_SIDE, j * band + 18))
            draw.text((i * CROP_SIDE + 4, j * band + 3), f"{name} {label}", fill="black")
    sheet.save(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lambdas", type=float, nargs="+", default=[12.0, 64.0, 500.0])
    p.add_argument("--kodak", type=Path, default=KODAK)
    p.add_argument("--limit", type=int)
    p.add_argument("--names", nargs="+", help="only these images (e.g. kodim23)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--save", type=Path)
    p.add_argument("--crops", type=Path, help="write the crop sheet (PNG) here")
    p.add_argument("--texture", type=Path, help="the texture file (default: the shipped one)")
    p.add_argument("--fast", action="store_true", help="encode with the fast encoder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = sorted(args.kodak.glob("*.png"))
    images = [p for p in images if args.names is None or p.stem in args.names][: args.limit]
    if not images:
        raise SystemExit(f"no PNG images in {args.kodak}")
    print(machine_line(), flush=True)
    texture = load_texture(args.texture) if args.texture else api.load_texture()
    rows = [
        row
        for lam in args.lambdas
        for row in measure(lam, images, args.save, texture, fast=args.fast)
    ]
    print(summary(rows))
    if args.json:
        encoder = "fast" if args.fast else "g_a"
        args.json.write_text(
            json.dumps({"machine": machine_line(), "encoder": encoder, "rows": rows})
        )
    if args.crops:
        chosen = [args.kodak / f"{n}.png" for n in CROP_IMAGES]
        crop_sheet([c for c in chosen if c.exists()] or images[:1], args.crops, texture)


if __name__ == "__main__":
    main()
