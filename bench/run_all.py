"""One benchmark report, docs/benchmarks.md: complexity, speed, entropy coding, the integer
entropy path, rate-distortion and memory, all measured in the same run on the same machine.

    python -m bench.run_all              # everything (long: full-size decodes up to 4096x4096)
    python -m bench.run_all --quick      # trimmed sizes and models (under 10 minutes)
    python -m bench.run_all --slice DIR  # seconds: every section on a tiny random model
    python -m bench.run_all --only integer --out DIR   # one section (name prefix), into DIR

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
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from aeic_codec.runtime.allocator import keep_freed_memory
from bench import rd_kodak

if TYPE_CHECKING:
    from aeic_codec.codec.model import AEIC
    from aeic_codec.nn.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
STREAMS = ("z", "step 0", "step 1", "step 2", "step 3")
# The paper's figures (docs/architecture.md section 8), by model and table row.
PAPER: dict[str, dict[str, tuple[str, str]]] = {
    "AEIC-SE": {
        "encoder side": ("16.10 M", "46.02 K"),
        "g_a": ("0.94 M", "-"),
        "g_s": ("67.3 M", "187 K"),
        "decoder side, LoRA merged": ("", "about 2.76 M"),
        "decoder side, LoRA unmerged": ("913.66 M", ""),
    },
    "AEIC-ME": {
        "encoder side": ("55.91 M", "204.26 K"),
        "g_a": ("3.09 M", "-"),
        "g_s": ("67.5 M", "187 K"),
    },
}
# The paper's AEIC-SE on Kodak (docs/architecture.md section 8): (bpp, PSNR dB, MS-SSIM).
PUBLISHED_RD = {
    "AEIC-SE (paper, not measured here)": [
        (0.0041, 18.99, 0.583),
        (0.0079, 20.17, 0.662),
        (0.0143, 21.30, 0.729),
        (0.0241, 22.16, 0.781),
        (0.0370, 22.90, 0.822),
    ]
}
# Pillow settings of the lowest-quality anchors; the same as rd_kodak.anchors uses.
ANCHOR_ENCODERS: tuple[tuple[str, str, dict[str, int]], ...] = (
    ("JPEG q1", "JPEG", {"quality": 1}),
    ("WebP q0", "WEBP", {"quality": 0, "method": 6}),
    ("AVIF q0", "AVIF", {"quality": 0}),
)
SLOW_DECODE_S = 5.0  # decodes slower than this are timed once, faster ones best of two


@dataclass
class Plan:
    """What one run measures; --quick and the test slice are smaller plans."""

    out: Path
    presets: list[ModelConfig]  # full-size random-weight models
    bundles: list[Path]  # the shipped default models, lowest lambda first
    kodak: list[Path]
    speed_sizes: list[tuple[int, int]]  # (height, width), for the default model and anchors
    preset_speed_sizes: list[tuple[int, int]]
    decode_presets: list[str]  # names of the presets that also time a decode
    memory_sizes: list[tuple[int, int]]
    preset_memory_sizes: list[tuple[int, int]]
    threads: int = 2
    anchors: bool = True
    qualities: tuple[int, ...] = rd_kodak.DOWNSCALE_QUALITIES
    entropy_images: int = 4
    crops: bool = True
    speed_image: Path = ROOT / "docs" / "kodim23.png"  # the integer section's encode timing
    command: str = "python -m bench.run_all"
    notes: list[str] = field(default_factory=list)

    @property
    def default_bundle(self) -> Path:
        """The bundle `aeic encode` picks without --lambda (the middle lambda): timed alone."""
        return self.bundles[len(self.bundles) // 2]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def section(name: str) -> Iterator[None]:
    t = time.perf_counter()
    log(f"{name} ...")
    yield
    log(f"{name}: {time.perf_counter() - t:.0f} s")


def heading(title: str) -> str:
    """A section heading with the machine and date, so a section quoted alone stays dated."""
    from bench._machine import machine_line

    return f"## {title}\n\n*Measured on: {machine_line()}.*\n"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def count(n: float) -> str:
    """Parameters or MACs in the paper's units (M, K), plain below a thousand."""
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} K"
    return f"{n:.0f}"


def size_label(h: int, w: int) -> str:
    return f"{w}x{h}"


