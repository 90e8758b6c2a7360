"""The ``aeic train`` command: a tiny run end to end and its errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from aeic_codec.cli import main

from .conftest import make_image

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_train_command_writes_a_bundle_that_encodes(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(make_image(80, 96, seed=i)).save(data / f"{i}.png")
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--config",
            str(CONFIGS / "tiny-test.toml"),
            "--data",
            str(data),
            "--out",
            str(run),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.stderr
    bundles = sorted(run.glob("*.safetensors"))
    assert bundles
    src = tmp_path / "x.png"
    Image.fromarray(make_image(40, 40)).save(src)
    enc = CliRunner().invoke(
        main, ["encode", str(src), "-o", str(tmp_path / "x.aeic"), "--weights", str(bundles[-1])]
    )
    assert enc.exit_code == 0, enc.stderr


def test_train_config_error_is_one_line(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nlamda = 3\n')
    result = CliRunner().invoke(main, ["train", "--config", str(bad), "--data", str(tmp_path)])
    assert result.exit_code == 1
    assert "bad.toml" in result.stderr and "Traceback" not in result.stderr


def test_train_without_the_training_extra_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "peft", None)  # as after the Quick start's install
    args = ["train", "--config", str(CONFIGS / "tiny-test.toml"), "--data", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and result.stderr == (
        "aeic: error: aeic train needs the training extra: pip install '.[train]' "
        "in aeic's folder\n"
    )
    training = (CONFIGS.parent / "README.md").read_text().split("## Training", 1)[1]
    assert "pip install '.[train]'" in training.split("```sh", 1)[0]  # said before its commands
