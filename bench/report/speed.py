"""The report's speed section: encode and decode seconds of the random-weight presets and the
default bundle by size, the anchors' encoders, and the whole commands (startup.py)."""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING

from PIL import Image

from bench import rd_kodak
from bench._tables import md_table
from bench._timing import best_of
from bench.report.common import bf16, heading, log, photo, random_model, size_label
from bench.report.startup import startup

if TYPE_CHECKING:
    from aeic_codec.codec.model import AEIC
    from bench.report.plan import Plan

SLOW_DECODE_S = 5.0  # decodes slower than this are timed once, faster ones best of two


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
        encode_s[(h, w)] = best_of(lambda img=img: api.encode(img, model), 2)
        log(f"speed {name} {size_label(h, w)}: encode {encode_s[(h, w)]:.2f} s")
    decode_s: dict[tuple[int, int], list[str]] = {hw: [] for hw in sizes}
    precisions = ("fp32", "bf16") if bf16() else ("fp32",)
    for precision in precisions if decode and model.g_s is not None else ():
        # What a first decode does anyway (cast, channels-last): kept out of the timing.
        dtype = api.resolve_precision(precision)
        for part in (model.g_s, model.denoiser, model.vae):
            part.to(dtype=dtype, memory_format=torch.channels_last)
        for hw, data in files.items():

            def run(precision: str = precision, data: bytes = data) -> None:
                api.decode(data, model, precision=precision)

            secs = best_of(run, 1)
            secs = min(secs, best_of(run, 1)) if secs < SLOW_DECODE_S else secs
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
    """Seconds per image of every model at its sizes, then the anchors and whole commands."""
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
    if bf16():
        native = "This CPU has native bf16, so decodes are timed in both precisions."
    else:
        native = (
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
            f"{native} AEIC-SE and AEIC-ME have random weights; a '-' is not measured in this "
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
    rows = []
    for h, w in plan.speed_sizes:
        img = Image.fromarray(photo(plan.kodak[0], h, w))
        for method, setting, fmt, options in rd_kodak.LOWEST:

            def encode(
                fmt: str = fmt, options: dict[str, int] = options, img: Image.Image = img
            ) -> None:
                img.save(io.BytesIO(), fmt, **options)

            encode()
            secs = best_of(encode, 3)
            rows.append(
                [
                    f"{method} {setting}",
                    size_label(h, w),
                    f"{secs:.3f}",
                    f"{h * w / secs / 1e6:.1f}",
                ]
            )
    return (
        "Anchor encoders (Pillow, best of three after a warm-up, encode only, on the same "
        "images):\n\n" + md_table(["codec", "size", "encode s", "Mpixel/s"], rows)
    )
