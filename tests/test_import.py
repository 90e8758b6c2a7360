"""Importing the published checkpoints: fidelity to the published pipeline and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from aeic_codec import api
from aeic_codec.bundles.bundle import load_bundle, read_info
from aeic_codec.bundles.importer import CheckpointError, build_model, import_published
from aeic_codec.codec.model import latent_size
from aeic_codec.format.container import unpack
from aeic_codec.tools.integerize import PLAN_WORDS

from .published import FIXTURE, write_published

SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "kodim23.png"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_published(tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="module")
def imported(published, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "aeic-se-16.safetensors"
    import_published(*published, out, decoder_dtype="fp32")
    return out


def _crop() -> np.ndarray:
    img = np.asarray(Image.open(SAMPLE).convert("RGB"))
    return np.ascontiguousarray(img[120:248, 236:492])  # spec.json: left 236, top 120, 256x128


def test_reproduces_the_published_pipeline(imported):
    expected = np.load(FIXTURE / "expected.npz")
    model = load_bundle(imported)
    img = _crop()
    result = api.encode_image(img, model, precision="fp32")  # the published pipeline's
    y_hat = torch.from_numpy(expected["y_hat"])
    assert (result.y_hat - y_hat).abs().max() < 1e-4
    with torch.no_grad():
        l_t, l_res = model.g_s(result.y_hat)
    assert (l_t - torch.from_numpy(expected["l_T"])).abs().max() < 1e-4
    assert (l_res - torch.from_numpy(expected["l_res"])).abs().max() < 1e-4
    x = api.synthesize(model, result.y_hat, 128, 256, dtype=torch.float32)
    assert (x - torch.from_numpy(expected["x_hat_float"])).abs().max() < 1e-3
    f = unpack(result.data)
    assert len(result.data) <= float(expected["estimated_bits"]) / 8 * 1.01 + f.overhead
    decoded = api.decode(result.data, model, precision="fp32")
    reference = np.asarray(Image.open(FIXTURE / "expected.png").convert("RGB"))
    assert np.abs(decoded.astype(int) - reference.astype(int)).max() <= 1


def test_bundle_metadata_and_lambda(imported):
    info = read_info(imported)
    assert info.variant == "AEIC-SE" and info.lambda_ == 16.0
    assert info.config.unet_widths == (32, 64, 128, 128)
    assert info.provenance["imported_from"][0] == "AEIC_SE_ft16.pkl"


def test_merged_import_equals_unmerged_pieces(published):
    """peft LoRA on the fly + D.conv_in derived in memory == the imported, merged model."""
    from safetensors.torch import load_file

    from aeic_codec.nn.lora import add_lora

    pkl, sd, vae_path = published
    model = build_model(pkl, sd, vae_path)
    ckpt = torch.load(pkl, weights_only=True)
    reference = build_model(pkl, sd, vae_path)  # same shapes; weights replaced below
    base = load_file(str(sd / "unet" / "diffusion_pytorch_model.safetensors"))
    den = reference.denoiser
    den.load_state_dict(
        {k: base[k] for k in den.state_dict() if not k.startswith(("conv_in", "conv_out"))}
        | {k: v for k, v in ckpt["state_dict_unet"].items() if k.startswith("conv_")},
        strict=True,
    )
    peft_den = add_lora(den, rank=32, alpha=8)
    result = peft_den.load_state_dict(ckpt["state_dict_unet"], strict=False)
    assert not result.unexpected_keys
    half = torch.load(vae_path, weights_only=True)["state_dict"]
    w = half["decoder.conv_in.weight"]
    assert torch.equal(model.vae.conv_in.weight, w.repeat(1, 64, 1, 1) / 64)
    y_hat = torch.randn(1, 256, *latent_size(64, 128)) * 0.5
    with torch.no_grad():
        l_t, l_res = model.g_s(y_hat)
        ours = model.vae(model.denoiser(l_t) + l_res)
        theirs = reference.vae(peft_den(l_t) + l_res)
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_damaged_checkpoint_is_refused_with_the_key(published, tmp_path, damage):
    pkl, sd, vae = published
    ckpt = torch.load(pkl, weights_only=True)
    codec = ckpt["state_dict_codec"]
    key = "h_s.increase.1.fc1.weight"
    if damage == "missing":
        del codec[key]
    elif damage == "extra":
        codec["h_s.increase.9.fc1.weight"] = torch.zeros(3)
        key = "h_s.increase.9.fc1.weight"
    else:
        codec[key] = torch.zeros(7, 7)
    bad = tmp_path / "AEIC_SE_ft4.pkl"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        build_model(bad, sd, vae)


def test_imported_bundle_encodes_and_decodes_with_bf16_storage(published, tmp_path):
    out = tmp_path / "se.safetensors"
    identity = import_published(*published, out)
    model = load_bundle(out)
    assert model.identity == identity
    img = np.asarray(Image.open(SAMPLE).convert("RGB"))[:64, :96].copy()
    data = api.encode(img, model)
    decoded = api.decode(data, model)
    assert decoded.shape == (64, 96, 3)


def test_pickled_objects_are_refused(published, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    bad = tmp_path / "AEIC_SE_ft2.pkl"
    payload = {"state_dict_codec": Evil(), "state_dict_unet": {}}
    bad.write_bytes(pickle.dumps(payload, protocol=2))  # torch.save's protocol: no warning
    with pytest.raises(CheckpointError, match="weights-only"):
        build_model(bad, published[1], published[2])


def test_weights_import_and_list_commands(published, tmp_path):
    from click.testing import CliRunner

    from aeic_codec.cli import main

    pkl, sd, vae = published
    out = tmp_path / "w" / "se16.safetensors"
    out.parent.mkdir()
    args = [
        "weights",
        "import",
        "--aeic",
        str(pkl),
        "--sd-turbo",
        str(sd),
        "--vae-decoder",
        str(vae),
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    assert "[6/6]" in result.stderr
    assert f"aeic: wrote {out} (model {read_info(out).file_identity})" in result.stderr
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "exists" in again.stderr
    listed = CliRunner().invoke(main, ["weights", "list", "--json", "--weights", str(out.parent)])
    assert '"variant": "AEIC-SE"' in listed.stdout and '"lambda": 16.0' in listed.stdout


def test_import_with_calibration_adds_the_integer_path(published, tmp_path):
    from click.testing import CliRunner

    from aeic_codec.cli import main

    pkl, sd, vae = published
    folder = tmp_path / "calibration"
    folder.mkdir()
    Image.fromarray(_crop()).save(folder / "crop.png")
    out = tmp_path / "se16.safetensors"
    args = ["weights", "import", "--aeic", str(pkl), "--sd-turbo", str(sd)]
    args += ["--vae-decoder", str(vae), "-o", str(out), "--decoder-dtype", "fp32"]
    result = CliRunner().invoke(main, [*args, "--calibration", str(folder)])
    assert result.exit_code == 0, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "integer entropy path added" in line and "on 1 image(s)" in line and "dB" in line
    plans = [p for p, words in PLAN_WORDS.items() if f"({words}," in line]
    assert len(plans) == 1
    with safe_open(str(out), framework="pt") as fh:
        names = fh.keys()
        weights = [k for k in names if k.startswith("integer.") and k.endswith(".weight")]
        kinds = {fh.get_slice(k).get_dtype() for k in weights}
    assert kinds == {"8": {"I8"}, "mixed": {"I8", "I16"}, "16": {"I16"}}[plans[0]]
    info = read_info(out)
    assert info.integer_identity is not None
    model = load_bundle(out, decoder=False)
    data = api.encode(_crop(), model)
    assert unpack(data).version == 3 and unpack(data).model_id_hex == info.integer_identity
    float_data = api.encode(_crop(), model, integer=False)
    assert unpack(float_data).model_id_hex == info.identity  # the published pipeline's files
