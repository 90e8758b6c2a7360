"""The four-step quadtree context model (docs/architecture.md section 4).

Training, encoding and decoding all run through ``QuadtreeContext.run``: the only
thing that differs is the ``code_step`` callback that turns (mean, scale) into the
quantized values of the step. That keeps the two sides of the coder from drifting.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .blocks import Adapter, BasicBlock
from .config import ModelConfig

# POSITIONS[step][group]: which cell of every 2x2 block group g codes at that step.
# Cell p = (row, col): p0 = (0, 0), p1 = (0, 1), p2 = (1, 0), p3 = (1, 1).
POSITIONS = ((0, 1, 2, 3), (3, 2, 1, 0), (2, 3, 0, 1), (1, 0, 3, 2))
STEPS = len(POSITIONS)

CodeStep = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def step_masks(channels: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """Boolean masks (4, 1, M, H, W): entry k marks the (channel, position) pairs of step k."""
    if height % 2 or width % 2:
        raise ValueError(f"latent size must be even, got {height}x{width}")
    group = channels // 4
    rows = torch.arange(height, device=device) % 2
    cols = torch.arange(width, device=device) % 2
    cell = (rows[:, None] * 2 + cols[None, :]).expand(height, width)
    masks = torch.zeros(STEPS, 1, channels, height, width, dtype=torch.bool, device=device)
    for k, positions in enumerate(POSITIONS):
        for g, p in enumerate(positions):
            masks[k, 0, g * group : (g + 1) * group] = cell == p
    return masks


class ContextNetwork(nn.Module):
    """g_c: the BasicBlock stack shared by the four steps."""

    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.block = nn.ModuleList(BasicBlock(dim) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x


class QuadtreeContext(nn.Module):
    """Predicts (mean, scale) for each quarter of y from what has been coded so far."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m, c = cfg.latent_channels, cfg.context_dim
        if m % 4:
            raise ValueError("latent_channels must split into 4 groups")
        self.adapter_in = nn.ModuleList(Adapter(m, c) for _ in range(STEPS))
        self.g_c = ContextNetwork(c, cfg.context_depth)
        self.adapter_out = nn.ModuleList(Adapter(c, 2 * m) for _ in range(STEPS))

    def params(self, step: int, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.adapter_out[step](self.g_c(self.adapter_in[step](ctx)))
        mean, scale = out.chunk(2, dim=1)
        return mean, scale

    def run(self, base: torch.Tensor, code_step: CodeStep) -> torch.Tensor:
        """Run the four steps from the hyperprior's ``base``; returns the final y_hat.

        ``code_step(k, mask, mean, scale)`` returns a tensor whose values at ``mask``
        are the step's quantized latents (elsewhere ignored).
        """
        _, m, h, w = base.shape
        masks = step_masks(m, h, w, base.device)
        ctx = base
        for k in range(STEPS):
            mean, scale = self.params(k, ctx)
            coded = code_step(k, masks[k], mean, scale)
            ctx = torch.where(masks[k], coded, ctx)
        return ctx
