"""The one-step unconditional denoiser eps (docs/architecture.md section 5).

eps is SD-Turbo's UNet with the time embedding, the resnets' time projections and
the transformers' cross-attention removed. diffusers' own blocks built with
``temb_channels=None`` and ``cross_attention_dim=None`` are exactly that network, so
this module only wires them together; attribute names follow diffusers'
``UNet2DConditionModel`` so that SD-Turbo's UNet weights load without renaming. The
blocks are imported without the rest of diffusers (``diffusers_blocks``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .diffusers_blocks import import_module

_blocks = import_module("diffusers.models.unets.unet_2d_blocks")
CrossAttnDownBlock2D = _blocks.CrossAttnDownBlock2D
CrossAttnUpBlock2D = _blocks.CrossAttnUpBlock2D
DownBlock2D = _blocks.DownBlock2D
UNetMidBlock2D = _blocks.UNetMidBlock2D
UNetMidBlock2DCrossAttn = _blocks.UNetMidBlock2DCrossAttn
UpBlock2D = _blocks.UpBlock2D

NOISE_SEED = 0  # of the noise a decoder with ``latent_noise`` adds to l_T
NORM_EPS = 1e-5  # SD 2.1's norm_eps; the transformers' own GroupNorm keeps diffusers' 1e-6


class Denoiser(nn.Module):
    """eps: l_T (cfg.denoiser_in channels) -> cfg.decoder_latent channels, same size.

    Without cross-attention the transformer blocks do self-attention and a
    feed-forward only; without a time embedding the resnets are plain. With
    ``cfg.unet_mid_attention`` False the mid block is two plain resnets
    (``UNetMidBlock2D`` without attention), which keeps the mid block's resnet keys
    identical to the attention variant.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths = cfg.unet_widths
        groups = cfg.unet_norm_groups
        levels = len(widths)
        self.multiple = 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(cfg.denoiser_in, widths[0], 3, padding=1)

        self.down_blocks = nn.ModuleList()
        for level, width in enumerate(widths):
            common = {
                "in_channels": widths[max(level - 1, 0)],
                "out_channels": width,
                "temb_channels": None,
                "num_layers": cfg.unet_layers,
                "resnet_eps": NORM_EPS,
                "resnet_act_fn": "silu",
                "resnet_groups": groups,
                "add_downsample": level < levels - 1,
                "downsample_padding": 1,
            }
            if cfg.unet_attention[level]:
                block = CrossAttnDownBlock2D(
                    **common,
                    num_attention_heads=cfg.unet_heads[level],
                    cross_attention_dim=None,
                    use_linear_projection=True,
                )
            else:
                block = DownBlock2D(**common)
            self.down_blocks.append(block)

        if cfg.unet_mid_attention:
            self.mid_block = UNetMidBlock2DCrossAttn(
                in_channels=widths[-1],
                temb_channels=None,
                resnet_eps=NORM_EPS,
                resnet_act_fn="silu",
                resnet_groups=groups,
                num_attention_heads=cfg.unet_heads[-1],
                cross_attention_dim=None,
                use_linear_projection=True,
            )
        else:
            self.mid_block = UNetMidBlock2D(
                in_channels=widths[-1],
                temb_channels=None,
                resnet_eps=NORM_EPS,
                resnet_act_fn="silu",
                resnet_groups=groups,
                add_attention=False,
            )

        self.up_blocks = nn.ModuleList()
        prev_out = widths[-1]
        for i in range(levels):
            level = levels - 1 - i
            common = {
                "in_channels": widths[max(level - 1, 0)],
                "out_channels": widths[level],
                "prev_output_channel": prev_out,
                "temb_channels": None,
                "resolution_idx": i,
                "num_layers": cfg.unet_layers + 1,
                "resnet_eps": NORM_EPS,
                "resnet_act_fn": "silu",
                "resnet_groups": groups,
                "add_upsample": i < levels - 1,
            }
            if cfg.unet_attention[level]:
                block = CrossAttnUpBlock2D(
                    **common,
                    num_attention_heads=cfg.unet_heads[level],
                    cross_attention_dim=None,
                    use_linear_projection=True,
                )
            else:
                block = UpBlock2D(**common)
            self.up_blocks.append(block)
            prev_out = widths[level]

        self.conv_norm_out = nn.GroupNorm(groups, widths[0], eps=NORM_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[0], cfg.decoder_latent, 3, padding=1)
        # Zero at first: a decoder trained without noise continues exactly as it was.
        self.noise_scale = nn.Parameter(torch.zeros(cfg.denoiser_in)) if cfg.latent_noise else None

    def with_noise(self, l_t: torch.Tensor, fresh: bool = False) -> torch.Tensor:
        """l_T plus Gaussian noise scaled per channel (unchanged without ``latent_noise``).

        A deterministic decoder can only draw detail it derives from y_hat, which at these
        rates comes out smooth and stroke-like; noise gives eps something to shape into
        grain and texture, as StyleGAN's noise inputs do. Training asks for ``fresh`` noise
        (torch's global generator) each step. Decoding draws it for the whole of l_T, before
        any tiling, from torch's CPU generator seeded with NOISE_SEED (float32 normal values
        in l_T's shape), so a file always decodes to the same picture and tiles agree.
        """
        if self.noise_scale is None:
            return l_t
        if fresh:
            noise = torch.randn_like(l_t)
        else:
            generator = torch.Generator().manual_seed(NOISE_SEED)
            noise = torch.randn(l_t.shape, generator=generator)
        noise = noise.to(device=l_t.device, dtype=l_t.dtype)
        return l_t + self.noise_scale.to(l_t.dtype).view(1, -1, 1, 1) * noise

    def forward(self, l_t: torch.Tensor) -> torch.Tensor:
        """Predict the clean-latent residual from l_T; no timestep and no prompt.

        Sizes that are not a multiple of 2**(levels-1) are padded on the bottom and
        right by edge replication (valid for any size, even 1 pixel, unlike reflect)
        and the output is cropped back, so every down/up level sees even sizes.
        """
        height, width = l_t.shape[-2:]
        pad_h = -height % self.multiple
        pad_w = -width % self.multiple
        x = F.pad(l_t, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else l_t

        x = self.conv_in(x)
        skips: list[torch.Tensor] = [x]
        for block in self.down_blocks:
            x, states = block(x)
            skips.extend(states)
        x = self.mid_block(x)
        for block in self.up_blocks:
            count = len(block.resnets)
            x = block(x, tuple(skips[-count:]))
            del skips[-count:]
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return x[..., :height, :width]