def photo(path: Path, height: int, width: int) -> np.ndarray:
    """A Kodak photo resized to the asked size (a real image rather than a pattern)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((width, height), Image.BICUBIC))


def random_model(cfg: ModelConfig, encoder: bool = True, decoder: bool = True) -> AEIC:
    """A model with seeded random weights and its tables, as a bundle would have.

    The entropy side and the generative side are seeded separately, so that an encoder-only
    and a decoder-only build share h_s, the context model and the z prior and can exchange
    files (the memory test encodes in this process and decodes in a fresh one).
    """
    import torch

    from aeic_codec.codec.model import AEIC
    from aeic_codec.nn.denoiser import Denoiser
    from aeic_codec.nn.transforms import SynthesisTransform
    from aeic_codec.nn.vae import LiteVAEDecoder

    torch.manual_seed(0)
    model = AEIC(cfg, encoder=True, decoder=False)
    if not encoder:
        model.g_a = None
        model.h_a = None
    if decoder:
        torch.manual_seed(1)
        model.g_s = SynthesisTransform(cfg)
        model.denoiser = Denoiser(cfg)
        model.vae = LiteVAEDecoder(cfg)
    model.eval()
    model.build_tables()
    model.identity = "00000000"
    return model


def load_model(spec: dict[str, str], encoder: bool = True, decoder: bool = True) -> AEIC:
    """{"bundle": path} or {"config": json}: a shipped bundle or a random-weight preset."""
    from aeic_codec.bundles.bundle import load_bundle
    from aeic_codec.nn.config import ModelConfig

    if "bundle" in spec:
        return load_bundle(spec["bundle"], encoder=encoder, decoder=decoder)
    return random_model(ModelConfig.from_json(spec["config"]), encoder, decoder)


def _best(fn: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# --------------------------------------------------------------------------- complexity


def complexity(plan: Plan) -> str:
    """Params and MACs per pixel, counted on the "meta" device (nothing is computed)."""
    import torch

    from aeic_codec.bundles.bundle import read_info
    from aeic_codec.codec import complexity as cx
    from aeic_codec.codec.model import AEIC

    configs = list(plan.presets)
    if plan.bundles:
        configs.append(read_info(plan.default_bundle).config)
    rows = []
    for cfg in configs:
        with torch.device("meta"):
            model = AEIC(cfg)
        dec = cx.decoder_macs(model)
        unmerged = _unmerged_decoder_params(model)
        measured: list[tuple[str, float, float | None]] = [
            ("encoder side", cx.encoder_params(model), cx.encoder_macs_per_pixel(model)),
            ("g_a", cx.param_count(model.g_a), None),
            (
                "decoder: h_s, context, z prior",
                cx.param_count(model.h_s, model.context, model.entropy_bottleneck),
                dec["entropy"],
            ),
            ("g_s", cx.param_count(model.g_s), dec["g_s"]),
            ("eps (LoRA merged)", cx.param_count(model.denoiser), dec["eps"]),
            ("D", cx.param_count(model.vae), dec["D"]),
            ("decoder side, LoRA merged", cx.decoder_params(model), sum(dec.values())),
        ]
        if unmerged is not None:
            measured.append(("decoder side, LoRA unmerged", unmerged, None))
        measured.append(("whole model", cx.param_count(model), None))
        paper = PAPER.get(cfg.name, {})
        for part, params, macs in measured:
            ours = [count(params), count(macs) if macs is not None else "-"]
            rows.append([cfg.name, part, *ours, *paper.get(part, ("", ""))])
        log(f"complexity {cfg.name} counted")
    return (
        heading("Complexity")
        + "\nEncoder side: g_a, h_a, h_s, the context model and the z prior (what a sender "
        "runs); decoder side: h_s, the context model, the z prior, g_s, eps and D. MACs are "
        "the convolutions and matrix products (attention included) of one untiled pass over "
        "a 768x512 image, per pixel, counted with torch's FLOP counter on a model built on "
        "the meta device. The LoRA-unmerged count adds the rank-32 adapters of training "
        f"(counted with peft; {'present' if _has_peft() else 'not installed, so not counted'}"
        "); inference runs the merged denoiser. '-': not counted.\n\n"
        + md_table(["model", "part", "params", "MACs/px", "paper params", "paper MACs/px"], rows)
    )


def _has_peft() -> bool:
    import importlib.util

    return importlib.util.find_spec("peft") is not None


def _unmerged_decoder_params(model: AEIC) -> int | None:
    """Decoder-side parameters with the LoRA adapters beside eps (None without peft)."""
    if not _has_peft():
        return None
    import copy

    import torch

    from aeic_codec.codec import complexity as cx
    from aeic_codec.nn.lora import add_lora

    with torch.device("meta"):
        denoiser = add_lora(copy.deepcopy(model.denoiser))
    return cx.decoder_params(model) - cx.param_count(model.denoiser) + cx.param_count(denoiser)


# --------------------------------------------------------------------------- speed


def _bf16() -> bool:
    """Whether `--precision auto` decodes in bf16 on this machine (the codec's own rule)."""
    import torch

    from aeic_codec import api

    return api.resolve_precision("auto") == torch.bfloat16


def _model_speed(
    name: str, model: AEIC, plan: Plan, sizes: list[tuple[int, int]], decode: bool, load_s: float
) -> tuple[list[list[str]], dict[tuple[int, int], bytes]]:
    """Encode (and decode) rows of one model, and the files it wrote."""
    import torch

    from aeic_codec import api

    files, encode_s = {}, {}
    for h, w in sizes:
        img = photo(plan.kodak[0], h, w)
        files[(h, w)] = api.encode(img, model)  # also the warm-up
        encode_s[(h, w)] = _best(lambda img=img: api.encode(img, model), 2)
        log(f"speed {name} {size_label(h, w)}: encode {encode_s[(h, w)]:.2f} s")
    decode_s: dict[tuple[int, int], list[str]] = {hw: [] for hw in sizes}
    precisions = ("fp32", "bf16") if _bf16() else ("fp32",)
    for precision in precisions if decode and model.g_s is not None else ():
        # What a first decode does anyway (cast, channels-last): kept out of the timing.
        dtype = api.resolve_precision(precision)
        for part in (model.g_s, model.denoiser, model.vae):
            part.to(dtype=dtype, memory_format=torch.channels_last)
        for hw, data in files.items():

            def run(precision: str = precision, data: bytes = data) -> None:
                api.decode(data, model, precision=precision)

            secs = _best(run, 1)
            secs = min(secs, _best(run, 1)) if secs < SLOW_DECODE_S else secs
            decode_s[hw].append(f"{secs:.2f}")
            log(f"speed {name} {size_label(*hw)}: decode {precision} {secs:.2f} s")
    rows = []
    for hw in sizes:
        cells = decode_s[hw] or ["-"]
        if len(cells) == 1:
            cells.append("not timed" if decode_s[hw] else "-")
        rows.append([name, size_label(*hw), f"{encode_s[hw]:.2f}", *cells, f"{load_s:.1f}"])
    return rows, files


def speed(plan: Plan) -> str:
    from aeic_codec.bundles.bundle import load_bundle

    rows: list[list[str]] = []
    files: dict[tuple[int, int], bytes] = {}
    for cfg in plan.presets:
        decode = cfg.name in plan.decode_presets
        t = time.perf_counter()
        model = random_model(cfg, decoder=decode)
        load = time.perf_counter() - t
        rows += _model_speed(cfg.name, model, plan, plan.preset_speed_sizes, decode, load)[0]
        del model
    if plan.bundles:
        bundle = plan.default_bundle
        t = time.perf_counter()
        model = load_bundle(bundle)
        load = time.perf_counter() - t
        more, files = _model_speed(bundle.stem, model, plan, plan.speed_sizes, True, load)
        rows += more
        del model
    if _bf16():
        bf16 = "This CPU has native bf16, so decodes are timed in both precisions."
    else:
        bf16 = (
            "This CPU has no native bf16 (no AVX512-BF16 or AMX), so bf16 decoding, which "
            "oneDNN would emulate, is not timed; `--precision auto` decodes in fp32 here."
        )
    head = ["model", "size", "encode s", "decode s fp32", "decode s bf16", "build/load s"]
    return "\n".join(
        [
            heading("Speed"),
            "Seconds per image on a Kodak photo resized to each size, with "
            f"{plan.threads} torch thread(s): encode is the best of two after a warm-up "
            f"encode; decode (entropy decoding, g_s, eps, D, all tiled as `aeic decode` "
            f"tiles) is the best of two where one takes under {SLOW_DECODE_S:.0f} s, else a "
            "single run. Building or loading the model is timed on its own (last column). "
            f"{bf16} AEIC-SE and AEIC-ME have random weights; a '-' is not measured in this "
            "run.\n",
            md_table(head, rows),
            "",
            anchor_speed(plan),
            "",
            startup(plan, files),
        ]
    )


def anchor_speed(plan: Plan) -> str:
    """Pillow's encode time at the anchors' settings: what a sender pays for JPEG and co."""
    import io

    rows = []
    for h, w in plan.speed_sizes:
        img = Image.fromarray(photo(plan.kodak[0], h, w))
        for label, fmt, options in ANCHOR_ENCODERS:

            def encode(
                fmt: str = fmt, options: dict[str, int] = options, img: Image.Image = img
            ) -> None:
                img.save(io.BytesIO(), fmt, **options)

            encode()
            secs = _best(encode, 3)
            rows.append([label, size_label(h, w), f"{secs:.3f}", f"{h * w / secs / 1e6:.1f}"])
    return (
        "Anchor encoders (Pillow, best of three after a warm-up, encode only, on the same "
        "images):\n\n" + md_table(["codec", "size", "encode s", "Mpixel/s"], rows)
    )


def _wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def _cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "aeic"), *args]


