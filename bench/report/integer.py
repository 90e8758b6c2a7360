"""The report's integer entropy path section: its rate cost per bundle against the float
path, and its encode time against AVIF q0's."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from PIL import Image

from bench import rd_kodak
from bench._tables import md_table
from bench._timing import best_of
from bench.report.common import heading, log

if TYPE_CHECKING:
    from bench.report.plan import Plan


def integer_path(plan: Plan) -> str:
    """Rate cost of the integer entropy path per bundle, and encode time against AVIF q0."""
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
        secs[label] = best_of(fn, 3)
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
