"""The linear-cost decode: D layer by layer equals the plain call, windowed attention
equals global attention where the picture fits a window and masked attention beyond,
and progress moves within one image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aeic_codec import api
from aeic_codec.bundles.bundle import load_bundle
from aeic_codec.codec import layerwise
from aeic_codec.codec.model import AEIC
from aeic_codec.nn import attention
from aeic_codec.nn.config import tiny_config
from aeic_codec.nn.denoiser import Denoiser
from aeic_codec.nn.vae import build_vae
from tests.conftest import make_image


def tiny_d_config():
    return tiny_config(
        decoder_latent=8, vae_kind="tiny", vae_widths=(8, 8, 8, 8), vae_blocks=(2, 1, 1, 1)
    ).replace(vae_pooled=1, vae_norm_groups=2)


@pytest.fixture()
def small_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bands of a few rows and tiny D tiles of 12 output pixels a stage (6 latent pixels in
    the first, 3 in the second), so small latents take many."""
    monkeypatch.setattr(layerwise, "BAND_ELEMENTS", 512)
    monkeypatch.setattr(layerwise, "LAZY_BYTES", 0)  # every upsampler lazy
    monkeypatch.setattr(layerwise, "FUSED_BYTES", 0)  # every block that keeps its width fused
    monkeypatch.setattr(layerwise, "TINY_CORE", 12)


@pytest.mark.parametrize(
    ("mid_attention", "lazy", "fused"),
    [(True, True, True), (False, True, True), (True, False, False), (True, False, True)],
)
def test_layerwise_sd_decoder_is_the_plain_call(
    small_bands: None,
    mid_attention: bool,
    lazy: bool,
    fused: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not lazy:
        monkeypatch.setattr(layerwise, "LAZY_BYTES", 1 << 40)
    if not fused:
        monkeypatch.setattr(layerwise, "FUSED_BYTES", 1 << 40)
    torch.manual_seed(0)
    decoder = build_vae(tiny_config(vae_mid_attention=mid_attention)).eval()
    l_0 = torch.randn(1, 8, 21, 13)
    calls: list[tuple[int, int]] = []
    with torch.no_grad():
        out = layerwise.decode(decoder, l_0, lambda *a: calls.append(a))
        torch.testing.assert_close(out, decoder(l_0), rtol=0, atol=1e-5)
    total = layerwise.decoder_steps(decoder, 21, 13)
    assert calls == [(i, total) for i in range(1, total + 1)] and total > 10


def test_layerwise_sd_decoder_in_bf16_and_channels_last(small_bands: None) -> None:
    torch.manual_seed(0)
    decoder = build_vae(tiny_config()).eval()
    l_0 = torch.randn(1, 8, 17, 24)
    with torch.no_grad():
        reference = decoder(l_0)
        decoder.to(torch.bfloat16, memory_format=torch.channels_last)
        l_0 = l_0.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        plain, out = decoder(l_0), layerwise.decode(decoder, l_0)
    assert out.dtype == torch.bfloat16 and out.shape == reference.shape
    # No farther from the float32 decode than bf16's own plain call (measured 0.031, 0.036).
    bf16_error = (plain.float() - reference).abs().max()
    assert (out.float() - reference).abs().max() < 1.5 * bf16_error + 0.01


def test_layerwise_tiny_decoder_is_the_plain_call(small_bands: None) -> None:
    torch.manual_seed(0)
    decoder = build_vae(tiny_d_config()).eval()
    latent = torch.randn(1, 8, 14, 19)
    calls: list[tuple[int, int]] = []
    with torch.no_grad():
        out = layerwise.decode(decoder, latent, lambda *a: calls.append(a))
        torch.testing.assert_close(out, decoder(latent), rtol=0, atol=1e-5)
    # the GroupNorm part, 3 x 4 tiles of the 14 x 19 latent, 10 x 13 of the 28 x 38 stage
    assert calls == [(i, 1 + 3 * 4 + 10 * 13) for i in range(1, 144)]


def test_banded_in_place_keeps_the_rows_a_band_still_reads(small_bands: None) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 5, padding=2)
    x = torch.randn(1, 4, 40, 9)
    with torch.no_grad():
        expected = conv(x)
        out = layerwise.banded(lambda t, _: conv(t), x, 2, out=x)
    assert out is x
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_windowed_attention_is_global_attention_when_the_grid_fits() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6 * 7, 4) for _ in range(3))
    assert torch.equal(
        attention.windowed_sdpa(q, k, v, 6, 7, 42), F.scaled_dot_product_attention(q, k, v)
    )