WHOLE_RUNS = 3  # whole commands: the median of this many runs, interleaved


def startup(plan: Plan, files: dict[tuple[int, int], bytes]) -> str:
    """Wall time of each command as a user runs it: interpreter, imports, model, work.

    ``python -c "import torch"`` is timed in the same rounds: the floor every command
    that computes stands on, so the difference is what aeic itself costs.
    """
    if not plan.bundles:
        return "Start-up: no shipped bundle, not measured."
    weights = str(plan.default_bundle)
    h, w = plan.speed_sizes[0]
    with tempfile.TemporaryDirectory() as tmp:
        big, tiny = Path(tmp, "big.png"), Path(tmp, "tiny.png")
        Image.fromarray(photo(plan.kodak[0], h, w)).save(big)
        Image.fromarray(photo(plan.kodak[0], 16, 16)).save(tiny)
        commands: dict[tuple[str, str], list[str]] = {
            ('python -c "import torch"', "-"): [sys.executable, "-c", "import torch"]
        }
        for src, label in ((big, size_label(h, w)), (tiny, "16x16")):
            coded, back = src.with_suffix(".aeic"), src.with_suffix(".out.png")
            commands[("aeic encode", f"{label} PNG")] = _cli(
                "encode", str(src), "-o", str(coded), "-f", "--weights", weights
            )
            commands[("aeic decode", f"{label} file")] = _cli(
                "decode", str(coded), "-o", str(back), "-f", "--weights", weights
            )
        commands[("aeic info", "16x16 file")] = _cli("info", str(tiny.with_suffix(".aeic")))
        for (fh, fw), data in files.items():
            path = Path(tmp, f"{fw}x{fh}.aeic")
            path.write_bytes(data)
            commands[("aeic info", f"{size_label(fh, fw)} file")] = _cli("info", str(path))
        times: dict[tuple[str, str], list[float]] = {key: [] for key in commands}
        for _ in range(WHOLE_RUNS):  # rounds, so that a busy moment hits every command
            for key, cmd in commands.items():
                times[key].append(_wall(cmd))
    medians = {key: float(np.median(t)) for key, t in times.items()}
    floor = medians[('python -c "import torch"', "-")]
    rows = []
    for (command, what), secs in medians.items():
        computes = command.startswith(("aeic encode", "aeic decode"))
        extra = f"{secs - floor:+.2f}" if computes else "-"
        rows.append([f"`{command}`", what, f"{secs:.2f}", extra])
        log(f"whole command {command} {what}: {secs:.2f} s")
    return (
        f"Whole commands (wall seconds of the `aeic` console script as a user runs it, "
        f"median of {WHOLE_RUNS} interleaved runs; default model {plan.default_bundle.stem}, "
        f"the CLI's own thread and precision settings): interpreter, imports, loading the "
        f"model and the work. The last column is what a command costs beyond `import "
        f"torch`, timed in the same rounds; on a 16x16 image that is the start-up cost. "
        "`aeic info` reads only the header and the bundles' metadata.\n\n"
        + md_table(["command", "input", "seconds", "beyond import torch"], rows)
    )


