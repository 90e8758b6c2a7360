"""One benchmark report, docs/benchmarks.md: complexity, speed, entropy coding, the integer
entropy path, rate-distortion and memory, all measured in the same run on the same machine.

    python -m bench.run_all              # everything (long: full-size decodes up to 4096x4096)
    python -m bench.run_all --quick      # trimmed sizes and models (under 10 minutes)
    python -m bench.run_all --slice DIR  # seconds: every section on a tiny random model
    python -m bench.run_all --only integer --out DIR   # one section (name prefix), into DIR

Full-size AEIC-SE and AEIC-ME run with random weights (speed and memory do not depend on
the weights); the default model is the shipped bundle set in weights/. Progress goes to
stderr, the report to OUT/benchmarks.md with its plots beside it. Each section is a module
of bench/report/; this script plans the run, runs them and writes the report.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aeic_codec.runtime.allocator import keep_freed_memory
from bench import ROOT
from bench._machine import machine_line
from bench.report.common import log
from bench.report.complexity import complexity
from bench.report.entropy import entropy
from bench.report.integer import integer_path
from bench.report.memory import memory
from bench.report.plan import Plan, plan_for, slice_plan
from bench.report.rate_distortion import rate_distortion
from bench.report.speed import speed

__all__ = ["SECTIONS", "Plan", "main", "plan_for", "run", "slice_plan"]

# The report's sections in order, by the names --only matches (bench/report/ has one each).
SECTIONS: tuple[tuple[str, Callable[[Plan], str]], ...] = (
    ("complexity", complexity),
    ("speed", speed),
    ("entropy coding", entropy),
    ("integer entropy path", integer_path),
    ("rate-distortion", rate_distortion),
    ("memory", memory),
)


@contextmanager
def section(name: str) -> Iterator[None]:
    """Progress lines around one section, with its seconds."""
    t = time.perf_counter()
    log(f"{name} ...")
    yield
    log(f"{name}: {time.perf_counter() - t:.0f} s")


def run(plan: Plan, only: str | None = None) -> Path:
    """Run every section (or those whose name starts with ``only``), write OUT/benchmarks.md."""
    import torch

    torch.set_num_threads(plan.threads)
    keep_freed_memory()  # as the aeic command does (aeic_codec/runtime/allocator.py)
    plan.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parts, timings = [], []
    chosen = [(n, fn) for n, fn in SECTIONS if only is None or n.startswith(only)]
    if not chosen:
        raise SystemExit(f"no section starts with {only!r}: {', '.join(n for n, _ in SECTIONS)}")
    for name, fn in chosen:
        t = time.perf_counter()
        with section(name):
            parts.append(fn(plan))
        timings.append(f"{name} {time.perf_counter() - t:.0f} s")
    minutes = (time.perf_counter() - started) / 60
    notes = "".join(f"\n- {n}" for n in plan.notes)
    head = (
        f"# Benchmarks\n\nWritten by `{plan.command}` in {minutes:.1f} minutes "
        f"({', '.join(timings)}); every figure below comes from this one run, on "
        f"{machine_line()}.\n{notes}"
    )
    report = plan.out / "benchmarks.md"
    report.write_text("\n\n".join([head, *parts]) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="trimmed run, under 10 minutes")
    p.add_argument("--slice", type=Path, metavar="DIR", help="tiny run into DIR/report")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--only", metavar="SECTION", help="run the sections whose name starts so")
    args = p.parse_args(argv)
    plan = slice_plan(args.slice) if args.slice else plan_for(args.quick, args.out, args.threads)
    print(run(plan, args.only))


if __name__ == "__main__":
    main()
