"""The report's rate-distortion section: the shipped bundles and the anchors on Kodak (table,
plots, crops), with the paper's AEIC-SE points for scale."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from bench import rd_kodak
from bench._tables import md_table
from bench.report.common import bf16, heading, log

if TYPE_CHECKING:
    from bench.report.plan import Plan

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


def perceptual_note() -> str:
    """Why LPIPS and DISTS are missing from the table."""
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
    """Every bundle at each realism setting and every anchor, measured on plan.kodak."""
    auto = "bf16" if bf16() else "fp32"
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
