"""A training run: the run folder, the loop over stages, checkpoints, and stopping.

``train(config, data_dir, out_dir)`` is the one entry point of both kinds of run: it
gives a ``TrainConfig`` to the codec's ``Trainer`` and a ``RealismConfig`` to the
``RealismTrainer``, drives it over its stages and writes into the run folder:
``config.json``, ``log.jsonl``, ``checkpoint.pt`` (and, for a trainer that keeps them,
``checkpoint-<step>.pt`` at each evaluated step) and what each stage ends in (a codec
stage, its bundle). Started by torchrun, a codec run runs as one of several processes:
every process trains on its share of each batch, and rank 0 alone writes the run folder.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from aeic_codec.runtime.files import atomic_path, atomic_write
from aeic_codec.runtime.imageio import IMAGE_SUFFIXES

from .base import CHECKPOINT, BaseTrainer, checkpoint_path
from .config import RealismConfig, TrainConfig, TrainConfigError
from .data import data_key, find_images
from .distributed import Group, join, leave
from .realism_trainer import RealismTrainer
from .runlog import ProgressBar, RunLog
from .trainer import Trainer

LOG = "log.jsonl"
# The trainer of each kind of configuration.
TRAINERS: dict[type, type[BaseTrainer]] = {TrainConfig: Trainer, RealismConfig: RealismTrainer}


class TrainingStopped(Exception):
    """Training stopped early (signal or ``stop_at``) after writing a checkpoint."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(
            f"stopped after step {step}; checkpoint {checkpoint} (continue with --resume)"
        )
        self.step = step
        self.checkpoint = checkpoint


