"""Realism training: a realism decoder for a trained bundle, its encoder side frozen.

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
once per training image in the run folder, so a step costs g_s, eps and the critic at 1/8
resolution, plus D on a small crop when the image term is on.
Evaluation decodes whole Kodak images through D and reports PSNR, MS-SSIM, the luma power
kept per frequency band, the lattice figure and the orientation figure (metrics.py).

Run: ``python -m aeic_codec.training.realism --config configs/realism-l12.toml --data DIR
--out RUN [--resume]``. The run folder holds the caches, ``log.jsonl`` and a resumable
``checkpoint.pt``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
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
from aeic_codec.codec.model import AEIC, PAD
from aeic_codec.codec.realism import RealismDecoder, realism_config
from aeic_codec.nn.config import PRESETS
from aeic_codec.nn.tiny_vae import TinyEncoder, read_taef2
from aeic_codec.nn.transforms import pad_reflect
from aeic_codec.runtime.imageio import read_image

from .data import find_images
from .losses import PatchDiscriminator, colour_grid_fix, critic_loss, spectrum_distance
from .run import StopSignals

LATENT_SCALE = 8  # D's latent is at 1/8 of the image size, y at 1/32
IMAGE_TERMS = ("image", "phase", "pixel", "perceptual", "spectrum")
BAND_KERNELS = ("dwconv_w", "dwconv_h")  # InceptionDW's 1x11 and 11x1 branches (blocks.py)
NOISE_KEY = "denoiser.noise_scale"  # the noise input's scales (denoiser.py, with_noise)


@dataclass(frozen=True)
class RealismConfig:
    """One realism run; every field is a top-level key of the TOML file."""

    base_bundle: str = ""
    taef2: str = ""  # folder with taef2_encoder.safetensors and taef2_decoder.safetensors
    preset: str = "aeic-small-taef2"
    # Where to start: a checkpoint.pt of another realism run, or a bundle's realism decoder
    # (a .safetensors file; the critics then start afresh). Empty: the base's own g_s.
    init: str = ""
    seed: int = 0
    threads: int = 2
    steps: int = 3000
    crop: int = 256  # pixels; a multiple of 64 (crops start on y's 2x2 quadtree cells)
    batch: int = 8
    lr: float = 2e-4
    lr_min: float = 2e-5
    warmup: int = 50
    disc_lr: float = 2e-4
    disc_width: int = 64
    adv_start: int = 300  # steps of distillation alone (the critic trains from step 0)
    adv_ramp: int = 300
    latent: float = 1.0
    lowpass: float = 4.0
    adv: float = 0.1
    image: float = 0.0  # weight of the image term (0: off, no photo cache)
    image_crop: int = 128  # pixels of each crop's centre that D renders for it
    image_pool: int = 4  # the image term compares means over pool x pool pixels
    phase: float = 0.0  # weight of the lattice term
    pixel: float = 0.0  # weight of full-resolution MSE on the renderings
    perceptual: float = 0.0  # weight of the TAEF2-encoder feature distance on them
    image_adv: float = 0.0  # weight of a hinge critic on the renderings themselves
    spectrum: float = 0.0  # weight of the renderings' band-power distance (losses.py)
    # That distance per window of this side (0: over each whole rendering) and per this
    # many orientation sectors of each band (1: radially averaged).
    spectrum_window: int = 0
    spectrum_sectors: int = 1
    # The noise input's per-channel scales (preset with latent_noise) learn this many times
    # faster than the rest: from zero, they have to grow to l_T's own scale (about 0.6).
    noise_lr: float = 100.0
    # Above 0, the noise scales start at this value instead (whatever ``init`` holds): a
    # decoder whose scales start at zero may never learn to use the noise.
    noise_init: float = 0.0
    # Zero g_s's 1x11 and 11x1 depthwise kernels (InceptionDW's band branches) and keep
    # them so: they draw long horizontal and vertical structures, which the realism
    # decoder turns into streaks.
    no_band_kernels: bool = False
    # Decay of a moving average of the decoder's weights (0: none). Evaluation and export
    # use the average: a decoder trained against critics swings from step to step.
    ema: float = 0.0
    # The exported decoder gives only detail finer than this Gaussian sigma, in pixels
    # (ModelConfig.detail_sigma; 0: its whole picture). Evaluations here use its whole
    # picture either way.
    detail_sigma: float = 0.0
    grid_cell: int = 64  # the colour grid applied to evaluation decodes
    grid_step: int = 4
    eval_dir: str = ""
    eval_images: int = 4
    eval_every: int = 250
    max_pixels: int = 250_000  # larger training photos are downscaled for the caches
    checkpoint_minutes: float = 5.0
    log_every: int = 20


def needs_photos(cfg: RealismConfig) -> bool:
    """Whether any term renders crops through D and compares them with the photos."""
    return any(getattr(cfg, k) > 0 for k in (*IMAGE_TERMS, "image_adv"))


def load_config(path: str | Path) -> RealismConfig:
    """Read a TOML file; relative paths are taken from its folder."""
    path = Path(path)
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    known = {f.name for f in fields(RealismConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {', '.join(unknown)}")
    for key in ("base_bundle", "taef2", "init", "eval_dir"):
        if data.get(key):
            data[key] = str((path.parent / data[key]).resolve())
    cfg = RealismConfig(**data)
    if cfg.crop % PAD:
        raise ValueError(f"{path}: crop must be a multiple of {PAD}")
    if cfg.image_crop % LATENT_SCALE or not 0 < cfg.image_crop <= cfg.crop:
        raise ValueError(f"{path}: image_crop must be a multiple of 8 no larger than crop")
    if cfg.spectrum_sectors < 1 or not (
        cfg.spectrum_window == 0 or 8 <= cfg.spectrum_window <= cfg.image_crop
    ):
        raise ValueError(
            f"{path}: spectrum_sectors must be at least 1 and spectrum_window 0 or "
            "from 8 to image_crop"
        )
    return cfg


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


def padded_input(image: np.ndarray) -> torch.Tensor:
    """(1, 3, H', W') in [-1, 1], padded as the encoder pads (reflect, to a multiple of 64)."""
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # a writable copy
    return pad_reflect(x / 127.5 - 1.0, PAD)


def training_image(path: Path, max_pixels: int) -> np.ndarray:
    """A training photo, downscaled (area filter) to at most ``max_pixels``.

    Caching E(x) costs about a second per 0.1 megapixel on two cores; smaller photos also
    carry more detail per pixel, which is what the realism decoder has to learn to draw.
    """
    from PIL import Image

    image = read_image(path)[0]
    h, w = image.shape[:2]
    if h * w <= max_pixels:
        return image
    f = math.sqrt(max_pixels / (h * w))
    size = (max(64, round(w * f)), max(64, round(h * f)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


@torch.no_grad()
def build_caches(
    files: list[Path], max_pixels: int, makers: dict[Path, Callable[[torch.Tensor], torch.Tensor]]
) -> list[list[torch.Tensor]]:
    """One tensor per training photo for each cache file, in the order of ``makers``.

    A missing cache is made by its function from the photo as the encoder sees it
    (downscaled, padded, in [-1, 1]); all the missing ones in one pass over the photos.
    """
    caches = {p: torch.load(p, weights_only=True) for p in makers if p.exists()}
    missing = [p for p in makers if p not in caches]
    if missing:
        made: dict[Path, list[torch.Tensor]] = {p: [] for p in missing}
        for i, path in enumerate(files):
            x = padded_input(training_image(path, max_pixels))
            for p in missing:
                made[p].append(makers[p](x))
            print(f"cache {i + 1}/{len(files)}", flush=True)
        for p in missing:
            torch.save(made[p], p)
        caches.update(made)
    return [caches[p] for p in makers]


def crops(
    ys: list[torch.Tensor],
    lats: list[torch.Tensor],
    crop: int,
    batch: int,
    seed: int,
    step: int,
    photos: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Step ``step``'s batch: crops drawn from (seed, step) alone, so resuming is exact.

    y_hat, E(x) and, with ``photos``, the photo in [-1, 1], all of one region.
    """
    rng = np.random.default_rng((seed, step))
    cy, cl = crop // 32, crop // LATENT_SCALE
    y_out, l_out, x_out = [], [], []
    for _ in range(batch):
        i = int(rng.integers(len(ys)))
        y, lat = ys[i], lats[i]
        rows, cols = y.shape[1] // 2 - cy // 2, y.shape[2] // 2 - cy // 2
        top = 2 * int(rng.integers(max(rows, 0) + 1))
        left = 2 * int(rng.integers(max(cols, 0) + 1))
        y_crop = _fit(y[:, top : top + cy, left : left + cy], cy)
        k = 32 // LATENT_SCALE
        l_crop = _fit(lat[:, k * top : k * top + cl, k * left : k * left + cl], cl)
        y_out.append(y_crop)
        l_out.append(l_crop)
        if photos is not None:
            x = photos[i][:, 32 * top : 32 * top + crop, 32 * left : 32 * left + crop]
            x_out.append(_fit(x, crop))
    x_batch = torch.stack(x_out).float() / 127.5 - 1 if photos is not None else None
    return torch.stack(y_out).float(), torch.stack(l_out).float(), x_batch


