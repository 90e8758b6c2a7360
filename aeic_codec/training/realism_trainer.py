"""The realism trainer: a realism decoder for a trained bundle, its encoder side frozen.

The bundle's g_a, hyperprior and context stay as they are, so every file it made decodes
with the new decoder. The realism decoder's D is TAEF2's pretrained decoder, which renders
sharp texture from latents like its encoder's and a grid from anything else (blurred
latents). So the training happens where that matters, in D's latent space, with targets
that need nothing downloaded:

- latent distillation: l_0 should be E(x), TAEF2's encoding of the original;
- a low-pass latent term (4x4 means of l_0 against E(x)'s) that holds layout and colour;
- a hinge adversarial term from a critic that sees l_0 or E(x) beside a projection of
  y_hat (HiFiC's conditioning): it pushes l_0 towards latents D knows, for this content,
  which is what removes the grid and brings texture back;
- optionally (``image`` > 0), an image term: D renders the centre of each crop and its
  ``image_pool`` x ``image_pool`` means are held to the original's. It constrains only
  the coarse scales, where PSNR and MS-SSIM are decided and where the critic's freedom
  shows as shifted shapes and colours, and leaves the fine bands to the critic;
- optionally (``pixel``, ``perceptual`` > 0), full-resolution terms on the same
  renderings: MSE, and the distance of TAEF2-encoder features (each of its four levels,
  unit-normalised per position, as LPIPS does without learned weights). They tell texture
  where the photo has it from texture painted on smooth sails and skies, which neither a
  critic on latents nor pooled means can;
- optionally (``spectrum`` > 0), the luma power of the renderings in the three finest
  octave bands held to the photo's (log ratio, phase-blind): as much detail at each
  scale as the photo has there, which the fidelity terms alone never ask for; with
  ``spectrum_window`` and ``spectrum_sectors``, per local window and orientation, so that
  detail drawn in the wrong direction costs too;
- optionally (``phase`` > 0), a lattice term on the same renderings: the batch's mean
  8 x 8 block (each pixel position within D's 8-pixel upsampling cell averaged over every
  cell) held to the photos'. Photos have almost none; a D fed latents it does not know
  paints its 8-pixel grid there, which the critic, seeing only latents, cannot notice.

D itself stays frozen. y_hat (exactly as files carry it), E(x) and the photo are cached
once per training image in the run folder (realism_data.py), so a step costs g_s, eps and
the critic at 1/8 resolution, plus D on a small crop when the image term is on.
Evaluation decodes whole Kodak images through D and reports PSNR, MS-SSIM, the luma power
kept per frequency band, the lattice figure and the orientation figure (metrics.py).

A run is one stage of the run loop (run.py), configured by a RealismConfig (a TOML file
with a top-level ``base_bundle``): ``aeic train --config configs/realism-l12.toml --data
DIR --out RUN [--resume]``, or its alias ``python -m aeic_codec.training.realism``. The
run folder holds the caches, ``log.jsonl``, a resumable ``checkpoint.pt`` and a copy of
it at each evaluated step; ``export`` attaches a checkpoint's decoder to the base bundle.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aeic_codec.bundles.bundle import load_bundle, read_info
from aeic_codec.codec.metrics import (
    band_power_db,
    lattice_cell,
    lattice_rms,
    ms_ssim_u8,
    orientation_error,
    psnr_u8,
)
from aeic_codec.codec.model import AEIC
from aeic_codec.codec.realism import RealismDecoder, realism_config
from aeic_codec.nn.config import PRESETS
from aeic_codec.nn.tiny_vae import TinyEncoder, read_taef2
from aeic_codec.runtime.imageio import read_image

from .base import BaseTrainer, Stage, checkpoint_path, eval_files
from .config import (
    IMAGE_TERMS,
    LATENT_SCALE,
    RealismConfig,
    TrainConfigError,
    realism_device,
)
from .distributed import Group
from .losses import PatchDiscriminator, colour_grid_fix, critic_loss, spectrum_distance
from .realism_data import build_caches, crops, padded_input

STAGE = "realism"  # the name of a realism run's one stage
BAND_KERNELS = ("dwconv_w", "dwconv_h")  # InceptionDW's 1x11 and 11x1 branches (blocks.py)
NOISE_KEY = "denoiser.noise_scale"  # the noise input's scales (denoiser.py, with_noise)


class LatentCritic(nn.Module):
    """PatchGAN (spectral norm, hinge loss) on a D latent and a projection of y_hat."""

    def __init__(self, latent: int, y_channels: int, width: int, cond: int = 16) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.project = nn.Conv2d(y_channels, cond, 1)
        self.net = nn.Sequential(
            sn(nn.Conv2d(latent + cond, width, 3, padding=1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * width, 2 * width, 3, padding=1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * width, 1, 3, padding=1)),
        )

    def forward(self, latent: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        cond = F.interpolate(self.project(y_hat), scale_factor=4, mode="nearest")
        return self.net(torch.cat((latent, cond), 1))


class RealismTrainer(BaseTrainer):
    """Owns the realism decoder, the latent critic and their optimizers; one stage."""

    config: RealismConfig
    keeps_evaluated = True

    def __init__(
        self, config: RealismConfig, device: str | torch.device = "cpu", group: Group | None = None
    ) -> None:
        super().__init__(config, group or Group(0, 1, torch.device(device)))
        # Adam's second moments and small gradients fall into float32's subnormal range,
        # where x86 arithmetic is about a hundred times slower: flushing them to zero made
        # a step 6x faster here (the decoder never depends on values below 1e-38).
        torch.set_flush_denormal(True)
        torch.manual_seed(config.seed)
        info = read_info(config.base_bundle)
        dcfg = realism_config(info.config, PRESETS[config.preset])
        self.decoder = RealismDecoder(dcfg)
        taef2 = Path(config.taef2)
        self.decoder.vae.load_state_dict(read_taef2(taef2 / "taef2_decoder.safetensors"))
        self.decoder.vae.requires_grad_(False).eval()
        self.critic = LatentCritic(dcfg.decoder_latent, dcfg.latent_channels, config.disc_width)
        self.features: TinyEncoder | None = None
        if config.perceptual > 0:
            self.features = TinyEncoder()
            self.features.load_state_dict(read_taef2(taef2 / "taef2_encoder.safetensors"))
            self.features.requires_grad_(False).eval()
        # The renderings' critic: it sees what the latent critic cannot, brush strokes and
        # painted texture against a photo's.
        self.image_critic = PatchDiscriminator(config.disc_width) if config.image_adv > 0 else None
        self.warm_started = 0
        if config.init.endswith(".safetensors"):
            realism = load_bundle(config.init, encoder=False, decoder=False, realism=True).realism
            self._start_from(realism.state_dict())
        elif config.init:
            state = torch.load(config.init, map_location="cpu", weights_only=True)
            self._start_from(shipped_weights(state))
            self.critic.load_state_dict(state["critic"])
            if self.image_critic is not None and "image_critic" in state:
                self.image_critic.load_state_dict(state["image_critic"])
        else:
            self._warm_start(load_bundle(config.base_bundle, encoder=False))
        if config.noise_init > 0:
            scales = self.decoder.denoiser.noise_scale
            if scales is None:
                raise ValueError(f"noise_init: preset {config.preset} has no noise input")
            with torch.no_grad():
                scales.fill_(config.noise_init)
        if config.no_band_kernels:
            for name, module in self.decoder.g_s.named_modules():
                if name.endswith(BAND_KERNELS):
                    with torch.no_grad():
                        module.weight.zero_()
                        module.bias.zero_()
                    module.requires_grad_(False)
        trained = [(n, p) for n, p in self.decoder.named_parameters() if not n.startswith("vae.")]
        noise = [p for n, p in trained if n.endswith(NOISE_KEY)]
        groups = [
            {"params": [p for n, p in trained if not n.endswith(NOISE_KEY)], "lr_mult": 1.0},
            {"params": noise, "lr_mult": config.noise_lr},
        ]
        self.opt = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=config.lr, weight_decay=0.0, betas=(0.9, 0.99)
        )
        self.trained = dict(trained)
        self.ema = self._weights() if config.ema > 0 else None
        critics = list(self.critic.parameters())
        if self.image_critic is not None:
            critics += list(self.image_critic.parameters())
        self.disc_opt = torch.optim.AdamW(
            critics, lr=config.disc_lr, weight_decay=0.0, betas=(0.5, 0.9)
        )
        self.ys: list[torch.Tensor] = []
        self.lats: list[torch.Tensor] = []
        self.photos: list[torch.Tensor] | None = None

    @classmethod
    def device_name(cls, config: RealismConfig) -> str:
        return realism_device(config.device)

    @property
    def stages(self) -> tuple[Stage]:
        return (Stage(STAGE, self.config.steps),)

    def _start_from(self, state: dict[str, torch.Tensor]) -> None:
        """Load another realism decoder; one without a noise input gives this one's zero scales."""
        missing, unexpected = self.decoder.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {NOISE_KEY}:
            raise ValueError(
                f"{self.config.init}: not a realism decoder of preset {self.config.preset} "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )

    def _warm_start(self, fidelity: AEIC) -> None:
        """Copy every g_s and eps tensor whose name and shape match the fidelity decoder's."""
        ours = self.decoder.state_dict()
        copied = {
            k: v
            for k, v in fidelity.state_dict().items()
            if k.startswith(("g_s.", "denoiser.")) and k in ours and ours[k].shape == v.shape
        }
        self.decoder.load_state_dict(copied, strict=False)
        self.warm_started = len(copied)

    def lr_at(self, step: int) -> float:
        """Linear warmup, then cosine decay to lr_min at the last step."""
        c = self.config
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        t = (step - c.warmup) / max(1, c.steps - c.warmup)
        return c.lr_min + 0.5 * (c.lr - c.lr_min) * (1 + math.cos(math.pi * min(t, 1.0)))

    def adv_ramp_at(self, step: int) -> float:
        """How much of the adversarial weights applies: 0 before adv_start, then up to 1."""
        c = self.config
        if step < c.adv_start:
            return 0.0
        return min(1.0, (step - c.adv_start + 1) / max(1, c.adv_ramp))

    def image_terms(
        self, l_0: torch.Tensor, photo: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """D renders each crop's centre; the image-space terms against the photo's crop.

        Also returns the rendering and the photo's crop, for the renderings' critic.
        """
        c = self.config
        side = c.image_crop // LATENT_SCALE
        top = (l_0.shape[-1] - side) // 2
        x_hat = self.decoder.vae(l_0[..., top : top + side, top : top + side])
        p = top * LATENT_SCALE
        x = photo[..., p : p + c.image_crop, p : p + c.image_crop]
        pool = F.avg_pool2d(x_hat, c.image_pool), F.avg_pool2d(x, c.image_pool)
        terms = {
            "image": F.mse_loss(*pool),
            "phase": F.mse_loss(lattice_cell(x_hat), lattice_cell(x)),
            "pixel": F.mse_loss(x_hat, x),
            "spectrum": spectrum_distance(
                x_hat, x, window=c.spectrum_window, sectors=c.spectrum_sectors
            ),
        }
        if self.features is not None:
            terms["perceptual"] = self.feature_distance(x_hat, x)
        return terms, x_hat, x

    def feature_distance(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Sum over TAEF2-encoder levels of the mean squared unit-feature difference."""
        assert self.features is not None
        ours = self.features.features((x_hat + 1) / 2)[0]
        with torch.no_grad():
            theirs = self.features.features((x + 1) / 2)[0]
        total = x_hat.new_zeros(())
        for a, b in zip(ours, theirs, strict=True):
            diff = F.normalize(a, dim=1, eps=1e-6) - F.normalize(b, dim=1, eps=1e-6)
            total = total + diff.square().sum(dim=1).mean()
        return total

    def train_step(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
    ) -> dict[str, float]:
        """One step on crops of y_hat, of E(x) (what l_0 should match) and of the photo."""
        c = self.config
        y_hat, target, photo = batch
        lr = self.lr_at(self.stage_step)
        for g in self.opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        l_t, l_res = self.decoder.g_s(y_hat)
        eps = self.decoder.denoiser
        l_0 = eps(eps.with_noise(l_t, fresh=True)) + l_res
        terms = {
            "latent": F.mse_loss(l_0, target),
            "lowpass": F.mse_loss(F.avg_pool2d(l_0, 4), F.avg_pool2d(target, 4)),
        }
        loss = c.latent * terms["latent"] + c.lowpass * terms["lowpass"]
        x_hat = x = None
        if photo is not None:
            image_terms, x_hat, x = self.image_terms(l_0, photo)
            terms.update(image_terms)
            for key in IMAGE_TERMS:
                loss = loss + getattr(c, key) * terms.get(key, 0.0)
        elif c.needs_photos():
            raise ValueError("the image-space terms need the photo crops")
        ramp = self.adv_ramp_at(self.stage_step)
        adv_w = c.adv * ramp
        if ramp > 0:
            self.critic.requires_grad_(False)
            terms["adv"] = -self.critic(l_0, y_hat).mean()
            loss = loss + adv_w * terms["adv"]
            self.critic.requires_grad_(True)
            if self.image_critic is not None and x_hat is not None:
                self.image_critic.requires_grad_(False)
                terms["image_adv"] = -self.image_critic(x_hat).mean()
                loss = loss + c.image_adv * ramp * terms["image_adv"]
                self.image_critic.requires_grad_(True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.stage_step}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = nn.utils.clip_grad_norm_(self.opt.param_groups[0]["params"], 1.0)
        self.opt.step()
        if self.ema is not None:
            with torch.no_grad():
                for name, p in self.trained.items():
                    self.ema[name].lerp_(p, 1 - c.ema)
        real = self.critic(target, y_hat)
        disc = F.relu(1 - real).mean() + F.relu(1 + self.critic(l_0.detach(), y_hat)).mean()
        if self.image_critic is not None and x_hat is not None:
            terms["image_disc"] = critic_loss(self.image_critic, x, x_hat)
            disc = disc + terms["image_disc"]
        self.disc_opt.zero_grad(set_to_none=True)
        disc.backward()
        self.disc_opt.step()
        self.stage_step += 1
        out = {k: float(v.detach()) for k, v in terms.items()}
        out.update(loss=float(loss.detach()), disc=float(disc.detach()), grad=float(grad))
        out.update(lr=lr, adv_w=adv_w, real=float(real.mean().detach()))
        return out

    @torch.no_grad()
    def decode(self, y_hat: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Whole-image decode (3, H', W') in [0, 1], the colour grid taken from ``source``."""
        x_hat, _ = self.decoder(y_hat)
        cell = math.gcd(self.config.grid_cell, math.gcd(*x_hat.shape[-2:]))
        return colour_grid_fix((x_hat + 1) / 2, source, cell, self.config.grid_step)[0].clamp(0, 1)

    def _weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.trained.items()}

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """The decoder with its moving-average weights inside the block (if it keeps one)."""
        if self.ema is None:
            yield
            return
        current = self._weights()
        self.decoder.load_state_dict(self.ema, strict=False)
        try:
            yield
        finally:
            self.decoder.load_state_dict(current, strict=False)

    def eval_due(self, step: int) -> bool:
        """Every ``eval_every`` steps and at the last: each is a decoder that can ship."""
        return step % self.config.eval_every == 0 or step == self.config.steps

    def evaluate(self, images: Sequence[tuple[np.ndarray, torch.Tensor]]) -> dict[str, float]:
        """PSNR, MS-SSIM and luma bands of whole images, decoded untiled with the colour grid.

        With a moving average, of the averaged decoder (what export writes).
        """
        with self.averaged():
            return self._evaluate(images)

    def _evaluate(self, images: Sequence[tuple[np.ndarray, torch.Tensor]]) -> dict[str, float]:
        psnrs, ssims, bands, cells, turns = [], [], [], [], []
        for image, y_hat in images:
            h, w = image.shape[:2]
            fixed = self.decode(y_hat, (padded_input(image) + 1) / 2)
            out = np.round(fixed[:, :h, :w].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            psnrs.append(psnr_u8(out, image))
            ssims.append(ms_ssim_u8(out, image))
            bands.append(band_power_db(out, image))
            cells.append(lattice_rms(out, image))
            turns.append(orientation_error(out, image))
        row = {"psnr": float(np.mean(psnrs)), "msssim": float(np.mean(ssims))}
        row["lattice"] = float(np.mean(cells))
        row["orientation"] = float(np.nanmean(turns))
        row.update({f"band{i}": float(b) for i, b in enumerate(np.mean(bands, axis=0))})
        return row

    # ------------------------------------------------------------- the run
    def prepare(
        self, files: list[Path], out: Path, progress: bool
    ) -> list[tuple[np.ndarray, torch.Tensor]]:
        """The caches of y_hat, E(x) and (for image terms) the photos, made where missing.

        Returns the evaluation images, each with its y_hat.
        """
        c = self.config
        base = load_bundle(c.base_bundle, decoder=False)
        encoder = TinyEncoder().eval()
        encoder.load_state_dict(read_taef2(Path(c.taef2) / "taef2_encoder.safetensors"))
        makers = {
            out / f"cache-y-{base.identity}.pt": lambda x: base.compress(x).y_hat[0].half(),
            out / "cache-taef2.pt": lambda x: encoder((x + 1) / 2)[0].half(),
        }
        if c.needs_photos():
            makers[out / "cache-photos.pt"] = lambda x: ((x[0] + 1) * 127.5).round().to(torch.uint8)
        self.ys, self.lats, *rest = build_caches(files, c.max_pixels, makers, echo=progress)
        self.photos = rest[0] if rest else None
        evals = []
        with torch.no_grad():
            for path in eval_files(c):
                image = read_image(path)[0]
                evals.append((image, base.compress(padded_input(image)).y_hat))
        return evals

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        c = self.config
        while True:
            yield crops(self.ys, self.lats, c.crop, c.batch, c.seed, self.stage_step, self.photos)

    def finish_stage(self, out: Path) -> None:
        """Nothing beyond the checkpoints: ``export`` ships the evaluated step one picks."""
        return None

    def result(self, out: Path) -> Path:
        """The run's checkpoint."""
        return checkpoint_path(out)

    def status(self, metrics: dict[str, float]) -> str:
        return (
            f"loss {metrics['loss']:.4g} latent {metrics['latent']:.4g} disc {metrics['disc']:.4g}"
        )

    # ------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "decoder": self.decoder.state_dict(),
            "critic": self.critic.state_dict(),
            **({"image_critic": self.image_critic.state_dict()} if self.image_critic else {}),
            "opt": self.opt.state_dict(),
            "disc_opt": self.disc_opt.state_dict(),
            "step": self.global_step,
            "decoder_config": self.decoder.cfg.to_json(),
            "rng": torch.get_rng_state(),
            **({"ema": self.ema} if self.ema is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        step = int(state["step"])
        if step > self.config.steps:
            raise TrainConfigError(
                f"the checkpoint is at step {step}, past this configuration's {self.config.steps}"
            )
        self.decoder.load_state_dict(state["decoder"])
        self.critic.load_state_dict(state["critic"])
        if self.image_critic is not None:
            self.image_critic.load_state_dict(state["image_critic"])
        self.opt.load_state_dict(state["opt"])
        self.disc_opt.load_state_dict(state["disc_opt"])
        self.begin_stage(0)
        self.stage_step = step
        torch.set_rng_state(state["rng"])
        if self.ema is not None:  # a run that starts averaging on resume starts from here
            self.ema = state.get("ema") or self._weights()


def shipped_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A checkpoint's decoder weights as export writes them: its moving average, if it kept one."""
    return {**state["decoder"], **state.get("ema", {})}


def export(cfg: RealismConfig, checkpoint: Path, output: Path, config_name: str) -> str:
    """Write the base bundle with the checkpoint's realism decoder attached (int8)."""
    from aeic_codec.bundles.copies import attach_realism
    from aeic_codec.nn.config import ModelConfig

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    dcfg = ModelConfig.from_json(state["decoder_config"]).replace(detail_sigma=cfg.detail_sigma)
    decoder = RealismDecoder(dcfg)
    decoder.load_state_dict(shipped_weights(state))
    provenance = {"config": config_name, "steps": int(state["step"]), "seed": cfg.seed}
    if "ema" in state:
        provenance["ema"] = cfg.ema
    return attach_realism(cfg.base_bundle, decoder, output, "int8", provenance)
