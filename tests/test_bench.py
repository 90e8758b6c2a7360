"""A tiny slice of bench/run_all.py, so that the report's scripts cannot rot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.fast_encoder import g_a_bytes_at
from bench.rd_kodak import Point, table
from bench.readme_figures import README, shipped_figures, with_figures
from bench.run_all import run, slice_plan

from .conftest import make_image

SECTIONS = (
    "## Complexity",
    "## Speed",
    "## Entropy coding",
    "## Integer entropy path",
    "## Rate-distortion on Kodak",
    "## Memory",
)
PNG = b"\x89PNG\r\n\x1a\n"


def test_report_slice_writes_every_section_and_its_plots(tmp_path: Path) -> None:
    plan = slice_plan(tmp_path)
    text = run(plan).read_text()
    for heading in SECTIONS:
        assert heading in text
    assert text.count("*Measured on: ") == len(SECTIONS)  # every section names its machine
    assert "| tiny | encoder side |" in text  # the bundle's complexity rows
    assert "| tiny-random | g_s |" in text  # and the random preset's
    assert "| tiny-l16 | 64x48 |" in text  # speed (and memory) rows of the bundle
    assert "| tiny-random | 64x48 |" in text  # speed row of the preset
    assert "| JPEG q1 | 64x48 |" in text  # anchor encode speed
    assert "| `aeic decode` | 16x16 file |" in text  # start-up
    assert "| `aeic encode` | 64x48 PNG |" in text  # whole commands, with their cost
    assert '| `python -c "import torch"` | - |' in text  # beyond the floor they stand on
    assert "| tiny-l16 | all |" in text  # entropy coding, payload row
    assert "| tiny-l16 | " in text.split("## Integer entropy path")[1]  # its rate cost
    assert "| AVIF q0 (Pillow) | " in text and "| tiny-l16, integer path | " in text
    assert "| aeic | tiny λ=16 | 2 |" in text  # rate-distortion over both images
    assert "| x2+AVIF | q0 | 2 |" in text
    assert "| 0.0241 | 22.16 | 0.781 |" in text  # the paper's AEIC-SE, for scale
    for name in ("benchmarks-rd-psnr.png", "benchmarks-rd-msssim.png", "benchmarks-crops.png"):
        assert (plan.out / name).read_bytes()[:8] == PNG
        assert f"]({name})" in text  # linked from the report


def test_the_32_pixel_lattice_sees_a_pattern_the_8_pixel_one_cannot() -> None:
    src = make_image(128, 160)
    y, x = np.mgrid[:128, :160]
    squares = (((y % 32) < 16) ^ ((x % 32) < 16)) * 12.0  # 16-pixel squares, period 32
    out = np.clip(src + squares[..., None], 0, 255).astype(np.uint8)
    point = Point("aeic", "test")
    point.add("a", 100, src, out, 0.0, 0.0)
    point.finish()
    assert point.lattice < 1.0 and point.lattice32 > 5.0  # constant over every 8x8 cell
    assert f"| {point.lattice:.2f} | {point.lattice32:.2f} | {point.orientation:.2f} |" in table(
        [point]
    )
    # The squares' edges run along the same axes in both pictures: the direction holds.
    assert 0.0 < point.orientation < 0.5


def test_the_readme_states_the_shipped_bundles_figures() -> None:
    text = README.read_text()
    assert with_figures(text, shipped_figures()) == text, "run python -m bench.readme_figures"


def test_bytes_at_a_psnr_are_read_off_the_rate_curve_through_the_anchor() -> None:
    sweep = [{"psnr": 20.0, "bpp": 0.01}, {"psnr": 22.0, "bpp": 0.04}, {"psnr": 21.0, "bpp": 0.02}]
    # The anchor's own PSNR gives its bpp; one dB up the curve, twice the bytes.
    assert g_a_bytes_at(21.0, (21.0, 0.03), sweep) == pytest.approx(0.03)
    assert g_a_bytes_at(22.0, (21.0, 0.03), sweep) == pytest.approx(0.06)
    assert g_a_bytes_at(20.5, (21.0, 0.03), sweep) == pytest.approx(0.03 / 2**0.5)
