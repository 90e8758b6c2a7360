"""The machine a benchmark runs on: the line describing it, printed next to every figure, and
the memory of a process, measured in a fresh one where this process's own would colour it."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

from bench import ROOT


def machine_line() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from aeic_codec.runtime.cpu import ISA_VARIABLE, avx2_ceiling

    ceiling = f" | {ISA_VARIABLE}=AVX2 (paths of an AVX2-only CPU)" if avx2_ceiling() else ""
    return (
        f"{datetime.date.today().isoformat()} | {cpu} | {os.cpu_count()} cores | "
        f"torch {torch.__version__} | {torch.get_num_threads()} threads{ceiling}"
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Reads VmHWM, the high-water mark of the current address space: getrusage's ru_maxrss
    would also count the parent's memory when the process was forked from a large one and
    then exec'd (Linux carries the pre-exec peak over).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_fresh(code: str, *args: str) -> dict[str, float]:
    """Run ``python -c code args`` in a fresh interpreter from the repository's root, and
    return the JSON object on the last line it printed (its peak memory is its own)."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
