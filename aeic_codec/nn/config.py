"""Model shape as data: every network in aeic is built from one ModelConfig.

The published variants (AEIC-SE, AEIC-ME) and the small default model are
different instances of the same dataclass, so they all run through the same
code. The config is stored as JSON in every weight bundle. This module must not
import torch: ``aeic info`` and bundle listing read configs without it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from aeic_codec.format.container import GRID_CELLS, GRID_STEPS

# Bundles written before the window was a setting attended over this much (a Kodak image).
DEFAULT_ATTENTION_WINDOW = 768 * 512


@dataclass(frozen=True)
class ModelConfig:
    """Widths, depths and tiling of one AEIC model (docs/architecture.md sections 1-6)."""

    name: str = "AEIC-SE"
    # Encoder side: analysis transform g_a, hyperprior and quadtree context model.
    ga_dims: tuple[int, ...] = (32, 64, 128, 192, 256)
    ga_blocks: int = 1
    latent_channels: int = 256  # M, channels of y; z has M // 2
    hyper_blocks: int = 2
    context_dim: int = 512  # C
    context_depth: int = 3
    # Synthesis transform g_s: 1/32 -> 1/8 resolution, output split into l_T and l_res.
    gs_dims: tuple[int, ...] = (1024, 768, 512)
    gs_blocks: int = 2
    denoiser_in: int = 320  # channels of l_T
    decoder_latent: int = 256  # channels of l_res, of eps' output and of D's input
    # One-step denoiser eps (diffusers blocks, no time embedding, no cross-attention).
    unet_widths: tuple[int, ...] = (320, 640, 1280, 1280)
    unet_heads: tuple[int, ...] = (5, 10, 20, 20)
    unet_attention: tuple[bool, ...] = (True, True, True, False)  # per down level
    unet_layers: int = 2  # resnets per down block; up blocks have one more
    unet_mid_attention: bool = True
    unet_norm_groups: int = 32
    # Lite VAE decoder D (diffusers Decoder), widths listed from the image side up.
    vae_widths: tuple[int, ...] = (64, 128, 256, 256)
    vae_layers: int = 2
    vae_norm_groups: int = 32
    vae_mid_attention: bool = True
    # D's family: "sd" (the diffusers Decoder above) or "tiny" (tiny_vae.TinyDecoder, the
    # TAEF2 layout: vae_widths and vae_blocks residual blocks per level listed from the
    # latent side (TAEF2's own are all 64 wide), the first vae_pooled levels with a
    # GroupNorm side branch of vae_norm_groups groups). The three fields are left out of
    # the stored JSON while they hold their defaults, so bundles written before they
    # existed keep their identities.
    vae_kind: str = "sd"
    vae_blocks: tuple[int, ...] = ()
    vae_pooled: int = 0
    # eps also takes Gaussian noise on l_T, scaled per channel (denoiser.py, with_noise).
    latent_noise: bool = False
    # Realism decoders only: above 0, their picture gives only its detail, what a Gaussian
    # blur of this sigma (pixels) removes; the bundle's own decoder gives the rest
    # (realism.py, detail_blend).
    detail_sigma: float = 0.0
    # Tiling in latent (1/8 resolution) units and the colour-fix threshold (its key keeps
    # the old spelling: every bundle stores it, and bundle identities hash it).
    eps_tile: int = 192
    eps_overlap: int = 64
    vae_tile: int = 160  # no longer read: D runs layer by layer (layerwise.py); kept, as hashed
    colorfix_min_pixels: int = 768 * 768
    # Self-attention of eps and D keys on a window of this many image pixels in area
    # (nn/attention.py): a decode-time setting, outside the identity like the colour grid.
    # Best near the crops the networks were trained on: the shipped aeic-small bundles
    # (256 px crops) set 256 * 256, which gives Kodak 0.01-0.04 dB more than attention
    # over the whole 768 x 512 picture, with a sixth of the keys per query.
    attention_window: int = DEFAULT_ATTENTION_WINDOW
    # Colour grid (colour.py): cell size in pixels (0: none) and quantization step of the
    # cell means the encoder sends.
    colour_grid: int = 0
    colour_grid_step: int = 4
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = self.latent_channels
        if m % 8 or m <= 0:
            raise ValueError(f"latent_channels must be a positive multiple of 8, got {m}")
        if len(self.ga_dims) != 5 or self.ga_dims[-1] != m:
            raise ValueError("ga_dims must list 5 stage widths ending in latent_channels")
        if len(self.unet_widths) != len(self.unet_heads) or len(self.unet_widths) != len(
            self.unet_attention
        ):
            raise ValueError(
                "unet_widths, unet_heads and unet_attention must have one entry per level"
            )
        if len(self.vae_widths) != 4:
            raise ValueError("vae_widths needs 4 levels: D upsamples the 1/8 latent by 8")
        if self.vae_kind not in VAE_KINDS:
            raise ValueError(f"vae_kind must be one of {', '.join(VAE_KINDS)}, got {self.vae_kind}")
        if self.vae_kind == "tiny" and (
            len(self.vae_blocks) != 4 or min(self.vae_widths) < 1 or self.vae_pooled > 4
        ):
            raise ValueError(
                "a tiny D needs 4 vae_blocks, positive vae_widths and at most 4 pooled levels"
            )
        (cell_lo, cell_hi), (step_lo, step_hi) = GRID_CELLS, GRID_STEPS  # what files can hold
        if self.colour_grid and not cell_lo <= self.colour_grid <= cell_hi:
            raise ValueError(
                f"colour_grid must be 0 or {cell_lo}..{cell_hi} pixels, got {self.colour_grid}"
            )
        if not step_lo <= self.colour_grid_step <= step_hi:
            raise ValueError(
                f"colour_grid_step must be in {step_lo}..{step_hi}, got {self.colour_grid_step}"
            )
        if self.eps_overlap * 2 >= self.eps_tile:
            raise ValueError("eps_overlap must be less than half of eps_tile")
        if self.attention_window < 1:
            raise ValueError(f"attention_window must be positive, got {self.attention_window}")

    @property
    def hyper_channels(self) -> int:
        return self.latent_channels // 2

    @property
    def gs_out(self) -> int:
        return self.denoiser_in + self.decoder_latent

    def to_json(self) -> str:
        """The configuration a bundle stores; without a grid, as aeic wrote it before grids."""
        return self._json(grid=bool(self.colour_grid))

    def identity_json(self) -> str:
        """The configuration a bundle's identity covers: all but the colour grid and the
        attention window.

        Each file carries its own grid cell and step, so bundles that differ only in the
        grid their encoder sends decode the same files and keep one identity; configs
        without a grid hash as before grids existed (re-imported checkpoints keep theirs).
        The attention window changes how the decoder renders, not what a file says.
        """
        return self._json(grid=False, window=False)

    def _json(self, grid: bool, window: bool = True) -> str:
        data = dataclasses.asdict(self)
        if not grid:
            del data["colour_grid"], data["colour_grid_step"]
        if not window:
            del data["attention_window"]
        for key, default in _LATER_DEFAULTS.items():
            if key in data and data[key] == default:
                del data[key]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown model configuration keys: {', '.join(unknown)}")
        kwargs = {}
        for key, value in data.items():
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class StemConfig:
    """The fast encoder's front (``nn/stem.py``): it stands in for g_a's first ``level``
    levels (each a Down and its StarBlocks) with one ``kernel`` x ``kernel`` convolution
    over pixel patches of 2**level and ``blocks`` StarBlocks at g_a's width of that level.
    A bundle stores it beside its configuration (``stem_config``) when it carries a fast
    encoder. The defaults are the shipped bundles' stem (docs/architecture.md section 3)."""

    level: int = 3
    blocks: int = 1
    kernel: int = 1  # the convolution's size: 3 mixes neighbouring patches, 1 does not

    def check(self, cfg: ModelConfig) -> None:
        """Raise ValueError unless this front fits g_a of ``cfg``."""
        if not 1 <= self.level < len(cfg.ga_dims):
            raise ValueError(f"stem level must be 1..{len(cfg.ga_dims) - 1}, got {self.level}")
        if self.blocks < 0:
            raise ValueError(f"stem blocks must be 0 or more, got {self.blocks}")
        if self.kernel not in (1, 3):
            raise ValueError(f"stem kernel must be 1 or 3, got {self.kernel}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> StemConfig:
        data = json.loads(text)
        if not isinstance(data, dict) or not {"level", "blocks"} <= set(data) <= STEM_KEYS:
            raise ValueError(f"not a stem configuration: {text[:60]}")
        return cls(**{"kernel": LEGACY_STEM_KERNEL, **data})


STEM_KEYS = {"level", "blocks", "kernel"}
# Stems stored before the kernel was a choice (bundles of December 2026) name level and
# blocks alone; theirs is 3x3.
LEGACY_STEM_KERNEL = 3


@dataclass(frozen=True)
class TinyEncoderConfig:
    """The shape of a tiny encoder (``tiny_vae.TinyEncoder``): per level from the image
    side, its width and residual blocks (each level after the first starts with a stride-2
    convolution), the last ``pooled`` levels with the GroupNorm side branch of ``groups``
    groups, and the latent's channels. The default is TAEF2's encoder; a texture file
    stores its encoder's (``encoder_config``)."""

    widths: tuple[int, ...] = (64, 64, 64, 64)
    blocks: tuple[int, ...] = (1, 3, 3, 3)
    pooled: int = 1
    groups: int = 4
    latent: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if len(self.widths) != 4 or len(self.blocks) != 4:
            raise ValueError("a tiny encoder needs 4 levels (its latent is 1/8 of the picture)")
        if min(self.widths) < 1 or min(self.blocks) < 0 or not 0 <= self.pooled <= 4:
            raise ValueError("tiny encoder widths must be positive, blocks 0 or more, pooled 0..4")
        if self.latent < 1 or any(4 * w % self.groups for w in self.widths[4 - self.pooled :]):
            raise ValueError("tiny encoder: positive latent, groups dividing 4x each pooled width")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TinyEncoderConfig:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - names:
            raise ValueError(f"not a tiny encoder configuration: {text[:60]}")
        return cls(**data)


TAEF2_ENCODER = TinyEncoderConfig()

VAE_KINDS = ("sd", "tiny")
# Fields added after bundles were first written: left out of the JSON at these values.
_LATER_DEFAULTS: dict[str, Any] = {
    "vae_kind": "sd",
    "vae_blocks": (),
    "vae_pooled": 0,
    "latent_noise": False,
    "detail_sigma": 0.0,
    "attention_window": DEFAULT_ATTENTION_WINDOW,
}

AEIC_SE = ModelConfig()

AEIC_ME = ModelConfig(
    name="AEIC-ME",
    ga_dims=(64, 128, 192, 256, 320),
    ga_blocks=2,
    latent_channels=320,
    context_dim=960,
    context_depth=4,
    eps_tile=96,
    eps_overlap=32,
)

# The shipped default: AEIC-SE's encoder (g_a, h_a, h_s) unchanged, the context model and
# the whole decoder side narrowed until 768x512 decodes in about 2 s on a 2-core CPU. Its
# depths (gs_blocks, context_depth) were raised from 1 by growing a trained model (see
# configs/small-continue.toml): deeper blocks there cost little time at 1/32-1/8 scale.
AEIC_SMALL = AEIC_SE.replace(
    name="aeic-small",
    context_dim=128,
    context_depth=2,
    gs_dims=(128, 96, 64),
    gs_blocks=4,
    denoiser_in=32,
    decoder_latent=16,
    unet_widths=(48, 96),
    unet_heads=(2, 4),
    unet_attention=(False, True),
    unet_layers=1,
    unet_norm_groups=16,
    vae_widths=(16, 32, 64, 128),
    vae_layers=1,
    vae_norm_groups=8,
    eps_tile=256,
    eps_overlap=32,
    vae_tile=256,
    # Its pictures come out desaturated; six colour statistics (12 bytes) gave +0.57 dB on
    # Kodak for 0.00024 bpp, so they go into every file.
    colorfix_min_pixels=0,
    attention_window=256 * 256,  # its configs train on 256 px crops (the field's comment)
)

# The realism decoder of the shipped models: aeic-small's g_s and eps feeding TAEF2's
# pretrained decoder (tiny_vae.py) through its 32-channel latent. Only its decoder-side
# fields are used; a bundle carries it beside the fidelity decoder (docs/format.md).
AEIC_SMALL_TAEF2 = AEIC_SMALL.replace(
    name="aeic-small-taef2",
    decoder_latent=32,
    vae_kind="tiny",
    vae_widths=(64, 64, 64, 64),
    vae_blocks=(3, 3, 3, 1),
    vae_pooled=1,
    vae_norm_groups=4,
)

# The same with a noise input to eps: the source of grain and fine texture.
AEIC_SMALL_TAEF2_NOISE = AEIC_SMALL_TAEF2.replace(name="aeic-small-taef2-noise", latent_noise=True)

PRESETS: dict[str, ModelConfig] = {
    "AEIC-SE": AEIC_SE,
    "AEIC-ME": AEIC_ME,
    "aeic-small": AEIC_SMALL,
    "aeic-small-taef2": AEIC_SMALL_TAEF2,
    "aeic-small-taef2-noise": AEIC_SMALL_TAEF2_NOISE,
}


def tiny_config(name: str = "tiny", **changes: Any) -> ModelConfig:
    """A few-thousand-parameter model for tests: every block, tiny widths."""
    base = ModelConfig(
        name=name,
        ga_dims=(8, 8, 16, 16, 16),
        ga_blocks=1,
        latent_channels=16,
        hyper_blocks=1,
        context_dim=16,
        context_depth=1,
        gs_dims=(32, 32, 32),
        gs_blocks=1,
        denoiser_in=8,
        decoder_latent=8,
        unet_widths=(32, 32),
        unet_heads=(1, 1),
        unet_attention=(True, False),
        unet_layers=1,
        unet_mid_attention=True,
        unet_norm_groups=8,
        vae_widths=(8, 8, 16, 16),
        vae_layers=1,
        vae_norm_groups=4,
        vae_mid_attention=True,
        eps_tile=16,
        eps_overlap=4,
        vae_tile=16,
    )
    return base.replace(**changes)
