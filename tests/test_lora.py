"""LoRA: the published adapter layout, and merging without peft equals peft's forward."""

from __future__ import annotations

import math

import pytest
import torch

from aeic_codec.nn.config import AEIC_SE, tiny_config
from aeic_codec.nn.denoiser import Denoiser
from aeic_codec.nn.lora import add_lora, lora_pairs, merge_and_unload, merge_lora_state

from .published import manifest


def test_full_size_adapter_is_the_published_trainable_set() -> None:
    with torch.device("meta"):
        eps = add_lora(Denoiser(AEIC_SE))
    trainable = {n: list(p.shape) for n, p in eps.named_parameters() if p.requires_grad}
    assert trainable == manifest("official_unet_trainable.json")
    lora = {n: s for n, s in trainable.items() if ".lora_" in n}
    assert len(lora) == 2 * 192
    assert sum(math.prod(s) for s in lora.values()) == 28_897_280


def test_published_pairs_fold_into_the_base_layout() -> None:
    base = manifest("pruned_denoiser_base.json")
    trainable = manifest("official_unet_trainable.json")
    lora = {k: torch.empty(s, device="meta") for k, s in trainable.items() if ".lora_" in k}
    assert len(lora_pairs(lora)) == 192
    base_state = {k: torch.empty(s, device="meta") for k, s in base.items()}
    merged = merge_lora_state(base_state, lora, 0.25)
    assert {k: list(v.shape) for k, v in merged.items()} == base


def random_lora_model(adapter: str = "default") -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    cfg = tiny_config()
    eps = add_lora(Denoiser(cfg), adapter_name=adapter).eval()
    with torch.no_grad():
        for name, param in eps.named_parameters():
            if ".lora_B." in name:  # peft starts B at zero; make the adapter do something
                param.normal_(0, 0.2)
    return eps, torch.randn(1, cfg.denoiser_in, 12, 20)


def test_merge_and_unload_equals_peft_forward() -> None:
    eps, x = random_lora_model()
    plain = Denoiser(tiny_config()).eval()
    plain.load_state_dict(merge_and_unload(eps))
    with torch.no_grad():
        expected = eps(x)
        torch.testing.assert_close(plain(x), expected, rtol=0, atol=1e-4)
        base = {k.replace(".base_layer.", "."): v for k, v in eps.state_dict().items()}
        plain.load_state_dict({k: v for k, v in base.items() if ".lora_" not in k})
        assert (plain(x) - expected).abs().max() > 1e-2  # the adapter matters
    assert any(".lora_" in k for k in eps.state_dict())  # training model left as it was


def test_merge_lora_state_without_peft_any_adapter_name() -> None:
    eps, x = random_lora_model("student_unet_lora")
    state = eps.state_dict()
    base = {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}
    lora = {k: v for k, v in state.items() if ".lora_" in k}
    plain = Denoiser(tiny_config()).eval()
    plain.load_state_dict(merge_lora_state(base, lora, scale=8 / 32))
    with torch.no_grad():
        torch.testing.assert_close(plain(x), eps(x), rtol=0, atol=1e-4)


def test_merge_rejects_incomplete_or_dangling_adapters() -> None:
    base = {"proj.weight": torch.zeros(4, 3)}
    a, b = torch.ones(2, 3), torch.ones(4, 2)
    with pytest.raises(KeyError, match="lacks"):
        merge_lora_state(base, {"proj.lora_A.default.weight": a}, 1.0)
    with pytest.raises(KeyError, match="no base weight"):
        merge_lora_state(
            base, {"other.lora_A.default.weight": a, "other.lora_B.default.weight": b}, 1.0
        )
    merged = merge_lora_state(base, {"proj.lora_A.x.weight": a, "proj.lora_B.x.weight": b}, 0.5)
    assert torch.equal(merged["proj.weight"], torch.full((4, 3), 1.0))
    assert torch.equal(base["proj.weight"], torch.zeros(4, 3))
