"""The Trainer: the codec's trainer, everything its run holds, one optimizer step at a time.

Model, optimizers, critic, teacher and distiller, and the crops of the data folder;
checkpoints hold every weight, optimizer and RNG state, and evaluation and export leave
the RNG untouched, so a run stopped and resumed ends on the same bits as one that never
stopped (same device and thread count).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aeic_codec.bundles.bundle import load_bundle, save_bundle, stored_value
from aeic_codec.codec.metrics import ms_ssim_u8, psnr_u8
from aeic_codec.codec.model import AEIC
from aeic_codec.nn.blocks import Down
from aeic_codec.nn.lora import FULLY_TRAINED, add_lora, merge_and_unload
from aeic_codec.runtime.devices import cpu_has_native_bf16
from aeic_codec.runtime.imageio import read_image

from .base import BaseTrainer, eval_files
from .config import RESUME_KEYS, StageConfig, TrainConfig, TrainConfigError
from .data import CALIBRATION_STAGE, CropDataset, crop_batches, image_shapes
from .distributed import Group
from .forward import tap_blocks, teacher_features
from .growth import grown_model
from .losses import Distiller, Objective, PatchDiscriminator, critic_loss, load_perceptual
from .runlog import rate_figures

QUANTILES = "model.entropy_bottleneck.quantiles"  # trained by the aux loss alone


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _rng_state() -> dict[str, Any]:
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here (emulated, it is slower than float32).

    On the CPU the same test as decoding's ``--precision auto``: oneDNN also accepts bf16 on
    plain AVX-512 by converting, which measured about half float32's speed.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return torch.backends.mps.is_macos_or_newer(14, 0)
    return cpu_has_native_bf16()


class Trainer(BaseTrainer):
    """Everything a codec run holds (model, optimizers, discriminator, teacher), step by step.

    ``train`` drives it over data; benchmarks and tests can call ``train_step`` directly.
    In a distributed run (``group``), each process gives ``train_step`` its share of
    every micro-batch and gets back the metrics of the whole batch.
    """

    config: TrainConfig

    def __init__(
        self, config: TrainConfig, device: str | torch.device = "cpu", group: Group | None = None
    ) -> None:
        self.device = torch.device(device)
        super().__init__(config, group or Group(0, 1, self.device))
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        if config.init_bundle is not None:
            self.model = load_bundle(config.init_bundle)
            if self.model.cfg != config.model:
                self.model = grown_model(self.model, config.model)
        else:
            self.model = AEIC(config.model)
        self.lora = any("denoiser_lora" in s.train for s in config.stages)
        if self.lora:
            add_lora(self.model.denoiser, rank=config.lora_rank, alpha=config.lora_alpha)
        # channels_last: oneDNN's convolutions on narrow layers run about 10% faster per
        # step without the layout reorders (bundles are saved contiguous).
        self.model.to(self.device, memory_format=torch.channels_last).train()
        self.bf16 = config.bf16 and bf16_supported(self.device)
        if config.bf16 and not self.bf16:
            what = "this CPU has no native bf16" if self.device.type == "cpu" else "no bf16 here"
            self.notes.append(
                f"bf16 asked for, but {what} (it would run many times slower than float32): "
                "training in float32"
            )
        self.disc: PatchDiscriminator | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        if config.uses("adv"):
            self.disc = PatchDiscriminator(config.disc_width).to(self.device)
            self.disc_optimizer = torch.optim.Adam(self.disc.parameters(), betas=(0.5, 0.999))
        self.teacher: AEIC | None = None
        self.distiller: Distiller | None = None
        self.student_blocks: dict[str, torch.Tensor] = {}
        self.teacher_blocks: dict[str, torch.Tensor] = {}
        if config.teacher_bundle is not None:
            self._setup_teacher(config.teacher_bundle)
        self.perceptual = nn.ModuleDict()
        for name in ("lpips", "dists"):
            if config.uses(name):
                try:
                    self.perceptual[name] = load_perceptual(name).to(self.device)
                except (ImportError, FileNotFoundError) as exc:
                    self.notes.append(
                        f"{name.upper()} not available ({exc}); its loss weight is ignored"
                    )
        self.objective = Objective(self.model, self.distiller, self.perceptual, self.student_blocks)
        # What a step calls: the objective and the critic, each under DDP when distributed.
        self._objective: nn.Module = self.objective
        self._critic: nn.Module | None = self.disc
        eb = self.model.entropy_bottleneck
        self.aux_optimizer = torch.optim.Adam([eb.quantiles], lr=config.stages[0].aux_lr)
        self.optimizer: torch.optim.Optimizer | None = None
        self._plain: AEIC | None = None
        self.files: list[Path] = []
        self.shapes: list[tuple[int, int]] = []
        self.begin_stage(0)

    @classmethod
    def check(cls, config: TrainConfig, group: Group) -> None:
        for stage in config.stages:
            group.share(stage.batch)  # a batch must split evenly over the processes

    def _setup_teacher(self, path: Path) -> None:
        decoder = self.config.uses("distill_dec")
        self.teacher = load_bundle(path, encoder=True, decoder=decoder).to(self.device)
        self.teacher.requires_grad_(False)
        self.distiller = Distiller(self.config.model, self.teacher.cfg).to(self.device)
        if decoder:
            tap_blocks(self.model.denoiser, self.student_blocks)
            tap_blocks(self.teacher.denoiser, self.teacher_blocks)

    @property
    def stages(self) -> tuple[StageConfig, ...]:
        return self.config.stages

    @property
    def stage(self) -> StageConfig:
        return self.config.stages[self.stage_index]

    def _part_parameters(self, part: str) -> list[nn.Parameter]:
        m = self.model
        if part == "encoder":
            eb = [p for n, p in m.entropy_bottleneck.named_parameters() if n != "quantiles"]
            return [*m.g_a.parameters(), *m.h_a.parameters(), *m.h_s.parameters(), *eb]
        if part == "denoiser_lora":
            return [
                p
                for n, p in m.denoiser.named_parameters()
                if ".lora_" in n or n.split(".")[0] in FULLY_TRAINED
            ]
        return list(getattr(m, part).parameters())

    def begin_stage(self, index: int) -> None:
        """Freeze all but the stage's parts and give them a fresh optimizer.

        In a distributed run the objective and the critic are wrapped anew, since DDP
        syncs the gradients of the parameters that train when it is built.
        """
        super().begin_stage(index)
        self._objective, self._critic = self.objective, self.disc
        if self.finished:
            self.optimizer = None
            return
        chosen: dict[int, nn.Parameter] = {}
        for part in self.stage.train:
            for p in self._part_parameters(part):
                chosen.setdefault(id(p), p)
        self.model.requires_grad_(False)
        for p in chosen.values():
            p.requires_grad_(True)
        self.model.entropy_bottleneck.quantiles.requires_grad_(True)  # the aux optimizer's
        params = list(chosen.values())
        if self.distiller is not None:
            params += list(self.distiller.parameters())
            self.distiller.use(self.stage.loss)
        self.optimizer = torch.optim.Adam(params, lr=self.stage.lr, foreach=True)
        self._objective = self.group.wrap(self.objective, ignore=[QUANTILES])
        if self.disc is not None and self.stage.loss.adv > 0:
            self._critic = self.group.wrap(self.disc)

    @torch.no_grad()
    def calibrate_latent(self, x: torch.Tensor) -> float:
        """Scale g_a's last stage so that y has ``latent_std`` on ``x``; returns the gain.

        Default initialisation gives y a std near 0.05, far below the quantization step:
        rounding then erases everything, the decoder learns nothing and the rate term
        drives y to zero for good. The last Down convolution, the depthwise biases and
        the output layers of the StarBlocks after it are multiplied by one gain: their
        LayerNorm makes the residual branches blind to the input's scale, so y scales
        exactly.
        """
        g_a = self.model.g_a
        if g_a is None:
            raise ValueError("calibration needs the analysis transform")
        std = float(g_a(x.to(self.device)).float().std())
        gain = self.config.latent_std / max(std, 1e-12)
        layers = list(g_a.analysis_transform)
        last_down = max(i for i, layer in enumerate(layers) if isinstance(layer, Down))
        tensors = [*layers[last_down].parameters()]
        for block in layers[last_down + 1 :]:
            tensors += [*block.fc2.parameters()]
            tensors += [conv.bias for conv in block.dwconv.children()]
        for tensor in tensors:
            tensor.mul_(gain)
        return gain

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _teacher_features(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        w = self.stage.loss
        if self.teacher is None or not (w.distill_enc > 0 or w.distill_dec > 0):
            return None
        features = teacher_features(self.teacher, x, decoder=w.distill_dec > 0)
        return {**features, **self.teacher_blocks}

    def train_step(self, batches: Sequence[torch.Tensor]) -> dict[str, float]:
        """One optimizer step over accumulated micro-batches; returns the step's metrics.

        Raises FloatingPointError on a non-finite loss before touching the weights, so
        the last checkpoint stays a good place to resume from.
        """
        if self.optimizer is None:
            raise RuntimeError("all stages are finished")
        stage = self.stage
        lam, lr = stage.lambda_at(self.stage_step), stage.lr_at(self.stage_step)
        _set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        adv = self.disc is not None and self.disc_optimizer is not None and stage.loss.adv > 0
        if adv:
            _set_lr(self.disc_optimizer, stage.disc_lr if stage.disc_lr is not None else lr)
            self.disc_optimizer.zero_grad(set_to_none=True)
        share = self.group.share(stage.batch) if self.group.size > 1 else None
        rows = []
        for i, x in enumerate(batches):
            x = x.to(self.device, memory_format=torch.channels_last, non_blocking=True)
            more = i < len(batches) - 1
            with self.group.accumulating([self._objective, self._critic], more):
                with self._autocast():
                    teacher = self._teacher_features(x)
                    disc = self.disc if adv else None
                    terms, x_hat = self._objective(x, stage.loss, lam, teacher, disc, share)
                (terms["loss"] / len(batches)).backward()
                if adv:
                    self.disc.requires_grad_(True)
                    with self._autocast():
                        terms["disc"] = critic_loss(self._critic, x, x_hat)
                    (terms["disc"] / len(batches)).backward()
            self.student_blocks.clear()
            self.teacher_blocks.clear()
            rows.append({key: value.detach() for key, value in terms.items()})
        metrics: dict[str, float] = {}
        for row in self.group.mean_terms(rows, decibels=("psnr",)):
            for key, value in row.items():
                metrics[key] = metrics.get(key, 0.0) + value / len(batches)
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"non-finite loss at step {self.global_step + 1}: {metrics}")
        if stage.clip > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            metrics["grad_norm"] = float(nn.utils.clip_grad_norm_(params, stage.clip))
        self.optimizer.step()
        if adv:
            self.disc_optimizer.step()
        _set_lr(self.aux_optimizer, stage.aux_lr)
        self.aux_optimizer.zero_grad(set_to_none=True)
        aux = self.model.entropy_bottleneck.aux_loss()
        aux.backward()
        self.aux_optimizer.step()
        metrics.update({"aux": aux.item(), "lr": lr, "lambda": lam})
        self.stage_step += 1
        return metrics

    # ------------------------------------------------------------- the run
    def prepare(self, files: list[Path], out: Path, progress: bool) -> list[np.ndarray]:
        """Read the files' sizes (the crops are planned from them); skip unreadable ones."""
        shapes = image_shapes(files)
        unreadable = sum(s is None for s in shapes)
        if unreadable:
            self.notes.append(f"{unreadable} of {len(files)} files cannot be read: skipped")
        self.files = [f for f, s in zip(files, shapes, strict=True) if s is not None]
        self.shapes = [s for s in shapes if s is not None]
        if not self.group.main:
            return []
        return [read_image(p)[0] for p in eval_files(self.config)]

    def _dataset(self, crop: int, batch: int, stage: int, whole: bool = False) -> CropDataset:
        share = None if whole else self.group.share(batch)
        return CropDataset(
            self.files, self.shapes, crop, batch, self.config.seed, stage, share=share
        )

    def start(self) -> None:
        """A fresh model's latent scale calibrated, if the configuration asks for it."""
        if self.config.init_bundle is None and self.config.latent_std > 0:
            stage = self.stage
            x = self._dataset(stage.crop, stage.batch, CALIBRATION_STAGE, whole=True)[0]
            gain = self.calibrate_latent(x)
            self.notes.append(
                f"g_a scaled by {gain:.4g} so that y starts with std {self.config.latent_std}"
            )

    def batches(self) -> Iterator[list[torch.Tensor]]:
        """The stage's steps, each its ``accum`` micro-batches of crops."""
        stage = self.stage
        small = sum(min(s) < stage.crop for s in self.shapes)
        if small:
            self.notes.append(
                f"{stage.name}: {small} of {len(self.files)} images are smaller than the "
                f"{stage.crop} px crop and are padded by reflection"
            )
        dataset = self._dataset(stage.crop, stage.batch, self.stage_index)
        first, last = self.stage_step * stage.accum, stage.steps * stage.accum
        loader = crop_batches(dataset, first, last, self.config.workers, self.config.seed)
        return (list(itertools.islice(loader, stage.accum)) for _ in itertools.count())

    def finish_stage(self, out: Path) -> dict[str, Any]:
        """The stage's bundle, written into the run folder."""
        stage = self.stage
        bundle = out / f"{stage.export}.safetensors"
        provenance = {
            "trained_by": "aeic train",
            "run": self.config.name,
            "stage": stage.name,
            "step": self.global_step,
            "seed": self.config.seed,
        }
        return {"bundle": bundle.name, "identity": self.export(bundle, provenance)}

    def result(self, out: Path) -> Path:
        """The last stage's bundle."""
        return out / f"{self.config.stages[-1].export}.safetensors"

    def status(self, metrics: dict[str, float]) -> str:
        return rate_figures(metrics)

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue on the same bits.

        The lr and lambda schedules are functions of the step, so the step is their state.
        """
        return {
            "config": json.dumps(self.config.to_dict(), sort_keys=True),
            "stage_index": self.stage_index,
            "stage_step": self.stage_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "disc": self.disc.state_dict() if self.disc else None,
            "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer else None,
            "distiller": self.distiller.state_dict() if self.distiller else None,
            "rng": _rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stored = json.loads(state["config"])
        current = self.config.to_dict()
        changed = [k for k in RESUME_KEYS if stored.get(k) != current[k]]
        if changed:
            raise TrainConfigError(
                f"the checkpoint was made with another {', '.join(changed)}; resuming needs "
                "the configuration the run started with"
            )
        self.model.load_state_dict(state["model"])
        self.begin_stage(state["stage_index"])
        self.stage_step = state["stage_step"]
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        for name in ("disc", "disc_optimizer", "distiller"):
            target = getattr(self, name)
            if target is not None and state[name] is not None:
                target.load_state_dict(state[name])
        _set_rng_state(state["rng"])

    # ------------------------------------------------------------- export
    def plain_state(self, as_stored: bool = False) -> dict[str, torch.Tensor]:
        """The model's state with LoRA folded in, on the CPU in float32.

        ``as_stored`` rounds every tensor as an exported bundle stores it (bf16, int8),
        so that evaluation measures what the bundle will do.
        """
        state = {k: v for k, v in self.model.state_dict().items() if not k.startswith("denoiser.")}
        if self.lora:
            denoiser = merge_and_unload(self.model.denoiser)
        else:
            denoiser = self.model.denoiser.state_dict()
        state.update({f"denoiser.{k}": v for k, v in denoiser.items()})
        config = self.config
        out = {}
        for key, value in state.items():
            value = value.detach().cpu()
            if as_stored:
                value = stored_value(key, value, config.encoder_dtype, config.decoder_dtype)
            out[key] = value.float() if value.is_floating_point() else value
        return out

    def plain_model(self, as_stored: bool = False) -> AEIC:
        """An inference AEIC (no LoRA, CPU, float32) holding the current weights.

        Built once and refilled: at published shapes it is 900 M parameters.
        """
        with torch.random.fork_rng(devices=[]):  # building it draws random initial weights
            if self._plain is None:
                self._plain = AEIC(self.config.model)
            self._plain.float().cpu().load_state_dict(self.plain_state(as_stored))
        return self._plain.eval()

    def export(self, path: Path, provenance: dict[str, Any]) -> str:
        """Write the current stage's bundle (tables built by save_bundle); returns its identity."""
        stage = self.stage
        lam = stage.export_lambda if stage.export_lambda is not None else stage.lambda_
        model = self.plain_model()
        with torch.random.fork_rng(devices=[]):  # the table builder draws random weights too
            return save_bundle(
                path,
                model,
                lam,
                provenance,
                decoder_dtype=self.config.decoder_dtype,
                encoder_dtype=self.config.encoder_dtype,
            )

    def evaluate(self, images: Sequence[np.ndarray]) -> dict[str, float]:
        """Real encode -> file bytes -> decode of each image: mean bpp, PSNR and MS-SSIM."""
        from aeic_codec import api

        model = self.plain_model(as_stored=True)
        precision = "bf16" if self.bf16 else "fp32"
        with torch.random.fork_rng(devices=[]):
            model.build_tables()
        model.identity = "00000000"  # these files never leave this process
        bpp, psnr, msssim = [], [], []
        for image in images:
            data = api.encode_image(image, model).data
            out = api.decode(data, model, precision=precision, device=self.device.type)
            h, w = image.shape[:2]
            bpp.append(len(data) * 8 / (h * w))
            psnr.append(psnr_u8(out, image))
            msssim.append(ms_ssim_u8(out, image))
        return {
            "bpp": float(np.mean(bpp)),
            "psnr": float(np.mean(psnr)),
            "msssim": float(np.mean(msssim)),
            "images": len(images),
        }
