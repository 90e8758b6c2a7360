"""Training data: the image files of a folder and the crops each step trains on.

The crops of a micro-batch depend on nothing but (seed, stage, micro-batch index, index
in the global batch): a run stopped and resumed, or one spread over another number of
processes, sees exactly the crops one uninterrupted process would have seen.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from aeic_codec.nn.transforms import from_pixels
from aeic_codec.runtime.imageio import IMAGE_SUFFIXES, image_shape, read_image

from .config import TrainConfigError
from .distributed import Share

CALIBRATION_STAGE = 1 << 16  # the crops of latent_std calibration come from their own stream


def find_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursive), in a fixed order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainConfigError(f"{folder}: not a directory")
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def image_shapes(files: Sequence[Path]) -> list[tuple[int, int] | None]:
    """(height, width) of each image from its header, None for files that cannot be read."""
    shapes: list[tuple[int, int] | None] = []
    for path in files:
        try:
            shapes.append(image_shape(path))
        except (OSError, ValueError):
            shapes.append(None)
    return shapes


def data_key(files: Sequence[Path], root: Path) -> str:
    """A fingerprint of the training file list: a resume on other data is worth a note."""
    names = "\n".join(str(p.relative_to(root)) for p in files)
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def reflect_pad(image: np.ndarray, size: int) -> np.ndarray:
    """Mirror an H x W x 3 image around its borders until both sides reach ``size``."""
    ph, pw = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if not ph and not pw:
        return image
    return np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), "symmetric")


class CropDataset(torch.utils.data.Dataset):
    """Item i is this process's share of micro-batch i of a stage, in [-1, 1].

    One random stream per micro-batch, seeded by (seed, stage, i), plans every crop of the
    global batch (image, position, flip) from the image shapes alone; each process then
    reads only the crops of its share.
    """

    def __init__(
        self,
        files: Sequence[Path],
        shapes: Sequence[tuple[int, int]],
        crop: int,
        batch: int,
        seed: int,
        stage: int,
        share: Share | None = None,
    ) -> None:
        self.files, self.shapes = list(files), list(shapes)
        self.crop, self.batch, self.seed, self.stage = crop, batch, seed, stage
        self.share = share or Share(0, batch, batch)

    def plan(self, index: int) -> list[tuple[int, int, int, bool]]:
        """(file index, top, left, flip) of every crop of micro-batch ``index``."""
        rng = np.random.default_rng((self.seed, self.stage, index))
        plan = []
        for _ in range(self.batch):
            file = int(rng.integers(len(self.files)))
            height, width = (max(side, self.crop) for side in self.shapes[file])
            top = int(rng.integers(height - self.crop + 1))
            left = int(rng.integers(width - self.crop + 1))
            plan.append((file, top, left, bool(rng.random() < 0.5)))
        return plan

    def __getitem__(self, index: int) -> torch.Tensor:
        crops = []
        for file, top, left, flip in self.plan(index)[self.share.start : self.share.stop]:
            image, _ = read_image(self.files[file])
            if image.shape[:2] != self.shapes[file]:
                raise TrainConfigError(
                    f"{self.files[file]}: decodes to {image.shape[1]}x{image.shape[0]} pixels, "
                    "not the size its header gave (changed during the run?)"
                )
            image = reflect_pad(image, self.crop)
            patch = image[top : top + self.crop, left : left + self.crop]
            crops.append(patch[:, ::-1] if flip else patch)
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(crops)))
        return from_pixels(batch.permute(0, 3, 1, 2))


def _worker_init(_worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which checkpoints and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


def crop_batches(
    dataset: torch.utils.data.Dataset, start: int, stop: int, workers: int, seed: int
) -> Iterator[torch.Tensor]:
    """Items ``start..stop-1`` of ``dataset``, loaded off the main thread when workers is 1.

    The loader gets its own generator so that starting it never draws from the global
    RNG, which the training noise uses.
    """
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=range(start, stop),
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)
