"""Synthetic published checkpoints: the manifests' layouts with values from the fixture rule.

``tests/reference/fixture-se/spec.json`` states the rule exactly; files built here import
like the real AEIC_SE_ft*.pkl, SD-Turbo folder and halfDecoder.ckpt would.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

REFERENCE = Path(__file__).resolve().parent / "reference"  # see reference/README.md
FIXTURE = REFERENCE / "fixture-se"
KEEP_INITIAL = (
    "_offset",
    "_quantized_cdf",
    "_cdf_length",
    "scale_table",
    "scale_bound",
    "target",
    "likelihood_lower_bound.bound",
    "lower_bound_scale.bound",
    "quantiles",
)


def manifest(name: str) -> dict[str, list[int]]:
    """A key -> shape manifest of a published layout."""
    return json.loads((REFERENCE / name).read_text())


def rule_values(key: str, shape: tuple[int, ...], scale: float = 0.05) -> torch.Tensor:
    """w.flatten()[i] = scale * u(key, i) (+1 for 1-D '.weight'), float64 then float32."""
    n = int(np.prod(shape)) if shape else 1
    i = np.arange(n, dtype=np.uint64)
    mask = np.uint64(0xFFFFFFFF)
    h = (i * np.uint64(2654435761) + np.uint64(zlib.crc32(key.encode()))) & mask
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x45D9F3B)) & mask
    h ^= h >> np.uint64(16)
    u = (h % np.uint64(1 << 24)).astype(np.float64) / float(1 << 23) - 1.0
    w = scale * u
    if len(shape) == 1 and key.endswith(".weight"):
        w = w + 1.0
    return torch.from_numpy(w.reshape(shape)).to(torch.float32)


def _initial(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """CompressAI's initial values for the buffers the rule leaves alone."""
    if 0 in shape:
        return torch.zeros(shape)
    if key.endswith("quantiles"):
        return torch.tensor([-10.0, 0.0, 10.0]).repeat(shape[0], 1, 1)
    if key.endswith("target"):
        t = float(np.log(2 / 1e-9 - 1))
        return torch.tensor([-t, 0.0, t])
    if "scale" in key and "bound" in key:
        return torch.full(shape, 0.11)
    return torch.full(shape, 1e-9)


def codec_state(variant: str = "SE") -> dict[str, torch.Tensor]:
    manifest = json.loads((REFERENCE / f"official_codec_AEIC-{variant}.json").read_text())
    state = {}
    for key, shape in manifest.items():
        shape = tuple(shape)
        if 0 in shape or any(k in key for k in KEEP_INITIAL):
            state[key] = _initial(key, shape)
        else:
            state[key] = rule_values(key, shape)
    m = state["adapter_out.0.branch2.bias"].shape[0] // 2
    for k in range(4):
        state[f"adapter_out.{k}.branch2.bias"][m:] += 3.0
    return state


def write_published(
    folder: Path, unet_config: dict | None = None, variant: str = "SE"
) -> tuple[Path, Path, Path]:
    """Write AEIC_{variant}_ft16.pkl, sd-turbo/unet/* and halfDecoder.ckpt by the rule."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    spec = json.loads((FIXTURE / "spec.json").read_text())
    unet_config = unet_config or spec["unet_config"]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    sd = {k: rule_values(k, tuple(v.shape)) for k, v in unet.state_dict().items()}
    (folder / "sd-turbo" / "unet").mkdir(parents=True)
    (folder / "sd-turbo" / "unet" / "config.json").write_text(json.dumps(unet_config))
    save_file(sd, str(folder / "sd-turbo" / "unet" / "diffusion_pytorch_model.safetensors"))

    trainable = json.loads((REFERENCE / "official_unet_trainable.json").read_text())
    width = unet_config["block_out_channels"][0]
    shapes = {}
    for key, shape in trainable.items():
        if key.startswith("conv_in."):
            shape = [width, 320, 3, 3] if key.endswith("weight") else [width]
        elif key.startswith("conv_out."):
            shape = [256, width, 3, 3] if key.endswith("weight") else [256]
        else:
            base = key.replace(".lora_A.default", "").replace(".lora_B.default", "")
            full = sd[base].shape
            rank = 32
            kernel = list(full[2:]) if len(full) == 4 else []
            ones = [1] * len(kernel)
            shape = [rank, full[1], *kernel] if ".lora_A." in key else [full[0], rank, *ones]
        shapes[key] = tuple(shape)
    unet_part = {k: rule_values(k, s) for k, s in shapes.items()}
    pkl = folder / f"AEIC_{variant}_ft16.pkl"
    torch.save({"state_dict_codec": codec_state(variant), "state_dict_unet": unet_part}, pkl)

    half = json.loads((REFERENCE / "half_decoder_ckpt.json").read_text())
    vae = folder / "halfDecoder.ckpt"
    torch.save({"state_dict": {k: rule_values(k, tuple(s)) for k, s in half.items()}}, vae)
    return pkl, folder / "sd-turbo", vae