# --------------------------------------------------------------------------- entropy


def entropy(plan: Plan) -> str:
    """Stream bytes against the model's information estimate, and the container overhead."""
    from aeic_codec import api
    from aeic_codec.bundles.bundle import load_bundle
    from aeic_codec.format.container import unpack

    if not plan.bundles:
        return heading("Entropy coding") + "\nNo shipped bundle: not measured."
    images = plan.kodak[: plan.entropy_images]
    rows, overheads, colours, grids, pixels = [], [], [], [], []
    for path in plan.bundles:
        model = load_bundle(path, decoder=False)
        actual, estimate = np.zeros(5), np.zeros(5)
        for image in images:
            src = rd_kodak.load_rgb(image)
            result = api.encode_image(src, model)
            f = unpack(result.data)
            actual += [len(s) for s in f.streams]
            estimate += np.array(result.stream_bits) / 8
            overheads.append(len(result.data) - sum(len(s) for s in f.streams) - f.grid_size)
            colours.append(12 if f.colour is not None else 0)
            grids.append(f.grid_size)
            pixels.append(src.shape[0] * src.shape[1])
        n = len(images)
        per_stream = [*zip(STREAMS, actual, estimate, strict=True)]
        for name, a, e in [*per_stream, ("all", actual.sum(), estimate.sum())]:
            ratio = f"{a / e:.3f}" if e else "-"
            rows.append([path.stem, name, f"{a / n:.1f}", f"{e / n:.1f}", ratio])
        log(f"entropy {path.stem} done")
    over, colour, grid = float(np.mean(overheads)), float(np.mean(colours)), float(np.mean(grids))
    at = 0.005 * 768 * 512 / 8
    return (
        heading("Entropy coding")
        + f"\nMean bytes per image over {len(images)} Kodak images: each stream's real size "
        "against the model's information estimate (the sum of -log2 p over its symbols, in "
        "bytes; 'all' is the payload). With the integer entropy path (every shipped bundle "
        "has one) p is the symbol's frequency in its 16-bit table, so the ratio is the range "
        "coder's own overhead.\n\n"
        + md_table(["model", "stream", "bytes", "estimate", "ratio"], rows)
        + f"\n\nContainer overhead (file size minus the five payloads and the colour grid: magic, "
        f"version, flags, model identity, size, lengths, CRC and, when present, the colour "
        f"statistics and the grid's three header bytes), mean "
        f"over the {len(overheads)} files above: {over:.1f} bytes, of which {colour:.1f} "
        f"colour statistics; {over * 8 / float(np.mean(pixels)):.5f} bpp on these images. "
        f"A 768x512 file at 0.005 bpp has {at:.0f} bytes, so this overhead is "
        f"{over * 8 / (768 * 512):.5f} bpp there, {100 * over / at:.0f} % of such a file. "
        f"Colour grids (bundles that send one): {grid:.1f} bytes per file on average over all "
        f"of them, {grid * 8 / float(np.mean(pixels)):.5f} bpp."
    )


