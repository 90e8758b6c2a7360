"""Import the published AEIC checkpoints into one self-contained bundle.

Inputs (docs/architecture.md section 7): ``AEIC_{SE,ME}_ft{L}.pkl`` (codec state and the
denoiser's LoRA plus its new conv_in/conv_out), SD-Turbo in diffusers layout (every
other denoiser weight) and ``halfDecoder.ckpt`` (the lite VAE decoder with a 4-channel
conv_in). Everything is read with safetensors or ``torch.load(weights_only=True)``:
nothing is unpickled into objects. The LoRA is merged, what the pruned denoiser does
not have is dropped, D.conv_in is derived by tiling, and every key is checked: a
missing, unexpected or mis-shaped tensor stops the import with its name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aeic_codec.codec.model import AEIC
from aeic_codec.nn.config import AEIC_ME, AEIC_SE, ModelConfig
from aeic_codec.nn.lora import merge_lora_state

from .bundle import BundleError, save_bundle

Report = Callable[[str], None]  # told, in words, what the import is doing
LORA_SCALE = 8 / 32  # lora_alpha / rank of the published denoiser adapter
# Buffers the published codec stores that are derived state here (rebuilt, never trusted).
DERIVED = (
    "_offset",
    "_quantized_cdf",
    "_cdf_length",
    "gaussian_conditional.",
    "target",
    "likelihood_lower_bound",
)
CONTEXT_PARTS = ("adapter_in.", "g_c.", "adapter_out.")
SD_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


class CheckpointError(BundleError):
    """The published files do not fit together or do not fit the model."""


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"{path}: not a weights-only torch checkpoint ({exc})") from exc


def _variant_of(codec: dict[str, torch.Tensor]) -> ModelConfig:
    key = "g_a.analysis_transform.0.body.0.weight"
    if key not in codec:
        raise CheckpointError(f"codec state lacks {key}: not an AEIC checkpoint")
    first = codec[key].shape[0]
    for cfg in (AEIC_SE, AEIC_ME):
        if first == cfg.ga_dims[0] // 4:
            return cfg
    raise CheckpointError(f"{key} has shape {tuple(codec[key].shape)}: neither AEIC-SE nor AEIC-ME")


def _unet_shape(sd_turbo: Path) -> dict[str, Any]:
    path = sd_turbo / "unet" / "config.json"
    try:
        conf = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file (is {sd_turbo} an SD-Turbo folder?)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not JSON ({exc})") from None
    try:
        widths = tuple(conf["block_out_channels"])
        heads = conf.get("attention_head_dim") or conf.get("num_attention_heads")
        heads = tuple(heads) if isinstance(heads, list) else (heads,) * len(widths)
        attention = tuple(t.startswith("CrossAttn") for t in conf["down_block_types"])
        return {
            "unet_widths": widths,
            "unet_heads": heads,
            "unet_attention": attention,
            "unet_layers": int(conf.get("layers_per_block", 2)),
            "unet_norm_groups": int(conf.get("norm_num_groups", 32)),
        }
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: unexpected UNet config ({exc})") from None


def _unet_weights(sd_turbo: Path) -> dict[str, torch.Tensor]:
    folder = sd_turbo / "unet"
    for name in SD_WEIGHT_FILES:
        path = folder / name
        if path.exists():
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(str(path))
            return _load_torch(path)
    raise CheckpointError(f"{folder}: none of {', '.join(SD_WEIGHT_FILES)}")


def _vae_widths(vae: dict[str, torch.Tensor]) -> tuple[int, ...]:
    widths = []
    i = 0
    while f"up_blocks.{i}.resnets.0.conv2.weight" in vae:
        widths.append(vae[f"up_blocks.{i}.resnets.0.conv2.weight"].shape[0])
        i += 1
    if not widths:
        raise CheckpointError("halfDecoder state has no decoder.up_blocks: not a VAE decoder")
    return tuple(reversed(widths))


def _check(what: str, expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> None:
    """Refuse with every missing, unexpected and mis-shaped key named (first few of each)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [
        f"{k} {tuple(given[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(given))
        if given[k].shape != expected[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def _strip_peft(key: str) -> str:
    key = re.sub(r"^(base_model\.model\.)", "", key)
    return re.sub(r"^student_(conv_in|conv_out)\.", r"\1.", key)


def build_model(
    aeic_pkl: str | os.PathLike[str],
    sd_turbo: str | os.PathLike[str],
    vae_decoder: str | os.PathLike[str],
    report: Report | None = None,
) -> AEIC:
    """The published pieces as one AEIC model (LoRA merged, D.conv_in derived)."""
    say = report or (lambda _msg: None)
    say(f"reading {aeic_pkl}")
    ckpt = _load_torch(Path(aeic_pkl))
    if not isinstance(ckpt, dict) or not {"state_dict_codec", "state_dict_unet"} <= set(ckpt):
        raise CheckpointError(
            f"{aeic_pkl}: expected a dict with state_dict_codec and state_dict_unet"
        )
    codec = dict(ckpt["state_dict_codec"])
    unet_part = {_strip_peft(k): v for k, v in ckpt["state_dict_unet"].items()}
    cfg = _variant_of(codec)

    say(f"reading {vae_decoder}")
    half = _load_torch(Path(vae_decoder))
    half_state = half.get("state_dict", half) if isinstance(half, dict) else None
    if not isinstance(half_state, dict):
        raise CheckpointError(f"{vae_decoder}: expected a state_dict")
    vae = {k[len("decoder.") :]: v for k, v in half_state.items() if k.startswith("decoder.")}
    cfg = cfg.replace(**_unet_shape(Path(sd_turbo)), vae_widths=_vae_widths(vae))

    say("building the model")
    model = AEIC(cfg)
    target = model.state_dict()

    state: dict[str, torch.Tensor] = {}
    for key, value in codec.items():
        if any(d in key for d in DERIVED):
            continue
        state[f"context.{key}" if key.startswith(CONTEXT_PARTS) else key] = value
    codec_expected = {k: v for k, v in target.items() if not k.startswith(("denoiser.", "vae."))}
    _check(f"{aeic_pkl} (codec)", codec_expected, state)

    say(f"reading {sd_turbo} and merging the LoRA")
    lora = {k: v for k, v in unet_part.items() if ".lora_" in k}
    convs = {k: v for k, v in unet_part.items() if ".lora_" not in k}
    den_expected = {
        k[len("denoiser.") :]: v for k, v in target.items() if k.startswith("denoiser.")
    }
    _check(
        f"{aeic_pkl} (unet convs)",
        {
            k: den_expected[k]
            for k in ("conv_in.weight", "conv_in.bias", "conv_out.weight", "conv_out.bias")
        },
        convs,
    )
    base = _unet_weights(Path(sd_turbo))
    base = {
        k: v
        for k, v in base.items()
        if k in den_expected and not k.startswith(("conv_in.", "conv_out."))
    }
    try:
        merged = merge_lora_state({k: v.float() for k, v in base.items()}, lora, LORA_SCALE)
    except KeyError as exc:
        raise CheckpointError(f"{aeic_pkl} (LoRA): {exc.args[0]}") from None
    merged.update(convs)
    _check(f"{sd_turbo} + {aeic_pkl} (denoiser)", den_expected, merged)
    state.update({f"denoiser.{k}": v for k, v in merged.items()})

    say("deriving D.conv_in")
    w = vae.get("conv_in.weight")
    if w is None or w.dim() != 4:
        raise CheckpointError(f"{vae_decoder}: decoder.conv_in.weight missing")
    copies = cfg.decoder_latent // w.shape[1]
    vae["conv_in.weight"] = w.repeat(1, copies, 1, 1) / copies
    vae_expected = {k[len("vae.") :]: v for k, v in target.items() if k.startswith("vae.")}
    _check(f"{vae_decoder} (decoder)", vae_expected, vae)
    state.update({f"vae.{k}": v for k, v in vae.items()})

    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def lambda_from_name(path: str | os.PathLike[str]) -> float | None:
    """AEIC_SE_ft16.pkl -> 16.0 (the published naming); None when it does not say."""
    m = re.search(r"_ft(\d+(?:\.\d+)?)", Path(path).stem)
    return float(m.group(1)) if m else None


def import_published(
    aeic_pkl: str | os.PathLike[str],
    sd_turbo: str | os.PathLike[str],
    vae_decoder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    lambda_: float | None = None,
    report: Report | None = None,
    decoder_dtype: str = "bf16",
) -> str:
    """Build the model from the published files and write it as a bundle; returns its identity."""
    model = build_model(aeic_pkl, sd_turbo, vae_decoder, report)
    lam = lambda_ if lambda_ is not None else lambda_from_name(aeic_pkl)
    (report or (lambda _m: None))(f"writing {out}")
    provenance = {
        "imported_from": [Path(aeic_pkl).name, Path(sd_turbo).name, Path(vae_decoder).name],
        "lora_scale": LORA_SCALE,
    }
    return save_bundle(out, model, lambda_=lam, provenance=provenance, decoder_dtype=decoder_dtype)
