"""The fast encoder: a stem distilled in place of g_a's finest levels (nn/stem.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from aeic_codec import api
from aeic_codec.bundles.bundle import load_bundle, read_info
from aeic_codec.bundles.copies import attach_stem
from aeic_codec.cli.app import main
from aeic_codec.nn.blocks import run_layers
from aeic_codec.nn.config import StemConfig, tiny_config
from aeic_codec.nn.stem import AnalysisStem
from aeic_codec.runtime import devices
from aeic_codec.tools.stem import distil_stem

from .conftest import make_image, photo_folder


@pytest.fixture(scope="module")
def fast_bundle(tiny_bundle, tmp_path_factory):
    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("fast") / "tiny-l16.safetensors"
    attach_stem(tiny_bundle, AnalysisStem(tiny_config(), StemConfig()), out)
    return out


@pytest.mark.parametrize("kernel", [1, 3])
def test_stem_gives_the_features_of_g_a_at_its_level(kernel):
    cfg = tiny_config()
    for level in (1, 2, 3):
        stem = AnalysisStem(cfg, StemConfig(level=level, blocks=1, kernel=kernel)).eval()
        assert stem.conv.weight.shape == (cfg.ga_dims[level - 1], 3 * 4**level, kernel, kernel)
        x = torch.rand(1, 3, 64, 96)
        with torch.no_grad():
            out = stem(x)
        assert out.shape == (1, cfg.ga_dims[level - 1], 64 >> level, 96 >> level)


def test_a_one_by_one_stem_sees_each_patch_alone():
    stem = AnalysisStem(tiny_config(), StemConfig(level=2, blocks=0, kernel=1)).eval()
    x = torch.rand(1, 3, 32, 32)
    changed = x.clone()
    changed[..., :4, :4] = 0  # the first 4x4 patch only
    with torch.no_grad():
        diff = (stem(x) - stem(changed)).abs().sum(1)[0]
    assert diff[0, 0] > 0 and int((diff > 0).sum()) == 1


@pytest.mark.parametrize("grad", [False, True])
def test_a_one_by_one_stem_is_its_convolution_of_the_unshuffled_patches(grad):
    stem = AnalysisStem(tiny_config(), StemConfig(level=3, blocks=1, kernel=1)).eval()
    x = torch.rand(1, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    with torch.set_grad_enabled(grad):
        got = stem(x)
        want = run_layers([stem.conv, *stem.blocks], F.pixel_unshuffle(x, stem.patch))
    assert got.shape == want.shape == (1, stem.conv.out_channels, 8, 12)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if grad:
        got.square().sum().backward()
        assert stem.conv.weight.grad is not None and stem.conv.weight.grad.abs().sum() > 0


def test_stem_config_is_checked_and_round_trips():
    with pytest.raises(ValueError, match=r"level must be 1\.\.4"):
        StemConfig(level=5).check(tiny_config())
    with pytest.raises(ValueError, match="not a stem configuration"):
        StemConfig.from_json('{"level": 2, "width": 3}')
    assert StemConfig.from_json(StemConfig(3, 0).to_json()) == StemConfig(3, 0)
    assert StemConfig.from_json(StemConfig(2, 1, 3).to_json()) == StemConfig(2, 1, 3)
    # Bundles from before the kernel was a choice name level and blocks alone: 3x3.
    assert StemConfig.from_json('{"blocks":1,"level":2}') == StemConfig(2, 1, 3)
    with pytest.raises(ValueError, match="not a stem configuration"):
        StemConfig.from_json('{"kernel": 1}')
    with pytest.raises(ValueError, match="kernel must be 1 or 3, got 5"):
        StemConfig(kernel=5).check(tiny_config())


def test_attaching_a_stem_keeps_the_identity_and_the_files(tiny_bundle, fast_bundle):
    before, after = read_info(tiny_bundle), read_info(fast_bundle)
    assert after.identity == before.identity and after.stem == StemConfig()
    assert before.stem is None
    image = make_image(64, 96)
    plain = load_bundle(tiny_bundle, decoder=False)
    with_stem = load_bundle(fast_bundle, decoder=False)
    # The same g_a: it makes the same file with either bundle.
    assert api.encode(image, plain, fast=False) == api.encode(image, with_stem, fast=False)
    # A decoder-only load skips the stem; it decodes the fast encoder's files.
    decoder = load_bundle(fast_bundle, encoder=False)
    assert decoder.stem is None
    fast = api.encode(image, with_stem, fast=True)
    assert fast != api.encode(image, with_stem, fast=False)
    assert api.decode(fast, decoder).shape == image.shape


@pytest.mark.parametrize("native_bf16", [False, True])
def test_the_default_encoder_is_the_fast_one_without_native_bf16(
    tiny_bundle, fast_bundle, monkeypatch, native_bf16
):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native_bf16)
    assert api.resolve_fast(None, True) is not native_bf16
    assert api.resolve_fast(None, True, "cuda") is False
    assert api.resolve_fast(None, False) is False  # no fast encoder: g_a, whatever the CPU
    assert api.resolve_fast(True, False) is True  # asked for: analyse refuses it
    assert api.resolve_fast(False, True) is False
    image = make_image(64, 96)
    with_stem = load_bundle(fast_bundle, decoder=False)
    plain = load_bundle(tiny_bundle, decoder=False)
    # fp32 throughout: the file then depends only on which encoder ran
    auto = api.encode(image, with_stem, precision="fp32")
    assert auto == api.encode(image, with_stem, precision="fp32", fast=not native_bf16)
    assert api.encode(image, plain, precision="fp32") == api.encode(
        image, plain, precision="fp32", fast=False
    )


def test_fast_needs_a_bundle_with_a_stem(tiny_bundle, fast_bundle, tmp_path):
    model = load_bundle(tiny_bundle, decoder=False)
    with pytest.raises(ValueError, match="no fast encoder"):
        api.encode(make_image(32, 32), model, fast=True)
    png = tmp_path / "a.png"
    Image.fromarray(make_image(40, 48)).save(png)
    runner = CliRunner()
    result = runner.invoke(main, ["encode", str(png), "--fast", "--weights", str(tiny_bundle)])
    assert result.exit_code == 2
    assert "no fast encoder" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "a.aeic").exists()
    result = runner.invoke(
        main, ["encode", str(png), "--fast", "--json", "--weights", str(fast_bundle)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a.aeic").stat().st_size > 0
    assert _json_rows(result.output)[0]["encoder"] == "fast"
    # --no-fast runs g_a: the bundle without a stem makes the same file
    args = ["encode", str(png), "--no-fast", "--precision", "fp32", "-f", "--json", "--weights"]
    result = runner.invoke(main, [*args, str(fast_bundle), "-o", str(tmp_path / "b.aeic")])
    assert result.exit_code == 0, result.output
    assert _json_rows(result.output)[0]["encoder"] == "g_a"
    result = runner.invoke(main, [*args, str(tiny_bundle), "-o", str(tmp_path / "c.aeic")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b.aeic").read_bytes() == (tmp_path / "c.aeic").read_bytes()


def _json_rows(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_weights_list_shows_the_fast_encoder(fast_bundle):
    result = CliRunner().invoke(main, ["weights", "list", "--weights", str(fast_bundle), "--json"])
    rows = _json_rows(result.output)
    mine = [r for r in rows if r["path"] == str(fast_bundle)]
    assert mine and mine[0]["fast_encoder"] is True


def test_distillation_learns_and_resumes(tiny_bundle, tmp_path):
    photos = photo_folder(tmp_path / "photos")
    model = load_bundle(tiny_bundle, decoder=False)
    losses: list[float] = []
    ck = tmp_path / "state.pt"
    cfg = StemConfig(level=2, blocks=1)
    kw = {"batch": 2, "crop": 64, "checkpoint": ck}
    stem = distil_stem(model, photos, cfg, 40, progress=lambda s, n, v: losses.append(v), **kw)
    assert len(losses) == 40 and np.mean(losses[-5:]) < np.mean(losses[:5])
    # The finished state resumes to the same stem without another step.
    again = distil_stem(model, photos, cfg, 40, progress=lambda *a: losses.append(0), **kw)
    assert len(losses) == 40
    for a, b in zip(stem.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(
        ValueError, match="another bundle, stem, start, learning rate or number of steps"
    ):
        distil_stem(model, photos, cfg, 41, **kw)


def test_an_interrupted_distillation_resumes_to_the_uninterrupted_stem(
    tiny_bundle, tmp_path, monkeypatch
):
    from aeic_codec.tools import checkpoint

    photos = photo_folder(tmp_path / "photos")
    model = load_bundle(tiny_bundle, decoder=False)
    cfg, kw = StemConfig(level=2, blocks=1), {"batch": 2, "crop": 64}
    whole = distil_stem(model, photos, cfg, 12, **kw)
    monkeypatch.setattr(checkpoint, "CHECKPOINT_SECONDS", 0.0)  # write after every step
    ck = tmp_path / "state.pt"

    def stop_after_7(step: int, steps: int, loss: float) -> None:
        if step == 8:  # before step 8 is written: the file holds 7 steps
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distil_stem(model, photos, cfg, 12, checkpoint=ck, progress=stop_after_7, **kw)
    assert torch.load(ck, weights_only=True)["step"] == 7
    steps: list[int] = []
    resumed = distil_stem(
        model, photos, cfg, 12, checkpoint=ck, progress=lambda s, n, v: steps.append(s), **kw
    )
    assert steps == list(range(8, 13))
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # Adam's state came back too


def test_distillation_refuses_photos_smaller_than_a_crop(tiny_bundle, tmp_path):
    photos = photo_folder(tmp_path / "small", size=(40, 48))
    with pytest.raises(ValueError, match="no photograph of at least 64x64"):
        distil_stem(load_bundle(tiny_bundle, decoder=False), photos, StemConfig(), 2, crop=64)


def test_fast_encoder_command_writes_a_bundle_with_a_stem(tiny_bundle, tmp_path):
    photo_folder(tmp_path / "photos", size=(256, 288))
    out = tmp_path / "out.safetensors"
    args = ["weights", "fast-encoder", str(tiny_bundle), "-o", str(out)]
    args += ["--photos", str(tmp_path / "photos"), "--steps", "3"]
    result = CliRunner().invoke(main, [*args, "--level", "2", "--kernel", "3"])
    assert result.exit_code == 0, result.output
    info = read_info(out)
    assert info.stem == StemConfig(level=2, kernel=3)
    assert info.identity == read_info(tiny_bundle).identity
    made = {"photos": 3, "steps": 3, "lr": 1e-3}
    assert json.loads(info.metadata["provenance"])["stem"] == made
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "exists" in again.output
    bad = CliRunner().invoke(main, [*args, "--force", "--kernel", "5"])
    assert bad.exit_code == 2 and "'5' is not one of '1', '3'" in bad.output


def test_a_stem_distilled_further_starts_from_the_given_one(tiny_bundle, tmp_path):
    photos = photo_folder(tmp_path / "photos")
    model = load_bundle(tiny_bundle, decoder=False)
    cfg, kw = StemConfig(level=2, blocks=1), {"batch": 2, "crop": 64}
    first = distil_stem(model, photos, cfg, 6, **kw)
    before = {k: v.clone() for k, v in first.state_dict().items()}
    losses: list[float] = []
    further = distil_stem(
        model, photos, cfg, 6, start=first, **kw, progress=lambda s, n, v: losses.append(v)
    )
    fresh: list[float] = []
    distil_stem(model, photos, cfg, 1, **kw, progress=lambda s, n, v: fresh.append(v))
    assert losses[0] < fresh[0]  # the first step already starts from the trained stem
    for key, value in first.state_dict().items():
        assert torch.equal(value, before[key])  # the start is left as it was
        assert not torch.equal(further.state_dict()[key], value)
    with pytest.raises(ValueError, match="the stem to start from is"):
        distil_stem(model, photos, StemConfig(level=2, blocks=0), 1, start=first, **kw)
    ck = tmp_path / "state.pt"
    distil_stem(model, photos, cfg, 2, checkpoint=ck, **kw)
    with pytest.raises(ValueError, match="start, learning rate"):  # not the same start
        distil_stem(model, photos, cfg, 2, start=first, checkpoint=ck, **kw)


def test_fast_encoder_further_keeps_what_made_the_stem(fast_bundle, tmp_path):
    photo_folder(tmp_path / "photos", size=(256, 288))
    out = tmp_path / "out.safetensors"
    args = ["weights", "fast-encoder", str(fast_bundle), "-o", str(out), "--further"]
    args += ["--photos", str(tmp_path / "photos"), "--steps", "2", "--lr", "0.0003"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    made = json.loads(read_info(out).metadata["provenance"])["stem"]
    assert made == {"photos": 3, "steps": 2, "lr": 0.0003, "after": {}}
    twice = tmp_path / "twice.safetensors"
    again = CliRunner().invoke(main, [*args[:2], str(out), "-o", str(twice), *args[5:]])
    assert again.exit_code == 0, again.output
    assert json.loads(read_info(twice).metadata["provenance"])["stem"]["after"] == made
    other = CliRunner().invoke(main, [*args, "--force", "--blocks", "2"])
    assert other.exit_code == 1 and "the stem to start from is" in other.output


def test_fast_encoder_further_needs_a_stem(tiny_bundle, tmp_path):
    photo_folder(tmp_path / "photos", size=(256, 288))
    args = ["weights", "fast-encoder", str(tiny_bundle), "-o", str(tmp_path / "o.safetensors")]
    result = CliRunner().invoke(main, [*args, "--photos", str(tmp_path / "photos"), "--further"])
    assert result.exit_code == 1 and "no fast encoder to distil further" in result.output
    assert not (tmp_path / "o.safetensors").exists()
