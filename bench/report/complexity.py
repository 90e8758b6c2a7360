"""The report's complexity section: parameters and MACs per pixel of each part, next to the
paper's figures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench._tables import md_table
from bench.report.common import heading, log

if TYPE_CHECKING:
    from aeic_codec.codec.model import AEIC
    from bench.report.plan import Plan

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


def count(n: float) -> str:
    """Parameters or MACs in the paper's units (M, K), plain below a thousand."""
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} K"
    return f"{n:.0f}"


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
