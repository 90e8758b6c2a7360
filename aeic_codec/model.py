"""The AEIC model: transforms, priors and the latent-level compress/decompress.

``AEIC`` holds the networks one side needs: an encoder-only instance skips g_s and the
generative decoder (the SE decoder side alone is 913 M parameters); a decoder-only one
skips g_a and h_a. Entropy parameters (h_s and the context steps) always run in float32
on both sides so that they produce identical bits; see docs/format.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .blocks import Conv3x3
from .coder import ESCAPE_LIMIT, StreamDecoder, StreamEncoder
from .config import ModelConfig
from .context import QuadtreeContext
from .entropy_models import (
    SKIP_SCALE,
    FactorizedPrior,
    gaussian_likelihood,
    scale_indexes,
    table_scales,
)
from .tables import MAX_BINS, FreqTables
from .transforms import AnalysisTransform, HyperAnalysis, HyperSynthesis, SynthesisTransform

PAD = 64  # the image is padded to a multiple of this (g_a downsamples by 32, h_a by 4 more)


class LatentError(ValueError):
    """Streams that decode to something the model cannot have produced."""


@dataclass
class Compressed:
    """What the latent coder produced for one image."""

    streams: list[bytes]
    y_hat: torch.Tensor
    stream_bits: list[float]  # the model's information estimate per stream (z, steps 0-3)

    @property
    def estimated_bits(self) -> float:
        return sum(self.stream_bits)


def latent_size(height: int, width: int) -> tuple[int, int]:
    """Size of y for an image of this size (after padding to a multiple of 64)."""
    return -(-height // PAD) * PAD // 32, -(-width // PAD) * PAD // 32


def hyper_size(y_size: tuple[int, int]) -> tuple[int, int]:
    return -(-y_size[0] // 4), -(-y_size[1] // 4)


class AEIC(nn.Module):
    """One AEIC model. Attributes that a side does not need are None."""

    def __init__(self, cfg: ModelConfig, encoder: bool = True, decoder: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.g_a = AnalysisTransform(cfg) if encoder else None
        self.h_a = HyperAnalysis(cfg) if encoder else None
        if self.g_a is not None and self.h_a is not None:
            # Only the encoder runs these: their rounding need not match the decoder's.
            for module in [*self.g_a.modules(), *self.h_a.modules()]:
                if isinstance(module, Conv3x3):
                    module.shared = False
        self.h_s = HyperSynthesis(cfg)
        self.context = QuadtreeContext(cfg)
        self.entropy_bottleneck = FactorizedPrior(cfg.hyper_channels)
        self.g_s = SynthesisTransform(cfg) if decoder else None
        self.denoiser: nn.Module | None = None
        self.vae: nn.Module | None = None
        if decoder:
            from .denoiser import Denoiser
            from .vae import build_vae

            self.denoiser = Denoiser(cfg)
            self.vae = build_vae(cfg)
        self.realism: nn.Module | None = None  # an optional RealismDecoder (realism.py)
        self.z_tables: FreqTables | None = None
        self.y_tables: FreqTables | None = None
        self.identity: str | None = None  # set by bundle save/load
        self.lambda_: float | None = None
        self.provenance: dict[str, object] = {}

    # ------------------------------------------------------------------ tables
    @torch.no_grad()
    def build_tables(self) -> tuple[FreqTables, FreqTables]:
        """Integer tables for z (one per channel) and y (one per table scale)."""
        eb = self.entropy_bottleneck
        q = eb.quantiles.detach().double()[:, 0, :]
        med = q[:, 1]
        lo = torch.ceil(med - q[:, 0]).clamp(0, MAX_BINS // 2 - 1).long()
        hi = torch.ceil(q[:, 2] - med).clamp(0, MAX_BINS // 2 - 1).long()
        pmfs, lows = [], []
        eb64 = _double_copy(eb)
        for c in range(eb.channels):
            k = torch.arange(-int(lo[c]), int(hi[c]) + 1, dtype=torch.float64)
            x = (med[c] + k).view(1, 1, -1).expand(eb.channels, 1, -1)
            lower = eb64.logits_cumulative(x - 0.5)[c, 0]
            upper = eb64.logits_cumulative(x + 0.5)[c, 0]
            pmf = torch.sigmoid(upper) - torch.sigmoid(lower)
            tail = torch.sigmoid(lower[0]) + torch.sigmoid(-upper[-1])
            pmfs.append(torch.cat((pmf, tail.view(1))).numpy())
            lows.append(-int(lo[c]))
        self.z_tables = FreqTables.from_pmfs(pmfs, lows)

        pmfs, lows = [], []
        for s in table_scales():
            n = math.ceil(s * _TAIL_MULTIPLIER)
            k = torch.arange(-n, n + 1, dtype=torch.float64)
            upper = 0.5 * torch.erfc(-(k + 0.5) / (s * math.sqrt(2)))
            lower = 0.5 * torch.erfc(-(k - 0.5) / (s * math.sqrt(2)))
            tail = 2 * 0.5 * torch.erfc(torch.tensor((n + 0.5) / (s * math.sqrt(2))))
            pmfs.append(torch.cat((upper - lower, tail.view(1))).numpy())
            lows.append(-n)
        self.y_tables = FreqTables.from_pmfs(pmfs, lows)
        return self.z_tables, self.y_tables

    def _tables(self) -> tuple[FreqTables, FreqTables]:
        if self.z_tables is None or self.y_tables is None:
            raise RuntimeError("the model has no frequency tables: call build_tables()")
        return self.z_tables, self.y_tables

    # ------------------------------------------------------------- coding
    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> Compressed:
        """Code a padded image (1, 3, H, W) in [-1, 1] into five streams."""
        if self.g_a is None or self.h_a is None:
            raise RuntimeError("this model was loaded without its encoder")
        z_tables, y_tables = self._tables()
        y = self.g_a(x).float()
        z = self.h_a(y).float()
        eb = self.entropy_bottleneck
        med = eb.medians.detach().view(1, -1, 1, 1)
        z_sym = torch.round(z - med).clamp(-ESCAPE_LIMIT, ESCAPE_LIMIT)
        z_hat = z_sym + med
        streams = [_encode_z(z_sym, z_tables)]
        bits = [float(-torch.log2(eb.likelihood(z_hat)).sum())]

        def code_step(k: int, mask: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor):
            mean, scale = _sanitize(mean, scale)
            coded = mask & (scale >= SKIP_SCALE)
            sym = torch.round(y - mean).clamp(-ESCAPE_LIMIT, ESCAPE_LIMIT)
            sym = torch.where(coded, sym, torch.zeros_like(sym))
            enc = StreamEncoder()
            enc.encode(sym[coded].long().numpy(), scale_indexes(scale[coded]).numpy(), y_tables)
            streams.append(enc.finish())
            y_hat = sym + mean
            p = gaussian_likelihood(y_hat[mask], mean[mask], scale[mask])
            bits.append(float(-torch.log2(p).sum()))
            return y_hat

        base = self.h_s(z_hat, y.shape[-2:])
        y_hat = self.context.run(base, code_step)
        return Compressed(streams, y_hat, bits)

    @torch.no_grad()
    def decompress(self, streams: list[bytes] | tuple[bytes, ...], y_size: tuple[int, int]):
        """Rebuild y_hat (1, M, h, w) from the five streams."""
        z_tables, y_tables = self._tables()
        eb = self.entropy_bottleneck
        zh, zw = hyper_size(y_size)
        c = self.cfg.hyper_channels
        ids = np.repeat(np.arange(c), zh * zw)
        z_sym = StreamDecoder(streams[0]).decode(ids, z_tables)
        med = eb.medians.detach().view(1, -1, 1, 1)
        z_hat = torch.from_numpy(z_sym).float().view(1, c, zh, zw) + med

        def code_step(k: int, mask: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor):
            mean, scale = _sanitize(mean, scale)
            coded = mask & (scale >= SKIP_SCALE)
            values = StreamDecoder(streams[k + 1]).decode(
                scale_indexes(scale[coded]).numpy(), y_tables
            )
            sym = torch.zeros_like(mean)
            sym[coded] = torch.from_numpy(values).to(sym.dtype)
            return sym + mean

        base = self.h_s(z_hat, y_size)
        y_hat = self.context.run(base, code_step)
        if not torch.isfinite(y_hat).all():
            raise LatentError("the streams decode to non-finite latents (corrupt file?)")
        return y_hat


_TAIL_MULTIPLIER = -float(
    torch.special.ndtri(torch.tensor(1e-9 / 2, dtype=torch.float64))
)  # how many scales out the Gaussian tables reach: Phi^-1(1 - tail/2)


def _double_copy(module: FactorizedPrior) -> FactorizedPrior:
    """A float64 copy of the prior, so that tables do not inherit float32 rounding."""
    copy = FactorizedPrior(module.channels)
    copy.load_state_dict(module.state_dict())
    return copy.double()


def _sanitize(mean: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make garbage predictions (from corrupt z) harmless, identically on both sides."""
    mean = torch.nan_to_num(mean, nan=0.0, posinf=0.0, neginf=0.0)
    scale = torch.nan_to_num(scale, nan=0.0, posinf=0.0, neginf=0.0)
    return mean, scale


def _encode_z(z_sym: torch.Tensor, tables: FreqTables) -> bytes:
    _, c, h, w = z_sym.shape
    enc = StreamEncoder()
    enc.encode(z_sym.long().numpy().ravel(), np.repeat(np.arange(c), h * w), tables)
    return enc.finish()
