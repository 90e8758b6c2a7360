"""Make the texture synthesis' file: TAEF2 and an exemplar book from training photographs.

For each photograph (resized so that its long side is at most 768 pixels, Kodak's scale of
detail), the codec encodes and decodes it with each bundle given at realism 0: the exact
loss of detail the decoder will see, from the finest rate to the coarsest. TAEF2's encoder
maps the photograph and its decodes to latents; every position of a decode's latent gives
a key (its 3x3 neighbourhood, and the texture levels the encoder would send for the
photograph there) and a value (the photograph's latent minus the decode's there). Keys are
standardised and projected on their leading principal directions; a random subset of all
positions, flat ones as often as they occur, becomes the book, grouped by k-means for the
search (codec/texture_synthesis.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from aeic_codec import api
from aeic_codec.codec.model import AEIC
from aeic_codec.codec.texture import SourceTexture
from aeic_codec.codec.texture_synthesis import (
    SCALE,
    ExemplarBook,
    TextureSynthesis,
    cluster,
    grouped,
    latent_levels,
    neighbourhoods,
)
from aeic_codec.nn.config import AEIC_SMALL_TAEF2
from aeic_codec.nn.tiny_vae import TinyDecoder, TinyEncoder, read_taef2

LONG_SIDE = 768
PER_PHOTO = 1024  # positions drawn per photograph and bundle, before the book's own draw
LEVELS = (64, 3)  # the texture levels (block, step dB) a key holds: the encoder's finest


def taef2(folder: str | os.PathLike[str]) -> tuple[TinyEncoder, TinyDecoder]:
    """TAEF2's encoder and decoder from its folder (taef2_encoder/decoder.safetensors)."""
    encoder, decoder = TinyEncoder(), TinyDecoder(AEIC_SMALL_TAEF2)
    for net, name in ((encoder, "encoder"), (decoder, "decoder")):
        net.load_state_dict(read_taef2(Path(folder) / f"taef2_{name}.safetensors"))
        net.eval().requires_grad_(False)
    return encoder.to(memory_format=torch.channels_last), decoder


def photo(path: Path) -> np.ndarray:
    """The photograph at Kodak's scale of detail, cropped to a multiple of 8."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = min(1.0, LONG_SIDE / max(img.size))
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        pixels = np.asarray(img)
    return pixels[: pixels.shape[0] // 8 * 8, : pixels.shape[1] // 8 * 8]


@torch.no_grad()
def _latent(encoder: TinyEncoder, pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(pixels, np.float32) / 255).permute(2, 0, 1)
    return encoder(x[None].contiguous(memory_format=torch.channels_last)).contiguous()


def _levels(pixels: np.ndarray) -> torch.Tensor:
    """(h w, 2): the photograph's texture levels (dB) at every latent position, spread from
    the blocks as a decoder spreads them."""
    db = SourceTexture(pixels).levels(*LEVELS).db()
    return latent_levels(db, LEVELS[0], pixels.shape[0] // SCALE, pixels.shape[1] // SCALE)


def build_book(
    photos: Sequence[Path],
    models: Sequence[AEIC],
    taef2_folder: str | os.PathLike[str],
    size: int = 32768,
    dims: int = 32,
    level_weight: float = 1.0,
    clusters: int = 256,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> TextureSynthesis:
    """The texture synthesis made from ``photos`` and the fidelity decodes of ``models``."""
    if not photos:
        raise ValueError("no photographs to make an exemplar book from")
    if not models:
        raise ValueError("no bundle to decode the photographs with")
    encoder, decoder = taef2(taef2_folder)
    rng = torch.Generator().manual_seed(seed)
    keys, levels, values = [], [], []
    for i, path in enumerate(photos):
        pixels = photo(path)
        sharp, level = _latent(encoder, pixels), _levels(pixels)
        for model in models:
            blurred = _latent(encoder, api.decode(api.encode(pixels, model), model))
            pick = torch.randperm(level.shape[0], generator=rng)[:PER_PHOTO]
            keys.append(neighbourhoods(blurred)[pick])
            values.append((sharp - blurred)[0].flatten(1).T[pick])
            levels.append(level[pick])
        if progress is not None:
            progress(i + 1, len(photos))
    k, v = torch.cat(keys), torch.cat(values)
    mean, std = k.mean(0), k.std(0) + 1e-6
    z = (k - mean) / std
    _, vectors = torch.linalg.eigh(z.T @ z / z.shape[0])
    projection = vectors[:, -dims:].flip(1).contiguous()
    pick = torch.randperm(z.shape[0], generator=rng)[:size]
    key = torch.cat([z[pick] @ projection, level_weight * torch.cat(levels)[pick]], 1)
    centroids = cluster(key, min(clusters, len(key)), seed)
    key, value, offsets = grouped(key.half().float(), v[pick].half().float(), centroids)
    book = ExemplarBook(mean, std, projection, level_weight, key, value, centroids, offsets)
    return TextureSynthesis(encoder, decoder, book, AEIC_SMALL_TAEF2)


def photo_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The images of a folder, in name order."""
    suffixes = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"}
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in suffixes)
