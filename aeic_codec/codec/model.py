"""The AEIC model: its networks, its frequency tables and the latent codec it composes.

The entropy coding of the latents is a latent codec (``latent_codecs/``) on one of two
paths that both sides run alike: the integer path (format versions 3 and 4), which gives
the same integers on every machine, or the float32 path of format versions 1 and 2,
which the published checkpoints were trained with; see docs/format.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from aeic_codec.entropy_models.intnet import IntegerEntropy
from aeic_codec.entropy_models.priors import FactorizedPrior, table_scales
from aeic_codec.format.container import QSTEP_ONE
from aeic_codec.format.tables import MAX_BINS, FreqTables
from aeic_codec.latent_codecs.base import Compressed, Decompressed, LatentCodec
from aeic_codec.latent_codecs.float_path import FloatLatentCodec
from aeic_codec.latent_codecs.integer_path import IntegerLatentCodec
from aeic_codec.nn.blocks import Conv3x3
from aeic_codec.nn.config import ModelConfig
from aeic_codec.nn.context import QuadtreeContext
from aeic_codec.nn.transforms import (
    AnalysisTransform,
    HyperAnalysis,
    HyperSynthesis,
    SynthesisTransform,
)

PAD = 64  # the image is padded to a multiple of this (g_a downsamples by 32, h_a by 4 more)


def latent_size(height: int, width: int) -> tuple[int, int]:
    """Size of y for an image of this size (after padding to a multiple of 64)."""
    return -(-height // PAD) * PAD // 32, -(-width // PAD) * PAD // 32


class AEIC(nn.Module):
    """AEIC: a shallow encoder and a generative decoder for ultra-low bitrates.

    The method of "Ultra-Low Bitrate Perceptual Image Compression with Shallow Encoder"
    (Zhang, Liu, Chen, arXiv 2512.12229)::

              encoder side                            decoder side
            x --g_a--> y --h_a--> z --Q--> z_hat ==[z]==> z_hat
                       |                     |              |
                       |                    h_s            h_s
                       |                     v              v
                       +--------------->  4 steps ==[y]==> 4 steps --> y_hat
                                         (context)        (context)      |
                                                                        g_s
                                                                         v
                      x_hat = D(l_0) <-- l_0 = eps(l_T) + l_res <-- l_T, l_res

    Q rounds z around its medians; h_s gives the context ``ctx`` at y's size; each of
    the four quadtree steps k predicts (mean, scale) = context_k(ctx), codes a quarter of
    y as y_hat = round((y - mean) / step) * step + mean under the Gaussian table of its
    scale, and writes it into ctx. ``==[z]==>`` is one stream, ``==[y]==>`` four (one
    per step). eps is the one-step denoiser, D the VAE decoder (``synthesis.py``).

    From y and z to y_hat runs the latent codec (``latent_codec``), on one of two entropy
    paths: the integer one (``IntegerLatentCodec``, the default whenever the bundle has
    it: h_s and the context model as exact integer programs, the same integers on every
    machine, their digest in the file, any step) or the float one (``FloatLatentCodec``:
    the published float32 networks, step 1).

    An instance holds the networks one side needs: an encoder-only one skips g_s and
    the generative decoder (the SE decoder side alone is 913 M parameters), a
    decoder-only one g_a and h_a. Attributes that a side does not need are None.
    """

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
            from aeic_codec.nn.denoiser import Denoiser
            from aeic_codec.nn.vae import build_vae

            self.denoiser = Denoiser(cfg)
            self.vae = build_vae(cfg)
        self.realism: nn.Module | None = None  # an optional RealismDecoder (realism.py)
        self.stem: nn.Module | None = None  # the fast encoder's front (nn/stem.py), optional
        self.z_tables: FreqTables | None = None
        self.y_tables: FreqTables | None = None
        self.integer: IntegerEntropy | None = None  # the integer entropy path, if converted
        self.identity: str | None = None  # set by bundle save/load
        self.integer_identity: str | None = None  # the identity integer-path files carry
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
    def _integer(self) -> IntegerEntropy:
        if self.integer is None:
            raise RuntimeError("the model has no integer entropy path (aeic weights integerize)")
        return self.integer

    @torch.no_grad()
    def analyse(
        self,
        x: torch.Tensor,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        fast: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """y and z (float32, on the CPU) of a padded image, g_a and h_a run on ``device``.

        A ``dtype`` other than float32 runs g_a's convolutions and products in it
        (autocast): y moves by a fraction of a quantisation step, which changes a few
        symbols and no decoder's arithmetic (the entropy path takes y as it comes).
        ``fast`` puts the bundle's stem (``nn/stem.py``) in place of g_a's first levels.
        """
        if self.g_a is None or self.h_a is None:
            raise RuntimeError("this model was loaded without its encoder")
        stem = self.stem
        if fast and stem is None:
            raise ValueError("this bundle has no fast encoder (aeic weights fast-encoder adds one)")
        parts = [self.g_a, self.h_a, *([stem] if fast else [])]
        if device != "cpu":
            for part in parts:
                part.to(device)
        kind = torch.device(device).type
        x = x.to(device)
        with torch.autocast(kind, dtype=dtype, enabled=dtype != torch.float32):
            y = (self.g_a(stem(x), stem.level) if fast else self.g_a(x)).float()
        z = self.h_a(y).float()
        return y.cpu(), z.cpu()

    @torch.no_grad()
    def compress(
        self,
        x: torch.Tensor,
        integer: bool | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        qstep: int = QSTEP_ONE,
    ) -> Compressed:
        """Code a padded image (1, 3, H, W) in [-1, 1] into five streams.

        ``integer`` picks the entropy path (``latent_codec``); ``device`` and ``dtype``
        are where and how g_a runs (``analyse``). The entropy parameters are computed on
        the CPU: the integer path gives the same integers anywhere, and it is cheap next
        to g_a. ``qstep`` is y's quantisation step in 1/256 (integer path only).
        """
        y, z = self.analyse(x, device, dtype)
        return self.latent_codec(integer).compress(y, z, qstep)

    def decompress(
        self,
        streams: Sequence[bytes],
        y_size: tuple[int, int],
        integer: bool | None = None,
        qstep: int = QSTEP_ONE,
        step: Callable[[], None] | None = None,
    ) -> Decompressed:
        """y_hat (and the integer path's digest) from the five streams of ``compress``.

        ``step`` is called after each of the four context steps (for progress).
        """
        return self.latent_codec(integer).decompress(streams, y_size, qstep, step)

    def latent_codec(self, integer: bool | None = None) -> LatentCodec:
        """The entropy coding of this model's latents on one path.

        ``integer`` None takes the integer path whenever the model has it. A rate search
        keeps one codec and compresses the same y and z at several steps.
        """
        z_tables, y_tables = self._tables()
        if self.integer is not None if integer is None else integer:
            return IntegerLatentCodec(self._integer(), z_tables, y_tables)
        return FloatLatentCodec(self.entropy_bottleneck, self.h_s, self.context, z_tables, y_tables)


_TAIL_MULTIPLIER = -float(
    torch.special.ndtri(torch.tensor(1e-9 / 2, dtype=torch.float64))
)  # how many scales out the Gaussian tables reach: Phi^-1(1 - tail/2)


def _double_copy(module: FactorizedPrior) -> FactorizedPrior:
    """A float64 copy of the prior, so that tables do not inherit float32 rounding."""
    copy = FactorizedPrior(module.channels)
    copy.load_state_dict(module.state_dict())
    return copy.double()
