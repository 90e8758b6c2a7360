"""The float entropy path (format versions 1 and 2): the published model's own arithmetic.

z is coded around the factorized prior's medians; h_s and the quadtree context model run
in float32 and give each step's Gaussian means and scales, which pick y's tables. Both
sides must compute the same float32 values, which holds for one build on one kind of
machine: the integer path (``integer_path.py``) is the one that holds everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from aeic_codec.entropy_models.intnet import Start
from aeic_codec.entropy_models.priors import (
    SKIP_SCALE,
    FactorizedPrior,
    gaussian_likelihood,
    scale_indexes,
)
from aeic_codec.format.coder import ESCAPE_LIMIT, StreamDecoder, StreamEncoder
from aeic_codec.format.container import QSTEP_ONE
from aeic_codec.format.tables import FreqTables
from aeic_codec.nn.context import QuadtreeContext
from aeic_codec.nn.transforms import HyperSynthesis

from .base import Compressed, Decompressed, LatentCodec, LatentError


class FloatLatentCodec(LatentCodec):
    """z under the factorized prior, y under the Gaussians of h_s and the context model.

    It holds the model's own networks (not copies): they are the model's parameters.
    """

    integer = False

    def __init__(
        self,
        prior: FactorizedPrior,
        h_s: HyperSynthesis,
        context: QuadtreeContext,
        z_tables: FreqTables,
        y_tables: FreqTables,
    ) -> None:
        super().__init__(z_tables, y_tables, prior.channels)
        self.prior = prior
        self.h_s = h_s
        self.context = context

    @torch.no_grad()
    def compress(
        self,
        y: torch.Tensor,
        z: torch.Tensor,
        qstep: int = QSTEP_ONE,
        start: Start | None = None,
    ) -> Compressed:
        if qstep != QSTEP_ONE:
            raise ValueError("another quantisation step needs the integer entropy path")
        med = self.prior.medians.detach().view(1, -1, 1, 1)
        z_sym = torch.round(z - med).clamp(-ESCAPE_LIMIT, ESCAPE_LIMIT)
        z_hat = z_sym + med
        streams = [self.encode_z(z_sym.long())[0]]
        bits = [float(-torch.log2(self.prior.likelihood(z_hat)).sum())]

        def code_step(k: int, mask: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor):
            mean, scale = _sanitize(mean, scale)
            coded = mask & (scale >= SKIP_SCALE)
            sym = torch.round(y - mean).clamp(-ESCAPE_LIMIT, ESCAPE_LIMIT)
            sym = torch.where(coded, sym, torch.zeros_like(sym))
            enc = StreamEncoder()
            indexes = scale_indexes(scale[coded]).numpy()
            enc.encode(sym[coded].long().numpy(), indexes, self.y_tables)
            streams.append(enc.finish())
            y_hat = sym + mean
            p = gaussian_likelihood(y_hat[mask], mean[mask], scale[mask])
            bits.append(float(-torch.log2(p).sum()))
            return y_hat

        y_hat = self.context.run(self.h_s(z_hat, y.shape[-2:]), code_step)
        return Compressed(streams, y_hat, bits)

    @torch.no_grad()
    def decompress(
        self,
        streams: Sequence[bytes],
        y_size: tuple[int, int],
        qstep: int = QSTEP_ONE,
        step: Callable[[], None] | None = None,
    ) -> Decompressed:
        """See LatentCodec; ``qstep`` is always QSTEP_ONE here (container.py checks)."""
        med = self.prior.medians.detach().view(1, -1, 1, 1)
        z_hat = torch.from_numpy(self.decode_z(streams[0], y_size)).float() + med

        def code_step(k: int, mask: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor):
            mean, scale = _sanitize(mean, scale)
            coded = mask & (scale >= SKIP_SCALE)
            values = StreamDecoder(streams[k + 1]).decode(
                scale_indexes(scale[coded]).numpy(), self.y_tables
            )
            sym = torch.zeros_like(mean)
            sym[coded] = torch.from_numpy(values).to(sym.dtype)
            if step is not None:
                step()
            return sym + mean

        y_hat = self.context.run(self.h_s(z_hat, y_size), code_step)
        if not torch.isfinite(y_hat).all():
            raise LatentError("the streams decode to non-finite latents (corrupt file?)")
        return Decompressed(y_hat, None)


def _sanitize(mean: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make garbage predictions (from corrupt z) harmless, identically on both sides."""
    mean = torch.nan_to_num(mean, nan=0.0, posinf=0.0, neginf=0.0)
    scale = torch.nan_to_num(scale, nan=0.0, posinf=0.0, neginf=0.0)
    return mean, scale
