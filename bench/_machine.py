"""One line describing the machine, printed by every benchmark next to its numbers."""

from __future__ import annotations

import datetime
import os
import platform


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
