"""Post-training conversion of a bundle to the integer entropy path, and what it costs.

``integerize_bundle`` calibrates the exponents of every activation on a few images,
derives the integer parameters (``intnet.integerize``) and writes a copy of the bundle
with them under ``integer.`` keys. Float weights become 8-bit or 16-bit integers, or a mix
(``quantize.WEIGHT_PLANS``: 8-bit ones halve the integer GEMMs' work, 16-bit ones cost less
rate; ``integerize_choosing`` takes the first plan of 8, mixed, 16 whose files come out
at most ``AUTO_RATE_LIMIT`` above the float path's on the calibration images).
Every other tensor and metadata entry is copied as it is (also ones this version does
not know), the float identity stays, and running it again on its own output replaces the
integer part. ``integer_cost`` measures the price: file sizes of both paths on the same
pictures and, with a decoder, their PSNR.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aeic_codec.bundles.bundle import (
    INTEGER_PREFIX,
    BundleError,
    integer_identity_of,
    load_bundle,
    read_info,
)
from aeic_codec.codec.model import AEIC
from aeic_codec.entropy_models.intnet import INTEGER_FORMAT, integerize
from aeic_codec.entropy_models.quantize import WEIGHT_PLANS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
CALIBRATION_IMAGES = 16
AUTO_RATE_LIMIT = 0.01  # the rate an automatic choice of integer weights may cost: 1 %
PLAN_WORDS = {
    "8": "8-bit weights",
    "mixed": "8-bit weights in the context blocks, 16-bit elsewhere",
    "16": "16-bit weights",
}


@dataclass
class Cost:
    """Both paths on the same pictures: bytes per image, and PSNR when decoded."""

    float_bytes: list[int] = field(default_factory=list)
    integer_bytes: list[int] = field(default_factory=list)
    float_psnr: list[float] = field(default_factory=list)
    integer_psnr: list[float] = field(default_factory=list)

    @property
    def rate_cost(self) -> float:
        """Relative size change of the integer path's files (0.004 = 0.4 % larger)."""
        return sum(self.integer_bytes) / sum(self.float_bytes) - 1

    def summary(self) -> str:
        n = len(self.float_bytes)
        text = (
            f"integer entropy path on {n} image(s): {sum(self.integer_bytes)} bytes against "
            f"{sum(self.float_bytes)} for the float path ({100 * self.rate_cost:+.2f} %)"
        )
        if self.float_psnr:
            fp, ip = float(np.mean(self.float_psnr)), float(np.mean(self.integer_psnr))
            text += f"; PSNR {ip:.3f} dB against {fp:.3f} dB ({ip - fp:+.3f} dB)"
        return text


def image_files(folder: str | os.PathLike[str], count: int | None = None) -> list[Path]:
    """The images in a folder (recursively, sorted), the first ``count`` of them."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BundleError(f"{folder}: no images (png, jpg, webp, tif)")
    return files[:count]


def read_rgb(path: Path) -> np.ndarray:
    from aeic_codec.runtime.imageio import read_image

    image, _ = read_image(str(path))
    return image


def padded(image: np.ndarray) -> torch.Tensor:
    """The encoder's input for an H x W x 3 uint8 image: (1, 3, Hp, Wp) in [-1, 1]."""
    from aeic_codec.codec.model import PAD
    from aeic_codec.nn.transforms import from_pixels, pad_reflect

    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None]
    return pad_reflect(from_pixels(x), PAD)


def integerize_bundle(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    images: Sequence[np.ndarray],
    source: str = "",
    weights: str = "16",
) -> AEIC:
    """Write a copy of a bundle with an integer entropy path; returns the converted model.

    Weights the bundle stores as int8 are used as they are; float ones become integers
    as the plan ``weights`` says (``quantize.WEIGHT_PLANS``).
    """
    from safetensors.torch import load_file, save_file

    from aeic_codec.runtime.files import atomic_path

    info = read_info(path)
    model = load_bundle(info.path, decoder=False)
    try:
        tensors = load_file(str(info.path))
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise BundleError(f"{info.path}: cannot load bundle ({exc})") from exc
    params = integerize(model, [padded(im) for im in images], tensors, weights)
    tensors = {k: v for k, v in tensors.items() if not k.startswith(INTEGER_PREFIX)}
    tensors.update({INTEGER_PREFIX + k: v.contiguous() for k, v in params.items()})
    integer_identity = integer_identity_of(info.identity, tensors)
    provenance = dict(info.provenance)
    provenance["integer_calibration"] = {
        "images": len(images),
        "source": source,
        "weights": weights,
    }
    metadata = dict(
        info.metadata,
        integer_identity=integer_identity,
        integer_format=INTEGER_FORMAT,
        provenance=json.dumps(provenance, sort_keys=True),
    )
    with atomic_path(output) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return load_bundle(output, decoder=False)


def integer_cost(
    model: AEIC,
    images: Sequence[np.ndarray],
    decoder: AEIC | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Cost:
    """Encode each image with both entropy paths; with a decoder, also decode both."""
    from aeic_codec import api

    cost = Cost()
    for i, image in enumerate(images):
        for integer, sizes, psnrs in (
            (False, cost.float_bytes, cost.float_psnr),
            (True, cost.integer_bytes, cost.integer_psnr),
        ):
            data = api.encode(image, model, integer=integer)
            sizes.append(len(data))
            if decoder is not None:
                out = api.decode(data, decoder)
                err = np.mean((out.astype(np.float64) - image.astype(np.float64)) ** 2)
                psnr = 10 * np.log10(255.0**2 / err) if err > 0 else float("inf")
                psnrs.append(float(psnr))
        if progress is not None:
            progress(i + 1, len(images))
    return cost


def integerize_choosing(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    images: Sequence[np.ndarray],
    source: str = "",
    weights: str | None = None,
) -> tuple[AEIC, str]:
    """``integerize_bundle`` with the weight plan given, or (None) chosen on the images.

    The choice: the first of 8, mixed and 16 whose files come out at most AUTO_RATE_LIMIT
    above the float path's on the images (16 in the end whatever they cost). Returns the
    model and the plan.
    """
    for plan in WEIGHT_PLANS if weights is None else (weights,):
        model = integerize_bundle(path, output, images, source, plan)
        if weights is not None or plan == WEIGHT_PLANS[-1]:
            break
        if integer_cost(model, images).rate_cost <= AUTO_RATE_LIMIT:
            break
    return model, plan


def integerize_measured(
    path: str | os.PathLike[str],
    images: Sequence[np.ndarray],
    source: str = "",
    weights: str | None = None,
) -> tuple[AEIC, Cost, str]:
    """Integerize a bundle in place (``integerize_choosing``), then measure both paths
    (rate and PSNR) on the images; returns the model, its cost and its weight plan."""
    model, plan = integerize_choosing(path, path, images, source, weights)
    return model, integer_cost(model, images, decoder=load_bundle(path, encoder=False)), plan
