"""Training: the published loss ``lambda * R + D`` on any folder of images, CPU or GPU,
in one process or several under torchrun; and realism decoders for trained bundles.

One trainer family (``base.BaseTrainer``: the codec's ``Trainer`` and the
``RealismTrainer``), one configuration reader and one run loop, ``train``. One module per
concern, each importable on its own:

- ``config``: the TOML configuration of either kind (dataclasses; the schema is read off
  them);
- ``data``: image files and the crops of each step;
- ``forward``: the differentiable forward pass, the same context model as the coder;
- ``losses``: the loss terms and the networks they need (critic, distiller, LPIPS/DISTS);
- ``growth``: deepening a trained model without changing its output;
- ``base``: the family's root, what the run loop needs of a trainer;
- ``trainer``: the codec's Trainer, one optimizer step at a time, and its checkpoint state;
- ``realism_data``: a realism run's caches and crops;
- ``realism_trainer``: the RealismTrainer, a realism decoder for a trained bundle trained
  in its D's latent space, and ``export`` of it into a bundle;
- ``distributed``: torchrun's processes, their shares of a batch and what they agree on;
- ``runlog``: log.jsonl and the terminal's status line;
- ``run``: ``train``, the loop over stages in a run folder, for either kind;
- ``realism``: ``python -m aeic_codec.training.realism``, an alias of ``train`` for
  realism configurations with ``--export`` (not imported here).

Image quality figures (PSNR, MS-SSIM) live in ``aeic_codec.codec.metrics``. The names below are
the package's public surface.
"""

from aeic_codec.codec.metrics import ms_ssim, ms_ssim_scales, psnr_u8

from .base import BaseTrainer, checkpoint_path
from .config import (
    LossWeights,
    RealismConfig,
    StageConfig,
    TrainConfig,
    TrainConfigError,
    load_train_config,
    parse_realism_config,
    parse_train_config,
)
from .data import CropDataset, crop_batches, find_images, reflect_pad
from .distributed import Group, is_main_process
from .forward import Forward, forward_train
from .growth import grown_model
from .losses import Distiller, Objective, PatchDiscriminator, colour_grid_fix, critic_loss
from .realism_trainer import RealismTrainer
from .run import StopSignals, TrainingStopped, train
from .runlog import ProgressBar, RunLog
from .trainer import Trainer

__all__ = [
    "BaseTrainer",
    "CropDataset",
    "Distiller",
    "Forward",
    "Group",
    "LossWeights",
    "Objective",
    "PatchDiscriminator",
    "ProgressBar",
    "RealismConfig",
    "RealismTrainer",
    "RunLog",
    "StageConfig",
    "StopSignals",
    "TrainConfig",
    "TrainConfigError",
    "Trainer",
    "TrainingStopped",
    "checkpoint_path",
    "colour_grid_fix",
    "critic_loss",
    "crop_batches",
    "find_images",
    "forward_train",
    "grown_model",
    "is_main_process",
    "load_train_config",
    "ms_ssim",
    "ms_ssim_scales",
    "parse_realism_config",
    "parse_train_config",
    "psnr_u8",
    "reflect_pad",
    "train",
]
