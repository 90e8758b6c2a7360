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
    return (
        f"{datetime.date.today().isoformat()} | {cpu} | {os.cpu_count()} cores | "
        f"torch {torch.__version__} | {torch.get_num_threads()} threads"
    )
