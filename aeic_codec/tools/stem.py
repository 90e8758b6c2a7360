"""Distil the fast encoder's stem (``nn/stem.py``) from a bundle's own g_a.

The stem learns to give what g_a's first levels give, on random crops of training
photographs (long side at most 768 pixels, Kodak's scale of detail): the loss is the
squared error of y (g_a's remaining levels run on the stem's output, frozen) plus a tenth
of that of the features themselves, each relative to the teacher's variance. g_a stays
as it is, so the bundle keeps its identity and decodes every file it made; only the
encoder of ``--fast`` changes. Resumable (``checkpoint.py``). A stem can also be
distilled further from the one a bundle carries (``start``): the shipped stems were not
converged after their first 4,000 steps (CHANGELOG.md).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aeic_codec.bundles.bundle import tensors_digest
from aeic_codec.codec.model import AEIC
from aeic_codec.nn.config import StemConfig
from aeic_codec.nn.stem import AnalysisStem
from aeic_codec.nn.transforms import from_pixels

from .checkpoint import Checkpoint, run_steps
from .texture_book import photo

FEATURE_WEIGHT = 0.1  # of the features' relative error, beside y's


def distil_stem(
    model: AEIC,
    photos: Sequence[Path],
    config: StemConfig,
    steps: int,
    *,
    batch: int = 8,
    crop: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    start: AnalysisStem | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> AnalysisStem:
    """A stem for ``model`` distilled on crops of ``photos`` in ``steps`` Adam steps (cosine
    learning rate from ``lr``), from random weights or from ``start`` (a stem of the same
    ``config``, left untouched); ``progress(step, steps, loss)`` after every step."""
    if model.g_a is None:
        raise ValueError("the bundle was loaded without its encoder")
    if start is not None and start.config != config:
        raise ValueError(f"the stem to start from is {start.config}, not {config}")
    if crop % 2 ** len(model.cfg.ga_dims):
        raise ValueError(f"crop must be a multiple of {2 ** len(model.cfg.ga_dims)}, got {crop}")
    images = [p for p in (photo(path) for path in photos) if min(p.shape[:2]) >= crop]
    if not images:
        raise ValueError(f"no photograph of at least {crop}x{crop} pixels")
    g_a = model.g_a.requires_grad_(False).eval()
    split = config.level * g_a.level_size
    front, rest = g_a.analysis_transform[:split], g_a.analysis_transform[split:]
    torch.manual_seed(seed)
    stem = AnalysisStem(model.cfg, config)
    if start is not None:
        stem.load_state_dict(start.state_dict())
    optimiser = torch.optim.Adam(stem.parameters(), lr=lr)
    made_for = {
        "identity": model.identity,
        "config": config.to_json(),
        "steps": steps,
        "lr": lr,
        "start": "random" if start is None else tensors_digest(start.state_dict()),
    }
    parts = {"stem": stem, "optimiser": optimiser}
    refusal = "another bundle, stem, start, learning rate or number of steps"
    state = Checkpoint(checkpoint, made_for, parts, refusal)
    with torch.no_grad():  # the teacher's spread, to weigh both errors alike
        x = _crops(images, batch, crop, random.Random(seed - 1))
        features = front(x)
        spread = (features.var().item(), rest(features).var().item())

    def loss_at(step: int) -> torch.Tensor:
        x = _crops(images, batch, crop, random.Random(seed * 1_000_003 + step))
        with torch.no_grad():
            target = front(x)
            y_target = rest(target)
        out = stem(x)
        loss = F.mse_loss(rest(out), y_target) / spread[1]
        return loss + FEATURE_WEIGHT * F.mse_loss(out, target) / spread[0]

    run_steps(state, loss_at, optimiser, lr, steps, progress)
    return stem.eval().requires_grad_(False)


def _crops(images: list[np.ndarray], batch: int, crop: int, rng: random.Random) -> torch.Tensor:
    """``batch`` random crops (the same for the same ``rng``), as the networks take them."""
    out = []
    for _ in range(batch):
        image = images[rng.randrange(len(images))]
        top = rng.randrange(image.shape[0] - crop + 1)
        left = rng.randrange(image.shape[1] - crop + 1)
        out.append(torch.from_numpy(image[top : top + crop, left : left + crop].copy()))
    return from_pixels(torch.stack(out).permute(0, 3, 1, 2))
