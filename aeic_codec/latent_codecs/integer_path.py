"""The integer entropy path (format versions 3 and 4): the same integers on every machine.

z is coded around the integer medians; the entropy parameters of each quadtree step come
from ``intnet.IntegerEntropy`` (h_s and the context model in exact integer arithmetic),
whose integer scales pick y's tables and whose digest the file carries, so a decoder
whose parameters differ knows it before decoding garbage. y may be quantised with another
step than the trained one (qstep / 256, version 4), which a rate search varies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from aeic_codec.entropy_models.intnet import IntegerEntropy, Start, step_values
from aeic_codec.format.coder import ESCAPE_LIMIT, StreamDecoder, StreamEncoder
from aeic_codec.format.container import QSTEP_ONE
from aeic_codec.format.tables import FreqTables

from .base import Compressed, Decompressed, LatentCodec


class IntegerLatentCodec(LatentCodec):
    """z around the integer medians, y under the tables of the integer entropy model."""

    integer = True

    def __init__(self, model: IntegerEntropy, z_tables: FreqTables, y_tables: FreqTables) -> None:
        super().__init__(z_tables, y_tables, model.cfg.hyper_channels)
        self.model = model

    @torch.no_grad()
    def compress(
        self,
        y: torch.Tensor,
        z: torch.Tensor,
        qstep: int = QSTEP_ONE,
        start: Start | None = None,
    ) -> Compressed:
        ie = self.model
        z_sym = self._z_symbols(z)
        z_stream, z_bits = self.encode_z(z_sym)
        streams, bits = [z_stream], [z_bits]
        y64 = y.double()

        def code_step(k: int, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            sym, stream, step_bits = self._code(y64, k, mean, scale, qstep)
            streams.append(stream)
            bits.append(step_bits)
            return sym

        start = start if start is not None else ie.start(z_sym, y.shape[-2:])
        y_hat, digest = ie.run(z_sym, y.shape[-2:], code_step, qstep, start)
        return Compressed(streams, y_hat, bits, digest, start)

    @torch.no_grad()
    def probe(
        self,
        y: torch.Tensor,
        z: torch.Tensor,
        qstep: int = QSTEP_ONE,
        start: Start | None = None,
    ) -> tuple[float, Start]:
        """The ideal bits of y's first quadtree step at ``qstep``, and the Start for compress.

        That step (a quarter of y, predicted from the hyperprior alone) costs h_s and one
        context step, a fifth of a whole compress; its bits follow the image's rate
        closely enough to tell a rate search which bundle an image needs
        (``rate.HandoverRule``). ``start``: an earlier result's, as for compress.
        """
        ie = self.model
        start = start if start is not None else ie.start(self._z_symbols(z), y.shape[-2:])
        mean, scale = start.step0
        return self._code(y.double(), 0, mean, scale, qstep)[2], start

    def _z_symbols(self, z: torch.Tensor) -> torch.Tensor:
        """z's integer symbols around the integer medians."""
        med = self.model.median_real().view(1, -1, 1, 1)
        return torch.round(z.double() - med).clamp(-ESCAPE_LIMIT, ESCAPE_LIMIT).long()

    def _code(
        self, y64: torch.Tensor, k: int, mean: torch.Tensor, scale: torch.Tensor, qstep: int
    ) -> tuple[torch.Tensor, bytes, float]:
        """Step k's symbols (0 where not coded), their stream and its ideal bits."""
        ie = self.model
        coded, tables = ie.coded_and_tables(scale, qstep)
        sym = torch.round((step_values(y64, k) - ie.mean_real(mean)) / (qstep / QSTEP_ONE))
        sym = torch.where(coded, sym.clamp(-ESCAPE_LIMIT, ESCAPE_LIMIT), 0.0).long()
        enc = StreamEncoder()
        enc.encode(sym[coded].numpy(), tables.numpy(), self.y_tables)
        return sym, enc.finish(), enc.bits

    @torch.no_grad()
    def decompress(
        self,
        streams: Sequence[bytes],
        y_size: tuple[int, int],
        qstep: int = QSTEP_ONE,
        step: Callable[[], None] | None = None,
    ) -> Decompressed:
        ie = self.model
        z = torch.from_numpy(self.decode_z(streams[0], y_size))

        def code_step(k: int, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            coded, tables = ie.coded_and_tables(scale, qstep)
            values = StreamDecoder(streams[k + 1]).decode(tables.numpy(), self.y_tables)
            sym = torch.zeros(mean.shape, dtype=torch.int64)
            sym[coded] = torch.from_numpy(values)
            if step is not None:
                step()
            return sym

        return Decompressed(*ie.run(z, y_size, code_step, qstep))
