"""The report's entropy coding section: each stream's bytes against the model's information
estimate, and what the container adds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bench import rd_kodak
from bench._tables import md_table
from bench.report.common import heading, log

if TYPE_CHECKING:
    from bench.report.plan import Plan

STREAMS = ("z", "step 0", "step 1", "step 2", "step 3")


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
