"""The AEIC model: transforms, priors and the latent-level compress/decompress.

``AEIC`` holds the networks one side needs: an encoder-only instance skips g_s and the
generative decoder (the SE decoder side alone is 913 M parameters); a decoder-only one
skips g_a and h_a. The entropy parameters (h_s and the context steps) come from one of
two paths that both sides run alike: the integer path (``intnet.py``, format version 3),
which gives the same integers on every machine, or the float32 path of format versions 1
and 2, which the published checkpoints were trained with; see docs/format.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from aeic_codec.entropy_models.intnet import QSTEP_ONE, IntegerEntropy, Start, step_values
from aeic_codec.entropy_models.priors import (
    SKIP_SCALE,
    FactorizedPrior,
    gaussian_likelihood,
    scale_indexes,
    table_scales,
)
from aeic_codec.format.coder import ESCAPE_LIMIT, StreamDecoder, StreamEncoder
from aeic_codec.format.tables import MAX_BINS, FreqTables
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


class LatentError(ValueError):
    """Streams that decode to something the model cannot have produced."""


@dataclass
class Compressed:
    """What the latent coder produced for one image."""

    streams: list[bytes]
    y_hat: torch.Tensor
    # Information estimate per stream (z, steps 0-3): -log2 of the model's likelihoods on
    # the float path, of the table frequencies on the integer path (cheap: no tanh/erfc).
    stream_bits: list[float]
    digest: bytes | None = None  # entropy digest of the integer path (None: float path)
    start: Start | None = None  # the integer path's h_s and step 0, reusable at another qstep

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
            from aeic_codec.nn.denoiser import Denoiser
            from aeic_codec.nn.vae import build_vae

            self.denoiser = Denoiser(cfg)
            self.vae = build_vae(cfg)
        self.realism: nn.Module | None = None  # an optional RealismDecoder (realism.py)
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
        self, x: torch.Tensor, device: str = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """y and z (float32, on the CPU) of a padded image, g_a and h_a run on ``device``.

        A ``dtype`` other than float32 runs g_a's convolutions and products in it
        (autocast): y moves by a fraction of a quantisation step, which changes a few
        symbols and no decoder's arithmetic (the entropy path takes y as it comes).
        """
        if self.g_a is None or self.h_a is None:
            raise RuntimeError("this model was loaded without its encoder")
        if device != "cpu":
            self.g_a.to(device)
            self.h_a.to(device)
        kind = torch.device(device).type
        with torch.autocast(kind, dtype=dtype, enabled=dtype != torch.float32):
            y = self.g_a(x.to(device)).float()
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

        ``integer`` picks the entropy path (default: the integer one when the model has
        it); ``device`` and ``dtype`` are where and how g_a runs (``analyse``). The
        entropy parameters are computed on the CPU: the integer path gives the same
        integers anywhere, and it is cheap next to g_a. ``qstep`` is y's quantisation
        step in 1/256 (integer path only; see ``code_latents``).
        """
        y, z = self.analyse(x, device, dtype)
        return self.code_latents(y, z, integer, qstep)

    @torch.no_grad()
    def code_latents(
        self,
        y: torch.Tensor,
        z: torch.Tensor,
        integer: bool | None = None,
        qstep: int = QSTEP_ONE,
        start: Start | None = None,
    ) -> Compressed:
        """The entropy coding of ``analyse``'s y and z: what a rate search repeats.

        A ``qstep`` other than QSTEP_ONE (256) quantises y with step qstep / 256 instead of
        the trained 1: coarser for fewer bytes, finer for more (format version 4).
        ``start`` is an earlier result's ``start`` for the same z (it does not depend on
        the step).
        """
        z_tables, y_tables = self._tables()
        if self.integer is not None if integer is None else integer:
            return self._compress_integer(y, z, qstep, start)
        if qstep != QSTEP_ONE:
            raise ValueError("another quantisation step needs the integer entropy path")
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

    def _compress_integer(
        self, y: torch.Tensor, z: torch.Tensor, qstep: int, start: Start | None
    ) -> Compressed:
        z_tables, y_tables = self._tables()
        ie = self._integer()
        med = ie.median_real().view(1, -1, 1, 1)
        z_sym = torch.round(z.double() - med).clamp(-ESCAPE_LIMIT, ESCAPE_LIMIT).long()
        enc = StreamEncoder()
        enc.encode(z_sym.numpy().ravel(), _z_ids(z_sym.shape), z_tables)
        streams, bits = [enc.finish()], [enc.bits]
        y64 = y.double()
        step = qstep / QSTEP_ONE

        def code_step(k: int, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            coded, tables = ie.coded_and_tables(scale, qstep)
            sym = torch.round((step_values(y64, k) - ie.mean_real(mean)) / step)
            sym = torch.where(coded, sym.clamp(-ESCAPE_LIMIT, ESCAPE_LIMIT), 0.0).long()
            enc = StreamEncoder()
            enc.encode(sym[coded].numpy(), tables.numpy(), y_tables)
            streams.append(enc.finish())
            bits.append(enc.bits)
            return sym

        start = start if start is not None else ie.start(z_sym, y.shape[-2:])
        y_hat, digest = ie.run(z_sym, y.shape[-2:], code_step, qstep, start)
        return Compressed(streams, y_hat, bits, digest, start)

    @torch.no_grad()
    def decompress(
        self,
        streams: list[bytes] | tuple[bytes, ...],
        y_size: tuple[int, int],
        step: Callable[[], None] | None = None,
    ):
        """Rebuild y_hat (1, M, h, w) from the five streams of the float path.

        ``step`` is called after each of the four context steps (for progress).
        """
        z_tables, y_tables = self._tables()
        zh, zw = hyper_size(y_size)
        c = self.cfg.hyper_channels
        z_sym = StreamDecoder(streams[0]).decode(_z_ids((1, c, zh, zw)), z_tables)
        eb = self.entropy_bottleneck
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
            if step is not None:
                step()
            return sym + mean

        base = self.h_s(z_hat, y_size)
        y_hat = self.context.run(base, code_step)
        if not torch.isfinite(y_hat).all():
            raise LatentError("the streams decode to non-finite latents (corrupt file?)")
        return y_hat

    @torch.no_grad()
    def decompress_integer(
        self,
        streams: list[bytes] | tuple[bytes, ...],
        y_size: tuple[int, int],
        qstep: int = QSTEP_ONE,
        step: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, bytes]:
        """y_hat and the entropy digest from the five streams of the integer path.

        ``step`` is called after each of the four context steps (for progress).
        """
        z_tables, y_tables = self._tables()
        ie = self._integer()
        zh, zw = hyper_size(y_size)
        c = self.cfg.hyper_channels
        z_sym = StreamDecoder(streams[0]).decode(_z_ids((1, c, zh, zw)), z_tables)
        z = torch.from_numpy(z_sym).view(1, c, zh, zw)

        def code_step(k: int, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            coded, tables = ie.coded_and_tables(scale, qstep)
            values = StreamDecoder(streams[k + 1]).decode(tables.numpy(), y_tables)
            sym = torch.zeros(mean.shape, dtype=torch.int64)
            sym[coded] = torch.from_numpy(values)
            if step is not None:
                step()
            return sym

        return ie.run(z, y_size, code_step, qstep)


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


def _z_ids(shape: tuple[int, ...] | torch.Size) -> np.ndarray:
    """Table id of every z symbol in C order: its channel."""
    _, c, h, w = shape
    return np.repeat(np.arange(c), h * w)


def _encode_z(z_sym: torch.Tensor, tables: FreqTables) -> bytes:
    enc = StreamEncoder()
    enc.encode(z_sym.long().numpy().ravel(), _z_ids(z_sym.shape), tables)
    return enc.finish()
