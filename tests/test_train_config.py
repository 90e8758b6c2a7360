"""The TOML schema is the dataclasses': every field is a key, with its type and default."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from aeic_codec.nn.config import tiny_config
from aeic_codec.training import LossWeights, StageConfig, TrainConfig, TrainConfigError
from aeic_codec.training.config import parse_train_config

EVERY_KEY = """
name = "all"
teacher_bundle = "teacher.safetensors"
seed = 7
threads = 2
bf16 = true
latent_std = 3
encoder_dtype = "bf16"
decoder_dtype = "int8"
device = "cpu"
workers = 0
log_every = 5
[model]
preset = "tiny"
[lora]
rank = 8
alpha = 2
[discriminator]
width = 16
[eval]
dir = "kodak"
every = 100
images = 2
[checkpoint]
every = 50
minutes = 5
[[stages]]
name = "one"
steps = 10
lr = 1e-3
schedule = "cosine"
warmup = 2
lr_min = 1e-5
lambda = 4
lambda_start = 1
lambda_ramp = 5
crop = 128
batch = 6
accum = 2
clip = 0.5
train = ["encoder", "g_s"]
aux_lr = 1e-2
disc_lr = 1e-4
export = "out"
export_lambda = 8
[stages.loss]
mse = 2
msssim = 0.5
lpips = 0.1
dists = 0.2
adv = 0.01
distill_enc = 0.5
distill_dec = 0.001
"""


def test_every_field_is_a_key() -> None:
    base = Path("/configs")
    config = parse_train_config(tomllib.loads(EVERY_KEY), base)
    stage = StageConfig(
        name="one",
        steps=10,
        lr=1e-3,
        lambda_=4.0,
        crop=128,
        batch=6,
        train=("encoder", "g_s"),
        export="out",
        schedule="cosine",
        warmup=2,
        lr_min=1e-5,
        lambda_start=1.0,
        lambda_ramp=5,
        accum=2,
        clip=0.5,
        aux_lr=1e-2,
        disc_lr=1e-4,
        export_lambda=8.0,
        loss=LossWeights(2.0, 0.5, 0.1, 0.2, 0.01, 0.5, 0.001),
    )
    expected = TrainConfig(
        model=tiny_config(),
        stages=(stage,),
        name="all",
        init_bundle=None,
        teacher_bundle=base / "teacher.safetensors",
        seed=7,
        threads=2,
        bf16=True,
        latent_std=3.0,
        encoder_dtype="bf16",
        decoder_dtype="int8",
        device="cpu",
        workers=0,
        log_every=5,
        lora_rank=8,
        lora_alpha=2.0,
        disc_width=16,
        eval_dir=base / "kodak",
        eval_every=100,
        eval_images=2,
        checkpoint_every=50,
        checkpoint_minutes=5.0,
    )
    assert config == expected
    # Nothing left at its default: a field the TOML could not reach would be.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    reached = {k for k, v in dataclasses.asdict(config).items() if v != defaults[k]}
    assert reached == {f.name for f in dataclasses.fields(TrainConfig)} - {"init_bundle"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[lora]\nrnak = 4\n", r"\[lora\]: unknown key 'rnak' \(did you mean 'rank'\?\)"),
        ("[eval]\nevery = 'often'\n", r"\[eval\]: every must be a int, got 'often'"),
        ("lora = 3\n", r"\[lora\] must be a table"),
        ("device = 'tpu'\n", "device must be auto, cpu, cuda"),
    ],
)
def test_errors_in_sub_tables_name_them(text: str, message: str) -> None:
    stage = "[[stages]]\nsteps = 1\nlr = 1e-3\nlambda = 1\ncrop = 64\nbatch = 1\ntrain = ['g_s']\n"
    data = tomllib.loads(text + "[model]\npreset = 'tiny'\n" + stage)
    with pytest.raises(TrainConfigError, match=message):
        parse_train_config(data, Path("."))
