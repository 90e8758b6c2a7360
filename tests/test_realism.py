"""The realism decoder: the tiny (TAEF2) D, bundles that carry it, decoding with --realism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from aeic_codec import api
from aeic_codec.bundles.bundle import BundleError, load_bundle, read_info, save_bundle
from aeic_codec.bundles.copies import attach_realism
from aeic_codec.cli import main
from aeic_codec.codec.model import AEIC
from aeic_codec.codec.realism import RealismDecoder
from aeic_codec.nn.config import AEIC_SMALL_TAEF2, ModelConfig, tiny_config
from aeic_codec.nn.tiny_vae import TinyDecoder, TinyEncoder, read_taef2
from tests.conftest import make_image

TAEF2 = Path(__file__).resolve().parents[2] / "shared" / "pretrained" / "taef2"


def tiny_realism_config() -> ModelConfig:
    return tiny_config(
        name="tiny-realism",
        decoder_latent=6,
        vae_kind="tiny",
        vae_widths=(8, 8, 8, 8),
        vae_blocks=(1, 1, 1, 1),
        vae_pooled=1,
        vae_norm_groups=2,
    )


@pytest.fixture(scope="module")
def realism_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny bundle and a copy of it that carries a (random) realism decoder."""
    torch.manual_seed(5)
    folder = tmp_path_factory.mktemp("realism")
    plain = folder / "plain.safetensors"
    save_bundle(plain, AEIC(tiny_config()), lambda_=8.0)
    decoder = RealismDecoder(tiny_realism_config())
    with_realism = folder / "with.safetensors"
    attach_realism(plain, decoder, with_realism, "int8", {"made_by": "tests"})
    return plain, with_realism


def test_tiny_decoder_layout_is_taef2s() -> None:
    decoder = TinyDecoder(AEIC_SMALL_TAEF2)
    encoder = TinyEncoder()
    assert sum(p.numel() for p in decoder.parameters()) == 1_338_499
    assert sum(p.numel() for p in encoder.parameters()) == 1_338_528
    assert decoder.scale == 8
    with torch.no_grad():
        latent, image = torch.randn(1, 32, 3, 5), torch.rand(1, 3, 24, 40)
        assert decoder(latent).shape == (1, 3, 24, 40)
        taps, out = encoder.features(image)
    assert out.shape == (1, 32, 3, 5)
    assert [t.shape[-1] for t in taps] == [40, 20, 10, 5]


