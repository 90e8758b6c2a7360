"""One benchmark report, docs/benchmarks.md: complexity, speed, entropy coding, rate-distortion
and memory, all measured in the same run on the same machine.

    python -m bench.run_all            # everything (about an hour on 2 cores)
    python -m bench.run_all --quick    # trimmed sizes and models (under 10 minutes)

Full-size AEIC-SE and AEIC-ME run with random weights (speed and memory do not depend on
the weights); the default model is the shipped bundle set in weights/. Progress goes to
stderr, the report to OUT/benchmarks.md with its plots beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench import rd_kodak

ROOT = Path(__file__).resolve().parents[1]
PAPER = {  # ARCHITECTURE.md sections 3 and 5
    "AEIC-SE": "16.10 M / 46.02 K; decoder side 913.66 M (LoRA unmerged) / about 2.76 M",
    "AEIC-ME": "55.91 M / 204.26 K",
}


@dataclass
class Plan:
    """What one run measures; --quick and the test slice are smaller plans."""

    out: Path
    presets: list[str]  # full-size random-weight models
    bundles: list[Path]  # the shipped default models (the first one is timed)
    kodak: list[Path]
    speed_sizes: list[tuple[int, int]]  # (height, width)
    preset_speed_sizes: list[tuple[int, int]]
    decode_presets: list[str]  # which presets also time a decode
    memory_sizes: list[tuple[int, int]]
    preset_memory_sizes: list[tuple[int, int]]
    threads: int = 2
    anchors: bool = True
    qualities: tuple[int, ...] = rd_kodak.DOWNSCALE_QUALITIES
    entropy_images: int = 4
    notes: list[str] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def section(name: str) -> Iterator[None]:
    t = time.perf_counter()
    log(f"{name} ...")
    yield
    log(f"{name}: {time.perf_counter() - t:.0f} s")


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def photo(path: Path, height: int, width: int) -> np.ndarray:
    """A Kodak photo resized to the asked size (a real image rather than a pattern)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((width, height), Image.BICUBIC))


def random_model(preset: str, decoder: bool = True):
    """A full-size model with seeded random weights and its tables (as a bundle would)."""
    import torch

    from aeic_codec.config import PRESETS
    from aeic_codec.model import AEIC

    torch.manual_seed(0)
    model = AEIC(PRESETS[preset], decoder=decoder).eval()
    model.build_tables()
    model.identity = "00000000"
    return model


# --------------------------------------------------------------------------- complexity


def complexity(plan: Plan) -> str:
    """Params and MACs per pixel, counted on the "meta" device (nothing is computed)."""
    import torch

    from aeic_codec import complexity as cx
    from aeic_codec.bundle import read_info
    from aeic_codec.config import PRESETS
    from aeic_codec.model import AEIC

    configs = [PRESETS[p] for p in plan.presets]
    if plan.bundles:
        configs.append(read_info(plan.bundles[0]).config)
    rows = []
    for cfg in configs:
        with torch.device("meta"):
            model = AEIC(cfg)
        rows.append(
            [
                cfg.name,
                f"{cx.encoder_params(model) / 1e6:.2f} M",
                f"{cx.encoder_macs_per_pixel(model) / 1e3:.1f} K",
                f"{cx.param_count(model.g_a) / 1e6:.2f} M",
                f"{cx.decoder_params(model) / 1e6:.1f} M",
                f"{cx.decoder_macs_per_pixel(model) / 1e6:.3f} M",
                PAPER.get(cfg.name, "-"),
            ]
        )
    head = [
        "model",
        "encoder params",
        "encoder MACs/px",
        "g_a params",
        "decoder params",
        "decoder MACs/px",
        "paper: encoder params / MACs/px",
    ]
    return (
        "## Complexity\n\nEncoder side: g_a, h_a, h_s, the context model and the z prior; "
        "decoder side: h_s, the context model, the z prior, g_s, eps (LoRA merged) and D. MACs "
        "are the convolutions and matrix products (attention included) of one untiled pass "
        "over a 768x512 image, per pixel.\n\n" + md_table(head, rows)
    )


# --------------------------------------------------------------------------- speed


