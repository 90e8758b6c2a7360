"""D: the half-decoder layout and its upsampling."""

from __future__ import annotations

import math

import torch

from aeic_codec.nn.config import AEIC_SE, tiny_config
from aeic_codec.nn.vae import LiteVAEDecoder

from .published import manifest


def test_full_size_layout_equals_half_decoder() -> None:
    layout = manifest("half_decoder_ckpt.json")
    published = {k.removeprefix("decoder."): v for k, v in layout.items()}
    with torch.device("meta"):
        decoder = LiteVAEDecoder(AEIC_SE)
    shapes = {key: list(value.shape) for key, value in decoder.state_dict().items()}
    assert set(shapes) == set(published) and len(shapes) == 138
    assert {k for k in shapes if shapes[k] != published[k]} == {"conv_in.weight"}
    assert published["conv_in.weight"] == [256, 4, 3, 3]
    assert shapes["conv_in.weight"] == [256, 256, 3, 3]
    assert sum(math.prod(s) for s in shapes.values()) == 12_968_067


def test_upsamples_by_eight() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    decoder = LiteVAEDecoder(cfg).eval()
    assert decoder.scale == 2 ** (len(cfg.vae_widths) - 1) == 8
    with torch.no_grad():
        out = decoder(torch.randn(2, cfg.decoder_latent, 5, 7))
    assert out.shape == (2, 3, 40, 56)
    assert torch.isfinite(out).all()


def test_mid_attention_follows_config() -> None:
    with_attention = LiteVAEDecoder(tiny_config()).state_dict()
    without = LiteVAEDecoder(tiny_config(vae_mid_attention=False)).state_dict()
    assert any(k.startswith("mid_block.attentions.0.") for k in with_attention)
    assert set(without) == {k for k in with_attention if ".attentions." not in k}