class StopSignals:
    """The first SIGINT/SIGTERM asks the loop to checkpoint and stop; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


def train(
    config: TrainConfig | RealismConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    *,
    stop_at: int | None = None,
) -> Path:
    """Run (or continue, with ``resume``) every stage of ``config``; returns what it made.

    That is the last stage's bundle for a TrainConfig, the run's checkpoint for a
    RealismConfig. Writes the run folder ``out_dir``. On SIGINT/SIGTERM, or after global
    step ``stop_at``, it writes a checkpoint and raises TrainingStopped. ``progress``
    shows a status line (on a terminal) and echoes notes to stderr. Under torchrun every
    process calls it with the same arguments; a codec checkpoint resumes under any number
    of processes that divides every stage's batch.
    """
    out = Path(out_dir)
    checkpoint = out / CHECKPOINT
    if resume and not checkpoint.exists():
        raise TrainConfigError(f"{out}: no {CHECKPOINT} to resume from")
    if not resume and checkpoint.exists():
        raise TrainConfigError(f"{out} already holds a run: resume it or choose another folder")
    files = find_images(data_dir)
    if not files:
        raise TrainConfigError(f"{data_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    kind = TRAINERS[type(config)]
    group = join(kind.device_name(config))
    try:
        kind.check(config, group)  # before any work
        progress = progress and group.main
        if group.main:
            out.mkdir(parents=True, exist_ok=True)
        key = data_key(files, Path(data_dir))
        log = RunLog(out / LOG if group.main else None, config.log_every, echo=progress)
        previous_threads = torch.get_num_threads()
        if config.threads:
            torch.set_num_threads(config.threads)
        try:
            trainer = kind(config, group.device, group)
            # Before a checkpoint's RNG state comes back: building what the data needs (a
            # realism run loads its base bundle) draws from the RNG.
            images = trainer.prepare(files, out, progress)
            if resume:
                state = torch.load(checkpoint, map_location="cpu", weights_only=True)
                trainer.load_state_dict(state)
                log.truncate(trainer.global_step)
                # (Realism checkpoints from before the one run loop carry no data key.)
                if state.get("data", key) != key:
                    trainer.notes.append(
                        "the data folder differs from the checkpoint's: crops differ"
                    )
            else:
                if group.main:
                    config_json = json.dumps(config.to_dict(), indent=1).encode()
                    atomic_write(out / "config.json", config_json)
                trainer.start()
            result = _Run(trainer, images, out, log, progress, stop_at, key).run()
            group.any(False)  # every process returns once rank 0 has written the bundle
            return result
        finally:
            # The trainer's DDP modules hold the process group; gone before leave() closes
            # it, they cannot destroy it later, at interpreter exit (one process of a
            # torchrun job once aborted there: "terminate called without an active
            # exception").
            trainer = None
            torch.set_num_threads(previous_threads)
    finally:
        leave(group)


class _Run:
    """One call of ``train``: drives a trainer over its stages, logs, evaluates, checkpoints."""

    def __init__(
        self,
        trainer: BaseTrainer,
        eval_images: list[Any],
        out: Path,
        log: RunLog,
        progress: bool,
        stop_at: int | None,
        data_key: str,
    ) -> None:
        self.trainer, self.config, self.out, self.log = trainer, trainer.config, out, log
        self.group: Group = trainer.group
        self.eval_images = eval_images
        self.stop_at, self.data_key = stop_at, data_key
        self.checkpoint = out / CHECKPOINT
        self.bar = ProgressBar(progress, self.config.total_steps, trainer.status)
        self.stop = StopSignals()
        self.saved_at = time.monotonic()

    def run(self) -> Path:
        trainer = self.trainer
        self._notes()
        with self.stop:
            while not trainer.finished:
                if trainer.stage_step < trainer.stage.steps:
                    self._train_stage()
                self._finish_stage()
        self.bar.close()
        return trainer.result(self.out)

    def _notes(self) -> None:
        """What the trainer has noted since the last call, into the log."""
        for message in self.trainer.notes:
            self.log.note(self.trainer.global_step, message)
        self.trainer.notes.clear()

    def _train_stage(self) -> None:
        trainer = self.trainer
        batches = trainer.batches()
        self._notes()
        try:
            while trainer.stage_step < trainer.stage.steps:
                began = time.perf_counter()
                metrics = trainer.train_step(next(batches))
                metrics["step_time"] = time.perf_counter() - began
                self._after_step(metrics)
        finally:
            del batches  # shuts a loader's worker down now, also on the way out

    def _after_step(self, metrics: dict[str, float]) -> None:
        trainer = self.trainer
        step, stage = trainer.global_step, trainer.stage.name
        self.log.add(step, stage, metrics)
        self.bar.show(step, stage, metrics)
        if self.eval_images and trainer.eval_due(step):
            result = trainer.evaluate(self.eval_images)
            self.log.write({"step": step, "time": time.time(), "eval": result})
            if trainer.keeps_evaluated:
                self._save(checkpoint_path(self.out, step))
        # Every process stops after the same step, whichever of them got the signal.
        stopping = self.group.any(self.stop.requested)
        halt = stopping or (self.stop_at is not None and step >= self.stop_at)
        every = self.config.checkpoint_every
        late = time.monotonic() - self.saved_at >= self.config.checkpoint_minutes * 60
        if halt or late or (every and step % every == 0):
            self.log.flush(step, stage)
            self._save()
        if halt:
            self.bar.close()
            raise TrainingStopped(step, self.checkpoint)

    def _save(self, path: Path | None = None) -> None:
        """The checkpoint (timed from here), or a copy kept at ``path``; rank 0 alone."""
        if not self.group.main:
            return
        state = self.trainer.state_dict()
        state["data"] = self.data_key
        with atomic_path(path or self.checkpoint) as tmp:
            torch.save(state, tmp)
        if path is None:
            self.saved_at = time.monotonic()

    def _finish_stage(self) -> None:
        trainer = self.trainer
        step = trainer.global_step
        self.log.flush(step, trainer.stage.name)
        if self.group.main:
            row = trainer.finish_stage(self.out)
            if row:
                self.log.write({"step": step, "time": time.time(), **row})
        trainer.begin_stage(trainer.stage_index + 1)
        self._save()