# --------------------------------------------------------------------------- integer path


def integer_path(plan: Plan) -> str:
    """Rate cost of the integer entropy path per bundle, and encode time against AVIF q0."""
    import io

    from aeic_codec import api
    from aeic_codec.bundles.bundle import load_bundle
    from aeic_codec.tools.integerize import integer_cost

    title = heading("Integer entropy path")
    bundles = [p for p in plan.bundles if load_bundle(p, decoder=False).integer is not None]
    if not bundles:
        return title + "\nNo shipped bundle has an integer entropy path: not measured."
    images = [rd_kodak.load_rgb(p) for p in plan.kodak]
    rows = []
    for path in bundles:
        cost = integer_cost(load_bundle(path, decoder=False), images)
        fb, ib = sum(cost.float_bytes), sum(cost.integer_bytes)
        digest = 2 * len(images)
        rows.append(
            [
                path.stem,
                f"{fb / len(images):.1f}",
                f"{ib / len(images):.1f}",
                f"{100 * (ib - fb) / fb:+.2f} %",
                f"{100 * (ib - digest - fb) / fb:+.2f} %",
            ]
        )
        log(f"integer {path.stem}: {100 * cost.rate_cost:+.2f} %")
    bundle = plan.default_bundle if plan.default_bundle in bundles else bundles[0]
    model = load_bundle(bundle, decoder=False)
    image = rd_kodak.load_rgb(plan.speed_image)
    pil = Image.fromarray(image)
    timings = {
        "AVIF q0 (Pillow)": lambda: pil.save(io.BytesIO(), "AVIF", quality=0),
        f"{bundle.stem}, integer path": lambda: api.encode(image, model),
        f"{bundle.stem}, float path": lambda: api.encode(image, model, integer=False),
    }
    secs = {}
    for label, fn in timings.items():
        fn()
        secs[label] = _best(fn, 3)
    avif = secs["AVIF q0 (Pillow)"]
    speed_rows = [[k, f"{v:.3f}", f"{v / avif:.2f}"] for k, v in secs.items()]
    h, w = image.shape[:2]
    return (
        title + f"\nMean bytes per file over {len(images)} Kodak images with each bundle's two "
        "entropy paths (`aeic encode` and `aeic encode --float-entropy`; same pictures, the "
        "integer path's files also carry the 2-byte entropy digest; the last column leaves "
        "it out).\n\n"
        + md_table(["bundle", "float bytes", "integer bytes", "rate cost", "without digest"], rows)
        + f"\n\nEncode time of {plan.speed_image.name} ({w}x{h}), best of three after a "
        f"warm-up, side by side in this run with {plan.threads} thread(s):\n\n"
        + md_table(["encoder", "seconds", "x AVIF q0"], speed_rows)
    )


