"""int8 storage of weights: one scale per output channel, and the names of the scales.

Bundles store most weights this way (bundles/bundle.py), and the integer entropy model
reads the same int8 values and scales to build its exact weights (entropy_models/ops.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SCALE_PREFIX = "int8_scale."  # a bundle key's scales are stored under this prefix + key


def quantize_int8(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel (dim 0): value ~= q * scale along dim 0."""
    import torch

    rows = value.detach().float().flatten(1)
    peak = rows.abs().amax(dim=1)
    scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
    q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.view(value.shape).contiguous(), scale.contiguous()


def dequantize_int8(
    q: torch.Tensor, scale: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """float32(q) * scale per output channel: the one expansion both coder sides use.

    With ``out`` (a float32 tensor of q's shape) the result is written there, without
    temporaries: the same products, bit for bit.
    """
    import torch

    if out is None:
        out = torch.empty(q.shape, dtype=torch.float32)
    out.copy_(q)
    out.view(q.shape[0], -1).mul_(scale.float()[:, None])
    return out
