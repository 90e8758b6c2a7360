"""The latent-codec interface: a latent and its side streams to bytes and back.

A latent codec turns ``analyse``'s y and z into the five streams of a file (z, then one
per quadtree step) with the y_hat a decoder will rebuild, and the streams back into
y_hat, the same on both sides (CompressAI's ``LatentCodec``). aeic has two: the float
path (``float_path.py``, format versions 1 and 2, what the published checkpoints were
trained with) and the integer path (``integer_path.py``, versions 3 and 4, the same
integers on every machine). Both code z with one table per channel and y with the
scale tables, which a bundle stores (``AEIC.build_tables``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from aeic_codec.entropy_models.intnet import Start
from aeic_codec.format.coder import StreamDecoder, StreamEncoder
from aeic_codec.format.container import QSTEP_ONE
from aeic_codec.format.tables import FreqTables


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


class Decompressed(NamedTuple):
    """What the latent decoder rebuilt from the streams."""

    y_hat: torch.Tensor
    digest: bytes | None  # entropy digest of the integer path (None: float path)


def hyper_size(y_size: tuple[int, int]) -> tuple[int, int]:
    """Size of z for a y of this size (h_a downsamples by 4, rounding up)."""
    return -(-y_size[0] // 4), -(-y_size[1] // 4)


class LatentCodec(ABC):
    """The entropy coding of one model's latents, on one entropy path.

    ``compress`` and ``decompress`` mirror each other: the decoder rebuilds exactly the
    encoder's y_hat. ``qstep`` is y's quantisation step in 1/256 (QSTEP_ONE: the trained
    step; others need the integer path, format version 4).
    """

    integer: bool  # whether the files it makes are of the integer path

    def __init__(self, z_tables: FreqTables, y_tables: FreqTables, hyper_channels: int) -> None:
        self.z_tables = z_tables
        self.y_tables = y_tables
        self.hyper_channels = hyper_channels

    @abstractmethod
    def compress(
        self,
        y: torch.Tensor,
        z: torch.Tensor,
        qstep: int = QSTEP_ONE,
        start: Start | None = None,
    ) -> Compressed:
        """The streams of y and z (float32, (1, C, h, w)) and the y_hat they decode to.

        ``start`` is an earlier result's ``start`` for the same z, which a rate search
        passes to code one z at several steps (the integer path's; others ignore it).
        """

    @abstractmethod
    def decompress(
        self,
        streams: Sequence[bytes],
        y_size: tuple[int, int],
        qstep: int = QSTEP_ONE,
        step: Callable[[], None] | None = None,
    ) -> Decompressed:
        """y_hat (1, M, h, w) of y's size from the five streams, and the entropy digest.

        ``step`` is called after each of the four context steps (for progress).
        """

    def encode_z(self, z_sym: torch.Tensor) -> tuple[bytes, float]:
        """z's stream from its integer symbols (1, C, h, w), and its ideal length in bits."""
        enc = StreamEncoder()
        enc.encode(z_sym.numpy().ravel(), _z_ids(z_sym.shape), self.z_tables)
        return enc.finish(), enc.bits

    def decode_z(self, stream: bytes, y_size: tuple[int, int]) -> np.ndarray:
        """z's integer symbols (1, C, h, w) for a y of ``y_size``, from its stream."""
        shape = (1, self.hyper_channels, *hyper_size(y_size))
        return StreamDecoder(stream).decode(_z_ids(shape), self.z_tables).reshape(shape)


def _z_ids(shape: tuple[int, ...] | torch.Size) -> np.ndarray:
    """Table id of every z symbol in C order: its channel."""
    _, c, h, w = shape
    return np.repeat(np.arange(c), h * w)