# --------------------------------------------------------------------------- rate-distortion


def perceptual_note() -> str:
    missing = []
    for module in ("lpips", "DISTS_pytorch", "piq"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"`{module}`")
    if len(missing) == 3:
        return "LPIPS and DISTS: not measured (none of lpips, DISTS_pytorch, piq installed)."
    return "LPIPS and DISTS: not measured (their network weights are not bundled here)."


def rate_distortion(plan: Plan) -> str:
    auto = "bf16" if _bf16() else "fp32"
    points = []
    for path in plan.bundles:
        for realism in rd_kodak.realism_settings(path):
            points.append(rd_kodak.measure_bundle(path, plan.kodak, "auto", realism))
            log(f"rd {points[-1].setting}: {points[-1].bpp:.4f} bpp, {points[-1].psnr:.2f} dB")
    if plan.anchors:
        for method, setting, codec in rd_kodak.anchors(plan.qualities):
            points.append(rd_kodak.measure_anchor(method, setting, codec, plan.kodak))
        log("rd anchors done")
    (plan.out / "benchmarks-rd.json").write_text(
        json.dumps(
            [{k: v for k, v in vars(p).items() if k != "per_image"} for p in points], indent=1
        )
        + "\n"
    )
    plots = rd_kodak.plot(
        points, plan.out / "benchmarks-rd", f"Kodak ({len(plan.kodak)} images)", PUBLISHED_RD
    )
    links = " ".join(f"![{p.stem}]({p.name})" for p in plots)
    if plan.crops and plan.bundles:
        named = [p for p in plan.kodak if p.stem == "kodim23"]
        sample = (named or plan.kodak)[0]
        h, w = rd_kodak.load_rgb(sample).shape[:2]
        side = min(320, h, w)
        box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
        sheet = rd_kodak.crops(plan.bundles, sample, plan.out / "benchmarks-crops.png", box)
        links += (
            f"\n\n{sample.stem}, a {side}x{side} crop at 1:1, original first, then each "
            f"bundle above:\n\n![crops]({sheet.name})"
        )
    return (
        heading("Rate-distortion on Kodak")
        + f"\n{len(plan.kodak)} images, real file sizes, PSNR on 8-bit RGB, MS-SSIM on RGB "
        f"in [0, 1], decoded with `--precision auto` ({auto} on this CPU). Anchors are "
        "Pillow at their lowest setting and 'downscale by k (Lanczos), AVIF at quality q, "
        f"upscale bicubic'; their encode seconds include decoding. {perceptual_note()}\n\n"
        f"{rd_kodak.table(points)}\n\n{published_rd()}\n\n{links}"
    )


