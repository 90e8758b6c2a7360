"""Learning curves of realism runs: PSNR and luma power kept per band against steps.

Reads the evaluation rows of each run's log.jsonl (``aeic_codec/training/realism.py``:
whole Kodak images decoded through the realism decoder with the colour grid) and writes
one PNG, plus a Markdown table of every evaluation row on stdout.

Usage: python -m bench.realism_curve RUN_DIR [RUN_DIR ...] -o docs/realism-curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aeic_codec.metrics import SPECTRUM_BANDS

BANDS = [f"1/{round(1 / lo)}-1/{round(1 / hi)}" for lo, hi in SPECTRUM_BANDS]


def eval_rows(run: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval_psnr" in r]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    print("| run | step | PSNR dB | " + " | ".join(BANDS) + " |")
    print("|---" * (3 + len(BANDS)) + "|")
    for run in args.runs:
        rows = eval_rows(run)
        steps = [r["step"] for r in rows]
        left.plot(steps, [r["eval_psnr"] for r in rows], "o-", label=run.name)
        for i in (3, 4):
            right.plot(
                steps, [r[f"eval_band{i}"] for r in rows], "o-", label=f"{run.name} {BANDS[i]}"
            )
        for r in rows:
            bands = " | ".join(f"{r[f'eval_band{i}']:+.1f}" for i in range(len(BANDS)))
            print(f"| {run.name} | {r['step']} | {r['eval_psnr']:.2f} | {bands} |")
    left.set(xlabel="step", ylabel="PSNR (dB)", title="evaluation images, realism 1")
    right.set(xlabel="step", ylabel="luma power kept (dB)", title="top two bands (0 = original)")
    right.axhline(0, color="grey", lw=0.8)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
