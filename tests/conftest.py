"""Shared fixtures: tiny random-weight bundles and generated images, made per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aeic_codec.bundles.bundle import save_bundle
from aeic_codec.codec.model import AEIC
from aeic_codec.nn.config import tiny_config


def make_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful image with some texture (compresses like a photo, roughly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack(
        [
            128
            + 90 * np.sin(xx / (7 + seed) + c) * np.cos(yy / (11 + c))
            + rng.normal(0, 8, xx.shape)
            for c in range(3)
        ],
        axis=-1,
    )
    return np.clip(img, 0, 255).astype(np.uint8)


def photo_folder(folder: Path, count: int = 3, size: tuple[int, int] = (96, 128)) -> list[Path]:
    """``count`` PNG photographs of ``size`` (make_image) in a new folder, in name order."""
    folder.mkdir()
    for i in range(count):
        Image.fromarray(make_image(*size, seed=i)).save(folder / f"p{i}.png")
    return sorted(folder.iterdir())


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "tiny-l16.safetensors"
    save_bundle(path, AEIC(tiny_config()), lambda_=16.0, provenance={"made_by": "tests"})
    return path


@pytest.fixture(scope="session")
def other_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("weights2") / "tiny-l4.safetensors"
    save_bundle(path, AEIC(tiny_config()), lambda_=4.0)
    return path


@pytest.fixture()
def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray(make_image(63, 65)).save(path)
    return path
