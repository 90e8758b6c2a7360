"""Parameter and multiply-accumulate counts, for the complexity table and its test."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .model import AEIC, latent_size


def param_count(*modules: nn.Module | None) -> int:
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def encoder_params(model: AEIC) -> int:
    """g_a, h_a, h_s, the context model and the z prior: what the sender runs."""
    return param_count(model.g_a, model.h_a, model.h_s, model.context, model.entropy_bottleneck)


def encoder_macs_per_pixel(model: AEIC, height: int = 512, width: int = 768) -> float:
    """Matrix/conv MACs of g_a + h_a + h_s + the 4 context steps, per input pixel."""
    x = torch.zeros(1, 3, height, width)
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
    """MACs of g_s alone per output pixel."""
    y = torch.zeros(1, model.cfg.latent_channels, *latent_size(height, width))
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model.g_s(y)
    return counter.get_total_flops() / 2 / (height * width)
