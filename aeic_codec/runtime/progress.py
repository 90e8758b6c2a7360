"""One status line on a terminal while a batch runs: n/N, the current file and an ETA.

The line is redrawn in place on stderr, at most ten times a second, and cleared before
any other message and at the end, so that it never lands in a log. Whether to show it at
all (a terminal, not --quiet, not --json) is the caller's decision.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TextIO

REDRAW_S = 0.1


class BatchProgress:
    """The status line of a batch of ``total`` files."""

    def __init__(
        self, total: int, stream: TextIO, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total, self.stream, self.clock = total, stream, clock
        self.done = 0  # files finished
        self.part = 0.0  # of the current file (tiles), 0 to 1
        self.name = ""
        self.started = clock()
        self.drawn_at = float("-inf")
        self.shown = False

    def begin(self, name: str) -> None:
        """The next file starts."""
        self.name, self.part = name, 0.0
        self._draw(force=True)

    def tiles(self, done: int, total: int) -> None:
        """Progress within the current file (a tile callback)."""
        self.part = min(1.0, done / max(total, 1))
        self._draw()

    def finished(self) -> None:
        """The current file is done (written or failed)."""
        self.done += 1
        self.part = 0.0

    def clear(self) -> None:
        """Remove the line, so that a message or the shell prompt starts on a clean line."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def text(self, width: int) -> str:
        """The line for a terminal ``width`` columns wide."""
        position = f"{min(self.done + 1, self.total)}/{self.total}"
        units = self.done + self.part
        if units > 0:
            left = (self.clock() - self.started) / units * (self.total - units)
            eta = f"ETA {_clock_time(left)}"
        else:
            eta = "ETA --:--"
        head, tail = f"aeic: {position} ", f"  {eta}"
        room = width - 1 - len(head) - len(tail)  # the last column would wrap on some terminals
        name = self.name if len(self.name) <= room else "..." + self.name[-max(room - 3, 1) :]
        return head + name + tail

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.drawn_at < REDRAW_S:
            return
        self.drawn_at = now
        width = shutil.get_terminal_size().columns
        self.stream.write("\r\x1b[K" + self.text(width))
        self.stream.flush()
        self.shown = True


def _clock_time(seconds: float) -> str:
    s = round(seconds)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


ENTROPY_STEPS = 4  # progress ticks of a decode's entropy decoding (its context steps)
# The entropy decoding's share of a decode's progress, against 1 for each decoder run:
# about what it takes at any size (it is linear too), 0.3 to 1 of a decoder by the CPU.
ENTROPY_SHARE = 0.5


def phases(
    progress: Callable[[int, int], None] | None, shares: list[float]
) -> list[Callable[[int, int], None] | None]:
    """One progress callback per phase of a decode, reported as one count out of 1000 in
    which each phase takes its share, so that a bar moves all along and never starts
    over (a phase's own count can have any total)."""
    if progress is None:
        return [None] * len(shares)
    report, whole = progress, sum(shares)
    starts = [sum(shares[:i]) for i in range(len(shares))]

    def phase(start: float, share: float) -> Callable[[int, int], None]:
        def tell(done: int, total: int) -> None:
            report(round(1000 * (start + share * done / max(total, 1)) / whole), 1000)

        return tell

    return [phase(a, b) for a, b in zip(starts, shares, strict=True)]
