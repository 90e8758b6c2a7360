"""The differentiable forward pass: what is trained is what is coded.

It goes through the same ``QuadtreeContext.run`` as the coder, only with another
``code_step``: noisy likelihoods for the rate, straight-through rounding for the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aeic_codec.codec.model import AEIC
from aeic_codec.entropy_models.priors import gaussian_likelihood
from aeic_codec.nn.config import ModelConfig

from .distributed import Share

ENCODER_FEATURES = ("y", "z", "base", "y_hat")


@dataclass
class Forward:
    """One training forward pass: the reconstruction, the estimated bits, the features."""

    x_hat: torch.Tensor
    bits: torch.Tensor
    features: dict[str, torch.Tensor]


def _straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` forward, identity gradient to ``x`` backward."""
    return x + (value - x).detach()


def _noise(x: torch.Tensor, share: Share | None) -> torch.Tensor:
    """Uniform noise in [-0.5, 0.5) for x, the share's rows of the global batch's noise.

    Every process draws the whole batch's noise (the same draws, in the same memory
    order, as one process would) and keeps its rows, so that the RNG streams of all
    processes stay equal and equal to a single process's.
    """
    if share is None:
        return torch.empty_like(x).uniform_(-0.5, 0.5)
    shape = (share.total, *x.shape[1:])
    full = torch.empty_strided(shape, x.stride(), dtype=x.dtype, device=x.device)
    return full.uniform_(-0.5, 0.5)[share.start : share.stop]


def forward_train(model: AEIC, x: torch.Tensor, share: Share | None = None) -> Forward:
    """The training forward pass of a full model on x in [-1, 1].

    The rate is the likelihood of the latents plus uniform noise (a differentiable
    stand-in for the coded size); what flows on is rounded straight-through, so the
    decoder trains on exactly the values it will be given. Likelihoods run in float32
    even under autocast: bf16 CDF differences are too coarse for rates near 0.01 bpp.
    ``share`` says which rows of a global batch x is (None: all of it).
    """
    if model.g_a is None or model.h_a is None or model.g_s is None:
        raise ValueError("training needs the whole model (encoder and decoder)")
    exact = torch.autocast(x.device.type, enabled=False)
    eb = model.entropy_bottleneck
    y = model.g_a(x).float()
    z = model.h_a(y).float()
    with exact:
        bits = -torch.log2(eb.likelihood(z + _noise(z, share))).sum()
    z_hat = _straight_through(z, eb.quantize_median(z))
    base = model.h_s(z_hat, y.shape[-2:]).float()
    y_noisy = y + _noise(y, share)
    y_bits: list[torch.Tensor] = []

    def code_step(_k: int, mask: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor):
        mean, scale = mean.float(), scale.float()
        with exact:
            p = gaussian_likelihood(y_noisy, mean, scale)
            y_bits.append(torch.where(mask, -torch.log2(p), 0.0).sum())
        return _straight_through(y, torch.round(y - mean) + mean)

    y_hat = model.context.run(base, code_step)
    l_t, l_res = model.g_s(y_hat)
    l_0 = model.denoiser(model.denoiser.with_noise(l_t, fresh=True)) + l_res
    x_hat = model.vae(l_0).float()
    features = {
        "y": y,
        "z": z,
        "base": base,
        "y_hat": y_hat,
        "l_t": l_t,
        "l_res": l_res,
        "l_0": l_0,
    }
    return Forward(x_hat, bits + torch.stack(y_bits).sum(), features)


def teacher_features(teacher: AEIC, x: torch.Tensor, decoder: bool) -> dict[str, torch.Tensor]:
    """The teacher's y, z, h_s output and y_hat (hard rounding), and l_T, l_res, l_0.

    Runs with grad mode on but nothing requiring grad: no graph is kept, and Conv3x3
    takes its fast F.conv2d path instead of the bit-exact inference one.
    """
    eb = teacher.entropy_bottleneck
    y = teacher.g_a(x).float()
    z = teacher.h_a(y).float()
    base = teacher.h_s(eb.quantize_median(z), y.shape[-2:]).float()

    def code_step(_k: int, _mask: torch.Tensor, mean: torch.Tensor, _scale: torch.Tensor):
        return torch.round(y - mean.float()) + mean.float()

    y_hat = teacher.context.run(base, code_step)
    features = {"y": y, "z": z, "base": base, "y_hat": y_hat}
    if decoder:
        l_t, l_res = teacher.g_s(y_hat)
        l_0 = teacher.denoiser(teacher.denoiser.with_noise(l_t)) + l_res
        features.update(l_t=l_t, l_res=l_res, l_0=l_0)
    return features


def feature_channels(cfg: ModelConfig) -> dict[str, int]:
    """Channels of every distilled tensor, denoiser block outputs included."""
    m, widths = cfg.latent_channels, cfg.unet_widths
    n = len(widths)
    channels = {"y": m, "z": m // 2, "base": m, "y_hat": m}
    channels.update(l_t=cfg.denoiser_in, l_res=cfg.decoder_latent, l_0=cfg.decoder_latent)
    channels.update({f"down{i}": widths[i] for i in range(n)})
    channels["mid"] = widths[-1]
    channels.update({f"up{i}": widths[n - 1 - i] for i in range(n)})
    return channels


def tap_blocks(denoiser: nn.Module, store: dict[str, torch.Tensor]) -> None:
    """Forward hooks that put every down/mid/up block output of eps into ``store``."""

    def keep(name: str):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            store[name] = output[0] if isinstance(output, tuple) else output

        return hook

    for i, block in enumerate(denoiser.down_blocks):
        block.register_forward_hook(keep(f"down{i}"))
    denoiser.mid_block.register_forward_hook(keep("mid"))
    for i, block in enumerate(denoiser.up_blocks):
        block.register_forward_hook(keep(f"up{i}"))
