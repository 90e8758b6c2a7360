"""The trainer family's root: what a run loop needs of a trainer, whatever it trains.

A run is a sequence of stages of optimizer steps. ``train`` (run.py) owns the run folder,
log.jsonl, the evaluation schedule, checkpoints, resuming and stopping; a trainer owns
its networks, its data and its steps. Two trainers share this root, as NeuralCompression's
compression modules share its ImageModule:

- ``Trainer`` (trainer.py): the codec on the rate-distortion loss, stage after stage,
  optionally against a critic and a teacher;
- ``RealismTrainer`` (realism_trainer.py): a realism decoder for a trained bundle, in one
  stage, against its critics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

from .config import RealismConfig, TrainConfig, TrainConfigError
from .data import find_images
from .distributed import Group

CHECKPOINT = "checkpoint.pt"


class StagePlan(Protocol):
    """What the run loop reads of a stage (StageConfig is one)."""

    @property
    def name(self) -> str: ...

    @property
    def steps(self) -> int: ...


class Stage(NamedTuple):
    """A stage that is only a name and a length (a realism run's one stage)."""

    name: str
    steps: int


def checkpoint_path(out_dir: str | Path, step: int | None = None) -> Path:
    """A run folder's checkpoint: the latest, or the copy kept at evaluated ``step``."""
    return Path(out_dir) / (CHECKPOINT if step is None else f"checkpoint-{step}.pt")


def eval_files(config: TrainConfig | RealismConfig) -> list[Path]:
    """The evaluation images of a run (none when it does not evaluate)."""
    if not config.eval_every or not config.eval_dir:
        return []
    files = find_images(config.eval_dir)[: config.eval_images]
    if not files:
        raise TrainConfigError(f"{config.eval_dir}: no evaluation images found")
    return files


class BaseTrainer(ABC):
    """Stages of steps over prepared data, evaluation, and checkpoint state.

    ``train`` builds the trainer, calls ``prepare`` once, then either ``load_state_dict``
    (resuming) or ``start``; then, stage by stage, ``train_step`` on each of ``batches``,
    ``evaluate`` when ``eval_due``, and at each stage's end ``finish_stage`` and
    ``begin_stage`` of the next. Anything appended to ``notes`` goes to log.jsonl.
    """

    # Whether the checkpoint of each evaluated step is kept beside checkpoint.pt, so that
    # any evaluated step can ship.
    keeps_evaluated: ClassVar[bool] = False

    def __init__(self, config: TrainConfig | RealismConfig, group: Group) -> None:
        self.config = config
        self.group = group
        self.notes: list[str] = []
        self.stage_index = 0
        self.stage_step = 0

    @classmethod
    def device_name(cls, config: TrainConfig | RealismConfig) -> str:
        """The device to ask torchrun's environment for (``join``)."""
        return config.device

    @classmethod
    def check(cls, config: TrainConfig | RealismConfig, group: Group) -> None:
        """Refuse, before any work, a run that this group of processes cannot do.

        Here: a run of several processes (a trainer that shares batches says how).
        """
        if group.size > 1:
            raise TrainConfigError(f"a {cls.__name__} trains in one process: run without torchrun")

    # ------------------------------------------------------------- stages
    @property
    @abstractmethod
    def stages(self) -> Sequence[StagePlan]:
        """The run's stages, in order."""

    @property
    def stage(self) -> StagePlan:
        return self.stages[self.stage_index]

    @property
    def global_step(self) -> int:
        return sum(s.steps for s in self.stages[: self.stage_index]) + self.stage_step

    @property
    def finished(self) -> bool:
        return self.stage_index >= len(self.stages)

    def begin_stage(self, index: int) -> None:
        """Make stage ``index`` the current one, at its first step."""
        self.stage_index, self.stage_step = index, 0

    # ------------------------------------------------------------- the run
    @abstractmethod
    def prepare(self, files: list[Path], out: Path, progress: bool) -> list[Any]:
        """Ready the training data of ``files`` (caches may go in the run folder ``out``).

        Returns the evaluation images, as ``evaluate`` takes them (none off rank 0).
        """

    def start(self) -> None:  # noqa: B027 (a hook; most need none)
        """Before the first step of a run that does not resume."""

    @abstractmethod
    def batches(self) -> Iterator[Any]:
        """What each step of the current stage trains on, from ``stage_step`` on."""

    @abstractmethod
    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimizer step; returns the step's figures (``loss`` among them)."""

    def eval_due(self, step: int) -> bool:
        """Whether to evaluate after global step ``step``."""
        return step % self.config.eval_every == 0

    @abstractmethod
    def evaluate(self, images: Sequence[Any]) -> dict[str, float]:
        """Figures of the current weights on the evaluation images."""

    @abstractmethod
    def finish_stage(self, out: Path) -> dict[str, Any] | None:
        """What the current stage leaves in the run folder (rank 0 alone calls it).

        Returns what log.jsonl should say about it, if anything.
        """

    @abstractmethod
    def result(self, out: Path) -> Path:
        """What a finished run gives its caller (the path ``train`` returns)."""

    def status(self, metrics: dict[str, float]) -> str:
        """The figures of a step on the terminal's status line."""
        return f"loss {metrics['loss']:.4g}"

    # ------------------------------------------------------------- state
    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue on the same bits."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint of ``state_dict``."""
