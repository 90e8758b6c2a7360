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
the package's public surface, imported when first used (``runtime/lazy.py``): importing the
package loads neither torch nor diffusers.
"""

from __future__ import annotations

from aeic_codec.runtime.lazy import lazy_exports

_EXPORTS = {
    "BaseTrainer": "base",
    "checkpoint_path": "base",
    "LossWeights": "config",
    "RealismConfig": "config",
    "StageConfig": "config",
    "TrainConfig": "config",
    "TrainConfigError": "config",
    "load_train_config": "config",
    "parse_realism_config": "config",
    "parse_train_config": "config",
    "CropDataset": "data",
    "crop_batches": "data",
    "find_images": "data",
    "reflect_pad": "data",
    "Group": "distributed",
    "is_main_process": "distributed",
    "Forward": "forward",
    "forward_train": "forward",
    "grown_model": "growth",
    "Distiller": "losses",
    "Objective": "losses",
    "PatchDiscriminator": "losses",
    "colour_grid_fix": "losses",
    "critic_loss": "losses",
    "RealismTrainer": "realism_trainer",
    "StopSignals": "run",
    "TrainingStopped": "run",
    "train": "run",
    "ProgressBar": "runlog",
    "RunLog": "runlog",
    "Trainer": "trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
