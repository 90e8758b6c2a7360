"""Realism training end to end on tiny stand-ins: caches, steps, resume, export.

Runs go through the one entry point, ``train`` (and ``aeic train`` and the
``python -m aeic_codec.training.realism`` alias in the last tests).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from aeic_codec import api
from aeic_codec.bundles.bundle import load_bundle, read_info, save_bundle
from aeic_codec.codec.model import AEIC
from aeic_codec.nn.config import AEIC_SMALL_TAEF2, tiny_config
from aeic_codec.nn.tiny_vae import TinyDecoder, TinyEncoder
from aeic_codec.training import RealismConfig, TrainConfigError, load_train_config, train
from aeic_codec.training.losses import spectrum_distance
from aeic_codec.training.realism_data import crops
from aeic_codec.training.realism_trainer import export
from tests.conftest import make_image


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny bundle, random TAEF2-layout files and three training photos."""
    torch.manual_seed(3)
    root = tmp_path_factory.mktemp("realism-train")
    bundle = root / "tiny-l8.safetensors"
    save_bundle(bundle, AEIC(tiny_config()), lambda_=8.0)
    taef2 = root / "taef2"
    taef2.mkdir()
    save_file(TinyDecoder(AEIC_SMALL_TAEF2).state_dict(), str(taef2 / "taef2_decoder.safetensors"))
    save_file(TinyEncoder().state_dict(), str(taef2 / "taef2_encoder.safetensors"))
    data = root / "photos"
    data.mkdir()
    for seed, (h, w) in enumerate([(128, 128), (96, 160), (200, 150)]):
        Image.fromarray(make_image(h, w, seed)).save(data / f"p{seed}.png")
    return {"root": root, "bundle": bundle, "taef2": taef2, "data": data}


def config(setup: dict[str, Path], steps: int) -> RealismConfig:
    return RealismConfig(
        base_bundle=str(setup["bundle"]),
        taef2=str(setup["taef2"]),
        steps=steps,
        crop=64,
        batch=2,
        threads=1,
        adv_start=1,
        adv_ramp=1,
        disc_width=8,
        eval_dir=str(setup["data"]),
        eval_images=1,
        eval_every=2,
        log_every=1,
        max_pixels=20_000,
    )


def test_crops_are_a_function_of_the_step() -> None:
    ys = [torch.randn(16, 4, 6), torch.randn(16, 2, 2)]
    lats = [torch.randn(32, 16, 24), torch.randn(32, 8, 8)]
    a, b = crops(ys, lats, 64, 3, 0, 5), crops(ys, lats, 64, 3, 0, 5)
    assert a[2] is None
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 16, 2, 2) and a[1].shape == (3, 32, 8, 8)
    assert not torch.equal(crops(ys, lats, 64, 3, 0, 6)[1], a[1])


def test_a_run_resumes_on_the_same_bits_and_exports(setup: dict[str, Path]) -> None:
    straight = setup["root"] / "straight"
    train(config(setup, 3), setup["data"], straight, resume=False)
    split = setup["root"] / "split"
    train(config(setup, 2), setup["data"], split, resume=False)
    with pytest.raises(TrainConfigError, match="already holds a run"):
        train(config(setup, 3), setup["data"], split, resume=False)
    train(config(setup, 3), setup["data"], split, resume=True)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    for key, value in a["decoder"].items():
        assert torch.equal(value, b["decoder"][key]), key
    rows = (straight / "log.jsonl").read_text().splitlines()
    assert sum('"eval"' in r for r in rows) == 2  # steps 2 and 3 (the last)
    assert len(list(straight.glob("cache-*.pt"))) == 2

    out = setup["root"] / "with-realism.safetensors"
    identity = export(config(setup, 3), straight / "checkpoint.pt", out, "test.toml")
    info = read_info(out)
    assert identity == info.identity == read_info(setup["bundle"]).identity
    assert info.provenance["realism"] == {"config": "test.toml", "steps": 3, "seed": 0}
    model = load_bundle(out, realism=True)
    image = make_image(64, 96)
    picture = api.decode(api.encode(image, model), model, realism=1, precision="fp32")
    assert picture.shape == image.shape and picture.dtype == np.uint8


