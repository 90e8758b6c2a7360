"""The fast encoder's front: one cheap step in place of g_a's finest levels.

g_a spends most of its time where it is widest in pixels: on a 768x512 image with AVX2
alone its first two levels (1/2 and 1/4 resolution) took 68 of its 103 ms. The stem
folds patches of 2**level x 2**level pixels into channels (pixel-unshuffle), mixes them
with one convolution (1x1: each patch alone, or 3x3) to g_a's width at that level and
runs a few StarBlocks there; it is distilled to give what g_a's first levels give
(``tools/stem.py``), and g_a's remaining levels run on its output as they do on theirs.
The shipped bundles' stem stands in for three levels with a 1x1 convolution and one
StarBlock (``config.StemConfig``'s defaults). Only the encoder runs it: the decoder and
the entropy path do not know which front made y (``aeic encode --fast``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import StarBlock, run_layers
from .config import ModelConfig, StemConfig


class AnalysisStem(nn.Module):
    """Pixel-unshuffle by 2**level, a 3x3 (or 1x1) convolution, ``blocks`` StarBlocks."""

    def __init__(self, cfg: ModelConfig, stem: StemConfig) -> None:
        super().__init__()
        stem.check(cfg)
        self.config = stem
        self.level = stem.level
        self.patch = 2**stem.level
        width = cfg.ga_dims[stem.level - 1]
        k = stem.kernel
        self.conv = nn.Conv2d(3 * self.patch**2, width, k, padding=k // 2)
        self.blocks = nn.ModuleList(StarBlock(width) for _ in range(stem.blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv.kernel_size == (1, 1):
            # Mixing each patch alone is a convolution of stride ``patch``: the same sums,
            # without unshuffling the picture into channels first. With the kernel
            # channels-last like the picture, oneDNN reorders neither its input nor its
            # output: the stem took 13 instead of 17 ms at 768x512 (AVX2 alone).
            w = self.conv.weight
            kernel = w.view(w.shape[0], -1, self.patch, self.patch)
            kernel = kernel.contiguous(memory_format=torch.channels_last)
            patches = F.conv2d(x, kernel, self.conv.bias, stride=self.patch)
            return run_layers(self.blocks, patches)
        return run_layers([self.conv, *self.blocks], F.pixel_unshuffle(x, self.patch))