def published_rd() -> str:
    """The paper's AEIC-SE points, for scale: its decoder is the full one-step SD-Turbo UNet."""
    ((label, rows),) = PUBLISHED_RD.items()
    table = md_table(
        ["bpp", "PSNR dB", "MS-SSIM"], [[f"{b:.4f}", f"{p:.2f}", f"{m:.3f}"] for b, p, m in rows]
    )
    return (
        "For scale, the paper's figures for the published AEIC-SE weights on Kodak "
        f"(checkpoints L = 32 to 2; '{label}' in the plots): the checkpoints are not on this "
        "machine (`aeic weights import` turns them into a bundle).\n\n" + table
    )


# --------------------------------------------------------------------------- memory


def child(job: dict[str, Any]) -> None:
    """In a fresh interpreter: load the decoder side, decode one file, print peak RSS."""
    import torch

    from aeic_codec import api
    from bench._machine import peak_rss_mb

    torch.set_num_threads(int(job["threads"]))
    keep_freed_memory()  # as the aeic command does
    model = load_model(job["model"], encoder=False)
    loaded = peak_rss_mb()
    data = Path(str(job["file"])).read_bytes()
    t = time.perf_counter()
    api.decode(data, model, precision="auto")
    secs = time.perf_counter() - t
    peak = peak_rss_mb()
    print(json.dumps({"seconds": secs, "loaded_mb": loaded, "peak_mb": peak}))