def test_config_paths_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    base = 'base_bundle = "w/b.safetensors"\n'
    path.write_text(base + "crop = 128\n")
    cfg = load_train_config(path)
    assert isinstance(cfg, RealismConfig) and cfg.name == "r"
    assert cfg.base_bundle == str((tmp_path / "w/b.safetensors").resolve())
    path.write_text(base + "crop = 100\n")
    with pytest.raises(TrainConfigError, match="multiple of 64"):
        load_train_config(path)
    path.write_text(base + "steps = 3\nbogus = 1\n")
    with pytest.raises(TrainConfigError, match=r"r\.toml: top level: unknown key 'bogus'"):
        load_train_config(path)
    path.write_text(base + "steps = 'many'\n")
    with pytest.raises(TrainConfigError, match="steps must be a int"):
        load_train_config(path)
    path.write_text(base + "device = 'cuda'\n")
    with pytest.raises(TrainConfigError, match="device must be auto or cpu"):
        load_train_config(path)
    for bad in ("spectrum_sectors = 0", "spectrum_window = 4", "spectrum_window = 256"):
        path.write_text(base + bad + "\n")
        with pytest.raises(TrainConfigError, match="spectrum_sectors must be at least 1"):
            load_train_config(path)


def test_the_shipped_realism_configs_load_as_realism_runs() -> None:
    configs = Path(__file__).resolve().parents[1] / "configs"
    paths = sorted(configs.glob("realism-*.toml"))
    assert paths
    for path in paths:
        cfg = load_train_config(path)
        assert isinstance(cfg, RealismConfig) and cfg.name == path.stem, path.name
        assert Path(cfg.base_bundle).is_absolute() and cfg.base_bundle.endswith(".safetensors")
    texture = load_train_config(configs / "realism-l64-texture.toml")
    assert isinstance(texture, RealismConfig)
    assert texture.init == str(
        (configs / "../../runs/realism-l12-texture/checkpoint-318.pt").resolve()
    )
    assert (texture.steps, texture.lr, texture.image, texture.adv_start) == (100, 5e-5, 30.0, 0)