def test_taef2_weights_load_and_round_trip() -> None:
    if not TAEF2.is_dir():
        pytest.skip(f"{TAEF2} not available")
    decoder, encoder = TinyDecoder(AEIC_SMALL_TAEF2), TinyEncoder()
    decoder.load_state_dict(read_taef2(TAEF2 / "taef2_decoder.safetensors"))
    encoder.load_state_dict(read_taef2(TAEF2 / "taef2_encoder.safetensors"))
    image = torch.from_numpy(make_image(64, 96)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        out = (decoder(encoder(image)) + 1) / 2
    psnr = -10 * torch.log10(torch.mean((out.clamp(0, 1) - image) ** 2))
    assert psnr > 24  # measured 26.9 dB on this image


def test_config_fields_stay_out_of_old_identities() -> None:
    plain = json.loads(tiny_config().identity_json())
    assert not {"vae_kind", "vae_blocks", "vae_pooled"} & set(plain)
    tiny = json.loads(tiny_realism_config().to_json())
    assert tiny["vae_kind"] == "tiny" and tiny["vae_blocks"] == [1, 1, 1, 1]
    assert ModelConfig.from_json(tiny_realism_config().to_json()) == tiny_realism_config()
    with pytest.raises(ValueError, match="vae_kind"):
        tiny_config(vae_kind="huge")
    with pytest.raises(ValueError, match="tiny D"):
        tiny_config(vae_kind="tiny", vae_blocks=(1, 1))


def test_attaching_keeps_identity_and_files(realism_bundle: tuple[Path, Path]) -> None:
    plain, with_realism = realism_bundle
    before, after = read_info(plain), read_info(with_realism)
    assert before.realism is None and after.realism == tiny_realism_config()
    assert after.identity == before.identity
    assert after.provenance["realism"] == {"made_by": "tests"}
    image = make_image(40, 72)
    data = api.encode(image, load_bundle(plain, decoder=False))
    fidelity = api.decode(data, load_bundle(plain), precision="fp32")
    model = load_bundle(with_realism, realism=True)
    # The fidelity decoder is untouched; realism 1 renders through the other decoder.
    assert np.array_equal(api.decode(data, model, precision="fp32", realism=0), fidelity)
    real = api.decode(data, model, precision="fp32", realism=1)
    assert real.shape == image.shape and not np.array_equal(real, fidelity)
    assert np.array_equal(api.decode(data, model, precision="fp32"), fidelity)  # default 0
    half = api.decode(data, model, precision="fp32", realism=0.5).astype(int)
    mean = (fidelity.astype(int) + real.astype(int)) / 2
    assert np.abs(half - mean).max() <= 2  # blended before the colour fix and rounding


def test_reattaching_replaces_the_realism_decoder(
    realism_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    _, with_realism = realism_bundle
    torch.manual_seed(9)
    again = tmp_path / "again.safetensors"
    attach_realism(with_realism, RealismDecoder(tiny_realism_config()), again, "fp32")
    from safetensors import safe_open

    with safe_open(str(again), "pt") as fh:
        keys = list(fh.keys())
    assert not any(k.startswith("int8_scale.realism.") for k in keys)
    assert read_info(again).identity == read_info(with_realism).identity


def test_realism_needs_a_realism_decoder(realism_bundle: tuple[Path, Path]) -> None:
    plain, _ = realism_bundle
    with pytest.raises(BundleError, match="no realism decoder"):
        load_bundle(plain, realism=True)
    model = load_bundle(plain)
    data = api.encode(make_image(32, 32), model)
    with pytest.raises(ValueError, match="realism decoder"):
        api.decode(data, model, realism=1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        api.decode(data, model, realism=1.5)


def test_cli_decode_realism(realism_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    plain, with_realism = realism_bundle
    src = tmp_path / "img.png"
    Image.fromarray(make_image(40, 40)).save(src)
    runner = CliRunner()
    enc = runner.invoke(
        main, ["encode", str(src), "-o", str(tmp_path / "a.aeic"), "--weights", str(plain)]
    )
    assert enc.exit_code == 0, enc.output
    args = ["decode", str(tmp_path / "a.aeic"), "--json", "--weights"]
    ok = runner.invoke(
        main, [*args, str(with_realism), "-o", str(tmp_path / "r.png"), "--realism", "1"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout.splitlines()[-1])["realism"] == 1.0
    fid = runner.invoke(main, [*args, str(plain), "-o", str(tmp_path / "f.png")])
    assert fid.exit_code == 0 and json.loads(fid.stdout.splitlines()[-1])["realism"] == 0.0
    bad = runner.invoke(main, [*args, str(plain), "-o", str(tmp_path / "x.png"), "--realism", "1"])
    assert bad.exit_code == 1
    assert "no realism decoder" in bad.output
    assert not (tmp_path / "x.png").exists()
    out_of_range = runner.invoke(main, [*args, str(plain), "--realism", "2"])
    assert out_of_range.exit_code == 2


def test_the_noise_input_is_configuration_and_decodes_the_same_every_time(
    realism_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    plain, _ = realism_bundle
    cfg = tiny_realism_config().replace(latent_noise=True)
    assert "latent_noise" not in json.loads(tiny_realism_config().to_json())  # identities kept
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    torch.manual_seed(11)
    decoder = RealismDecoder(cfg)
    eps = decoder.denoiser
    assert eps.noise_scale is not None and not eps.noise_scale.any()  # starts as no noise
    l_t = torch.randn(1, cfg.denoiser_in, 6, 10)
    assert torch.equal(eps.with_noise(l_t), l_t)
    with torch.no_grad():
        eps.noise_scale.fill_(0.5)
    drawn = (eps.with_noise(l_t) - l_t).detach()
    assert torch.equal((eps.with_noise(l_t) - l_t).detach(), drawn)  # a function of the shape
    assert 0.3 < float(drawn.std()) < 0.7
    assert not torch.equal(eps.with_noise(l_t, fresh=True), eps.with_noise(l_t, fresh=True))
    assert RealismDecoder(tiny_realism_config()).denoiser.noise_scale is None

    noisy = tmp_path / "noisy.safetensors"
    attach_realism(plain, decoder, noisy, "int8")
    model = load_bundle(noisy, realism=True)
    assert model.realism.cfg.latent_noise
    assert torch.equal(model.realism.denoiser.noise_scale, torch.full((cfg.denoiser_in,), 0.5))
    data = api.encode(make_image(48, 80), model)
    first = api.decode(data, model, precision="fp32", realism=1)
    assert np.array_equal(first, api.decode(data, model, precision="fp32", realism=1))
    with torch.no_grad():
        model.realism.denoiser.noise_scale.zero_()
    assert not np.array_equal(first, api.decode(data, model, precision="fp32", realism=1))


def test_gaussian_blur_is_the_documented_sum() -> None:
    from aeic_codec.codec.realism import gaussian_blur

    rng = np.random.default_rng(3)
    image = rng.random((3, 20, 31))
    sigma, radius = 1.5, 5
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-(t**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    rows = sum(k * padded[:, :, i : i + 31] for i, k in enumerate(kernel))
    expected = sum(k * rows[:, i : i + 20] for i, k in enumerate(kernel))
    got = gaussian_blur(torch.from_numpy(image), sigma).numpy()
    assert np.abs(got - expected).max() < 1e-12
    flat = torch.full((3, 4, 4), 0.25, dtype=torch.float64)  # smaller than the radius
    assert torch.allclose(gaussian_blur(flat, sigma), flat)


def test_a_detail_decoder_adds_detail_to_the_fidelity_picture(
    realism_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    from aeic_codec.codec.realism import gaussian_blur

    plain, _ = realism_bundle
    assert "detail_sigma" not in json.loads(tiny_realism_config().to_json())  # identities kept
    cfg = tiny_realism_config().replace(detail_sigma=2.0)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    torch.manual_seed(12)
    detail = tmp_path / "detail.safetensors"
    attach_realism(plain, RealismDecoder(cfg), detail, "int8")
    image = make_image(48, 80)
    model = load_bundle(detail, realism=True)
    data = api.encode(image, model)
    y_hat = api.latent_and_digest(api.read_header(data), model)[0]
    fid, real = (
        api.synthesize(m, y_hat, 48, 80, dtype=torch.float32) for m in (model, model.realism)
    )
    decoder = api.load_decoder(detail, read_info(detail).identity, realism=1)
    assert decoder.g_s is not None  # the fidelity decoder is loaded for realism 1 too
    seen: list[float] = []
    api.decode_image(data, decoder, realism=1, progress=lambda d, t: seen.append(d / t))
    assert seen == sorted(seen) and seen[-1] == 1.0 and seen[len(seen) // 2] < 1  # one count
    for r in (1.0, 0.5):
        got = api.decode_image(data, decoder, precision="fp32", realism=r)
        expected = fid + r * ((real - fid) - gaussian_blur(real - fid, 2.0))
        pixels = ((expected + 1) / 2 * 255).round().clamp(0, 255).permute(1, 2, 0)
        assert np.abs(got.image.astype(int) - pixels.numpy().astype(int)).max() <= 1
    assert not np.array_equal(
        api.decode(data, decoder, precision="fp32", realism=1),
        api.decode(data, decoder, precision="fp32"),
    )