def decode_peak(spec: dict[str, str], data: bytes, threads: int, workdir: Path) -> dict[str, float]:
    """Decode a file in a fresh process (decoder side only, as `aeic decode` loads it)."""
    file = workdir / "x.aeic"
    file.write_bytes(data)
    job = json.dumps({"model": spec, "file": str(file), "threads": threads})
    code = "import json, sys; from bench.run_all import child; child(json.loads(sys.argv[1]))"
    out = subprocess.run(
        [sys.executable, "-c", code, job], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(plan: Plan) -> str:
    from aeic_codec import api

    rows = []
    jobs: list[tuple[str, dict[str, str], list[tuple[int, int]]]] = [
        (cfg.name, {"config": cfg.to_json()}, plan.preset_memory_sizes) for cfg in plan.presets[:1]
    ]
    if plan.bundles:
        bundle = plan.default_bundle
        jobs.append((bundle.stem, {"bundle": str(bundle.resolve())}, plan.memory_sizes))
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec, sizes in jobs:
            if not sizes:
                continue
            encoder = load_model(spec, decoder=False)
            for h, w in sizes:
                data = api.encode(photo(plan.kodak[0], h, w), encoder)
                r = decode_peak(spec, data, plan.threads, Path(tmp))
                rows.append(
                    [
                        name,
                        size_label(h, w),
                        f"{r['peak_mb']:.0f}",
                        f"{r['loaded_mb']:.0f}",
                        f"{r['seconds']:.1f}",
                    ]
                )
                log(f"memory {name} {size_label(h, w)}: {r['peak_mb']:.0f} MB")
            del encoder
    return (
        heading("Memory")
        + "\nPeak resident memory of a fresh process that loads the decoder side of the "
        f"model and decodes one file (`--precision auto`: {'bf16' if _bf16() else 'fp32'} here; "
        f"{plan.threads} thread(s), tiled as `aeic decode` "
        "tiles), next to its peak right after loading the model (interpreter, torch and "
        "weights). AEIC-SE has random weights.\n\n"
        + md_table(["model", "size", "peak MB", "after load MB", "decode s"], rows)
    )


# --------------------------------------------------------------------------- report

SECTIONS: tuple[tuple[str, Callable[[Plan], str]], ...] = (
    ("complexity", complexity),
    ("speed", speed),
    ("entropy coding", entropy),
    ("integer entropy path", integer_path),
    ("rate-distortion", rate_distortion),
    ("memory", memory),
)


def run(plan: Plan, only: str | None = None) -> Path:
    """Run every section (or those whose name starts with ``only``), write OUT/benchmarks.md."""
    import torch

    from bench._machine import machine_line

    torch.set_num_threads(plan.threads)
    keep_freed_memory()  # as the aeic command does (aeic_codec/runtime/allocator.py)
    plan.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parts, timings = [], []
    chosen = [(n, fn) for n, fn in SECTIONS if only is None or n.startswith(only)]
    if not chosen:
        raise SystemExit(f"no section starts with {only!r}: {', '.join(n for n, _ in SECTIONS)}")
    for name, fn in chosen:
        t = time.perf_counter()
        with section(name):
            parts.append(fn(plan))
        timings.append(f"{name} {time.perf_counter() - t:.0f} s")
    minutes = (time.perf_counter() - started) / 60
    notes = "".join(f"\n- {n}" for n in plan.notes)
    head = (
        f"# Benchmarks\n\nWritten by `{plan.command}` in {minutes:.1f} minutes "
        f"({', '.join(timings)}); every figure below comes from this one run, on "
        f"{machine_line()}.\n{notes}"
    )
    report = plan.out / "benchmarks.md"
    report.write_text("\n\n".join([head, *parts]) + "\n")
    return report


def plan_for(quick: bool, out: Path, threads: int) -> Plan:
    from aeic_codec.nn.config import PRESETS

    kodak = rd_kodak.kodak_images(rd_kodak.KODAK)
    bundles = rd_kodak.shipped_bundles()
    presets = [PRESETS["AEIC-SE"], PRESETS["AEIC-ME"]]
    small, large = (512, 768), (1088, 1920)
    # AEIC-ME's decoder differs from AEIC-SE's (g_s reads 320 latent channels, eps tiles
    # at 96 instead of 192), so its decode is timed in --quick too.
    decoders = ["AEIC-SE", "AEIC-ME"]
    if quick:
        return Plan(
            out,
            presets,
            bundles,
            kodak,
            [small, large],
            [small],
            decoders,
            [small, (2048, 2048)],
            [small],
            threads,
            command="python -m bench.run_all --quick",
            notes=[
                "--quick: AEIC-SE and AEIC-ME at 768x512 only; memory up to 2048x2048 for "
                "the default model and at 768x512 for AEIC-SE; the full run adds 1920x1088 "
                "for both and 2048x2048 and 4096x4096 for all.",
            ],
        )
    huge = [small, (2048, 2048), (4096, 4096)]
    return Plan(
        out,
        presets,
        bundles,
        kodak,
        [small, large],
        [small, large],
        decoders,
        huge,
        huge,
        threads,
    )


def slice_plan(work: Path) -> Plan:
    """Every section in seconds: a tiny random bundle, a tiny preset and two 64x48 images."""
    import torch

    from aeic_codec.bundles.bundle import save_bundle
    from aeic_codec.codec.model import AEIC
    from aeic_codec.nn.config import tiny_config
    from aeic_codec.tools.integerize import integerize_bundle

    (work / "weights").mkdir(parents=True, exist_ok=True)
    (work / "images").mkdir(exist_ok=True)
    torch.manual_seed(0)
    bundle = work / "weights" / "tiny-l16.safetensors"
    save_bundle(bundle, AEIC(tiny_config()), lambda_=16.0)
    images = []
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64].astype(np.float64)
    for i in range(2):
        waves = [np.sin(xx / (5 + i + c) + c) * np.cos(yy / (7 + c)) for c in range(3)]
        img = np.stack(waves, -1) * 90 + 128 + rng.normal(0, 6, (48, 64, 3))
        images.append(work / "images" / f"img{i}.png")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(images[-1])
    integerize_bundle(bundle, bundle, [rd_kodak.load_rgb(p) for p in images], "slice")
    preset = tiny_config("tiny-random")
    return Plan(
        work / "report",
        [preset],
        [bundle],
        images,
        [(48, 64)],
        [(48, 64)],
        [preset.name],
        [(48, 64)],
        [],
        threads=1,
        qualities=(0,),
        entropy_images=2,
        speed_image=images[0],
        command="python -m bench.run_all --slice DIR",
        notes=["--slice: a tiny random-weight model and two generated 64x48 images."],
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="trimmed run, under 10 minutes")
    p.add_argument("--slice", type=Path, metavar="DIR", help="tiny run into DIR/report")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--only", metavar="SECTION", help="run the sections whose name starts so")
    args = p.parse_args(argv)
    plan = slice_plan(args.slice) if args.slice else plan_for(args.quick, args.out, args.threads)
    print(run(plan, args.only))


if __name__ == "__main__":
    main()