@pytest.mark.parametrize(
    ("height", "width", "area", "window", "block"),
    [(11, 9, 16, (4, 4), (2, 2)), (5, 40, 50, (5, 10), (2, 5)), (30, 3, 60, (20, 3), (10, 1))],
)
def test_windowed_attention_is_masked_attention_over_each_blocks_window(
    height: int, width: int, area: int, window: tuple[int, int], block: tuple[int, int]
) -> None:
    """Square windows, and windows that span a grid's short side, of ``area`` keys at most."""
    torch.manual_seed(0)
    assert attention.window_shape(height, width, area) == window
    q, k, v = (torch.randn(1, 2, height * width, 3) for _ in range(3))
    allowed = torch.zeros(height * width, height * width, dtype=torch.bool)
    for y in range(height):
        for x in range(width):
            top, left = y // block[0] * block[0], x // block[1] * block[1]
            rows = attention._window(height, top, min(top + block[0], height), window[0])
            cols = attention._window(width, left, min(left + block[1], width), window[1])
            keys = torch.zeros(height, width, dtype=torch.bool)
            keys[rows, cols] = True
            allowed[y * width + x] = keys.flatten()
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    out = attention.windowed_sdpa(q, k, v, height, width, area)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_local_attention_leaves_small_pictures_alone_and_restores_processors() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(unet_attention=(True, True), vae_mid_attention=True)
    eps, decoder = Denoiser(cfg).eval(), build_vae(cfg).eval()
    before = [m.processor for m in eps.modules() if hasattr(m, "set_processor")]
    l_t = torch.randn(1, cfg.denoiser_in, 12, 10)
    l_0 = torch.randn(1, cfg.decoder_latent, 12, 10)
    with torch.no_grad():
        plain = eps(l_t), decoder(l_0)
        window = cfg.attention_window
        with (
            attention.local_attention(eps, 8, window),
            attention.local_attention(decoder, 8, window),
        ):
            local = eps(l_t), decoder(l_0)
            big = eps(torch.randn(1, cfg.denoiser_in, 100, 60))  # 800 x 480 px: windowed
    assert all(torch.equal(a, b) for a, b in zip(plain, local, strict=True))
    assert torch.isfinite(big).all()
    assert before == [m.processor for m in eps.modules() if hasattr(m, "set_processor")]
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in eps.modules())


def test_a_bundles_attention_window_decides_where_its_decoder_attends_locally(
    tiny_bundle, tmp_path
) -> None:
    """Decoding attends over the bundle's window: a copy with a window as large as the
    picture decodes as the original, one with a smaller window otherwise."""
    from aeic_codec.bundles.bundle import read_info
    from aeic_codec.bundles.copies import set_attention_window

    data = api.encode(make_image(96, 128), load_bundle(tiny_bundle))
    pictures = {}
    for pixels in (128 * 128, 32 * 32):  # the padded picture, and less
        copy = tmp_path / f"window-{pixels}.safetensors"
        identity = set_attention_window(tiny_bundle, copy, pixels)
        assert identity == read_info(tiny_bundle).identity
        assert load_bundle(copy).cfg.attention_window == pixels
        pictures[pixels] = np.asarray(api.decode(data, load_bundle(copy), precision="fp32"))
    original = np.asarray(api.decode(data, load_bundle(tiny_bundle), precision="fp32"))
    assert np.array_equal(pictures[128 * 128], original)
    assert not np.array_equal(pictures[32 * 32], original)


def test_decode_progress_moves_within_one_image(tiny_bundle) -> None:
    """The entropy decoding, eps and every layer of D report on one rising scale."""
    model = load_bundle(tiny_bundle)
    data = api.encode(make_image(100, 140), model)
    seen: list[tuple[int, int]] = []
    api.decode(data, model, progress=lambda d, t: seen.append((d, t)))
    assert {t for _, t in seen} == {1000}
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == 1000
    assert len(set(done)) > 10 and done[3] < 500  # four entropy steps, then the decoder


def test_decode_of_a_model_without_integer_path_reports_entropy_steps() -> None:
    torch.manual_seed(3)
    model = AEIC(tiny_config()).eval()
    model.build_tables()
    model.identity = "00000000"
    data = api.encode(make_image(64, 64), model)
    steps: list[tuple[int, int]] = []
    api.latent_and_digest(api.read_header(data), model, lambda *a: steps.append(a))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert np.asarray(api.decode(data, model)).shape == (64, 64, 3)


def test_upsampled_rows_are_the_upsamplers_output() -> None:
    torch.manual_seed(0)
    upsampler = build_vae(tiny_config()).up_blocks[0].upsamplers[0]
    u = torch.randn(1, upsampler.channels, 9, 7)
    with torch.no_grad():
        full, lazy = upsampler(u), layerwise.Lazy(upsampler, u, upsampler.out_channels, scale=2)
        assert lazy.shape == full.shape
        for first, last in [(0, 18), (0, 1), (5, 11), (17, 18)]:
            torch.testing.assert_close(lazy.rows(first, last), full[..., first:last, :])


def test_polyphase_upsampling_is_the_upsampler() -> None:
    torch.manual_seed(0)
    upsampler = build_vae(tiny_config()).up_blocks[0].upsamplers[0]
    fast = layerwise.polyphase(upsampler)
    assert fast is not upsampler
    for shape in [(1, upsampler.channels, 9, 7), (1, upsampler.channels, 1, 1)]:
        u = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(fast(u), upsampler(u), rtol=0, atol=1e-5)
            last = u.contiguous(memory_format=torch.channels_last)
            out = fast(last)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, upsampler(u), rtol=0, atol=1e-5)
    # bf16 runs the upsampler itself, so that bf16 decodes keep their pixels
    upsampler.to(torch.bfloat16)
    u = torch.randn(1, upsampler.channels, 9, 7, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(fast(u), upsampler(u))
    # one it cannot rewrite (a transposed convolution) runs as it is
    from diffusers.models.upsampling import Upsample2D

    transposed = Upsample2D(4, use_conv_transpose=True)
    assert layerwise.polyphase(transposed) is transposed
