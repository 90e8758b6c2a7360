"""What one report run measures: the full plan, --quick's trimmed one and --slice's tiny one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from bench import ROOT, rd_kodak

if TYPE_CHECKING:
    from aeic_codec.nn.config import ModelConfig


@dataclass
class Plan:
    """What one run measures; --quick and the test slice are smaller plans."""

    out: Path
    presets: list[ModelConfig]  # full-size random-weight models
    bundles: list[Path]  # the shipped default models, lowest lambda first
    kodak: list[Path]
    speed_sizes: list[tuple[int, int]]  # (height, width), for the default model and anchors
    preset_speed_sizes: list[tuple[int, int]]
    decode_presets: list[str]  # names of the presets that also time a decode
    memory_sizes: list[tuple[int, int]]
    preset_memory_sizes: list[tuple[int, int]]
    threads: int = 2
    anchors: bool = True
    qualities: tuple[int, ...] = rd_kodak.DOWNSCALE_QUALITIES
    entropy_images: int = 4
    crops: bool = True
    speed_image: Path = ROOT / "docs" / "kodim23.png"  # the integer section's encode timing
    whole_runs: int = 3  # whole commands: the median of this many runs, interleaved
    command: str = "python -m bench.run_all"
    notes: list[str] = field(default_factory=list)

    @property
    def default_bundle(self) -> Path:
        """The bundle `aeic encode` picks without --lambda (the middle lambda): timed alone."""
        return self.bundles[len(self.bundles) // 2]


def plan_for(quick: bool, out: Path, threads: int) -> Plan:
    """The full run on Kodak, the shipped bundles and AEIC-SE/-ME; --quick trims its sizes."""
    from aeic_codec.nn.config import PRESETS

    kodak = rd_kodak.kodak_images(rd_kodak.KODAK)
    small, large = (512, 768), (1088, 1920)
    huge = [small, (2048, 2048), (4096, 4096)]
    full = Plan(
        out=out,
        presets=[PRESETS["AEIC-SE"], PRESETS["AEIC-ME"]],
        bundles=rd_kodak.shipped_bundles(),
        kodak=kodak,
        speed_sizes=[small, large],
        preset_speed_sizes=[small, large],
        # AEIC-ME's decoder differs from AEIC-SE's (g_s reads 320 latent channels, eps tiles
        # at 96 instead of 192), so its decode is timed in --quick too.
        decode_presets=["AEIC-SE", "AEIC-ME"],
        memory_sizes=huge,
        preset_memory_sizes=huge,
        threads=threads,
    )
    if not quick:
        return full
    return dataclasses.replace(
        full,
        preset_speed_sizes=[small],
        memory_sizes=[small, (2048, 2048)],
        preset_memory_sizes=[small],
        command="python -m bench.run_all --quick",
        notes=[
            "--quick: AEIC-SE and AEIC-ME at 768x512 only; memory up to 2048x2048 for "
            "the default model and at 768x512 for AEIC-SE; the full run adds 1920x1088 "
            "for both and 2048x2048 and 4096x4096 for all.",
        ],
    )


def slice_plan(work: Path) -> Plan:
    """Every section in seconds: a tiny random bundle, a tiny preset and two 64x48 images."""
    import torch

    from aeic_codec.bundles.bundle import save_bundle
    from aeic_codec.codec.model import AEIC
    from aeic_codec.nn.config import tiny_config
    from aeic_codec.tools.integerize import integerize_bundle

    (work / "weights").mkdir(parents=True, exist_ok=True)
    (work / "images").mkdir(exist_ok=True)
    torch.manual_seed(0)
    bundle = work / "weights" / "tiny-l16.safetensors"
    save_bundle(bundle, AEIC(tiny_config()), lambda_=16.0)
    images = []
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64].astype(np.float64)
    for i in range(2):
        waves = [np.sin(xx / (5 + i + c) + c) * np.cos(yy / (7 + c)) for c in range(3)]
        img = np.stack(waves, -1) * 90 + 128 + rng.normal(0, 6, (48, 64, 3))
        images.append(work / "images" / f"img{i}.png")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(images[-1])
    integerize_bundle(bundle, bundle, [rd_kodak.load_rgb(p) for p in images], "slice")
    preset = tiny_config("tiny-random")
    return Plan(
        out=work / "report",
        presets=[preset],
        bundles=[bundle],
        kodak=images,
        speed_sizes=[(48, 64)],
        preset_speed_sizes=[(48, 64)],
        decode_presets=[preset.name],
        memory_sizes=[(48, 64)],
        preset_memory_sizes=[],
        threads=1,
        qualities=(0,),
        entropy_images=2,
        speed_image=images[0],
        whole_runs=1,
        command="python -m bench.run_all --slice DIR",
        notes=["--slice: a tiny random-weight model and two generated 64x48 images."],
    )