def _time(fn: Callable[[], object], runs: int = 1) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _precisions() -> list[str]:
    import torch

    return ["fp32", "bf16"] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else ["fp32"]


def _model_speed(
    name: str, model: object, plan: Plan, sizes: list[tuple[int, int]], precisions: list[str]
) -> list[list[str]]:
    from aeic_codec import api

    rows = []
    for h, w in sizes:
        img = photo(plan.kodak[0], h, w)
        data = api.encode(img, model)  # warm-up
        t_enc = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            data = api.encode(img, model)
            t_enc = min(t_enc, time.perf_counter() - t)
        for precision in precisions:
            t = time.perf_counter()
            api.decode(data, model, precision=precision)
            rows.append(
                [name, f"{w}x{h}", precision, f"{t_enc:.2f}", f"{time.perf_counter() - t:.2f}"]
            )
        if not precisions:
            rows.append([name, f"{w}x{h}", "-", f"{t_enc:.2f}", "not timed"])
        log(f"speed {name} {w}x{h} done")
    return rows


def speed(plan: Plan) -> str:
    from aeic_codec.bundle import load_bundle

    rows = []
    precisions = _precisions()
    entries: list[tuple[str, Callable[[], object], list[tuple[int, int]], bool]] = [
        (p, lambda p=p: random_model(p), plan.preset_speed_sizes, p in plan.decode_presets)
        for p in plan.presets
    ]
    if plan.bundles:
        bundle = plan.bundles[0]
        entries.append((bundle.stem, lambda: load_bundle(bundle), plan.speed_sizes, True))
    for name, build, sizes, decode in entries:
        t = time.perf_counter()
        model = build()
        load = time.perf_counter() - t
        rows += _model_speed(name, model, plan, sizes, precisions if decode else [])
        rows[-1][0] += f" (model built/loaded in {load:.1f} s, excluded)"
        del model
    out = [
        "## Speed\n\nBest of two encodes and one decode (after a warm-up encode), seconds "
        "per image, on Kodak photos resized to each size. bf16 is timed only where the CPU "
        "has native bf16 (AMX or AVX-512 BF16); elsewhere it runs 10-50x slower than fp32 "
        "and `--precision auto` picks fp32.\n",
        md_table(["model", "size", "decode precision", "encode s", "decode s"], rows),
        "",
        anchor_speed(plan),
        "",
        startup(plan),
    ]
    return "\n".join(out)


def anchor_speed(plan: Plan) -> str:
    rows = []
    codecs = rd_kodak.anchors(())
    for h, w in plan.speed_sizes:
        img = Image.fromarray(photo(plan.kodak[0], h, w))
        for method, setting, codec in codecs:
            codec(img)
            secs = _time(lambda codec=codec, img=img: codec(img), 3)
            rows.append([f"{method} {setting}", f"{w}x{h}", f"{secs:.3f}"])
    return "Anchors (Pillow, one thread, best of 3, encode and decode):\n\n" + md_table(
        ["codec", "size", "seconds"], rows
    )


def _cli(*args: str) -> float:
    aeic = Path(sys.executable).parent / "aeic"
    t = time.perf_counter()
    subprocess.run([str(aeic), *args], check=True, capture_output=True)
    return time.perf_counter() - t


def startup(plan: Plan) -> str:
    """Wall time of each command on a 16x16 image: imports, model loading, tiny work."""
    if not plan.bundles:
        return "Start-up: no shipped bundle, not measured."
    with tempfile.TemporaryDirectory() as tmp:
        src, coded, back = Path(tmp, "s.png"), Path(tmp, "s.aeic"), Path(tmp, "d.png")
        Image.fromarray(photo(plan.kodak[0], 16, 16)).save(src)
        weights = str(plan.bundles[0])
        rows = [
            [
                "aeic encode",
                f"{_cli('encode', str(src), '-o', str(coded), '--weights', weights):.2f}",
            ],
            [
                "aeic decode",
                f"{_cli('decode', str(coded), '-o', str(back), '--weights', weights):.2f}",
            ],
            ["aeic info", f"{_cli('info', str(coded)):.2f}"],
        ]
    return (
        "Process start-up (wall seconds of the whole command on a 16x16 image with the "
        "default model: interpreter, imports, model loading; `aeic info` imports no torch):"
        "\n\n" + md_table(["command", "seconds"], rows)
    )


