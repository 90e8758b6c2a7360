"""Learning curves of realism runs: PSNR and luma power kept per band against steps.

Reads the evaluation rows of each run's log.jsonl (``aeic_codec/training/realism_trainer.py``:
whole Kodak images decoded through the realism decoder with the colour grid) and writes
one PNG, plus a Markdown table of every evaluation row on stdout. A run that continued
another's checkpoint is given as ``RUN_DIR@STEP`` to plot it from the step it started at.

Usage: python -m bench.realism_curve RUN_DIR[@STEP] [...] -o docs/realism-curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aeic_codec.codec.metrics import SPECTRUM_BANDS
from bench._tables import md_table

BANDS = [f"1/{round(1 / lo)}-1/{round(1 / hi)}" for lo, hi in SPECTRUM_BANDS]


def eval_rows(run: Path) -> list[dict[str, float]]:
    """The evaluation rows, as ``eval_*`` figures beside the step.

    Runs of the one run loop nest them under ``eval``; older realism runs wrote them flat.
    """
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    flat = [
        {"step": r["step"], **{f"eval_{k}": v for k, v in r["eval"].items()}} if "eval" in r else r
        for r in rows
    ]
    return [r for r in flat if "eval_psnr" in r]


def run_arg(text: str) -> tuple[Path, int]:
    """``DIR`` or ``DIR@STEP``: a run folder and the step its first step continues."""
    folder, _, start = text.partition("@")
    return Path(folder), int(start or 0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=run_arg, nargs="+", metavar="RUN_DIR[@STEP]")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, grid) = plt.subplots(1, 3, figsize=(15, 4), dpi=110)
    table: list[list[str]] = []
    for n, (run, start) in enumerate(args.runs):
        rows = eval_rows(run)
        steps = [start + r["step"] for r in rows]
        colour = f"C{n}"  # one colour per run in every panel
        left.plot(steps, [r["eval_psnr"] for r in rows], "o-", color=colour, label=run.name)
        for i, style in ((3, "o-"), (4, "s--")):
            values = [r[f"eval_band{i}"] for r in rows]
            right.plot(steps, values, style, color=colour, label=f"{run.name} {BANDS[i]}")
        lattice = [
            (s, r["eval_lattice"]) for s, r in zip(steps, rows, strict=True) if "eval_lattice" in r
        ]
        if lattice:
            grid.plot(*zip(*lattice, strict=True), "o-", color=colour, label=run.name)
        for step, r in zip(steps, rows, strict=True):
            extra = [f"{r[k]:.3f}" if k in r else "-" for k in ("eval_msssim", "eval_lattice")]
            bands = [f"{r[f'eval_band{i}']:+.1f}" for i in range(len(BANDS))]
            table.append([run.name, str(step), f"{r['eval_psnr']:.2f}", *extra, *bands])
    print(md_table(["run", "step", "PSNR dB", "MS-SSIM", "lattice", *BANDS], table))
    left.set(xlabel="step", ylabel="PSNR (dB)", title="evaluation images, realism 1")
    right.set(xlabel="step", ylabel="luma power kept (dB)", title="top two bands (0 = original)")
    right.axhline(0, color="grey", lw=0.8)
    grid.set(xlabel="step", ylabel="lattice rms (8-bit levels)", title="8-pixel grid")
    for ax in (left, right, grid):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
