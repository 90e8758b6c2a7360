"""eps: the published layout, and the same network as SD's UNet with time and prompt muted."""

from __future__ import annotations

import math

import pytest
import torch

from aeic_codec.nn.config import AEIC_SE, tiny_config
from aeic_codec.nn.denoiser import Denoiser

from .published import manifest


def test_full_size_layout_equals_pruned_sd_turbo() -> None:
    with torch.device("meta"):
        eps = Denoiser(AEIC_SE)
    shapes = {key: list(value.shape) for key, value in eps.state_dict().items()}
    # The manifest already lists the widened conv_in (320 -> 320) and conv_out (320 -> 256).
    assert shapes == manifest("pruned_denoiser_base.json")
    assert shapes["conv_in.weight"] == [320, 320, 3, 3]
    assert shapes["conv_out.weight"] == [256, 320, 3, 3]
    assert sum(math.prod(s) for s in shapes.values()) == 789_294_016


@pytest.mark.parametrize("size", [(16, 16), (13, 21), (1, 3)])
@pytest.mark.parametrize("mid_attention", [True, False])
def test_any_size_keeps_its_shape(size: tuple[int, int], mid_attention: bool) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(unet_mid_attention=mid_attention)
    eps = Denoiser(cfg).eval()
    with torch.no_grad():
        out = eps(torch.randn(2, cfg.denoiser_in, *size))
    assert out.shape == (2, cfg.decoder_latent, *size)
    assert torch.isfinite(out).all()


def test_plain_mid_block_keeps_the_resnet_keys() -> None:
    with_attention = Denoiser(tiny_config()).state_dict()
    plain = Denoiser(tiny_config(unet_mid_attention=False)).state_dict()
    assert set(plain) == {k for k in with_attention if not k.startswith("mid_block.attentions")}


def test_padding_is_edge_replication_cropped_back() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    eps = Denoiser(cfg).eval()
    x = torch.randn(1, cfg.denoiser_in, 7, 5)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="replicate")
    with torch.no_grad():
        assert torch.equal(eps(x), eps(padded)[..., :7, :5])


def test_equals_sd_unet_with_time_and_cross_attention_muted() -> None:
    """Wiring check: diffusers' full UNet with zeroed time projections and attn2 is eps."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    cfg = tiny_config(
        unet_widths=(32, 64, 64), unet_heads=(2, 4, 4), unet_attention=(True, True, False)
    )
    eps = Denoiser(cfg).eval()
    levels = len(cfg.unet_widths)
    unet = UNet2DConditionModel(
        in_channels=cfg.denoiser_in,
        out_channels=cfg.decoder_latent,
        down_block_types=tuple(
            "CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.unet_attention
        ),
        up_block_types=tuple(
            "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.unet_attention)
        ),
        block_out_channels=cfg.unet_widths,
        layers_per_block=cfg.unet_layers,
        attention_head_dim=cfg.unet_heads,  # SD's legacy name for the head count
        cross_attention_dim=16,
        norm_num_groups=cfg.unet_norm_groups,
        norm_eps=1e-5,
        use_linear_projection=True,
    ).eval()
    missing, unexpected = unet.load_state_dict(eps.state_dict(), strict=False)
    assert not unexpected
    removed = ("time_embedding.", "time_emb_proj.", ".attn2.", ".norm2.")
    assert all(k.startswith(removed[0]) or any(r in k for r in removed[1:]) for k in missing)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "time_emb_proj" in name or ".attn2.to_out.0." in name:
                param.zero_()
        x = torch.randn(1, cfg.denoiser_in, 4 * 2 ** (levels - 1), 8)
        prompt = torch.randn(1, 3, 16)
        expected = unet(x, 999, encoder_hidden_states=prompt).sample
        torch.testing.assert_close(eps(x), expected, rtol=0, atol=1e-5)
