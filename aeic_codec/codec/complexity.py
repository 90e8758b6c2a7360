"""Parameter and multiply-accumulate counts, for the complexity table and its test."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from aeic_codec.latent_codecs.base import hyper_size

from .model import AEIC, latent_size

T = TypeVar("T")


def param_count(*modules: nn.Module | None) -> int:
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def encoder_params(model: AEIC) -> int:
    """g_a, h_a, h_s, the context model and the z prior: what the sender runs."""
    return param_count(model.g_a, model.h_a, model.h_s, model.context, model.entropy_bottleneck)


def encoder_macs_per_pixel(model: AEIC, height: int = 512, width: int = 768) -> float:
    """Matrix/conv MACs of g_a + h_a + h_s + the 4 context steps, per input pixel."""
    x = torch.zeros(1, 3, height, width, device=next(model.parameters()).device)
    ctx = model.context
    # Counted with autograd on, where Conv3x3 runs as one F.conv2d (its inference path
    # computes over padded rows and would overcount).
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        y = model.g_a(x)
        z = model.h_a(y)
        base = model.h_s(z, y.shape[-2:])
        for k in range(4):
            ctx.params(k, base)
    return counter.get_total_flops() / 2 / (height * width)


def synthesis_macs_per_pixel(model: AEIC, height: int = 512, width: int = 768) -> float:
    """MACs of g_s alone per output pixel (works on a model without eps and D)."""
    if model.g_s is None:
        raise ValueError("the model was built without g_s")
    device = next(model.g_s.parameters()).device
    y = torch.zeros(1, model.cfg.latent_channels, *latent_size(height, width), device=device)
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model.g_s(y)
    return counter.get_total_flops() / 2 / (height * width)


def decoder_params(model: AEIC) -> int:
    """h_s, the context model, the z prior, g_s, eps and D: what the receiver runs."""
    return param_count(
        model.h_s, model.context, model.entropy_bottleneck, model.g_s, model.denoiser, model.vae
    )


def decoder_macs(model: AEIC, height: int = 512, width: int = 768) -> dict[str, float]:
    """Matrix/conv MACs per output pixel of each decoder part, in the order they run.

    "entropy" is h_s and the four context steps, then g_s, eps and D. Counts one untiled
    pass (tiling adds its overlaps on top); build the model on the "meta" device to count
    the published shapes without computing anything.
    """
    g_s, eps, vae = model.g_s, model.denoiser, model.vae
    if g_s is None or eps is None or vae is None:
        raise ValueError("the model was built without its decoder")
    device = next(model.parameters()).device
    lh, lw = latent_size(height, width)
    y = torch.zeros(1, model.cfg.latent_channels, lh, lw, device=device)
    z = torch.zeros(1, model.cfg.hyper_channels, *hyper_size((lh, lw)), device=device)
    out: dict[str, float] = {}

    def count(name: str, fn: Callable[[], T]) -> T:
        # Autograd on, as in encoder_macs_per_pixel: Conv3x3 then runs as one F.conv2d.
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:
            result = fn()
        out[name] = counter.get_total_flops() / 2 / (height * width)
        return result

    def entropy() -> torch.Tensor:
        base = model.h_s(z, (lh, lw))
        for k in range(4):
            model.context.params(k, base)
        return base

    count("entropy", entropy)
    l_t, l_res = count("g_s", lambda: g_s(y))
    l_0 = count("eps", lambda: eps(l_t)) + l_res
    count("D", lambda: vae(l_0))
    return out


def decoder_macs_per_pixel(model: AEIC, height: int = 512, width: int = 768) -> float:
    """Matrix/conv MACs of h_s + 4 context steps + g_s + eps + D per output pixel."""
    return sum(decoder_macs(model, height, width).values())
