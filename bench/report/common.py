"""What the report's sections share: progress lines, dated headings, sizes, test pictures and
the models they measure."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from bench._machine import machine_line

if TYPE_CHECKING:
    from aeic_codec.codec.model import AEIC
    from aeic_codec.nn.config import ModelConfig


def log(message: str) -> None:
    """A progress line on stderr (stdout carries only the report's path)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def heading(title: str) -> str:
    """A section heading with the machine and date, so a section quoted alone stays dated."""
    return f"## {title}\n\n*Measured on: {machine_line()}.*\n"


def size_label(h: int, w: int) -> str:
    """A picture size as people write it: width first."""
    return f"{w}x{h}"


def photo(path: Path, height: int, width: int) -> np.ndarray:
    """A Kodak photo resized to the asked size (a real image rather than a pattern)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((width, height), Image.BICUBIC))


def bf16() -> bool:
    """Whether `--precision auto` decodes in bf16 on this machine (the codec's own rule)."""
    import torch

    from aeic_codec import api

    return api.resolve_precision("auto") == torch.bfloat16


def random_model(cfg: ModelConfig, encoder: bool = True, decoder: bool = True) -> AEIC:
    """A model with seeded random weights and its tables, as a bundle would have.

    The entropy side and the generative side are seeded separately, so that an encoder-only
    and a decoder-only build share h_s, the context model and the z prior and can exchange
    files (the memory test encodes in this process and decodes in a fresh one).
    """
    import torch

    from aeic_codec.codec.model import AEIC
    from aeic_codec.nn.denoiser import Denoiser
    from aeic_codec.nn.transforms import SynthesisTransform
    from aeic_codec.nn.vae import LiteVAEDecoder

    torch.manual_seed(0)
    model = AEIC(cfg, encoder=True, decoder=False)
    if not encoder:
        model.g_a = None
        model.h_a = None
    if decoder:
        torch.manual_seed(1)
        model.g_s = SynthesisTransform(cfg)
        model.denoiser = Denoiser(cfg)
        model.vae = LiteVAEDecoder(cfg)
    model.eval()
    model.build_tables()
    model.identity = "00000000"
    return model


def load_model(spec: dict[str, str], encoder: bool = True, decoder: bool = True) -> AEIC:
    """{"bundle": path} or {"config": json}: a shipped bundle or a random-weight preset."""
    from aeic_codec.bundles.bundle import load_bundle
    from aeic_codec.nn.config import ModelConfig

    if "bundle" in spec:
        return load_bundle(spec["bundle"], encoder=encoder, decoder=decoder)
    return random_model(ModelConfig.from_json(spec["config"]), encoder, decoder)
