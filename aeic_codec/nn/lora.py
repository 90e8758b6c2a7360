"""LoRA on the denoiser eps: peft for training, plain torch for folding it in.

Training adapts eps with peft LoRA (rank 32, alpha 8, docs/architecture.md section 5),
injected in place so that the adapter keys carry the published checkpoints' names
(``<module>.lora_A.<adapter>.weight``). Inference only ever needs the merged weights,
so ``merge_lora_state`` folds A/B pairs into plain tensors without peft, and peft is
imported inside the functions that need it: decoding must not pay for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

DEFAULT_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "conv",
    "conv1",
    "conv2",
    "conv_shortcut",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
)
# eps' new input/output convs are trained in full next to the LoRA (published recipe).
FULLY_TRAINED: tuple[str, ...] = ("conv_in", "conv_out")

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<kind>[AB])\.(?P<adapter>[^.]+)\.weight$")


def add_lora(
    denoiser: nn.Module,
    rank: int = 32,
    alpha: float = 8,
    targets: Iterable[str] = DEFAULT_TARGETS,
    adapter_name: str = "default",
) -> nn.Module:
    """Inject LoRA into ``denoiser`` in place and return it.

    B starts at zero, so the model's output is unchanged until training moves it.
    Afterwards exactly the adapter tensors and conv_in/conv_out require grad: the
    tensors a published ``state_dict_unet`` holds.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets))
    model = inject_adapter_in_model(config, denoiser, adapter_name=adapter_name)
    for name in FULLY_TRAINED:
        getattr(model, name).requires_grad_(True)
    return model


def _fold(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A; conv A (r, in, kh, kw) and B (out, r, 1, 1) are flattened to matrices."""
    delta = b.reshape(b.shape[0], -1).float() @ a.reshape(a.shape[0], -1).float()
    if delta.numel() != weight.numel():
        raise ValueError(
            f"LoRA product {tuple(delta.shape)} does not fit base weight {tuple(weight.shape)}"
        )
    return (weight.float() + scale * delta.reshape(weight.shape)).to(weight.dtype)


def lora_pairs(lora_state: dict[str, torch.Tensor]) -> dict[tuple[str, str], tuple[str, str]]:
    """Map (module, adapter) to its (A key, B key) for every peft-named LoRA tensor.

    Raises on a key that is not a LoRA tensor or on an A without its B, because a
    half-present adapter would silently give a different network.
    """
    found: dict[tuple[str, str], dict[str, str]] = {}
    for key in lora_state:
        match = _LORA_KEY.match(key)
        if match is None:
            raise KeyError(f"not a peft LoRA weight key: {key}")
        slot = found.setdefault((match["module"], match["adapter"]), {})
        slot[match["kind"]] = key
    pairs = {}
    for (module, adapter), slot in found.items():
        if set(slot) != {"A", "B"}:
            lacking = "A" if "B" in slot else "B"
            raise KeyError(f"LoRA {module} ({adapter}) lacks its lora_{lacking}")
        pairs[(module, adapter)] = (slot["A"], slot["B"])
    return pairs


def merge_lora_state(
    base_state: dict[str, torch.Tensor], lora_state: dict[str, torch.Tensor], scale: float
) -> dict[str, torch.Tensor]:
    """Fold peft-named LoRA A/B tensors into the plain weights of ``base_state``.

    Pure torch, so weight import runs without peft. Any adapter name is accepted
    (published distilled checkpoints use ``student_unet_lora``); every pair must land
    on an existing ``<module>.weight``. Returns a new dict; the inputs are not changed.
    """
    merged = dict(base_state)
    for (module, _adapter), (key_a, key_b) in lora_pairs(lora_state).items():
        target = f"{module}.weight"
        if target not in merged:
            raise KeyError(f"LoRA {key_a} has no base weight {target}")
        merged[target] = _fold(merged[target], lora_state[key_a], lora_state[key_b], scale)
    return merged


def merge_and_unload(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain Denoiser state dict equivalent to a LoRA-injected one, for training exports.

    Folds each layer's active adapters with that layer's own peft scaling (what its
    forward applies) and leaves the training model untouched, so training can go on.
    """
    from peft.tuners.lora import LoraLayer

    state = {
        key.replace(".base_layer.", "."): value.detach()
        for key, value in peft_model.state_dict().items()
        if ".lora_" not in key
    }
    for name, layer in peft_model.named_modules():
        if not isinstance(layer, LoraLayer) or layer.disable_adapters:
            continue
        target = f"{name}.weight"
        for adapter in layer.active_adapters:
            if adapter not in layer.lora_A:
                continue
            a = layer.lora_A[adapter].weight.detach()
            b = layer.lora_B[adapter].weight.detach()
            state[target] = _fold(state[target], a, b, layer.scaling[adapter])
    return state
