"""A realism run's data: per-photo caches in the run folder and the crops of each step.

y_hat (exactly as files carry it), E(x) and the photo are made once per training image
and kept in the run folder; a step's crops of them depend on (seed, step) alone, so a
resumed run sees the crops an uninterrupted one would have seen.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aeic_codec.codec.model import PAD
from aeic_codec.nn.transforms import pad_reflect
from aeic_codec.runtime.imageio import read_image

from .config import LATENT_SCALE


def padded_input(image: np.ndarray) -> torch.Tensor:
    """(1, 3, H', W') in [-1, 1], padded as the encoder pads (reflect, to a multiple of 64)."""
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # a writable copy
    return pad_reflect(x / 127.5 - 1.0, PAD)


def training_image(path: Path, max_pixels: int) -> np.ndarray:
    """A training photo, downscaled (area filter) to at most ``max_pixels``.

    Caching E(x) costs about a second per 0.1 megapixel on two cores; smaller photos also
    carry more detail per pixel, which is what the realism decoder has to learn to draw.
    """
    from PIL import Image

    image = read_image(path)[0]
    h, w = image.shape[:2]
    if h * w <= max_pixels:
        return image
    f = math.sqrt(max_pixels / (h * w))
    size = (max(64, round(w * f)), max(64, round(h * f)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


@torch.no_grad()
def build_caches(
    files: list[Path],
    max_pixels: int,
    makers: dict[Path, Callable[[torch.Tensor], torch.Tensor]],
    echo: bool = False,
) -> list[list[torch.Tensor]]:
    """One tensor per training photo for each cache file, in the order of ``makers``.

    A missing cache is made by its function from the photo as the encoder sees it
    (downscaled, padded, in [-1, 1]); all the missing ones in one pass over the photos,
    counted on stderr with ``echo``.
    """
    caches = {p: torch.load(p, weights_only=True) for p in makers if p.exists()}
    missing = [p for p in makers if p not in caches]
    if missing:
        made: dict[Path, list[torch.Tensor]] = {p: [] for p in missing}
        for i, path in enumerate(files):
            x = padded_input(training_image(path, max_pixels))
            for p in missing:
                made[p].append(makers[p](x))
            if echo:
                print(f"cache {i + 1}/{len(files)}", file=sys.stderr, flush=True)
        for p in missing:
            torch.save(made[p], p)
        caches.update(made)
    return [caches[p] for p in makers]


def crops(
    ys: list[torch.Tensor],
    lats: list[torch.Tensor],
    crop: int,
    batch: int,
    seed: int,
    step: int,
    photos: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Step ``step``'s batch: crops drawn from (seed, step) alone, so resuming is exact.

    y_hat, E(x) and, with ``photos``, the photo in [-1, 1], all of one region.
    """
    rng = np.random.default_rng((seed, step))
    cy, cl = crop // 32, crop // LATENT_SCALE
    y_out, l_out, x_out = [], [], []
    for _ in range(batch):
        i = int(rng.integers(len(ys)))
        y, lat = ys[i], lats[i]
        rows, cols = y.shape[1] // 2 - cy // 2, y.shape[2] // 2 - cy // 2
        top = 2 * int(rng.integers(max(rows, 0) + 1))
        left = 2 * int(rng.integers(max(cols, 0) + 1))
        y_crop = _fit(y[:, top : top + cy, left : left + cy], cy)
        k = 32 // LATENT_SCALE
        l_crop = _fit(lat[:, k * top : k * top + cl, k * left : k * left + cl], cl)
        y_out.append(y_crop)
        l_out.append(l_crop)
        if photos is not None:
            x = photos[i][:, 32 * top : 32 * top + crop, 32 * left : 32 * left + crop]
            x_out.append(_fit(x, crop))
    x_batch = torch.stack(x_out).float() / 127.5 - 1 if photos is not None else None
    return torch.stack(y_out).float(), torch.stack(l_out).float(), x_batch


def _fit(t: torch.Tensor, size: int) -> torch.Tensor:
    """Pad a crop of a small image (edge replication) to the full crop size."""
    ph, pw = size - t.shape[1], size - t.shape[2]
    if ph or pw:
        t = F.pad(t[None], (0, pw, 0, ph), mode="replicate")[0]
    return t
