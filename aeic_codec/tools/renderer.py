"""Distil a lighter renderer for texture synthesis from a texture file's own networks.

Texture synthesis (``codec/texture_synthesis.py``) runs TAEF2's encoder on the fidelity
picture and its decoder on the latent with the book's detail: about 190 G multiply-adds
at 768x512, most of them in 64-wide convolutions at full resolution, which took 3 s in
float32 on a CPU without bf16. The students here are narrower where the picture is large
(``STUDENT_ENCODER``, ``student_decoder``) and learn to give what the teachers give:

- the encoder, the teacher's latent of pictures like the fidelity decoder's (photographs
  blurred by a Gaussian of random width, and some sharp ones): squared error relative to
  the latent's variance. The book stays as it is: its keys are in the teacher's latent
  space, which the student imitates.
- the decoder, the teacher's rendering of latents like the ones synthesis renders (a
  blurred picture's latent moved part of the way to the sharp picture's, since the
  book's values are such differences, and sharp ones): mean absolute error of the pixels
  plus twice that of their 3x3 Laplacians, the fine bands being what synthesis keeps.

Resumable (``checkpoint.py``).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aeic_codec.codec.texture_synthesis import TextureSynthesis
from aeic_codec.nn.config import ModelConfig, TinyEncoderConfig
from aeic_codec.nn.tiny_vae import TinyDecoder, TinyEncoder

from .checkpoint import Checkpoint, run_steps
from .texture_book import photo

STUDENT_ENCODER = TinyEncoderConfig(widths=(16, 32, 48, 64), blocks=(1, 1, 2, 2), pooled=1)
STUDENT_DECODER_WIDTHS = (64, 48, 32, 16)  # from the latent side
STUDENT_DECODER_BLOCKS = (2, 2, 1, 1)
BLUR_SIGMAS = (0.7, 3.5)  # px: the range of the Gaussians that make fidelity-like pictures
MOVE_MAX = 1.2  # how far a blurred latent moves toward the sharp one, at most
LAPLACE_WEIGHT = 2.0


def student_decoder(teacher: ModelConfig) -> ModelConfig:
    """The student decoder's shape: the teacher's, narrower and shallower at fine levels."""
    return teacher.replace(
        name=f"{teacher.name}-student",
        vae_widths=STUDENT_DECODER_WIDTHS,
        vae_blocks=STUDENT_DECODER_BLOCKS,
        vae_pooled=min(teacher.vae_pooled, 1),
    )


def distil_renderer(
    synthesis: TextureSynthesis,
    photos: Sequence[Path],
    steps: int,
    *,
    encoder: TinyEncoderConfig = STUDENT_ENCODER,
    decoder: ModelConfig | None = None,
    batch: int = 8,
    crop: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> TextureSynthesis:
    """``synthesis`` with students of its encoder and decoder (same book), distilled in
    ``steps`` Adam steps (cosine learning rate from ``lr``) on ``batch`` random crops of
    ``photos`` each; the teachers run in ``dtype`` (bf16 where the CPU has it)."""
    if crop % 8:
        raise ValueError(f"crop must be a multiple of 8, got {crop}")
    images = [p for p in (photo(path) for path in photos) if min(p.shape[:2]) >= crop]
    if not images:
        raise ValueError(f"no photograph of at least {crop}x{crop} pixels")
    decoder_cfg = decoder or student_decoder(synthesis.config)
    if encoder.latent != synthesis.config.decoder_latent:
        raise ValueError("the student encoder's latent must be the decoder's")
    teachers = (synthesis.encoder.eval(), synthesis.decoder.eval())
    for net in teachers:
        net.requires_grad_(False)
    torch.manual_seed(seed)
    students = (TinyEncoder(encoder), TinyDecoder(decoder_cfg))
    optimiser = torch.optim.Adam([p for s in students for p in s.parameters()], lr=lr)
    made_for = {
        "encoder": encoder.to_json(),
        "decoder": decoder_cfg.to_json(),
        "steps": steps,
        "batch": batch,
        "crop": crop,
    }
    parts = {"encoder": students[0], "decoder": students[1], "optimiser": optimiser}
    state = Checkpoint(checkpoint, made_for, parts, "other networks or another number of steps")
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)

    def loss_at(step: int) -> torch.Tensor:
        rng = random.Random(seed * 1_000_003 + step)
        sharp = _crops(images, batch, crop, rng)
        x = torch.cat([sharp, _blurred(sharp, rng)])
        with torch.no_grad(), autocast:
            latent = teachers[0](x).float()
            draw = torch.Generator().manual_seed(rng.randrange(1 << 31))
            moved = MOVE_MAX * torch.rand(batch, 1, 1, 1, generator=draw)
            sharp_latent, blur_latent = latent[:batch], latent[batch:]
            z = torch.cat([sharp_latent, blur_latent + moved * (sharp_latent - blur_latent)])
            target = teachers[1](z).float()
        with autocast:
            got_latent = students[0](x).float()
            rendered = students[1](z).float()
        loss = F.mse_loss(got_latent, latent) / latent.var().clamp(min=1e-6)
        loss = loss + (rendered - target).abs().mean()
        return loss + LAPLACE_WEIGHT * (_laplace(rendered) - _laplace(target)).abs().mean()

    run_steps(state, loss_at, optimiser, lr, steps, progress)
    for net in students:
        net.eval().requires_grad_(False)
    return TextureSynthesis(students[0], students[1], synthesis.book, decoder_cfg)


def _crops(images: list[np.ndarray], batch: int, crop: int, rng: random.Random) -> torch.Tensor:
    """``batch`` random crops (aligned to the latent's 8 px), RGB in [0, 1]."""
    out = []
    for _ in range(batch):
        image = images[rng.randrange(len(images))]
        top = rng.randrange(0, image.shape[0] - crop + 1, 8)
        left = rng.randrange(0, image.shape[1] - crop + 1, 8)
        out.append(torch.from_numpy(image[top : top + crop, left : left + crop].copy()))
    return torch.stack(out).permute(0, 3, 1, 2).float().div_(255)


def _blurred(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Each picture blurred by a Gaussian of its own width in BLUR_SIGMAS (edges replicated)."""
    n, c, _, _ = x.shape
    sigmas = [rng.uniform(*BLUR_SIGMAS) for _ in range(n)]
    radius = math.ceil(3 * BLUR_SIGMAS[1])
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.stack([torch.exp(-0.5 * (taps / s) ** 2) for s in sigmas])
    kernels = (kernels / kernels.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n c, taps)
    flat = F.pad(x.reshape(1, n * c, *x.shape[2:]), (radius,) * 4, mode="replicate")
    flat = F.conv2d(flat, kernels[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, kernels[:, None, :, None], groups=n * c)
    return flat.reshape(x.shape)


def _laplace(x: torch.Tensor) -> torch.Tensor:
    """x less its 3x3 mean: the finest detail, which synthesis keeps."""
    return x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
