"""What a run tells: log.jsonl in the run folder and a status line on the terminal."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aeic_codec.runtime.files import atomic_write


class RunLog:
    """log.jsonl: one JSON object per line; training rows average the steps since the last.

    Each figure is averaged over the steps that gave it (a realism run's adversarial
    terms start after its first steps). A log without a path (the processes of a
    distributed run besides rank 0) writes nothing.
    """

    def __init__(self, path: Path | None, every: int, echo: bool) -> None:
        self.path, self.every, self.echo = path, every, echo
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def write(self, row: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")

    def note(self, step: int, message: str) -> None:
        self.write({"step": step, "time": time.time(), "note": message})
        if self.echo:
            print(f"note: {message}", file=sys.stderr)

    def add(self, step: int, stage: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1
        if step % self.every == 0:
            self.flush(step, stage)

    def flush(self, step: int, stage: str) -> None:
        if not self._counts:
            return
        means = {k: v / self._counts[k] for k, v in self._sums.items()}
        self.write({"step": step, "time": time.time(), "stage": stage, **means})
        self._sums, self._counts = {}, {}

    def truncate(self, step: int) -> None:
        """Drop rows past ``step``: a resumed run writes them again."""
        if self.path is None or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write(self.path, "".join(line + "\n" for line in kept).encode())


def rate_figures(metrics: dict[str, float]) -> str:
    """A codec step's figures on the status line: its loss, rate and PSNR."""
    return f"loss {metrics['loss']:.4g} bpp {metrics['bpp']:.4f} psnr {metrics['psnr']:.2f}"


class ProgressBar:
    """One self-rewriting status line on stderr, only when stderr is a terminal.

    ``figures`` picks what it shows of a step's metrics (a trainer's ``status``).
    """

    def __init__(
        self,
        enabled: bool,
        total: int,
        figures: Callable[[dict[str, float]], str] = rate_figures,
    ) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total = total
        self.figures = figures

    def show(self, step: int, stage: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        filled = 20 * step // max(1, self.total)
        line = (
            f"\r{stage} [{'#' * filled}{'-' * (20 - filled)}] {step}/{self.total} "
            f"{self.figures(metrics)} {metrics['step_time']:.2f} s/step"
        )
        sys.stderr.write(line.ljust(100))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
