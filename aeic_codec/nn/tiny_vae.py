"""The tiny autoencoder family (TAESD/TAEF2): a pretrained latent decoder and its encoder.

The realism decoder of the shipped models renders its picture with the decoder of TAEF2
(a 1.3 M parameter distilled stand-in for the FLUX.2 image decoder, MIT licence, see
THIRD_PARTY.md), which draws plausible fine texture from a 32-channel latent at 1/8 size.
Training also uses TAEF2's encoder: its latents are the target g_s learns to produce, and
its features drive the perceptual loss. Both are built from diffusers'
``AutoencoderTinyBlock``; TAEF2's blocks nearest the latent add a pooled side branch
(1x1 conv to 4x the width, GroupNorm, ReLU, 1x1 conv back) that diffusers lacks.

Both networks are plain ``nn.Sequential`` subclasses laid out as in TAEF2's files, so
their tensor names are the published ones (``"3.conv.0.weight"``, ``"3.pool.1.bias"``)
and the safetensors load without renaming. This module imports diffusers' block module
only, not its model registry (``diffusers_blocks``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import TAEF2_ENCODER, ModelConfig, TinyEncoderConfig
from .diffusers_blocks import import_module

AutoencoderTinyBlock = import_module("diffusers.models.unets.unet_2d_blocks").AutoencoderTinyBlock

LATENT_RANGE = 3.0  # TAEF2 squashes its decoder input with 3 * tanh(x / 3)


class SoftClamp(nn.Module):
    """x -> r * tanh(x / r): the decoder never sees latents far outside the trained range."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / LATENT_RANGE) * LATENT_RANGE


class PooledTinyBlock(AutoencoderTinyBlock):
    """diffusers' tiny residual block with TAEF2's pooled side branch added to its input."""

    def __init__(self, width: int, groups: int) -> None:
        super().__init__(width, width, "relu")
        self.pool = nn.Sequential(
            nn.Conv2d(width, 4 * width, 1, bias=False),
            nn.GroupNorm(groups, 4 * width),
            nn.ReLU(),
            nn.Conv2d(4 * width, width, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + self.pool(x))


def _blocks(width: int, count: int, pooled: bool, groups: int) -> list[nn.Module]:
    if pooled:
        return [PooledTinyBlock(width, groups) for _ in range(count)]
    return [AutoencoderTinyBlock(width, width, "relu") for _ in range(count)]


class TinyDecoder(nn.Sequential):
    """D of kind "tiny": latent (cfg.decoder_latent channels, 1/8 size) -> RGB in [-1, 1].

    ``cfg.vae_widths`` and ``cfg.vae_blocks`` list each level's width and residual blocks
    from the latent side (TAEF2: 64 wide throughout), the first ``cfg.vae_pooled`` levels
    with the pooled branch; each level but the last ends in a nearest 2x upsampling and a
    bias-free 3x3 convolution to the next level's width. The network itself outputs [0, 1].
    """

    def __init__(self, cfg: ModelConfig) -> None:
        widths = cfg.vae_widths
        layers: list[nn.Module] = [
            SoftClamp(),
            nn.Conv2d(cfg.decoder_latent, widths[0], 3, padding=1),
            nn.ReLU(),
        ]
        last = len(cfg.vae_blocks) - 1
        for level, count in enumerate(cfg.vae_blocks):
            layers += _blocks(widths[level], count, level < cfg.vae_pooled, cfg.vae_norm_groups)
            if level < last:
                layers += [
                    nn.Upsample(scale_factor=2),
                    nn.Conv2d(widths[level], widths[level + 1], 3, padding=1, bias=False),
                ]
        layers.append(nn.Conv2d(widths[last], 3, 3, padding=1))
        super().__init__(*layers)
        self.scale = 2**last

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return super().forward(latent) * 2 - 1


class TinyEncoder(nn.Sequential):
    """A tiny encoder: RGB in [0, 1] -> latent at 1/8 size; by default TAEF2's (shape:
    ``TinyEncoderConfig``). Training takes TAEF2's features for the perceptual loss;
    texture synthesis maps the fidelity picture to the latent its book is keyed in.

    ``features`` returns the output of each of its four levels as well.
    """

    def __init__(self, cfg: TinyEncoderConfig = TAEF2_ENCODER) -> None:
        layers: list[nn.Module] = []
        self.taps: list[int] = []
        self.config = cfg
        for level, (width, count) in enumerate(zip(cfg.widths, cfg.blocks, strict=True)):
            if level == 0:
                layers.append(nn.Conv2d(3, width, 3, padding=1))
            else:
                previous = cfg.widths[level - 1]
                layers.append(nn.Conv2d(previous, width, 3, stride=2, padding=1, bias=False))
            pooled_level = level >= len(cfg.widths) - cfg.pooled
            layers += _blocks(width, count, pooled_level, cfg.groups)
            self.taps.append(len(layers) - 1)
        layers.append(nn.Conv2d(cfg.widths[-1], cfg.latent, 3, padding=1))
        super().__init__(*layers)

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The four level outputs and the latent of an image in [0, 1]."""
        taps = []
        for i, layer in enumerate(self):
            x = layer(x)
            if i in self.taps:
                taps.append(x)
        return taps, x


def read_taef2(path: str | Path) -> dict[str, torch.Tensor]:
    """A TAEF2 safetensors file (encoder or decoder) as float32 tensors."""
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(path)).items()}
