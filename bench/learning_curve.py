"""Learning curves of a training run: bpp and PSNR against steps, from its log.jsonl.

Training batches are smoothed over a window of log lines; the evaluation points (real
files on Kodak images) are drawn as markers. Writes one PNG.

Usage: python -m bench.learning_curve RUN_DIR [RUN_DIR ...] -o docs/learning-curve.png
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np


def read_log(run: Path) -> tuple[list[dict], list[dict]]:
    """(training lines, evaluation lines) of one run, steps made global over stages."""
    train, evals = [], []
    for line in (run / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval" in row:
            evals.append({"step": row["step"], **row["eval"]})
        elif "bpp" in row:
            train.append(row)
    return train, evals


def smooth(values: list[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if len(v) < window:
        return v
    kernel = np.ones(window) / window
    return np.convolve(np.pad(v, (window - 1, 0), mode="edge"), kernel, mode="valid")


def plot(runs: list[Path], out: Path, window: int = 10) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_bpp, ax_psnr) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for run in runs:
        train, evals = read_log(run)
        steps = [r["step"] for r in train]
        ax_bpp.plot(steps, smooth([r["bpp"] for r in train], window), label=f"{run.name} (train)")
        ax_psnr.plot(steps, smooth([r["psnr"] for r in train], window), label=f"{run.name} (train)")
        if evals:
            es = [e["step"] for e in evals]
            n = evals[-1].get("images", "?")
            what = f"{run.name} ({n} Kodak image{'' if n == 1 else 's'}, real files)"
            ax_bpp.plot(es, [e["bpp"] for e in evals], "o", label=what)
            ax_psnr.plot(es, [e["psnr"] for e in evals], "o", label=what)
        stage_starts = [r["step"] for a, r in itertools.pairwise(train) if a["stage"] != r["stage"]]
        for s in stage_starts:
            ax_bpp.axvline(s, color="grey", alpha=0.3)
            ax_psnr.axvline(s, color="grey", alpha=0.3)
    ax_bpp.set_yscale("log")
    ax_bpp.set_ylabel("bits per pixel")
    ax_psnr.set_ylabel("PSNR (dB)")
    for ax in (ax_bpp, ax_psnr):
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--window", type=int, default=10, help="log lines to average")
    args = p.parse_args()
    print(plot(args.runs, args.out, args.window))


if __name__ == "__main__":
    main()
