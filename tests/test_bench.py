"""A tiny slice of bench/run_all.py, so that the report's scripts cannot rot."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from aeic_codec.bundle import save_bundle
from aeic_codec.config import tiny_config
from aeic_codec.model import AEIC
from bench.run_all import Plan, run
from tests.conftest import make_image

SECTIONS = ("## Complexity", "## Speed", "## Entropy coding", "## Rate-distortion", "## Memory")


def test_report_slice_writes_every_section_and_its_plots(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bundle = tmp_path / "tiny-l16.safetensors"
    save_bundle(bundle, AEIC(tiny_config()), lambda_=16.0)
    images = []
    for i in range(2):
        images.append(tmp_path / f"img{i}.png")
        Image.fromarray(make_image(48, 64, seed=i)).save(images[-1])
    out = tmp_path / "report"
    plan = Plan(
        out=out,
        presets=[],
        bundles=[bundle],
        kodak=images,
        speed_sizes=[(48, 64)],
        preset_speed_sizes=[],
        decode_presets=[],
        memory_sizes=[(48, 64)],
        preset_memory_sizes=[],
        threads=1,
        qualities=(0,),
    )
    text = run(plan).read_text()
    for heading in SECTIONS:
        assert heading in text
    assert "| tiny |" in text  # the complexity row of the model
    assert "| tiny-l16 | 64x48 | fp32 |" in text  # its speed row
    assert "| aeic | tiny λ=16 | 2 |" in text  # its rate-distortion point over both images
    assert "| x2+AVIF | q0 | 2 |" in text
    for name in ("benchmarks-rd-psnr.png", "benchmarks-rd-msssim.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
