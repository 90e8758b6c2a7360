"""Analysis, hyper-analysis, hyper-synthesis and synthesis transforms.

docs/architecture.md section 3 describes them; the image enters them through
``from_pixels`` and ``pad_reflect``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Adapter, Down, StarBlock, Up, encoding_one_image, run_layers
from .config import ModelConfig


def from_pixels(x: torch.Tensor) -> torch.Tensor:
    """8-bit pixel values (0..255, any dtype) to the [-1, 1] float the networks take."""
    return x.to(torch.float32, copy=True).div_(127.5).sub_(1.0)


def pad_reflect(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to a multiple by mirroring; works for any size, even 1 pixel.

    torch's reflect mode needs the pad to be smaller than the input, so large pads are
    applied in several mirror passes, and a 1-pixel axis is replicated. Where a single
    reflect pass is legal the result equals it exactly.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    while ph or pw:
        h, w = x.shape[-2:]
        step_h = min(ph, h - 1) if h > 1 else 0
        step_w = min(pw, w - 1) if w > 1 else 0
        if h == 1 and ph:
            x = F.pad(x, (0, 0, 0, ph), mode="replicate")
            ph = 0
        if w == 1 and pw:
            x = F.pad(x, (0, pw, 0, 0), mode="replicate")
            pw = 0
        if step_h or step_w:
            x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
            ph, pw = ph - step_h, pw - step_w
    return x


class AnalysisTransform(nn.Module):
    """g_a: five Down stages with StarBlocks, image -> y at 1/32 resolution."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for dim in cfg.ga_dims:
            layers.append(Down(cin, dim))
            layers.extend(StarBlock(dim) for _ in range(cfg.ga_blocks))
            cin = dim
        self.analysis_transform = nn.Sequential(*layers)
        self.level_size = 1 + cfg.ga_blocks  # layers per level: a Down and its StarBlocks

    def forward(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        """y of an image; with ``level`` > 0, of the features g_a's first ``level``
        levels would give (the fast encoder's stem gives them, ``stem.py``)."""
        y = run_layers(self.analysis_transform[level * self.level_size :], x)
        return y.contiguous() if encoding_one_image(x) else y  # y as the entropy path takes it


class HyperAnalysis(nn.Module):
    """h_a: y -> z at 1/128 resolution, M/2 channels."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m, half = cfg.latent_channels, cfg.hyper_channels
        blocks = [StarBlock(half) for _ in range(cfg.hyper_blocks)]
        self.reduction = nn.Sequential(Down(m, half), *blocks, Down(half, half))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.reduction(pad_reflect(y, 4))


class HyperSynthesis(nn.Module):
    """h_s: z_hat -> the base context (M channels), cropped to y's size."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m, half = cfg.latent_channels, cfg.hyper_channels
        blocks = [StarBlock(half) for _ in range(cfg.hyper_blocks)]
        self.increase = nn.Sequential(Up(half, half), *blocks, Up(half, m))

    def forward(self, z_hat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.increase(z_hat)[..., : size[0], : size[1]]


class SynthesisTransform(nn.Module):
    """g_s: y_hat -> (l_T, l_res) at 1/8 resolution."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.gs_dims
        layers: list[nn.Module] = [Adapter(cfg.latent_channels, d[0])]
        for i, dim in enumerate(d):
            if i:
                layers.append(Up(d[i - 1], dim))
            layers.extend(StarBlock(dim) for _ in range(cfg.gs_blocks))
        layers.append(Adapter(d[-1], cfg.gs_out))
        self.synthesis_transform = nn.Sequential(*layers)
        self.split = (cfg.denoiser_in, cfg.decoder_latent)

    def forward(self, y_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        l_t, l_res = torch.split(self.synthesis_transform(y_hat), self.split, dim=1)
        return l_t, l_res
