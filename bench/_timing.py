"""Timing shared by the benchmarks, so that every figure is taken the same way."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)


def best_of(fn: Callable[[], object], runs: int) -> float:
    """Seconds of the fastest of ``runs`` calls: the one least disturbed by other work."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def side_by_side(
    fns: dict[Key, Callable[[], object]], rounds: int, warm_up: bool = True
) -> dict[Key, list[float]]:
    """Seconds per call of each function, called in turns for ``rounds`` rounds (after a
    warm-up round unless told otherwise), so that a busy moment hits all of them alike."""
    if warm_up:
        for fn in fns.values():
            fn()
    times: dict[Key, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times
