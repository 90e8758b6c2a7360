"""The resumable state of a distillation (``stem.py``, ``renderer.py``), and its steps.

Both distillations take Adam steps on a cosine learning rate (``run_steps``). A run given
a checkpoint path writes the state of its networks and optimiser there every
CHECKPOINT_SECONDS and after its last step; a run given the same path goes on from it,
and a finished one returns its networks without another step. The state names what it
was made for (bundle, shapes, step count), so that another run's file is refused instead
of continued.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_SECONDS = 120.0


class Checkpoint:
    """Loads ``parts`` (modules and optimisers by name) from ``path`` and writes them back.

    ``made_for`` is compared with the stored one; ``refusal`` completes the error message
    ("a checkpoint of ...") when they differ. Without a path nothing is read or written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        made_for: dict[str, Any],
        parts: dict[str, Any],
        refusal: str,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.made_for, self.parts, self.refusal = made_for, parts, refusal
        self._saved = time.monotonic()

    def resume(self) -> int:
        """The steps already done (0 without a stored state), the parts loaded."""
        if self.path is None or not self.path.exists():
            return 0
        state = torch.load(self.path, weights_only=True)
        if state.get("made_for") != self.made_for:
            raise ValueError(f"{self.path}: a checkpoint of {self.refusal}")
        for name, part in self.parts.items():
            part.load_state_dict(state[name])
        return int(state["step"])

    def done(self, step: int, steps: int) -> None:
        """After step ``step`` (1-based) of ``steps``: write the state when it is due."""
        due = time.monotonic() - self._saved > CHECKPOINT_SECONDS or step == steps
        if self.path is None or not due:
            return
        from aeic_codec.runtime.files import atomic_path

        state = {name: part.state_dict() for name, part in self.parts.items()}
        with atomic_path(self.path) as tmp:
            torch.save(dict(state, made_for=self.made_for, step=step), tmp)
        self._saved = time.monotonic()


def run_steps(
    state: Checkpoint,
    loss_at: Callable[[int], torch.Tensor],
    optimiser: torch.optim.Optimizer,
    lr: float,
    steps: int,
    progress: Callable[[int, int, float], None] | None = None,
) -> None:
    """Steps ``state`` has not done yet, up to ``steps``: the learning rate on a cosine
    from ``lr`` to 0, ``loss_at(step)``, one optimiser step on it, ``progress(step, steps,
    loss)``, the state written when due (so a resumed run continues the same schedule)."""
    for step in range(state.resume(), steps):
        for group in optimiser.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = loss_at(step)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress(step + 1, steps, float(loss.detach()))
        state.done(step + 1, steps)
