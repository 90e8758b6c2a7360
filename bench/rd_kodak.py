"""Rate-distortion on Kodak: aeic bundles against JPEG, WebP, AVIF and downscale + AVIF.

Every figure comes from real files: an aeic point is the mean over the images of the .aeic
file's size, and of PSNR (RGB, 8 bit), MS-SSIM and the luma power kept per frequency band
(``metrics.band_power_db``: 0 dB keeps the original's energy, below 0 is blur) between the
source and the decoded PNG, and the lattice figure (``metrics.lattice_rms``: the mean 8 x 8
cell of the decoded picture against the source's, 8-bit levels; a decoder that paints its
upsampling grid over the picture shows there, not in PSNR; "lattice 32" the same over
32 x 32 cells, which also sees patterns repeating every 16 or 32 pixels, y's grid) and the
orientation figure (``metrics.orientation_error``: how far the fine detail of each 32-px
window runs in other directions than the source's; about 0.2 for a faithful rendering of
the detail, about 0.7 for blur and for strokes drawn in no particular direction), and
issue 29's two local figures of texture (``metrics.local_band_error``: per 32 px block, the
dB between decoded and source power in the two finest bands, 0 for texture exactly where
the photo has it; ``metrics.coherence_excess``: how much more oriented the decoded fine
detail is than the source's, negative for isotropic noise). A
bundle with a realism decoder gives two points, decoded with realism 0 (its fidelity
decoder) and 1 (the same files). An anchor point does the same with Pillow's encoder at
its lowest quality setting (JPEG 1, WebP 0, AVIF 0) or with "downscale by k, AVIF, upscale
bicubic", swept over a few AVIF qualities so that it forms a curve over the ultra-low rates.
aeic encodes with the bundle's own g_a on every CPU (``bench.fast_encoder`` measures the
fast encoder that ``aeic encode`` runs by default on a CPU without native bf16).

Usage:
    python -m bench.rd_kodak                        # shipped bundles, all 24 images
    python -m bench.rd_kodak --limit 4 --no-anchors
    python -m bench.rd_kodak --weights run/aeic-small-l48.safetensors --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from aeic_codec.codec.metrics import (
    SPECTRUM_BANDS,
    band_power_db,
    coherence_excess,
    lattice_rms,
    local_band_error,
    ms_ssim_u8,
    orientation_error,
    psnr_u8,
)
from aeic_codec.runtime.allocator import keep_freed_memory
from bench import ROOT
from bench._tables import md_table

KODAK = ROOT.parent / "shared" / "data" / "kodak"
DOWNSCALE_QUALITIES = (0, 10, 20, 30)


@dataclass
class Point:
    """One codec setting averaged over the images: the unit of every table and plot."""

    method: str
    setting: str
    images: int = 0
    bpp: float = 0.0
    psnr: float = 0.0
    msssim: float = 0.0
    lattice: float = 0.0  # metrics.lattice_rms: an 8-pixel grid painted over the picture
    lattice32: float = 0.0  # the same over 32-pixel cells: y's grid, and periods 8 and 16 too
    orientation: float = 0.0  # metrics.orientation_error: detail in the wrong direction
    local_bands: float = 0.0  # metrics.local_band_error: fine detail in the wrong places (dB)
    coherence: float = 0.0  # metrics.coherence_excess: more (+) or less (-) oriented detail
    encode_s: float = 0.0
    decode_s: float = 0.0
    bands: list[float] = field(default_factory=list)  # dB per SPECTRUM_BANDS, mean of images
    per_image: list[dict[str, object]] = field(default_factory=list)

    def add(self, name: str, nbytes: int, src: np.ndarray, out: np.ndarray, enc: float, dec: float):
        bpp = nbytes * 8 / (src.shape[0] * src.shape[1])
        row = {"image": name, "bpp": bpp, "psnr": psnr_u8(src, out), "msssim": ms_ssim_u8(src, out)}
        row["lattice"] = lattice_rms(out, src)
        row["lattice32"] = lattice_rms(out, src, 32)
        row["orientation"] = orientation_error(out, src)
        row["local_bands"] = local_band_error(out, src)
        row["coherence"] = coherence_excess(out, src)
        bands = band_power_db(out.astype(np.float64), src.astype(np.float64))
        self.per_image.append(row | {"encode_s": enc, "decode_s": dec, "bands": bands})

    def finish(self) -> Point:
        rows = self.per_image
        self.images = len(rows)
        keys = ("bpp", "psnr", "msssim", "lattice", "lattice32", "local_bands", "coherence")
        for key in (*keys, "encode_s", "decode_s"):
            setattr(self, key, float(np.mean([r[key] for r in rows])) if rows else 0.0)
        # NaN for an image without detail in the two finest bands: no direction to miss.
        figures = [r["orientation"] for r in rows if not np.isnan(r["orientation"])]
        self.orientation = float(np.mean(figures)) if figures else float("nan")
        if rows:
            self.bands = [float(b) for b in np.mean([r["bands"] for r in rows], axis=0)]
        return self

    @property
    def label(self) -> str:
        return f"{self.method} {self.setting}".strip()


def kodak_images(directory: Path = KODAK, limit: int | None = None) -> list[Path]:
    paths = sorted(Path(directory).glob("*.png"))
    if not paths:
        raise SystemExit(f"no PNG images in {directory}")
    return paths[:limit] if limit else paths


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


# --------------------------------------------------------------------------- aeic


def realism_settings(path: Path) -> list[float]:
    """The realism values a bundle is measured at: 0, and 1 when it has a realism decoder."""
    from aeic_codec.bundles.bundle import read_info

    return [0.0, 1.0] if read_info(path).realism is not None else [0.0]


def measure_bundle(
    path: Path, images: Iterable[Path], precision: str = "auto", realism: float = 0.0
) -> Point:
    """Encode and decode every image with one bundle, timing both (model loaded once)."""
    from aeic_codec import api
    from aeic_codec.bundles.bundle import load_bundle

    model = load_bundle(path, realism=realism > 0)
    label = model_label(path) + (f" realism {realism:g}" if realism_settings(path)[1:] else "")
    point = Point("aeic", label)
    for image in images:
        src = load_rgb(image)
        t0 = time.perf_counter()
        data = api.encode(src, model, fast=False)
        t1 = time.perf_counter()
        out = api.decode(data, model, precision=precision, realism=realism)
        t2 = time.perf_counter()
        point.add(image.stem, len(data), src, out, t1 - t0, t2 - t1)
    return point.finish()


def shipped_bundles() -> list[Path]:
    """The bundles in weights/, highest rate first (lowest lambda)."""
    from aeic_codec.bundles.bundle import read_info

    paths = ROOT.glob("weights/*.safetensors")
    return sorted(paths, key=lambda p: (read_info(p).lambda_ or 0.0, p.name))


def model_label(path: Path) -> str:
    from aeic_codec.bundles.bundle import read_info

    info = read_info(path)
    lam = f" λ={info.lambda_:g}" if info.lambda_ is not None else ""
    return f"{info.config.name}{lam}"


# --------------------------------------------------------------------------- anchors


Codec = Callable[[Image.Image], tuple[int, Image.Image]]
# The anchors at their lowest setting: (method, setting, Pillow format, Pillow options); the
# benchmark report also times their encoders.
LOWEST: tuple[tuple[str, str, str, dict[str, int]], ...] = (
    ("JPEG", "q1", "JPEG", {"quality": 1}),
    ("WebP", "q0", "WEBP", {"quality": 0, "method": 6}),
    ("AVIF", "q0", "AVIF", {"quality": 0}),
)


def _pillow(fmt: str, **options: object) -> Codec:
    def run(img: Image.Image) -> tuple[int, Image.Image]:
        buf = io.BytesIO()
        img.save(buf, fmt, **options)
        size = buf.tell()
        buf.seek(0)
        with Image.open(buf) as out:
            return size, out.convert("RGB")

    return run


def downscaled(factor: int, quality: int) -> Codec:
    avif = _pillow("AVIF", quality=quality)

    def run(img: Image.Image) -> tuple[int, Image.Image]:
        w, h = img.size
        small = img.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.LANCZOS)
        size, out = avif(small)
        return size, out.resize((w, h), Image.BICUBIC)

    return run


def anchors(qualities: Iterable[int] = DOWNSCALE_QUALITIES) -> list[tuple[str, str, Codec]]:
    """(method, setting, codec): the lowest settings, then the downscale sweeps."""
    out: list[tuple[str, str, Codec]] = [
        (method, setting, _pillow(fmt, **options)) for method, setting, fmt, options in LOWEST
    ]
    for factor in (2, 3, 4):
        for q in qualities:
            out.append((f"x{factor}+AVIF", f"q{q}", downscaled(factor, q)))
    return out


def measure_anchor(method: str, setting: str, codec: Codec, images: Iterable[Path]) -> Point:
    point = Point(method, setting)
    for image in images:
        src = load_rgb(image)
        img = Image.fromarray(src)
        t0 = time.perf_counter()
        nbytes, out = codec(img)
        t1 = time.perf_counter()
        point.add(image.stem, nbytes, src, np.array(out), t1 - t0, 0.0)
    return point.finish()


# --------------------------------------------------------------------------- report


def band_label(low: float, high: float) -> str:
    return f"1/{round(1 / low)}-1/{round(1 / high)}"


def table(points: list[Point]) -> str:
    """Markdown: rate, quality, the luma power kept per band (dB), lattices, orientation, speed."""
    head = ["codec", "setting", "images", "bpp", "PSNR dB", "MS-SSIM"]
    head += [band_label(lo, hi) for lo, hi in SPECTRUM_BANDS]
    head += ["local bands", "coherence", "lattice", "lattice 32", "orientation"]
    head += ["encode s", "decode s"]
    rows = []
    for p in points:
        quality = [f"{p.bpp:.4f}", f"{p.psnr:.2f}", f"{p.msssim:.3f}"]
        kept = [f"{b:+.1f}" for b in p.bands]
        look = [f"{p.local_bands:.2f}", f"{p.coherence:+.3f}"]
        look += [f"{p.lattice:.2f}", f"{p.lattice32:.2f}", f"{p.orientation:.2f}"]
        speed = [f"{p.encode_s:.2f}", f"{p.decode_s:.2f}" if p.method == "aeic" else "-"]
        rows.append([p.method, p.setting, str(p.images), *quality, *kept, *look, *speed])
    return md_table(head, rows)


def plot(
    points: list[Point],
    prefix: Path,
    title: str,
    reference: dict[str, list[tuple[float, float, float]]] | None = None,
) -> list[Path]:
    """Two PNGs (PSNR and MS-SSIM against bpp): one curve per codec, log rate axis.

    ``reference`` adds curves that were not measured here (label -> (bpp, PSNR, MS-SSIM)
    points), drawn grey so that they read as published figures.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups: dict[str, list[Point]] = {}
    for p in points:
        key = p.setting.split(" λ=")[0] if p.method == "aeic" else p.method
        if p.method == "aeic" and " realism " in p.setting:
            key += " realism " + p.setting.rsplit(" ", 1)[1]
        groups.setdefault(f"aeic {key}" if p.method == "aeic" else key, []).append(p)
    for metric, ylabel in (("psnr", "PSNR (dB)"), ("msssim", "MS-SSIM")):
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        for name, pts in groups.items():
            pts = sorted(pts, key=lambda p: p.bpp)
            style = "o-" if name.startswith("aeic") else ("s--" if "+" in name else "^:")
            ax.plot([p.bpp for p in pts], [getattr(p, metric) for p in pts], style, label=name)
        for name, rows in (reference or {}).items():
            column = 1 if metric == "psnr" else 2
            ax.plot([r[0] for r in rows], [r[column] for r in rows], "x-", color="grey", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel (real file sizes)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = prefix.with_name(f"{prefix.name}-{metric}.png")
        fig.savefig(out)
        plt.close(fig)
        written.append(out)
    return written


def crops(
    bundles: list[Path], image: Path, out: Path, box: tuple[int, int, int, int] | None = None
) -> Path:
    """Original next to each bundle's decode of one image (a crop, at 1:1), labelled."""
    from PIL import ImageDraw

    from aeic_codec import api
    from aeic_codec.bundles.bundle import load_bundle

    src = load_rgb(image)
    h, w = src.shape[:2]
    box = box or (w // 2 - 160, h // 2 - 160, w // 2 + 160, h // 2 + 160)
    tiles = [("original", src)]
    for path in bundles:
        model = load_bundle(path)
        data = api.encode(src, model, fast=False)
        bpp = len(data) * 8 / (h * w)
        tiles.append((f"{model_label(path)}: {bpp:.4f} bpp", api.decode(data, model)))
    cw, ch = box[2] - box[0], box[3] - box[1]
    sheet = Image.new("RGB", (cw * len(tiles), ch + 18), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, pixels) in enumerate(tiles):
        sheet.paste(Image.fromarray(pixels).crop(box), (i * cw, 18))
        draw.text((i * cw + 4, 3), label.replace("λ=", "lambda "), fill="black")
    sheet.save(out)
    return out


def realism_crops(bundle: Path, images: list[Path], out: Path, side: int = 256) -> Path:
    """Per image a row at 1:1: original, fidelity (realism 0), realism 1, x2 + AVIF.

    The x2 + AVIF quality is the lowest whose file is at least as large as the aeic file,
    so the comparison never favours aeic on rate.
    """
    from PIL import ImageDraw

    from aeic_codec import api
    from aeic_codec.bundles.bundle import load_bundle

    model = load_bundle(bundle, realism=True)
    rows = []
    for image in images:
        src = load_rgb(image)
        h, w = src.shape[:2]
        data = api.encode(src, model, fast=False)
        bpp = len(data) * 8 / (h * w)
        tiles = [("original", src)]
        for r in (0.0, 1.0):
            decoded = api.decode(data, model, realism=r)
            label = f"realism {r:g}: {bpp:.4f} bpp, {psnr_u8(src, decoded):.2f} dB"
            tiles.append((label, decoded))
        for q in range(0, 101, 2):
            size, avif = downscaled(2, q)(Image.fromarray(src))
            if size >= len(data):
                break
        avif_px = np.array(avif)
        tiles.append(
            (f"x2+AVIF q{q}: {size * 8 / (h * w):.4f} bpp, {psnr_u8(src, avif_px):.2f} dB", avif_px)
        )
        box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
        rows.append((image.stem, tiles, box))
    sheet = Image.new("RGB", (side * 4, (side + 18) * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (name, tiles, box) in enumerate(rows):
        for i, (label, pixels) in enumerate(tiles):
            sheet.paste(Image.fromarray(pixels).crop(box), (i * side, j * (side + 18) + 18))
            draw.text((i * side + 4, j * (side + 18) + 3), f"{name} {label}", fill="black")
    sheet.save(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kodak", type=Path, default=KODAK)
    p.add_argument("--weights", type=Path, nargs="*", help="bundles (default: weights/*)")
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--no-anchors", action="store_true")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write every point (and per-image rows) here")
    p.add_argument("--plot", type=Path, help="write PREFIX-psnr.png and PREFIX-msssim.png")
    p.add_argument("--crops", type=Path, help="write a crop sheet of kodim23 here")
    p.add_argument(
        "--realism-crops",
        type=Path,
        help="write original / fidelity / realism / x2+AVIF crops of three images here",
    )
    args = p.parse_args(argv)

    import torch

    from bench._machine import machine_line

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the aeic command does (aeic_codec/runtime/allocator.py)
    images = kodak_images(args.kodak, args.limit)
    shipped = shipped_bundles()
    bundles = args.weights if args.weights is not None else shipped
    machine = machine_line()
    print(machine)
    points = []
    for path in bundles:
        for realism in realism_settings(path):
            points.append(measure_bundle(path, images, args.precision, realism))
            print(table(points[-1:]).splitlines()[-1], flush=True)
    if not args.no_anchors:
        for method, setting, codec in anchors():
            points.append(measure_anchor(method, setting, codec, images))
            print(table(points[-1:]).splitlines()[-1], flush=True)
    print(table(points))
    if args.json:
        doc = {"machine": machine, "images": len(images), "points": [asdict(q) for q in points]}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.plot:
        plot(points, args.plot, f"Kodak ({len(images)} images)")
    if args.realism_crops:
        with_realism = [b for b in bundles if realism_settings(b)[1:]]
        if with_realism:
            chosen = [args.kodak / f"kodim{n}.png" for n in ("05", "13", "23")]
            realism_crops(with_realism[0], [c for c in chosen if c.exists()], args.realism_crops)
    if args.crops and bundles:
        sample = args.kodak / "kodim23.png"
        crops(bundles, sample if sample.exists() else images[0], args.crops)


if __name__ == "__main__":
    main()
