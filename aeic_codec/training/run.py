"""A training run: the run folder, the loop over stages, checkpoints, and stopping.

``train(config, data_dir, out_dir)`` runs the stages of a ``TrainConfig`` and writes into
the run folder: ``config.json``, ``log.jsonl``, ``checkpoint.pt`` and one bundle per
stage. Started by torchrun, it runs as one of several processes: every process trains
on its share of each batch, and rank 0 alone writes the run folder.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aeic_codec.runtime.files import atomic_path, atomic_write
from aeic_codec.runtime.imageio import IMAGE_SUFFIXES, read_image

from .config import TrainConfig, TrainConfigError
from .data import CALIBRATION_STAGE, CropDataset, crop_batches, data_key, find_images, image_shapes
from .distributed import Group, join, leave
from .runlog import ProgressBar, RunLog
from .trainer import Trainer

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


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


def _eval_images(config: TrainConfig) -> list[np.ndarray]:
    if not config.eval_every or config.eval_dir is None:
        return []
    files = find_images(config.eval_dir)[: config.eval_images]
    if not files:
        raise TrainConfigError(f"{config.eval_dir}: no evaluation images found")
    return [read_image(p)[0] for p in files]


def train(
    config: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    *,
    stop_at: int | None = None,
) -> Path:
    """Run (or continue, with ``resume``) every stage of ``config``; returns the last bundle.

    Writes the run folder ``out_dir``. On SIGINT/SIGTERM, or after global step
    ``stop_at``, it writes a checkpoint and raises TrainingStopped. ``progress`` shows
    a status line (on a terminal) and echoes notes to stderr. Under torchrun every
    process calls it with the same arguments; a checkpoint resumes under any number of
    processes that divides every stage's batch.
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
    group = join(config.device)
    try:
        for stage in config.stages:
            group.share(stage.batch)  # refuse a batch that does not split before any work
        progress = progress and group.main
        if group.main:
            out.mkdir(parents=True, exist_ok=True)
        key = data_key(files, Path(data_dir))
        log = RunLog(out / LOG if group.main else None, config.log_every, echo=progress)
        previous_threads = torch.get_num_threads()
        if config.threads:
            torch.set_num_threads(config.threads)
        try:
            trainer = Trainer(config, group.device, group)
            if resume:
                state = torch.load(checkpoint, map_location="cpu", weights_only=True)
                trainer.load_state_dict(state)
                log.truncate(trainer.global_step)
                if state.get("data") != key:
                    trainer.notes.append(
                        "the data folder differs from the checkpoint's: crops differ"
                    )
            elif group.main:
                atomic_write(out / "config.json", json.dumps(config.to_dict(), indent=1).encode())
            for message in trainer.notes:
                log.note(trainer.global_step, message)
            bundle = _Run(trainer, files, out, log, progress, stop_at, key).run()
            group.any(False)  # every process returns once rank 0 has written the bundle
            return bundle
        finally:
            torch.set_num_threads(previous_threads)
    finally:
        leave(group)


class _Run:
    """One call of ``train``: drives a Trainer over the stages, logs, evaluates, checkpoints."""

    def __init__(
        self,
        trainer: Trainer,
        files: list[Path],
        out: Path,
        log: RunLog,
        progress: bool,
        stop_at: int | None,
        data_key: str,
    ) -> None:
        self.trainer, self.config, self.out, self.log = trainer, trainer.config, out, log
        self.group: Group = trainer.group
        self.stop_at, self.data_key = stop_at, data_key
        self.checkpoint = out / CHECKPOINT
        self.eval_images = _eval_images(self.config) if self.group.main else []
        shapes = image_shapes(files)
        unreadable = sum(s is None for s in shapes)
        if unreadable:
            log.note(
                trainer.global_step, f"{unreadable} of {len(files)} files cannot be read: skipped"
            )
        self.files = [f for f, s in zip(files, shapes, strict=True) if s is not None]
        self.shapes = [s for s in shapes if s is not None]
        self.bar = ProgressBar(progress, self.config.total_steps)
        self.stop = StopSignals()
        self.saved_at = time.monotonic()

    def _dataset(self, crop: int, batch: int, stage: int, whole: bool = False) -> CropDataset:
        share = None if whole else self.group.share(batch)
        return CropDataset(
            self.files, self.shapes, crop, batch, self.config.seed, stage, share=share
        )

    def run(self) -> Path:
        trainer = self.trainer
        fresh = trainer.global_step == 0 and self.config.init_bundle is None
        if fresh and self.config.latent_std > 0:
            stage = trainer.stage
            x = self._dataset(stage.crop, stage.batch, CALIBRATION_STAGE, whole=True)[0]
            gain = trainer.calibrate_latent(x)
            self.log.note(
                0, f"g_a scaled by {gain:.4g} so that y starts with std {self.config.latent_std}"
            )
        with self.stop:
            while not self.trainer.finished:
                if self.trainer.stage_step < self.trainer.stage.steps:
                    self._train_stage()
                self._finish_stage()
        self.bar.close()
        return self.out / f"{self.config.stages[-1].export}.safetensors"

    def _train_stage(self) -> None:
        trainer, stage = self.trainer, self.trainer.stage
        small = sum(min(s) < stage.crop for s in self.shapes)
        if small:
            self.log.note(
                trainer.global_step,
                f"{stage.name}: {small} of {len(self.files)} images are smaller than the "
                f"{stage.crop} px crop and are padded by reflection",
            )
        dataset = self._dataset(stage.crop, stage.batch, trainer.stage_index)
        first, last = trainer.stage_step * stage.accum, stage.steps * stage.accum
        batches = crop_batches(dataset, first, last, self.config.workers, self.config.seed)
        try:
            while trainer.stage_step < stage.steps:
                began = time.perf_counter()
                metrics = trainer.train_step([next(batches) for _ in range(stage.accum)])
                metrics["step_time"] = time.perf_counter() - began
                self._after_step(metrics)
        finally:
            del batches  # shuts the loader's worker down now, also on the way out

    def _after_step(self, metrics: dict[str, float]) -> None:
        step, stage = self.trainer.global_step, self.trainer.stage.name
        self.log.add(step, stage, metrics)
        self.bar.show(step, stage, metrics)
        if self.eval_images and step % self.config.eval_every == 0:
            result = self.trainer.evaluate(self.eval_images)
            self.log.write({"step": step, "time": time.time(), "eval": result})
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

    def _save(self) -> None:
        if not self.group.main:
            return
        state = self.trainer.state_dict()
        state["data"] = self.data_key
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)
        self.saved_at = time.monotonic()

    def _finish_stage(self) -> None:
        trainer, stage = self.trainer, self.trainer.stage
        step = trainer.global_step
        self.log.flush(step, stage.name)
        if self.group.main:
            bundle = self.out / f"{stage.export}.safetensors"
            provenance = {
                "trained_by": "aeic train",
                "run": self.config.name,
                "stage": stage.name,
                "step": step,
                "seed": self.config.seed,
            }
            identity = trainer.export(bundle, provenance)
            self.log.write(
                {"step": step, "time": time.time(), "bundle": bundle.name, "identity": identity}
            )
        trainer.begin_stage(trainer.stage_index + 1)
        self._save()
