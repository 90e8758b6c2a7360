"""The lite VAE decoder D (docs/architecture.md section 5).

D is AdcSR's 50%-channel SD VAE decoder, i.e. diffusers' ``Decoder`` with smaller
widths, whose conv_in takes the 256-channel l_0 directly. It adds nothing to the
computation (no latent scaling factor, no post-quant conv). It subclasses
``Decoder`` rather than holding one so that its state-dict keys are those of
``halfDecoder.ckpt`` without the ``decoder.`` prefix wherever D is nested.
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .diffusers_blocks import import_module

Decoder = import_module("diffusers.models.autoencoders.vae").Decoder


class LiteVAEDecoder(Decoder):
    """D: l_0 (cfg.decoder_latent channels) -> RGB, upsampled by ``self.scale``."""

    def __init__(self, cfg: ModelConfig) -> None:
        levels = len(cfg.vae_widths)
        super().__init__(
            in_channels=cfg.decoder_latent,
            out_channels=3,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=cfg.vae_widths,
            layers_per_block=cfg.vae_layers,
            norm_num_groups=cfg.vae_norm_groups,
            act_fn="silu",
            mid_block_add_attention=cfg.vae_mid_attention,
        )
        self.scale = 2 ** (levels - 1)

    def forward(self, l_0: torch.Tensor) -> torch.Tensor:
        """Decode l_0 as is into an image in roughly [-1, 1] (the caller clamps)."""
        return super().forward(l_0)


def build_vae(cfg: ModelConfig) -> torch.nn.Module:
    """D of the family ``cfg.vae_kind`` names: the SD-style decoder or the tiny one."""
    if cfg.vae_kind == "tiny":
        from .tiny_vae import TinyDecoder

        return TinyDecoder(cfg)
    return LiteVAEDecoder(cfg)