def _fit(t: torch.Tensor, size: int) -> torch.Tensor:
    """Pad a crop of a small image (edge replication) to the full crop size."""
    ph, pw = size - t.shape[1], size - t.shape[2]
    if ph or pw:
        t = F.pad(t[None], (0, pw, 0, ph), mode="replicate")[0]
    return t


class RealismTrainer:
    """Owns the realism decoder, the latent critic and their optimizers."""

    def __init__(self, cfg: RealismConfig) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        info = read_info(cfg.base_bundle)
        dcfg = realism_config(info.config, PRESETS[cfg.preset])
        self.decoder = RealismDecoder(dcfg)
        self.decoder.vae.load_state_dict(read_taef2(Path(cfg.taef2) / "taef2_decoder.safetensors"))
        self.decoder.vae.requires_grad_(False).eval()
        self.critic = LatentCritic(dcfg.decoder_latent, dcfg.latent_channels, cfg.disc_width)
        self.features: TinyEncoder | None = None
        if cfg.perceptual > 0:
            self.features = TinyEncoder()
            self.features.load_state_dict(read_taef2(Path(cfg.taef2) / "taef2_encoder.safetensors"))
            self.features.requires_grad_(False).eval()
        # The renderings' critic: it sees what the latent critic cannot, brush strokes and
        # painted texture against a photo's.
        self.image_critic = PatchDiscriminator(cfg.disc_width) if cfg.image_adv > 0 else None
        self.warm_started = 0
        if cfg.init.endswith(".safetensors"):
            realism = load_bundle(cfg.init, encoder=False, decoder=False, realism=True).realism
            self._start_from(realism.state_dict())
        elif cfg.init:
            state = torch.load(cfg.init, map_location="cpu", weights_only=True)
            self._start_from(shipped_weights(state))
            self.critic.load_state_dict(state["critic"])
            if self.image_critic is not None and "image_critic" in state:
                self.image_critic.load_state_dict(state["image_critic"])
        else:
            self._warm_start(load_bundle(cfg.base_bundle, encoder=False))
        if cfg.noise_init > 0:
            scales = self.decoder.denoiser.noise_scale
            if scales is None:
                raise ValueError(f"noise_init: preset {cfg.preset} has no noise input")
            with torch.no_grad():
                scales.fill_(cfg.noise_init)
        if cfg.no_band_kernels:
            for name, module in self.decoder.g_s.named_modules():
                if name.endswith(BAND_KERNELS):
                    with torch.no_grad():
                        module.weight.zero_()
                        module.bias.zero_()
                    module.requires_grad_(False)
        trained = [(n, p) for n, p in self.decoder.named_parameters() if not n.startswith("vae.")]
        groups = [
            {"params": [p for n, p in trained if not n.endswith(NOISE_KEY)], "lr_mult": 1.0},
            {"params": [p for n, p in trained if n.endswith(NOISE_KEY)], "lr_mult": cfg.noise_lr},
        ]
        self.opt = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99)
        )
        self.trained = dict(trained)
        self.ema = self._weights() if cfg.ema > 0 else None
        critics = list(self.critic.parameters())
        if self.image_critic is not None:
            critics += list(self.image_critic.parameters())
        self.disc_opt = torch.optim.AdamW(
            critics, lr=cfg.disc_lr, weight_decay=0.0, betas=(0.5, 0.9)
        )
        self.step = 0

    def _start_from(self, state: dict[str, torch.Tensor]) -> None:
        """Load another realism decoder; one without a noise input gives this one's zero scales."""
        missing, unexpected = self.decoder.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {NOISE_KEY}:
            raise ValueError(
                f"{self.cfg.init}: not a realism decoder of preset {self.cfg.preset} "
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
        c = self.cfg
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        t = (step - c.warmup) / max(1, c.steps - c.warmup)
        return c.lr_min + 0.5 * (c.lr - c.lr_min) * (1 + math.cos(math.pi * min(t, 1.0)))

    def adv_ramp_at(self, step: int) -> float:
        """How much of the adversarial weights applies: 0 before adv_start, then up to 1."""
        c = self.cfg
        if step < c.adv_start:
            return 0.0
        return min(1.0, (step - c.adv_start + 1) / max(1, c.adv_ramp))

    def image_terms(
        self, l_0: torch.Tensor, photo: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """D renders each crop's centre; the image-space terms against the photo's crop.

        Also returns the rendering and the photo's crop, for the renderings' critic.
        """
        c = self.cfg
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
        self, y_hat: torch.Tensor, target: torch.Tensor, photo: torch.Tensor | None = None
    ) -> dict[str, float]:
        """One step on crops of y_hat, of E(x) (what l_0 should match) and of the photo."""
        c = self.cfg
        lr = self.lr_at(self.step)
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
        elif needs_photos(c):
            raise ValueError("the image-space terms need the photo crops")
        ramp = self.adv_ramp_at(self.step)
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
            raise FloatingPointError(f"non-finite loss at step {self.step}")
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
        self.step += 1
        out = {k: float(v.detach()) for k, v in terms.items()}
        out.update(loss=float(loss.detach()), disc=float(disc.detach()), grad=float(grad))
        out.update(lr=lr, adv_w=adv_w, real=float(real.mean().detach()))
        return out

    @torch.no_grad()
    def decode(self, y_hat: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Whole-image decode (3, H', W') in [0, 1], the colour grid taken from ``source``."""
        x_hat, _ = self.decoder(y_hat)
        cell = math.gcd(self.cfg.grid_cell, math.gcd(*x_hat.shape[-2:]))
        return colour_grid_fix((x_hat + 1) / 2, source, cell, self.cfg.grid_step)[0].clamp(0, 1)

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

    def evaluate(self, images: list[tuple[np.ndarray, torch.Tensor]]) -> dict[str, float]:
        """PSNR, MS-SSIM and luma bands of whole images, decoded untiled with the colour grid.

        With a moving average, of the averaged decoder (what export writes).
        """
        with self.averaged():
            return self._evaluate(images)

    def _evaluate(self, images: list[tuple[np.ndarray, torch.Tensor]]) -> dict[str, float]:
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
        row = {"eval_psnr": float(np.mean(psnrs)), "eval_msssim": float(np.mean(ssims))}
        row["eval_lattice"] = float(np.mean(cells))
        row["eval_orientation"] = float(np.nanmean(turns))
        row.update({f"eval_band{i}": float(b) for i, b in enumerate(np.mean(bands, axis=0))})
        return row

    def state_dict(self) -> dict[str, Any]:
        return {
            "decoder": self.decoder.state_dict(),
            "critic": self.critic.state_dict(),
            **({"image_critic": self.image_critic.state_dict()} if self.image_critic else {}),
            "opt": self.opt.state_dict(),
            "disc_opt": self.disc_opt.state_dict(),
            "step": self.step,
            "decoder_config": self.decoder.cfg.to_json(),
            "rng": torch.get_rng_state(),
            **({"ema": self.ema} if self.ema is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decoder.load_state_dict(state["decoder"])
        self.critic.load_state_dict(state["critic"])
        if self.image_critic is not None:
            self.image_critic.load_state_dict(state["image_critic"])
        self.opt.load_state_dict(state["opt"])
        self.disc_opt.load_state_dict(state["disc_opt"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"])
        if self.ema is not None:  # a run that starts averaging on resume starts from here
            self.ema = state.get("ema") or self._weights()


def _save(trainer: RealismTrainer, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(trainer.state_dict(), tmp)
    os.replace(tmp, path)


def run(cfg: RealismConfig, data: Path, out: Path, resume: bool) -> Path:
    """Train to cfg.steps, checkpointing every few minutes and on Ctrl-C."""
    torch.set_num_threads(cfg.threads)
    # Adam's second moments and small gradients fall into float32's subnormal range,
    # where x86 arithmetic is about a hundred times slower: flushing them to zero made
    # a step 6x faster here (the decoder never depends on values below 1e-38).
    torch.set_flush_denormal(True)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    if ckpt.exists() and not resume:
        raise SystemExit(f"{ckpt} exists: pass --resume or use another folder")
    trainer = RealismTrainer(cfg)
    if resume and ckpt.exists():
        trainer.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    base = load_bundle(cfg.base_bundle, decoder=False)
    encoder = TinyEncoder().eval()
    encoder.load_state_dict(read_taef2(Path(cfg.taef2) / "taef2_encoder.safetensors"))
    files = find_images(data)
    makers = {
        out / f"cache-y-{base.identity}.pt": lambda x: base.compress(x).y_hat[0].half(),
        out / "cache-taef2.pt": lambda x: encoder((x + 1) / 2)[0].half(),
    }
    if needs_photos(cfg):
        makers[out / "cache-photos.pt"] = lambda x: ((x[0] + 1) * 127.5).round().to(torch.uint8)
    ys, lats, *rest = build_caches(files, cfg.max_pixels, makers)
    photos = rest[0] if rest else None
    evals = []
    if cfg.eval_dir and cfg.eval_every:
        with torch.no_grad():
            for path in find_images(cfg.eval_dir)[: cfg.eval_images]:
                image = read_image(path)[0]
                evals.append((image, base.compress(padded_input(image)).y_hat))
    log = (out / "log.jsonl").open("a", encoding="utf-8")
    sums: dict[str, float] = {}  # since the last log row, with how many steps gave each
    counts: dict[str, int] = {}
    last_save, started = time.monotonic(), time.monotonic()
    with StopSignals() as stop:
        while trainer.step < cfg.steps:
            batch = crops(ys, lats, cfg.crop, cfg.batch, cfg.seed, trainer.step, photos)
            for k, v in trainer.train_step(*batch).items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            step = trainer.step
            if step % cfg.log_every == 0:
                row = {k: v / counts[k] for k, v in sums.items()}
                row.update(step=step, seconds=round(time.monotonic() - started, 1))
                log.write(json.dumps(row, sort_keys=True) + "\n")
                log.flush()
                sums, counts = {}, {}
            if evals and (step % cfg.eval_every == 0 or step == cfg.steps):
                log.write(json.dumps({"step": step, **trainer.evaluate(evals)}) + "\n")
                log.flush()
                _save(trainer, out / f"checkpoint-{step}.pt")  # any evaluated step can ship
            if stop.requested or time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
                _save(trainer, ckpt)
                last_save = time.monotonic()
                if stop.requested:
                    raise SystemExit(130)
    _save(trainer, ckpt)
    log.close()
    return ckpt


def shipped_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A checkpoint's decoder weights as export writes them: its moving average, if it kept one."""
    return {**state["decoder"], **state.get("ema", {})}


def export(cfg: RealismConfig, checkpoint: Path, output: Path, config_name: str) -> str:
    """Write the base bundle with the checkpoint's realism decoder attached (int8)."""
    from aeic_codec.bundles.bundle import attach_realism
    from aeic_codec.nn.config import ModelConfig

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    dcfg = ModelConfig.from_json(state["decoder_config"]).replace(detail_sigma=cfg.detail_sigma)
    decoder = RealismDecoder(dcfg)
    decoder.load_state_dict(shipped_weights(state))
    provenance = {"config": config_name, "steps": int(state["step"]), "seed": cfg.seed}
    if "ema" in state:
        provenance["ema"] = cfg.ema
    return attach_realism(cfg.base_bundle, decoder, output, "int8", provenance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", help="training images (a folder)")
    parser.add_argument("--out", required=True, help="the run folder")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--export", metavar="BUNDLE", help="write the bundle from the run's checkpoint"
    )
    parser.add_argument(
        "--step", type=int, help="with --export: the checkpoint kept at this evaluated step"
    )
    args = parser.parse_args()
    cfg = load_config(args.config)
    if args.export:
        name = Path(args.config).name
        checkpoint = f"checkpoint-{args.step}.pt" if args.step is not None else "checkpoint.pt"
        print(export(cfg, Path(args.out) / checkpoint, Path(args.export), name))
    elif not args.data:
        parser.error("--data is needed to train")
    else:
        run(cfg, Path(args.data), Path(args.out), args.resume)


if __name__ == "__main__":
    main()