# --------------------------------------------------------------------------- entropy


def entropy(plan: Plan) -> str:
    """Stream bytes against the model's information estimate, and the container overhead."""
    import torch

    from aeic_codec import api
    from aeic_codec.bundle import load_bundle
    from aeic_codec.transforms import pad_reflect

    if not plan.bundles:
        return "## Entropy coding\n\nNo shipped bundle: not measured."
    rows = []
    names = ["z", "step 0", "step 1", "step 2", "step 3"]
    n = min(len(plan.kodak), plan.entropy_images)
    for path in plan.bundles:
        model = load_bundle(path, decoder=False)
        actual = np.zeros(5)
        estimate = np.zeros(5)
        overhead = []
        for image in plan.kodak[: plan.entropy_images]:
            src = rd_kodak.load_rgb(image)
            x = torch.from_numpy(src).permute(2, 0, 1)[None].float() / 127.5 - 1
            c = model.compress(pad_reflect(x, 64))
            actual += [len(s) for s in c.streams]
            estimate += np.array(c.stream_bits) / 8
            data = api.encode(src, model)
            overhead.append(len(data) - sum(len(s) for s in c.streams))
        for i, name in enumerate(names):
            eff = actual[i] / estimate[i] if estimate[i] else float("nan")
            rows.append(
                [
                    path.stem,
                    name,
                    f"{actual[i] / n:.1f}",
                    f"{estimate[i] / n:.1f}",
                    f"{eff:.3f}",
                ]
            )
        over = float(np.mean(overhead))
        rows.append([path.stem, "container", f"{over:.1f}", "-", "-"])
    at = 0.005 * 768 * 512 / 8
    return (
        f"## Entropy coding\n\nMean bytes per image over {n} Kodak images: "
        "each stream's real size against the model's information estimate (sum of -log2 p, in "
        "bytes); 'container' is the file minus its five payloads (magic, version, size, model "
        f"identity, flags, lengths, CRC). A 768x512 file at 0.005 bpp has {at:.0f} bytes, so "
        f"{over:.0f} bytes of container are {over * 8 / (768 * 512):.5f} bpp, "
        f"{100 * over / at:.0f} % of such a file.\n\n"
        + md_table(["model", "stream", "bytes", "estimate", "ratio"], rows)
    )


# --------------------------------------------------------------------------- rate-distortion


def perceptual_note() -> str:
    for module in ("lpips", "DISTS_pytorch", "piq"):
        try:
            __import__(module)
        except ImportError:
            continue
        return f"`{module}` is installed, but its weights are not bundled here: not measured."
    return "LPIPS and DISTS are not installed here (their weights need a download): not measured."


def rate_distortion(plan: Plan) -> str:
    points = [rd_kodak.measure_bundle(p, plan.kodak, "auto") for p in plan.bundles]
    log("rd: aeic done")
    if plan.anchors:
        for method, setting, codec in rd_kodak.anchors(plan.qualities):
            points.append(rd_kodak.measure_anchor(method, setting, codec, plan.kodak))
    (plan.out / "benchmarks-rd.json").write_text(
        json.dumps(
            [{k: v for k, v in vars(p).items() if k != "per_image"} for p in points], indent=1
        )
        + "\n"
    )
    plots = rd_kodak.plot(points, plan.out / "benchmarks-rd", f"Kodak ({len(plan.kodak)} images)")
    links = " ".join(f"![{p.stem}]({p.name})" for p in plots)
    return (
        f"## Rate-distortion on Kodak\n\n{len(plan.kodak)} images, real file sizes, PSNR on "
        "8-bit RGB, MS-SSIM on RGB in [0, 1]. Anchors are Pillow at their lowest setting and "
        "'downscale by k (Lanczos), AVIF at quality q, upscale bicubic'. "
        f"{perceptual_note()}\n\n{rd_kodak.table(points)}\n\n{links}"
    )


# --------------------------------------------------------------------------- memory

_CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads({threads})
from aeic_codec import api
from bench.run_all import photo, random_model
from aeic_codec.bundle import load_bundle
from pathlib import Path
model = load_bundle({bundle!r}) if {bundle!r} else random_model({preset!r})
if {encode}:
    Path({file!r}).write_bytes(api.encode(photo(Path({image!r}), {h}, {w}), model))
else:
    data = Path({file!r}).read_bytes()
    t = time.perf_counter()
    api.decode(data, model, precision="fp32")
    secs = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({{"seconds": secs, "peak_mb": rss}}))
"""


def decode_peak(plan: Plan, name: str, h: int, w: int) -> dict[str, float]:
    """Encode in one fresh process, decode in another: the second's peak RSS is the figure."""
    bundle = name if name.endswith(".safetensors") else ""
    preset = "" if bundle else name
    with tempfile.TemporaryDirectory() as tmp:
        file = str(Path(tmp, "x.aeic"))
        for encode in (True, False):
            code = _CHILD.format(
                threads=plan.threads,
                bundle=bundle,
                preset=preset,
                encode=encode,
                file=file,
                image=str(plan.kodak[0]),
                h=h,
                w=w,
            )
            out = subprocess.run(
                [sys.executable, "-c", code],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            )
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(plan: Plan) -> str:
    rows = []
    jobs = [(p, plan.preset_memory_sizes) for p in plan.presets[:1]]
    if plan.bundles:
        jobs.append((str(plan.bundles[0]), plan.memory_sizes))
    for name, sizes in jobs:
        for h, w in sizes:
            r = decode_peak(plan, name, h, w)
            label = Path(name).stem if name.endswith(".safetensors") else name
            rows.append([label, f"{w}x{h}", f"{r['peak_mb']:.0f}", f"{r['seconds']:.1f}"])
            log(f"memory {label} {w}x{h}: {r['peak_mb']:.0f} MB")
    return (
        "## Memory\n\nPeak resident memory of a fresh process that loads the model and "
        "decodes one file (fp32, tiled as `aeic decode` tiles), model included:\n\n"
        + md_table(["model", "size", "peak MB", "decode s"], rows)
    )


# --------------------------------------------------------------------------- report


def run(plan: Plan) -> Path:
    import torch

    from bench._machine import machine_line

    torch.set_num_threads(plan.threads)
    plan.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parts = []
    for name, fn in (
        ("complexity", complexity),
        ("speed", speed),
        ("entropy coding", entropy),
        ("rate-distortion", rate_distortion),
        ("memory", memory),
    ):
        with section(name):
            parts.append(fn(plan))
    minutes = (time.perf_counter() - started) / 60
    head = (
        "# Benchmarks\n\nWritten by `python -m bench.run_all"
        + (" --quick" if "quick" in plan.notes else "")
        + f"` in {minutes:.1f} minutes; every figure below comes from this one run.\n\n"
        f"Machine: {machine_line()}\n"
    )
    report = plan.out / "benchmarks.md"
    report.write_text("\n\n".join([head, *parts]) + "\n")
    return report


def plan_for(quick: bool, out: Path, threads: int) -> Plan:
    kodak = rd_kodak.kodak_images(rd_kodak.KODAK)
    bundles = sorted(ROOT.glob("weights/*.safetensors"))
    small, large = (512, 768), (1088, 1920)
    if quick:
        return Plan(
            out,
            ["AEIC-SE", "AEIC-ME"],
            bundles,
            kodak,
            [small, large],
            [small],
            ["AEIC-SE"],
            [small, (2048, 2048), (4096, 4096)],
            [small],
            threads,
            notes=["quick"],
        )
    return Plan(
        out,
        ["AEIC-SE", "AEIC-ME"],
        bundles,
        kodak,
        [small, large],
        [small, large],
        ["AEIC-SE", "AEIC-ME"],
        [small, (2048, 2048), (4096, 4096)],
        [small, (2048, 2048), (4096, 4096)],
        threads,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="trimmed run, under 10 minutes")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    print(run(plan_for(args.quick, args.out, args.threads)))


if __name__ == "__main__":
    main()
