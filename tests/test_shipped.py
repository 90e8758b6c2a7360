"""The shipped default bundles: each one codes a generated image to a recognisable picture.

A broken or swapped weight file fails here: the thresholds sit half a decibel below what
each bundle measured on this image when it was committed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aeic_codec import api
from aeic_codec.bundles.bundle import find_bundle, load_bundle, read_info
from aeic_codec.codec.metrics import band_power_db, psnr_u8
from aeic_codec.tools.renderer import STUDENT_ENCODER, student_decoder
from tests.conftest import make_image

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = sorted(WEIGHTS.glob("*.safetensors"))
# lambda -> (minimum PSNR in dB on make_image(128, 128), maximum bytes of the file)
# (measured when committed: 16.83 dB / 129 bytes, 16.40 / 95, 15.70 / 57)
BARS = {12.0: (16.3, 150), 64.0: (15.9, 115), 500.0: (15.2, 75)}
# lambda -> (minimum PSNR, minimum luma power kept in the 1/8-1/4 cycle band, in dB) of the
# realism decoder on the same image: a realism decoder that stopped drawing texture (or a
# broken one) fails here: floors 0.5 dB and 3 dB under what each bundle measured when
# committed (16.33 dB / +13.4 dB, 15.77 / +11.5, 14.04 / +14.2; fidelity +0.1, +2.1, -2.9).
REALISM_BARS = {12.0: (15.8, 10.4), 64.0: (15.2, 8.5), 500.0: (13.5, 11.2)}


def test_three_rate_points_and_the_texture_file_are_shipped_under_60_mb() -> None:
    lambdas = sorted(read_info(p).lambda_ for p in SHIPPED)
    assert lambdas == sorted(BARS)
    texture = sorted((WEIGHTS / "texture").glob("*.safetensors"))
    assert [p.name for p in texture] == ["aeic-texture.safetensors"]
    assert (WEIGHTS / "texture" / "NOTICE-TAEF2.txt").is_file()  # TAEF2's MIT notice
    # the distilled renderer, which keeps texture synthesis within 2 s without bf16
    synthesis = api.load_texture()
    assert synthesis.encoder.config == STUDENT_ENCODER
    assert synthesis.config.vae_widths == student_decoder(synthesis.config).vae_widths
    assert sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file()) < 60e6


def test_shipped_texture_file_puts_detail_where_the_statistics_say() -> None:
    model = find_bundle(lambda_=12.0)
    coder = load_bundle(model.path)
    image = make_image(128, 128)
    data = api.encode(image, coder, texture=True)
    texture = api.load_texture()
    fidelity = api.decode(data, coder, precision="fp32")
    textured = api.decode(data, coder, precision="fp32", realism=1.0, texture=texture)
    src = image.astype(float)
    # fine detail comes back (1/4-1/2 band: -19.3 dB at realism 0, -8.5 at 1 when committed)
    # and the picture stays recognisable (16.83 dB, 16.74 dB)
    kept = band_power_db(textured.astype(float), src)[4]
    assert kept > band_power_db(fidelity.astype(float), src)[4] + 8
    assert psnr_u8(image, textured) >= 16.3


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_bundle_codes_a_picture(path: Path) -> None:
    model = load_bundle(path)
    image = make_image(128, 128)
    data = api.encode(image, model)
    out = api.decode(data, model, precision="fp32")
    floor, max_bytes = BARS[model.lambda_]
    assert out.shape == image.shape
    assert len(data) <= max_bytes
    assert psnr_u8(image, out) >= floor


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_realism_decoder_draws_texture(path: Path) -> None:
    model = load_bundle(path, realism=True)
    image = make_image(128, 128)
    data = api.encode(image, model)
    fidelity = api.decode(data, model, precision="fp32", realism=0)
    realism = api.decode(data, model, precision="fp32", realism=1)
    floor, band_floor = REALISM_BARS[model.lambda_]
    assert psnr_u8(image, realism) >= floor
    kept = band_power_db(realism.astype(float), image.astype(float))[3]
    assert kept >= band_floor
    assert kept > band_power_db(fidelity.astype(float), image.astype(float))[3] + 3


def test_no_option_picks_the_middle_rate_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AEIC_WEIGHTS", raising=False)
    info = find_bundle(None)
    assert info.path.name in {p.name for p in SHIPPED}
    assert info.lambda_ == sorted(BARS)[1]
