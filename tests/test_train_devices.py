"""Training on the devices this machine has; the others are skipped, never imitated."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from aeic_codec.cli import main
from aeic_codec.training import Trainer, load_train_config

from .conftest import make_image

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.toml"
HAS_CUDA = torch.cuda.is_available()
HAS_MPS = torch.backends.mps.is_available()


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(make_image(72, 80, seed=i)).save(folder / f"{i}.png")
    return folder


def one_stage_config(tmp_path: Path, device: str) -> Path:
    """tiny-test.toml with its first stage alone, cut to one step, on ``device``."""
    text = CONFIG.read_text().split("\n[[stages]]\n")
    text = "\n[[stages]]\n".join(text[:2]).replace("steps = 4", "steps = 1")
    path = tmp_path / "one-step.toml"
    path.write_text(text.replace('device = "cpu"', f'device = "{device}"'))
    return path


def test_device_option_overrides_the_config(tmp_path: Path, data: Path) -> None:
    config = one_stage_config(tmp_path, "cuda" if not HAS_CUDA else "cpu")
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--data", str(data), "--out", str(run)]
    result = CliRunner().invoke(main, [*args, "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.stderr
    assert json.loads((run / "config.json").read_text())["device"] == "cpu"
    assert (run / "tiny-scratch.safetensors").exists()


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_a_missing_gpu_is_one_line(tmp_path: Path, data: Path) -> None:
    config = one_stage_config(tmp_path, "cpu")
    args = ["train", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(main, [*args, "--device", "cuda"])
    assert result.exit_code == 1
    assert "no CUDA GPU" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "device",
    [
        pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")),
        pytest.param("mps", marks=pytest.mark.skipif(not HAS_MPS, reason="no MPS device")),
    ],
)
def test_a_gpu_step_trains_in_bf16_where_supported(device: str) -> None:
    config = load_train_config(CONFIG)
    config = dataclasses.replace(config, stages=config.stages[:1], device=device, bf16=True)
    trainer = Trainer(config, device)
    supported = (
        torch.cuda.is_bf16_supported()
        if device == "cuda"
        else torch.backends.mps.is_macos_or_newer(14, 0)
    )
    assert trainer.bf16 == supported
    assert all(p.device.type == device for p in trainer.model.parameters())
    first = next(trainer.model.g_a.parameters())
    before = first.detach().clone()
    metrics = trainer.train_step([torch.rand(2, 3, 64, 64) * 2 - 1])
    assert math.isfinite(metrics["loss"]) and metrics["bpp"] > 0
    assert not torch.equal(first.detach(), before)
