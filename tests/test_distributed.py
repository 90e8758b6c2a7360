"""Data-parallel training: processes under torchrun train on exactly one process's batches.

Two processes with gloo on the CPU, started by torchrun through ``aeic train`` as a user
would, against one process at the same global batch. Sums of gradients over processes
run in another order than over a batch, so the runs agree to float rounding, not bits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aeic_codec import api
from aeic_codec.bundles.bundle import load_bundle
from aeic_codec.runtime.imageio import read_image
from aeic_codec.training import (
    CropDataset,
    Group,
    TrainConfigError,
    find_images,
    load_train_config,
    train,
)
from aeic_codec.training.distributed import Share
from aeic_codec.training.forward import _noise

from .conftest import make_image

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny-test.toml"
RUN_FILES = {
    "config.json",
    "log.jsonl",
    "checkpoint.pt",
    "tiny-scratch.safetensors",
    "tiny-l2.safetensors",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for i, (h, w) in enumerate([(80, 96), (96, 112), (72, 128), (100, 90), (40, 50)]):
        Image.fromarray(make_image(h, w, seed=i)).save(root / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def long_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-test.toml with 30 steps in its first stage: time to press Ctrl-C."""
    text = CONFIG.read_text()
    assert text.count("\nsteps = 4\n") == 1
    path = tmp_path_factory.mktemp("config") / "tiny-long.toml"
    path.write_text(text.replace("\nsteps = 4\n", "\nsteps = 30\n"))
    return path


def torchrun(config: Path, data: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    """``torchrun --nproc_per_node 2 -m aeic_codec.cli train``, one CPU thread a process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "aeic_codec.cli", "train"]
    command += ["--config", str(config), "--data", str(data), "--out", str(out), "-q", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def single(config: Path, data: Path, out: Path, resume: bool = False) -> Path:
    """One process, here (the config sets one thread, and train restores the count)."""
    return train(load_train_config(config), data, out, resume=resume, progress=False)


def steps(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def assert_same_curve(a: Path, b: Path) -> None:
    """Equal but for rounding: sums over two processes round differently from one's, and
    Adam carries that on. Over 30 steps it reached 7.5e-4 relative (the loss) on an AMD
    EPYC, under 5e-4 on an Intel Xeon; a resume that lost any state (crops, noise, optimizer
    moments) is off by a percent or more within a few steps."""
    rows_a, rows_b = steps(a), steps(b)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("loss", "bpp", "mse", "psnr", "aux", "lr", "lambda"):
            assert ra[key] == pytest.approx(rb[key], rel=2e-3, abs=1e-6), (ra["step"], key)


def assert_same_weights(a: Path, b: Path) -> None:
    """Equal but for rounding, which grows a little with the steps (a relative 1e-4 after
    30 here). Adam turns the rounding of a near-zero gradient into up to a learning-rate
    step (1e-3) for a few weights in ten thousand; the rest stay within 1e-4."""
    sa = torch.load(a / "checkpoint.pt", weights_only=True)
    sb = torch.load(b / "checkpoint.pt", weights_only=True)
    assert (sa["stage_index"], sa["stage_step"]) == (sb["stage_index"], sb["stage_step"])
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    far = total = 0
    for part in ("model", "disc"):
        assert sa[part].keys() == sb[part].keys()
        for key, value in sa[part].items():
            if value.is_floating_point():
                diff = (value - sb[part][key]).abs()
                assert diff.max() < 5e-3, key
                far += int((diff > 1e-4).sum())
                total += diff.numel()
    assert far < 0.01 * total


def test_two_processes_train_exactly_what_one_does(data_dir: Path, tmp_path: Path) -> None:
    job = torchrun(CONFIG, data_dir, tmp_path / "two")
    _, err = job.communicate(timeout=600)
    assert job.returncode == 0, err
    assert err.count("training done") == 1  # rank 0 alone reports
    single(CONFIG, data_dir, tmp_path / "one")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert {p.name for p in (tmp_path / "two").iterdir()} == RUN_FILES
    assert [r["step"] for r in steps(tmp_path / "two")] == [1, 2, 3, 4, 5, 6]  # once each
    assert_same_curve(tmp_path / "two", tmp_path / "one")
    assert_same_weights(tmp_path / "two", tmp_path / "one")
    model = load_bundle(tmp_path / "two" / "tiny-l2.safetensors")
    image = make_image(64, 80, seed=3)
    out = api.decode(api.encode(image, model), model, precision="fp32")
    assert out.shape == image.shape and out.dtype == np.uint8


def test_ctrl_c_stops_every_process_and_one_process_resumes(
    data_dir: Path, long_config: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    job = torchrun(long_config, data_dir, run)
    began = time.monotonic()
    while not (run / "log.jsonl").exists() or not any(r["step"] >= 2 for r in steps(run)):
        assert job.poll() is None, job.communicate()[1]
        assert time.monotonic() - began < 600
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)  # what Ctrl-C sends torchrun, which passes it on
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0
    assert err.count("aeic: stopped after step") == 1
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    stopped = state["stage_step"]
    assert 2 <= stopped < 30 and state["stage_index"] == 0
    assert steps(run)[-1]["step"] == stopped
    assert not list(run.glob("*.safetensors"))

    single(long_config, data_dir, run, resume=True)
    single(long_config, data_dir, tmp_path / "straight")
    assert_same_curve(run, tmp_path / "straight")
    assert_same_weights(run, tmp_path / "straight")


def test_processes_share_a_batch_evenly_or_refuse() -> None:
    cpu = torch.device("cpu")
    assert [Group(r, 3, cpu).share(6) for r in range(3)] == [(0, 2, 6), (2, 4, 6), (4, 6, 6)]
    with pytest.raises(TrainConfigError, match="batch of 4 does not split evenly over 3"):
        Group(0, 3, cpu).share(4)


def test_a_share_of_the_crops_is_its_rows_of_the_whole_batch(data_dir: Path) -> None:
    files = find_images(data_dir)
    shapes = [read_image(f)[0].shape[:2] for f in files]
    whole = CropDataset(files, shapes, 64, 4, seed=3, stage=1)
    halves = [CropDataset(files, shapes, 64, 4, 3, 1, Share(i, i + 2, 4)) for i in (0, 2)]
    for index in (0, 5):
        assert torch.equal(torch.cat([h[index] for h in halves]), whole[index])


def test_a_share_of_the_noise_is_its_rows_of_the_whole_batch() -> None:
    y = torch.zeros(4, 8, 3, 5).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    whole = _noise(y, None)
    for start in (0, 2):
        torch.manual_seed(0)
        part = _noise(y[start : start + 2], Share(start, start + 2, 4))
        assert torch.equal(part, whole[start : start + 2])
