"""The realism decoder: a second generative decoder that a bundle may carry.

A bundle's own decoder (g_s, eps, D) is trained for fidelity. The realism decoder takes
the same y_hat and renders it through a pretrained latent decoder (TAEF2's, tiny_vae.py)
trained with perceptual and adversarial terms, so that the same file decodes either to
the faithful but smooth picture or to one with drawn texture (``aeic decode --realism``).
Its configuration is a ModelConfig of its own (only the decoder-side fields matter), and
its tensors sit under ``realism.`` in the bundle, outside the identity: adding one to a
bundle leaves every file made with that bundle decodable.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .denoiser import Denoiser
from .transforms import SynthesisTransform
from .vae import build_vae

PREFIX = "realism."
# What a realism decoder's own configuration decides; the rest comes from its bundle.
DECODER_FIELDS = (
    "gs_dims",
    "gs_blocks",
    "denoiser_in",
    "decoder_latent",
    "unet_widths",
    "unet_heads",
    "unet_attention",
    "unet_layers",
    "unet_mid_attention",
    "unet_norm_groups",
    "vae_widths",
    "vae_layers",
    "vae_norm_groups",
    "vae_mid_attention",
    "vae_kind",
    "vae_blocks",
    "vae_pooled",
    "latent_noise",
    "eps_tile",
    "eps_overlap",
    "vae_tile",
)


def realism_config(base: ModelConfig, preset: ModelConfig) -> ModelConfig:
    """The configuration of a realism decoder of ``preset``'s shape for ``base``'s y_hat."""
    return base.replace(name=preset.name, **{f: getattr(preset, f) for f in DECODER_FIELDS})


class RealismDecoder(nn.Module):
    """g_s, eps and D of one realism decoder; the same parts as AEIC's own decoder side."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.g_s = SynthesisTransform(cfg)
        self.denoiser = Denoiser(cfg)
        self.vae = build_vae(cfg)

    def forward(self, y_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Untiled decode (training): the image in [-1, 1] and the latent D was given."""
        l_t, l_res = self.g_s(y_hat)
        l_0 = self.denoiser(self.denoiser.with_noise(l_t)) + l_res
        return self.vae(l_0), l_0
