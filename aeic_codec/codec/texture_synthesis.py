"""Texture at decode: detail copied from real photographs, placed by the file's statistics.

The fidelity decoder's picture is smooth where the photograph had fine texture. Noise
added there reads as grain or crumpled glass, and a network trained against a critic on
this machine guessed strokes; what reads as a photograph is detail taken from
photographs. An exemplar book made from training photographs (``tools/texture_book.py``)
holds, for many places of many photos, the latent neighbourhood of the codec's own decode
of that place in TAEF2's latent space (the key) and what the photo had there that the
decode lost (the value: the sharp photo's latent minus the decode's). At decode, TAEF2's
encoder maps the fidelity picture to its latent; every position takes the value of its
nearest key; TAEF2's decoder renders the latent with and without those values, and their
difference is photographic detail in pixels, on TAEF2's manifold. The file's texture
statistics then decide how much of it goes where (``texture_match.py``): nothing where
the photograph was smooth. Deterministic: no random numbers. docs/architecture.md
section 12.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from aeic_codec.format.texture_coder import TextureLevels
from aeic_codec.nn.config import ModelConfig
from aeic_codec.nn.tiny_vae import TinyDecoder, TinyEncoder

from .texture_match import matched_detail

FORMAT = "1"  # the texture file's layout (metadata ``aeic_texture``)
SCALE = 8  # TAEF2's latent is 1/8 of the picture
SEARCH_ROWS = 256  # latent positions per block of the nearest-key search


class TextureFileError(ValueError):
    """A file that is not a usable texture file; the message is one line for the user."""


@dataclass
class ExemplarBook:
    """Keys (standardised 3x3 latent neighbourhoods projected to a few dimensions) and the
    detail latents they stand for."""

    mean: torch.Tensor  # (9C,) per-feature mean of the neighbourhoods
    std: torch.Tensor  # (9C,)
    projection: torch.Tensor  # (9C, dims)
    keys: torch.Tensor  # (N, dims)
    values: torch.Tensor  # (N, C)

    def detail(self, latent: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The value of the nearest key at every position of a (1, C, h, w) latent; the
        distances in ``dtype`` (bf16 where the decoder computes in it)."""
        _, c, h, w = latent.shape
        query = ((neighbourhoods(latent) - self.mean) / self.std @ self.projection).to(dtype)
        keys = self.keys.to(dtype)
        key_norms = (keys.float() ** 2).sum(1).to(dtype)[None]
        values = self.values.float()
        out = torch.empty(query.shape[0], c)
        for start in range(0, query.shape[0], SEARCH_ROWS):
            # |k|^2 - 2 q.k: the squared distance less |q|^2, the same for every key
            distance = torch.addmm(key_norms, query[start : start + SEARCH_ROWS], keys.T, alpha=-2)
            out[start : start + SEARCH_ROWS] = values[distance.argmin(1)]
        return out.T.reshape(1, c, h, w)


def neighbourhoods(latent: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) -> (h w, 9 C): each position's 3x3 neighbourhood, borders replicated."""
    padded = F.pad(latent, (1, 1, 1, 1), mode="replicate")
    return F.unfold(padded, 3)[0].T.contiguous()


class TextureSynthesis:
    """TAEF2's encoder and decoder with an exemplar book: what texture synthesis runs."""

    def __init__(
        self, encoder: TinyEncoder, decoder: TinyDecoder, book: ExemplarBook, config: ModelConfig
    ) -> None:
        self.encoder, self.decoder, self.book, self.config = encoder, decoder, book, config

    @torch.no_grad()
    def detail(self, picture: np.ndarray, dtype: torch.dtype = torch.float32) -> np.ndarray:
        """Photographic detail for a picture (H x W x 3 float on 0-255): TAEF2's rendering
        of its latent with the exemplars' detail, less the picture. (Less TAEF2's rendering
        without the detail instead measured the same on Kodak at twice the cost: only the
        two finest bands of the difference are used, where TAEF2 loses little.)"""
        h, w = picture.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(picture, np.float32) / 255).permute(2, 0, 1)
        pad_h, pad_w = -h % SCALE, -w % SCALE
        x = F.pad(x[None], (0, pad_w, 0, pad_h), mode="replicate")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            latent = self.encoder(x).float()
            rendered = self.decoder(latent + self.book.detail(latent, dtype)).float()
        pixels = (rendered[0, :, :h, :w] + 1) * 127.5  # [-1, 1] -> 0-255
        return pixels.permute(1, 2, 0).numpy() - picture

    def __call__(
        self,
        picture: np.ndarray,
        levels: TextureLevels,
        strength: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ) -> np.ndarray:
        """``picture`` (H x W x 3 on 0-255) with texture where ``levels`` put it, luma only."""
        change = matched_detail(picture, self.detail(picture, dtype), levels)
        return picture + strength * change[..., None]


def save_texture(
    path: str | os.PathLike[str],
    synthesis: TextureSynthesis,
    provenance: dict[str, object] | None = None,
) -> None:
    """Write a texture file: TAEF2's two halves (float16) and the exemplar book."""
    from safetensors.torch import save_file

    from aeic_codec.runtime.files import atomic_path

    tensors = {f"encoder.{k}": v.half() for k, v in synthesis.encoder.state_dict().items()}
    tensors |= {f"decoder.{k}": v.half() for k, v in synthesis.decoder.state_dict().items()}
    b = synthesis.book
    tensors |= {
        "book.mean": b.mean.float(),
        "book.std": b.std.float(),
        "book.projection": b.projection.float(),
        "book.keys": b.keys.half(),
        "book.values": b.values.half(),
    }
    meta = {
        "aeic_texture": FORMAT,
        "decoder_config": synthesis.config.to_json(),
        "provenance": json.dumps(provenance or {}, sort_keys=True),
    }
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_texture(path: str | os.PathLike[str]) -> TextureSynthesis:
    """Read a texture file written by ``save_texture``; TextureFileError if it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (OSError, ValueError, RuntimeError) as exc:  # safetensors' own errors included
        raise TextureFileError(f"{path}: cannot read texture file ({exc})") from exc
    if meta.get("aeic_texture") != FORMAT:
        raise TextureFileError(f"{path}: not an aeic texture file (format {FORMAT})")
    config = ModelConfig.from_json(meta["decoder_config"])
    encoder, decoder = TinyEncoder(latent=config.decoder_latent), TinyDecoder(config)
    for name, net in (("encoder", encoder), ("decoder", decoder)):
        prefix = name + "."
        state = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise TextureFileError(f"{path}: its {name} does not fit ({exc})") from exc
        net.eval().requires_grad_(False)
    try:
        book = ExemplarBook(*(tensors[f"book.{k}"] for k in _BOOK))
    except KeyError as exc:
        raise TextureFileError(f"{path}: no exemplar book ({exc})") from exc
    return TextureSynthesis(encoder, decoder, book, config)


_BOOK = ("mean", "std", "projection", "keys", "values")
