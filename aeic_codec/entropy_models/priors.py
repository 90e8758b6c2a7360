"""Probability models of the latents: the factorized z prior and the Gaussian y prior.

The z prior is the univariate non-parametric density of Balle et al. (2018) with the
same parameters, initial values and names as CompressAI's ``EntropyBottleneck``
(filters (3, 3, 3, 3), init_scale 10, tail mass 1e-9), so published checkpoints load
into it directly; it is reimplemented here so that encoding and decoding never import
CompressAI. Both models also turn themselves into integer frequency tables
(``tables.py``) once, when weights are made or imported.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SCALE_MIN = 0.11
SCALE_MAX = 256.0
SCALE_LEVELS = 64
SKIP_SCALE = 0.08
LIKELIHOOD_MIN = 1e-9
TAIL_MASS = 1e-9


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it pushes x back above the bound."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes, None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


def scale_table() -> np.ndarray:
    """The 64 scales, evenly spaced in log from 0.11 to 256 (float64)."""
    return np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS))


def table_scales() -> np.ndarray:
    """The scale each y table is built for: the geometric middle of the scales it serves.

    Index i serves scales in [table[i], table[i + 1]); coding them with a Gaussian of
    the interval's lower end (as the published code does) costs measurably more bits
    than one from its middle. The last index serves everything from 256 up.
    """
    s = scale_table()
    mid = np.sqrt(s[:-1] * s[1:])
    return np.append(mid, s[-1])


def scale_indexes(scale: torch.Tensor) -> torch.Tensor:
    """int((ln s - ln 0.11) / step) clamped to [0, 63], as the published coder does."""
    step = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (SCALE_LEVELS - 1)
    idx = (torch.log(scale.clamp_min(1e-30)) - math.log(SCALE_MIN)) / step
    return idx.trunc().clamp(0, SCALE_LEVELS - 1).to(torch.int64)


def gaussian_likelihood(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """P(y in [v - 1/2, v + 1/2]) under N(mean, max(scale, 0.11)), bounded below by 1e-9."""
    scale = lower_bound(scale, SCALE_MIN)
    v = (y - mean).abs()
    upper = 0.5 * torch.erfc((v - 0.5) / (scale * math.sqrt(2)))
    lower = 0.5 * torch.erfc((v + 0.5) / (scale * math.sqrt(2)))
    return lower_bound(upper - lower, LIKELIHOOD_MIN)


class FactorizedPrior(nn.Module):
    """Per-channel learned CDF for z; state-dict compatible with CompressAI's bottleneck."""

    filters = (3, 3, 3, 3)

    def __init__(self, channels: int, init_scale: float = 10.0) -> None:
        super().__init__()
        self.channels = channels
        dims = (1, *self.filters, 1)
        scale = init_scale ** (1 / (len(self.filters) + 1))
        for i in range(len(self.filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.register_parameter(
                f"_matrix{i}", nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init))
            )
            self.register_parameter(
                f"_bias{i}", nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5)
            )
            if i < len(self.filters):
                self.register_parameter(
                    f"_factor{i}", nn.Parameter(torch.zeros(channels, dims[i + 1], 1))
                )
        q = torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1)
        self.quantiles = nn.Parameter(q)
        t = math.log(2 / TAIL_MASS - 1)
        self.register_buffer("target", torch.tensor([-t, 0.0, t]), persistent=False)

    @property
    def medians(self) -> torch.Tensor:
        """The per-channel offsets that z is rounded around: quantiles[:, 0, 1]."""
        return self.quantiles[:, 0, 1]

    def logits_cumulative(self, x: torch.Tensor, stop_gradient: bool = False) -> torch.Tensor:
        """Logit of the CDF at x; x has shape (C, 1, N)."""
        logits = x
        for i in range(len(self.filters) + 1):
            matrix = getattr(self, f"_matrix{i}")
            bias = getattr(self, f"_bias{i}")
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.filters):
                factor = getattr(self, f"_factor{i}")
                if stop_gradient:
                    factor = factor.detach()
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """P(z in [v - 1/2, v + 1/2]) per element of an NCHW tensor."""
        c = z.shape[1]
        flat = z.transpose(0, 1).reshape(c, 1, -1)
        lower = self.logits_cumulative(flat - 0.5)
        upper = self.logits_cumulative(flat + 0.5)
        sign = -torch.sign(lower + upper).detach()
        p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        p = lower_bound(p, LIKELIHOOD_MIN)
        return p.reshape(c, z.shape[0], *z.shape[2:]).transpose(0, 1)

    def aux_loss(self) -> torch.Tensor:
        """Pulls ``quantiles`` onto the tail-mass quantiles and the median."""
        logits = self.logits_cumulative(self.quantiles, stop_gradient=True)
        return (logits - self.target).abs().sum()

    def quantize_median(self, z: torch.Tensor) -> torch.Tensor:
        """round(z - median) + median, the z_hat that both sides use."""
        med = self.medians.detach().view(1, -1, 1, 1)
        return torch.round(z - med) + med
