"""The whole commands of the report's speed section: wall seconds of `aeic` as a user runs it,
against the floor of `import torch`."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from bench._tables import md_table
from bench._timing import side_by_side
from bench.report.common import log, photo, size_label

if TYPE_CHECKING:
    from bench.report.plan import Plan

FLOOR = ('python -c "import torch"', "-")


def _cli(*args: str) -> list[str]:
    """The `aeic` console script beside this interpreter, as a user would call it."""
    return [str(Path(sys.executable).parent / "aeic"), *args]


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
        commands: dict[tuple[str, str], list[str]] = {FLOOR: [sys.executable, "-c", "import torch"]}
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
        runs: dict[tuple[str, str], Callable[[], object]] = {
            key: partial(subprocess.run, cmd, check=True, capture_output=True)
            for key, cmd in commands.items()
        }
        # In rounds, so that a busy moment hits every command; the first round counts too.
        times = side_by_side(runs, plan.whole_runs, warm_up=False)
    medians = {key: float(np.median(t)) for key, t in times.items()}
    floor = medians[FLOOR]
    rows = []
    for (command, what), secs in medians.items():
        computes = command.startswith(("aeic encode", "aeic decode"))
        extra = f"{secs - floor:+.2f}" if computes else "-"
        rows.append([f"`{command}`", what, f"{secs:.2f}", extra])
        log(f"whole command {command} {what}: {secs:.2f} s")
    return (
        f"Whole commands (wall seconds of the `aeic` console script as a user runs it, "
        f"median of {plan.whole_runs} interleaved runs; default model {plan.default_bundle.stem}, "
        f"the CLI's own thread and precision settings): interpreter, imports, loading the "
        f"model and the work. The last column is what a command costs beyond `import "
        f"torch`, timed in the same rounds; on a 16x16 image that is the start-up cost. "
        "`aeic info` reads only the header and the bundles' metadata.\n\n"
        + md_table(["command", "input", "seconds", "beyond import torch"], rows)
    )