def _stripes(angle: float, period: float, side: int = 128) -> torch.Tensor:
    """A grey picture in [-1, 1] of sine stripes whose wave vector points along ``angle``."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    phase = (xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period
    return (0.5 * torch.sin(phase)).expand(1, 3, side, side).float()


def test_the_oriented_spectrum_term_sees_direction_the_radial_one_cannot() -> None:
    across, along = _stripes(0.0, 5.0), _stripes(math.pi / 2, 5.0)
    diagonal = _stripes(math.pi / 4, 5.0)
    assert float(spectrum_distance(across, across, window=32, sectors=4)) == 0.0
    # The same power at the same frequency in another direction: nearly free for the
    # radial, whole-picture term (which this term was before sectors), costly with them.
    for other in (along, diagonal):
        radial = float(spectrum_distance(across, other))
        oriented = float(spectrum_distance(across, other, window=32, sectors=4))
        assert radial < 0.1 and oriented > 10.0


def test_photo_crops_cover_the_region_of_the_latent_crops() -> None:
    lats = [torch.arange(8 * 8, dtype=torch.float32).reshape(1, 8, 8).expand(32, 8, 8)]
    photo = torch.arange(64 * 64).reshape(1, 64, 64).expand(3, 64, 64)
    photos = [(photo % 251).to(torch.uint8)]
    for step in range(4):
        _, lat, x = crops([torch.zeros(16, 2, 2)], lats, 64, 2, 0, step, photos)
        assert x is not None and x.shape == (2, 3, 64, 64)
        assert torch.equal(x[0], (photos[0].float() / 127.5 - 1))
        assert torch.equal(lat[0], lats[0])


def test_the_image_term_trains_d_frozen(setup: dict[str, Path]) -> None:
    out = setup["root"] / "image"
    cfg = replace(
        config(setup, 2),
        image=10.0,
        image_crop=32,
        image_pool=2,
        phase=100.0,
        pixel=1.0,
        perceptual=1.0,
    )
    train(cfg, setup["data"], out, resume=False)
    photos = torch.load(out / "cache-photos.pt", weights_only=True)
    assert [p.shape for p in photos] == [(3, 128, 128), (3, 128, 192), (3, 192, 128)]
    rows = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    terms = ("image", "phase", "pixel", "perceptual")
    assert [all(r[k] > 0 for k in terms) for r in rows if "image" in r] == [True, True]
    evaluated = [r["eval"] for r in rows if "eval" in r]
    assert [r["lattice"] > 0 and r["orientation"] > 0 for r in evaluated] == [True]
    vae = torch.load(out / "checkpoint.pt", weights_only=True)["decoder"]
    for key, value in load_file(str(setup["taef2"] / "taef2_decoder.safetensors")).items():
        assert torch.equal(vae[f"vae.{key}"], value), key


def test_a_log_row_after_resuming_averages_the_steps_it_covers(setup: dict[str, Path]) -> None:
    every = setup["root"] / "every-step"
    train(config(setup, 2), setup["data"], every, resume=False)
    paired = setup["root"] / "paired"
    train(replace(config(setup, 1), log_every=2), setup["data"], paired, resume=False)
    train(replace(config(setup, 2), log_every=2), setup["data"], paired, resume=True)
    rows = [json.loads(r) for r in (every / "log.jsonl").read_text().splitlines()]
    want = next(r for r in rows if r["step"] == 2 and "latent" in r)
    rows = [json.loads(r) for r in (paired / "log.jsonl").read_text().splitlines()]
    got = next(r for r in rows if r["step"] == 2 and "latent" in r)
    assert got["latent"] == pytest.approx(want["latent"], rel=1e-6)
    assert got["adv"] == pytest.approx(want["adv"], rel=1e-6)


def straight_and_split(
    setup: dict[str, Path], cfg: RealismConfig, name: str
) -> tuple[dict, dict, Path]:
    """``cfg`` run straight and split (resumed for its last step): both checkpoints, the folder."""
    straight, split = setup["root"] / f"{name}-straight", setup["root"] / f"{name}-split"
    train(cfg, setup["data"], straight, resume=False)
    train(replace(cfg, steps=cfg.steps - 1), setup["data"], split, resume=False)
    train(cfg, setup["data"], split, resume=True)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    return a, b, straight


def test_the_renderings_critic_resumes_and_a_bundle_starts_a_run(setup: dict[str, Path]) -> None:
    cfg = replace(config(setup, 3), image_crop=32, image_adv=0.5)
    a, b, straight = straight_and_split(setup, cfg, "critic")
    assert a["image_critic"].keys() == b["image_critic"].keys()
    for key, value in a["image_critic"].items():
        assert torch.equal(value, b["image_critic"][key]), key
    rows = [json.loads(r) for r in (straight / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "latent" in r]
    assert all(r["image_disc"] > 0 for r in rows)  # the critic trains from step 0
    assert ["image_adv" in r for r in rows] == [False, True, True]  # adv_start = 1

    bundle = setup["root"] / "critic.safetensors"
    export(cfg, straight / "checkpoint.pt", bundle, "test.toml")
    shipped = load_bundle(bundle, encoder=False, decoder=False, realism=True).realism
    started = setup["root"] / "from-bundle"
    train(replace(cfg, init=str(bundle), steps=0), setup["data"], started, resume=False)
    state = torch.load(started / "checkpoint.pt", weights_only=True)
    assert state["step"] == 0
    for key, value in shipped.state_dict().items():  # the int8-stored weights, as shipped
        assert torch.equal(state["decoder"][key], value), key


def test_a_decoder_without_noise_starts_one_with_the_noise_off(setup: dict[str, Path]) -> None:
    plain = setup["root"] / "before-noise"
    train(config(setup, 1), setup["data"], plain, resume=False)
    cfg = replace(
        config(setup, 0), preset="aeic-small-taef2-noise", init=str(plain / "checkpoint.pt")
    )
    noisy = setup["root"] / "with-noise"
    train(cfg, setup["data"], noisy, resume=False)
    before = torch.load(plain / "checkpoint.pt", weights_only=True)["decoder"]
    after = torch.load(noisy / "checkpoint.pt", weights_only=True)["decoder"]
    assert set(after) - set(before) == {"denoiser.noise_scale"}
    assert not after["denoiser.noise_scale"].any()
    assert all(torch.equal(before[k], after[k]) for k in before)
    train(replace(cfg, steps=1), setup["data"], noisy, resume=True)
    trained = torch.load(noisy / "checkpoint.pt", weights_only=True)["decoder"]
    assert trained["denoiser.noise_scale"].abs().min() > 0  # every channel trains from zero

    started = setup["root"] / "noise-started"
    train(replace(cfg, noise_init=0.3), setup["data"], started, resume=False)
    scales = torch.load(started / "checkpoint.pt", weights_only=True)["decoder"]
    assert torch.equal(
        scales["denoiser.noise_scale"], torch.full_like(scales["denoiser.noise_scale"], 0.3)
    )
    with pytest.raises(ValueError, match="no noise input"):
        train(
            replace(cfg, preset="aeic-small-taef2", init="", noise_init=0.3),
            setup["data"],
            started / "x",
            resume=False,
        )

    foreign = replace(cfg, preset="aeic-small-taef2", init=str(noisy / "checkpoint.pt"))
    with pytest.raises(ValueError, match="not a realism decoder of preset aeic-small-taef2"):
        train(foreign, setup["data"], setup["root"] / "foreign", resume=False)


def test_a_moving_average_resumes_exactly_and_is_what_ships(setup: dict[str, Path]) -> None:
    cfg = replace(config(setup, 3), ema=0.5, lr=0.01, warmup=1)  # big steps: ema != last
    a, b, straight = straight_and_split(setup, cfg, "ema")
    assert a["ema"].keys() == b["ema"].keys()
    for key, value in a["ema"].items():
        assert torch.equal(value, b["ema"][key]), key
        assert not key.startswith("vae.")
    assert any(not torch.equal(v, a["decoder"][k]) for k, v in a["ema"].items())
    assert sorted(p.name for p in straight.glob("checkpoint-*.pt")) == [
        "checkpoint-2.pt",
        "checkpoint-3.pt",
    ]

    out = setup["root"] / "ema.safetensors"
    export(cfg, straight / "checkpoint.pt", out, "ema.toml")
    assert read_info(out).provenance["realism"]["ema"] == 0.5
    shipped = load_bundle(out, encoder=False, decoder=False, realism=True).realism.state_dict()

    def gap(weights: dict[str, torch.Tensor], key: str) -> float:
        return float((shipped[key] - weights[key]).abs().max() / weights[key].abs().max())

    keys = [k for k in a["ema"] if a["ema"][k].dim() > 1]  # stored in int8: 1/127 steps
    assert max(gap(a["ema"], k) for k in keys) <= 1 / 127
    assert max(gap(a["decoder"], k) for k in keys) > 2 / 127


def test_a_run_starts_from_the_average_another_run_kept(setup: dict[str, Path]) -> None:
    averaged = setup["root"] / "averaged"
    first = replace(config(setup, 2), ema=0.5, lr=0.01, warmup=1)
    train(first, setup["data"], averaged, resume=False)
    state = torch.load(averaged / "checkpoint.pt", weights_only=True)
    follow = setup["root"] / "follow"
    cfg = replace(config(setup, 0), init=str(averaged / "checkpoint.pt"))
    train(cfg, setup["data"], follow, resume=False)
    started = torch.load(follow / "checkpoint.pt", weights_only=True)["decoder"]
    for key, value in state["decoder"].items():
        assert torch.equal(started[key], state["ema"].get(key, value)), key


def test_band_kernels_stay_zero(setup: dict[str, Path]) -> None:
    out = setup["root"] / "no-bands"
    train(replace(config(setup, 2), no_band_kernels=True), setup["data"], out, resume=False)
    state = torch.load(out / "checkpoint.pt", weights_only=True)["decoder"]
    bands = [k for k in state if k.startswith("g_s.") and (".dwconv_w." in k or ".dwconv_h." in k)]
    assert bands and all(not state[k].any() for k in bands)
    others = [k for k in state if k.startswith("g_s.") and ".dwconv_hw." in k]
    assert others and all(state[k].any() for k in others)  # the 3x3 branch still trains


def realism_toml(setup: dict[str, Path], steps: int) -> Path:
    """A realism configuration file for the tiny stand-ins (the kind is its base_bundle)."""
    path = setup["root"] / f"realism-tiny-{steps}.toml"
    lines = [
        f'base_bundle = "{setup["bundle"].name}"',
        'taef2 = "taef2"',
        'eval_dir = "photos"',
        f"steps = {steps}",
        "crop = 64",
        "image_crop = 32",
        "batch = 2",
        "threads = 1",
        "adv_start = 1",
        "adv_ramp = 1",
        "disc_width = 8",
        "eval_images = 1",
        "eval_every = 1",
        "log_every = 1",
        "max_pixels = 20_000",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_aeic_train_runs_a_realism_config(setup: dict[str, Path]) -> None:
    from click.testing import CliRunner

    from aeic_codec.cli import main

    out = setup["root"] / "cli-run"
    args = ["train", "--config", str(realism_toml(setup, 2)), "--data", str(setup["data"])]
    result = CliRunner().invoke(main, [*args, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    assert json.loads((out / "config.json").read_text())["name"] == "realism-tiny-2"
    assert sorted(p.name for p in out.glob("checkpoint-*.pt")) == [
        "checkpoint-1.pt",
        "checkpoint-2.pt",
    ]
    assert "training done; checkpoint" in result.stderr
    gpu = CliRunner().invoke(main, [*args, "--out", str(out) + "-gpu", "--device", "cuda"])
    assert gpu.exit_code == 1 and "device must be auto or cpu" in gpu.stderr

    bundle = setup["root"] / "cli.safetensors"
    export = ["train", "--config", str(realism_toml(setup, 2)), "--out", str(out)]
    done = CliRunner().invoke(main, [*export, "--export", str(bundle), "--step", "1"])
    assert done.exit_code == 0, done.stderr
    assert read_info(bundle).provenance["realism"]["steps"] == 1
    assert f"aeic: wrote {bundle}" in done.stderr
    lone_step = CliRunner().invoke(main, [*args, "--out", str(out), "--step", "1"])
    assert lone_step.exit_code == 2 and "--step goes with --export" in lone_step.stderr
    no_data = CliRunner().invoke(main, export)
    assert no_data.exit_code == 2 and "--data" in no_data.stderr


def test_export_is_only_for_realism_configs(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from aeic_codec.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.toml"
    args = ["train", "--config", str(config), "--export", str(tmp_path / "x.safetensors")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--export is for realism configurations" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_the_realism_module_is_an_alias_that_also_exports(setup: dict[str, Path]) -> None:
    from aeic_codec.training.realism import main

    config, out = realism_toml(setup, 2), setup["root"] / "alias-run"
    main(["--config", str(config), "--data", str(setup["data"]), "--out", str(out)])
    with pytest.raises(SystemExit, match="already holds a run"):
        main(["--config", str(config), "--data", str(setup["data"]), "--out", str(out)])
    # --resume with nothing to resume starts the run, as it always did here.
    fresh = setup["root"] / "alias-fresh"
    main(["--config", str(config), "--data", str(setup["data"]), "--out", str(fresh), "--resume"])
    a = torch.load(out / "checkpoint.pt", weights_only=True)["decoder"]
    b = torch.load(fresh / "checkpoint.pt", weights_only=True)["decoder"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())

    bundle = setup["root"] / "alias.safetensors"
    main(["--config", str(config), "--out", str(out), "--export", str(bundle), "--step", "1"])
    provenance = read_info(bundle).provenance["realism"]
    assert provenance == {"config": config.name, "steps": 1, "seed": 0}


def test_a_run_with_a_noise_input_resumes_on_the_same_bits(setup: dict[str, Path]) -> None:
    # The caches (and the base bundle they need) are made before the checkpoint's RNG state
    # comes back, so the noise drawn after resuming is the noise an unbroken run draws.
    cfg = replace(config(setup, 3), preset="aeic-small-taef2-noise", noise_init=0.2)
    a, b, _ = straight_and_split(setup, cfg, "noise-resume")
    for key, value in a["decoder"].items():
        assert torch.equal(value, b["decoder"][key]), key
