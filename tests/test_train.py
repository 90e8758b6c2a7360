"""Training: a tiny model learns, resumes on the same bits, exports a working bundle, distils."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from aeic_codec import api
from aeic_codec.bundles.bundle import BundleError, load_bundle, save_bundle, stored_value
from aeic_codec.codec.colour import apply_grid, grid_levels
from aeic_codec.codec.metrics import ms_ssim, ms_ssim_scales
from aeic_codec.codec.model import AEIC
from aeic_codec.format.container import unpack
from aeic_codec.nn.config import PRESETS, tiny_config
from aeic_codec.runtime.cpu import avx2_ceiling
from aeic_codec.training import (
    TrainConfig,
    TrainConfigError,
    Trainer,
    TrainingStopped,
    colour_grid_fix,
    load_train_config,
    parse_train_config,
    train,
)

from .conftest import make_image

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.toml"


def tiny(**stage_changes: object) -> TrainConfig:
    """tiny-test.toml cut to its first stage, with ``stage_changes`` applied to it."""
    config = load_train_config(CONFIG)
    return dataclasses.replace(
        config, stages=(dataclasses.replace(config.stages[0], **stage_changes),)
    )


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One thread: these models are too small to share, and the machine may be busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five PNGs in nested folders, one smaller than the 64 px crop."""
    root = tmp_path_factory.mktemp("data")
    (root / "sub").mkdir()
    for i, (h, w) in enumerate([(80, 96), (96, 112), (72, 128), (100, 90)]):
        Image.fromarray(make_image(h, w, seed=i)).save(
            root / ("sub" if i % 2 else ".") / f"{i}.png"
        )
    Image.fromarray(make_image(40, 50, seed=7)).save(root / "small.png")
    return root


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-step run with a large lambda, evaluated once at its end."""
    config = tiny(steps=30, lambda_=50.0, schedule="constant", warmup=0, export="tiny-trained")
    config = dataclasses.replace(config, eval_dir=data_dir, eval_every=30, eval_images=1)
    run = tmp_path_factory.mktemp("run")
    assert train(config, data_dir, run, progress=False) == run / "tiny-trained.safetensors"
    return run


def test_tiny_model_trains_and_the_rate_falls(trained: Path) -> None:
    steps = [r for r in rows(trained) if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    assert all(math.isfinite(r[k]) for r in steps for k in ("loss", "bpp", "mse", "aux"))
    first = np.mean([r["bpp"] for r in steps[:5]])
    last = np.mean([r["bpp"] for r in steps[-5:]])
    assert last < 0.8 * first
    notes = [r["note"] for r in rows(trained) if "note" in r]
    assert any("1 of 5 images are smaller than the 64 px crop" in n for n in notes)
    (result,) = [r["eval"] for r in rows(trained) if "eval" in r]
    assert result["images"] == 1 and result["bpp"] > 0 and math.isfinite(result["psnr"])


def test_exported_bundle_encodes_and_decodes(trained: Path) -> None:
    model = load_bundle(trained / "tiny-trained.safetensors")
    assert model.lambda_ == 50.0
    image = make_image(70, 90, seed=3)
    data = api.encode_image(image, model).data
    out = api.decode(data, model, precision="fp32")
    assert out.shape == image.shape and out.dtype == np.uint8


def test_stopped_and_resumed_run_ends_on_the_same_bits(data_dir: Path, tmp_path: Path) -> None:
    # Both stages of tiny-test.toml: scratch (4 steps, cosine), then LoRA with gradient
    # accumulation, a lambda ramp and the discriminator (2 steps).
    config = load_train_config(CONFIG)
    straight = train(config, data_dir, tmp_path / "a", progress=False)
    with pytest.raises(TrainingStopped) as stopped:
        train(config, data_dir, tmp_path / "b", progress=False, stop_at=3)
    assert stopped.value.step == 3
    resumed = train(config, data_dir, tmp_path / "b", resume=True, progress=False)

    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for part in ("model", "disc"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), key
    assert load_bundle(straight).identity == load_bundle(resumed).identity
    assert [r["step"] for r in rows(tmp_path / "b") if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_distillation_trains_the_projections(tmp_path: Path) -> None:
    torch.manual_seed(5)
    teacher_cfg = tiny_config(
        "teacher", ga_dims=(8, 8, 16, 16, 24), latent_channels=24, context_dim=24, denoiser_in=16
    )
    teacher = tmp_path / "teacher.safetensors"
    save_bundle(teacher, AEIC(teacher_cfg))
    loss = dataclasses.replace(tiny().stages[0].loss, distill_enc=0.5, distill_dec=0.001)
    config = dataclasses.replace(tiny(loss=loss), teacher_bundle=teacher)
    trainer = Trainer(config)
    metrics = trainer.train_step([torch.rand(2, 3, 64, 64) * 2 - 1])
    assert metrics["distill_enc"] > 0 and metrics["distill_dec"] > 0
    proj = trainer.distiller.proj
    # Encoder features always go through a projection, decoder ones where channels differ.
    assert {"y", "z", "base", "y_hat", "l_t"} <= set(proj) and "l_res" not in proj
    for name, conv in proj.items():
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[stages]]\nsteps = 1\nlr = 1e-3\nlamda = 1\n", "did you mean 'lambda'"),
        ("[[stages]]\nlr = 1e-3\nlambda = 1\ncrop = 64\nbatch = 1\ntrain = ['g_s']\n", "'steps'"),
        (
            "[[stages]]\nsteps = 1\nlr = 1e-3\nlambda = 1\ncrop = 64\nbatch = 1\ntrain = ['gs']\n",
            "did you mean 'g_s'",
        ),
        (
            "[[stages]]\nsteps = 1\nlr = 1e-3\nlambda = 1\ncrop = 60\nbatch = 1\ntrain = ['g_s']\n",
            "multiple of 64",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[model]\npreset = 'tiny'\n" + text)
    with pytest.raises(TrainConfigError, match=message):
        load_train_config(path)


def test_model_section_without_preset_lists_missing_fields(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nlatent_channels = 16\n[[stages]]\n")
    with pytest.raises(TrainConfigError, match=r"missing .*ga_dims"):
        load_train_config(path)


def test_example_configs_parse() -> None:
    configs = CONFIG.parent
    small = load_train_config(configs / "small-default.toml")
    assert small.model == PRESETS["aeic-small"] and small.stages[0].crop == 128
    assert [s.lambda_ for s in small.stages] == [48.0, 48.0, 128.0, 400.0]
    assert small.latent_std == 4.0 and small.encoder_dtype == "bf16"
    # Continuing from the shipped highest-rate bundle takes its shape from the bundle.
    more = load_train_config(configs / "small-continue.toml")
    assert more.init_bundle is not None and more.init_bundle.name == "aeic-small-l12.safetensors"
    assert more.model == PRESETS["aeic-small"].replace(colour_grid=64)
    grid = load_train_config(configs / "small-grid.toml")
    assert grid.init_bundle is not None and grid.init_bundle.name == "aeic-small-l12.safetensors"
    assert (grid.model.colour_grid, grid.model.colour_grid_step) == (64, 4)
    assert [(s.lambda_, s.loss.msssim, s.export) for s in grid.stages] == [
        (12.0, 2.0, "aeic-small-l12")
    ]
    finer = load_train_config(configs / "small-grid48.toml")
    assert (finer.model.colour_grid, finer.model.colour_grid_step) == (48, 4)
    assert [(s.lambda_, s.crop, s.batch) for s in finer.stages] == [(13.0, 192, 12)]
    # The published-recipe file starts from a bundle that only exists on a training box.
    data = tomllib.loads((configs / "aeic-se-stage1.toml").read_text())
    data["model"] = {"preset": "AEIC-SE"}
    published = parse_train_config(data, configs)
    assert [s.lr for s in published.stages] == [1e-4, 5e-5]
    assert published.stages[0].train[-1] == "denoiser_lora"


def test_schedules() -> None:
    stage = tiny(steps=10, lr=1.0, warmup=2, lr_min=0.1, lambda_start=2.0, lambda_ramp=4).stages[0]
    assert [stage.lr_at(s) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert stage.lr_at(10) == pytest.approx(0.1)
    assert [stage.lambda_at(s) for s in (0, 2, 4, 9)] == [2.0, 1.5, 1.0, 1.0]


def test_ms_ssim_matches_the_reference_and_fits_small_crops() -> None:
    reference = pytest.importorskip("pytorch_msssim")
    torch.manual_seed(0)
    a = torch.rand(2, 3, 192, 192, dtype=torch.float64)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    expected = reference.ms_ssim(a, b, data_range=1.0)
    assert float(ms_ssim(a, b, scales=5)) == pytest.approx(float(expected), abs=1e-6)
    assert [ms_ssim_scales(s) for s in (64, 128, 256)] == [3, 4, 5]
    crop = a[..., :64, :64]
    assert float(ms_ssim(crop, crop)) == pytest.approx(1.0)
    assert 0 < float(ms_ssim(crop, b[..., :64, :64])) < 1


def test_latent_calibration_scales_y_exactly() -> None:
    """latent_std rescales a fresh g_a so that y has exactly the asked-for std."""
    config = dataclasses.replace(tiny(), latent_std=3.0)
    trainer = Trainer(config)
    x = torch.from_numpy(make_image(128, 128, seed=3)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        before = trainer.model.g_a(x)
    gain = trainer.calibrate_latent(x)
    with torch.no_grad():
        after = trainer.model.g_a(x)
    assert after.std().item() == pytest.approx(3.0, rel=1e-3)
    assert gain > 1
    torch.testing.assert_close(after, before * gain, rtol=1e-3, atol=1e-3)


def test_calibrated_run_notes_the_gain(data_dir: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(tiny(steps=1, export="cal"), latent_std=2.0)
    train(config, data_dir, tmp_path / "run", progress=False)
    notes = [r["note"] for r in rows(tmp_path / "run") if "note" in r]
    assert any("so that y starts with std 2.0" in n for n in notes)


def test_bf16_encoder_storage_is_smaller_and_stays_exact(tmp_path: Path) -> None:
    torch.manual_seed(4)
    full, compact = tmp_path / "full.safetensors", tmp_path / "compact.safetensors"
    save_bundle(full, AEIC(tiny_config()), encoder_dtype="fp32")
    torch.manual_seed(4)
    save_bundle(compact, AEIC(tiny_config()), encoder_dtype="bf16")
    with safe_open(str(compact), framework="pt") as fh:
        names = fh.keys()
        assert {fh.get_slice(name).get_dtype() for name in names} == {"BF16"}
    assert compact.stat().st_size < full.stat().st_size
    encoder, decoder = load_bundle(compact, decoder=False), load_bundle(compact, encoder=False)
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    assert all(torch.equal(p, p.bfloat16().float()) for p in encoder.parameters())
    x = torch.from_numpy(make_image(128, 128, seed=5)).permute(2, 0, 1)[None].float() / 127.5 - 1
    out = encoder.compress(x)
    assert torch.equal(decoder.decompress(out.streams, out.y_hat.shape[-2:]).y_hat, out.y_hat)


def test_int8_storage_is_format_2_smaller_and_exact(tmp_path: Path) -> None:
    torch.manual_seed(6)
    model = AEIC(tiny_config())
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    compact, small = tmp_path / "bf16.safetensors", tmp_path / "int8.safetensors"
    save_bundle(compact, copy_of(model), encoder_dtype="bf16")
    save_bundle(small, model, encoder_dtype="int8", decoder_dtype="int8")
    with safe_open(str(small), framework="pt") as fh:
        assert fh.metadata()["aeic_bundle"] == "2"
        names = fh.keys()
        kinds = {name: fh.get_slice(name).get_dtype() for name in names}
    assert kinds["g_s.synthesis_transform.1.fc1.weight"] == "I8"
    assert kinds["int8_scale.g_s.synthesis_transform.1.fc1.weight"] == "F32"
    assert kinds["g_s.synthesis_transform.1.fc1.bias"] == "BF16"
    assert {v for k, v in kinds.items() if k.startswith("entropy_bottleneck.")} <= {"BF16", "I64"}
    with safe_open(str(compact), framework="pt") as fh:
        assert fh.metadata()["aeic_bundle"] == "1"  # older readers still take it
    assert small.stat().st_size < 0.7 * compact.stat().st_size
    encoder, decoder = load_bundle(small, decoder=False), load_bundle(small, encoder=False)
    for key, value in decoder.state_dict().items():
        expected = stored_value(key, reference[key], "int8", "int8")
        assert torch.equal(value, expected), key
        if key.endswith("fc1.weight"):
            assert (value - reference[key]).abs().max() <= reference[key].abs().max() / 254
    x = torch.from_numpy(make_image(128, 128, seed=7)).permute(2, 0, 1)[None].float() / 127.5 - 1
    out = encoder.compress(x)
    assert torch.equal(decoder.decompress(out.streams, out.y_hat.shape[-2:]).y_hat, out.y_hat)


def test_int8_tensor_without_scale_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = tmp_path / "int8.safetensors"
    save_bundle(path, AEIC(tiny_config()), encoder_dtype="int8", decoder_dtype="int8")
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(path))
    del tensors["int8_scale.g_s.synthesis_transform.1.fc1.weight"]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(BundleError, match=r"fc1\.weight has no scale"):
        load_bundle(path)


def test_unknown_bundle_format_names_the_readable_ones(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = tmp_path / "future.safetensors"
    save_bundle(path, AEIC(tiny_config()))
    with safe_open(str(path), framework="pt") as fh:
        metadata = {**fh.metadata(), "aeic_bundle": "3"}
    save_file(load_file(str(path)), str(path), metadata=metadata)
    with pytest.raises(BundleError, match=r"format 3 is not supported .*formats 1, 2"):
        load_bundle(path)


@pytest.mark.parametrize("dtypes", [("int8", "int8"), ("bf16", "bf16"), ("fp32", "int8")])
def test_evaluation_sees_exactly_what_the_export_writes(
    tmp_path: Path, dtypes: tuple[str, str]
) -> None:
    encoder_dtype, decoder_dtype = dtypes
    config = dataclasses.replace(tiny(), encoder_dtype=encoder_dtype, decoder_dtype=decoder_dtype)
    trainer = Trainer(config)
    evaluated = trainer.plain_state(as_stored=True)
    trainer.export(tmp_path / "out.safetensors", {})
    exported = load_bundle(tmp_path / "out.safetensors")
    for key, value in exported.state_dict().items():
        assert torch.equal(value, evaluated[key]), key


def copy_of(model: AEIC) -> AEIC:
    twin = AEIC(model.cfg)
    twin.load_state_dict(model.state_dict())
    return twin


def grow_config(tmp_path: Path, bundle: Path, extra: str) -> Path:
    path = tmp_path / "grow.toml"
    path.write_text(
        f'[model]\ninit_bundle = "{bundle}"\n{extra}\n'
        '[[stages]]\nname = "s"\nsteps = 1\nlr = 1e-4\nlambda = 1.0\ncrop = 64\nbatch = 1\n'
        'train = ["g_s"]\nexport = "out"\n'
    )
    return path


def test_a_run_grows_its_init_bundle_deeper_without_changing_its_output(tmp_path: Path) -> None:
    torch.manual_seed(8)
    bundle = tmp_path / "start.safetensors"
    save_bundle(bundle, AEIC(tiny_config()))
    extra = "gs_blocks = 3\ncontext_depth = 2\nvae_tile = 40"
    config = load_train_config(grow_config(tmp_path, bundle, extra))
    assert (config.model.gs_blocks, config.model.context_depth) == (3, 2)
    assert config.model.vae_tile == 40
    grown = Trainer(config).plain_model()
    start = load_bundle(bundle)
    assert len(grown.g_s.synthesis_transform) == len(start.g_s.synthesis_transform) + 6
    assert len(grown.context.g_c.block) == 2
    grown.z_tables, grown.y_tables = start.z_tables, start.y_tables
    x = torch.from_numpy(make_image(64, 128, seed=9)).permute(2, 0, 1)[None].float() / 127.5 - 1
    a, b = start.compress(x), grown.compress(x)
    assert a.streams == b.streams
    with torch.no_grad():
        assert torch.equal(start.g_s(a.y_hat)[0], grown.g_s(a.y_hat)[0])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("gs_blocks = 0", "would shrink the bundle's 1"),
        ("gs_dims = [8, 8, 8]", "only gs_blocks and context_depth may grow it.*remove gs_dims"),
        ("eps_tile = 8", "eps_overlap must be less than half of eps_tile"),
        ("colour_grid = 4", "colour_grid must be 0 or 8..4096 pixels, got 4"),
        ("colour_grid = 48", r"crop must be a multiple of colour_grid \(48\)"),
        ("colour_grid_step = 0", "colour_grid_step must be in 1..64, got 0"),
    ],
)
def test_init_bundle_overrides_are_checked(tmp_path: Path, extra: str, message: str) -> None:
    bundle = tmp_path / "start.safetensors"
    save_bundle(bundle, AEIC(tiny_config()))
    with pytest.raises(TrainConfigError, match=message):
        load_train_config(grow_config(tmp_path, bundle, extra))


def test_bf16_request_falls_back_where_the_cpu_lacks_it() -> None:
    trainer = Trainer(dataclasses.replace(tiny(), bf16=True))
    # The same test decoding's --precision auto uses: bf16 dot products (AVX512-BF16 or AMX).
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    native = native and not avx2_ceiling()  # AEIC_MAX_CPU_ISA=AVX2 hides it
    assert trainer.bf16 == native
    assert any("no native bf16" in n for n in trainer.notes) != native


def test_the_training_loss_sees_what_the_decoder_grid_does() -> None:
    rng = np.random.default_rng(4)
    source = np.stack([make_image(128, 192, seed=i) for i in range(2)])
    decoded = np.clip(source / 255.0 + rng.normal(0.05, 0.1, source.shape), 0, 1)
    as_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float()  # noqa: E731
    x_hat = as_tensor(decoded).requires_grad_()
    fixed = colour_grid_fix(x_hat, as_tensor(source / 255.0), 64, 4)
    for i in range(2):
        expected = apply_grid(decoded[i], grid_levels(source[i], 64, 4), 64, 4)
        got = fixed[i].detach().clamp(0, 1).permute(1, 2, 0).numpy()
        assert np.abs(got - expected).max() < 1e-5
    # The grid pins the output's cell means to the source's: nothing the model does moves
    # the corrected image's total, so its gradient vanishes (the loss cannot ask for it).
    fixed.sum().backward()
    assert x_hat.grad is not None and x_hat.grad.abs().max() < 1e-6


def test_a_run_with_a_colour_grid_exports_a_model_that_sends_it(
    data_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(9)
    bundle = tmp_path / "start.safetensors"
    save_bundle(bundle, AEIC(tiny_config()))
    config = load_train_config(grow_config(tmp_path, bundle, "colour_grid = 32"))
    out = train(config, data_dir, tmp_path / "run", progress=False)
    model = load_bundle(out)
    assert (model.cfg.colour_grid, model.cfg.colour_grid_step) == (32, 4)
    f = unpack(api.encode(make_image(40, 70), model))
    assert f.version == 2 and f.grid is not None and (f.grid.cell, f.grid.step) == (32, 4)
    assert unpack(api.encode(make_image(40, 70), model, colour_grid=False)).grid is None
