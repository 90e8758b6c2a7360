"""Copies of a bundle with a part added or a setting changed, under the same identity.

A realism decoder (``realism.``) and a fast encoder's stem (``stem.``) sit outside the
identity (``bundle.identity_of``), the colour grid is each file's own and the attention
window a way of rendering: a copy with one of them added, replaced or changed decodes
every file the original made.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from aeic_codec.nn.int8 import SCALE_PREFIX

from .bundle import (
    BUNDLE_FORMATS,
    REALISM_PREFIX,
    STEM_PREFIX,
    BundleError,
    BundleInfo,
    identity_of,
    read_info,
    stored_tensors,
)

if TYPE_CHECKING:
    import torch

    from aeic_codec.nn.config import ModelConfig


def attach_realism(
    path: str | os.PathLike[str],
    decoder: torch.nn.Module,
    output: str | os.PathLike[str],
    decoder_dtype: str = "int8",
    provenance: dict[str, Any] | None = None,
) -> str:
    """Write a copy of a bundle carrying ``decoder`` (a RealismDecoder) as its realism decoder.

    Every other tensor and the identity stay as they were (a realism decoder already in
    the bundle is replaced), so the copy decodes every file the original made.
    """
    named = ("realism", decoder.cfg.to_json())
    return _attach(path, output, REALISM_PREFIX, decoder, decoder_dtype, named, provenance)


def attach_stem(
    path: str | os.PathLike[str],
    stem: torch.nn.Module,
    output: str | os.PathLike[str],
    dtype: str = "int8",
    provenance: dict[str, Any] | None = None,
) -> str:
    """Write a copy of a bundle carrying ``stem`` (an AnalysisStem) as its fast encoder
    (int8 by default: a 50 K parameter stem then adds about 56 KB).

    Every other tensor and the identity stay as they were (a stem already in the bundle
    is replaced), so the copy decodes every file the original made.
    """
    named = ("stem", stem.config.to_json())
    return _attach(path, output, STEM_PREFIX, stem, dtype, named, provenance)


def _attach(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    prefix: str,
    part: torch.nn.Module,
    dtype: str,
    named: tuple[str, str],
    provenance: dict[str, Any] | None = None,
) -> str:
    """A copy of a bundle with ``part`` under ``prefix`` (outside the identity) in place of
    any it had, its configuration in metadata ``<name>_config``; returns the identity."""
    import torch
    from safetensors.torch import load_file, save_file

    from aeic_codec.runtime.files import atomic_path

    info = read_info(path)
    name, config = named
    try:
        tensors = {
            k: v
            for k, v in load_file(str(info.path)).items()
            if not k.removeprefix(SCALE_PREFIX).startswith(prefix)
        }
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise BundleError(f"{info.path}: cannot load bundle ({exc})") from exc
    for key, value in part.state_dict().items():
        tensors.update(stored_tensors(prefix + key, value, dtype, dtype)[0])
    identity = identity_of(info.config.identity_json(), tensors)
    if identity != info.identity:
        raise BundleError(f"{info.path}: its tensors do not give its identity {info.identity}")
    meta = dict(info.metadata, **{f"{name}_config": config})
    meta["provenance"] = json.dumps(
        dict(info.provenance, **{name: provenance or {}}), sort_keys=True
    )
    if any(t.dtype == torch.int8 for t in tensors.values()):
        meta["aeic_bundle"] = BUNDLE_FORMATS[1]
    with atomic_path(output) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return identity


def set_colour_grid(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    cell: int,
    step: int | None = None,
) -> str:
    """Write a copy of a bundle whose encoder sends another colour grid; returns its identity.

    The grid is the encoder's choice and every file carries its own cell and step, so the
    tensors, tables and identity stay as they were and the copy decodes the original's
    files. ``cell`` 0 turns the grid off; ``step`` None keeps the bundle's.
    """
    info = read_info(path)
    old = info.config
    step = old.colour_grid_step if step is None else step
    # Without a grid the step is not stored: an unused --step is not checked.
    config = old.replace(colour_grid=cell, colour_grid_step=step if cell else old.colour_grid_step)
    trained = ("trained_colour_grid", [old.colour_grid, old.colour_grid_step])
    return _with_configs(info, output, {"config": config}, trained)


def set_attention_window(
    path: str | os.PathLike[str], output: str | os.PathLike[str], pixels: int
) -> str:
    """Write a copy of a bundle whose decoders attend over windows of ``pixels`` image
    pixels (``ModelConfig.attention_window``, its realism decoder's too); returns its
    identity.

    The window changes how the decoder renders, not what a file says: tensors and identity
    stay, and the copy decodes the original's files (differently only where a picture's
    attention grid is larger than the window).
    """
    info = read_info(path)
    configs = {"config": info.config.replace(attention_window=pixels)}
    if info.realism is not None:
        configs["realism_config"] = info.realism.replace(attention_window=pixels)
    trained = ("trained_attention_window", info.config.attention_window)
    return _with_configs(info, output, configs, trained)


def _with_configs(
    info: BundleInfo,
    output: str | os.PathLike[str],
    configs: dict[str, ModelConfig],
    first: tuple[str, Any],
) -> str:
    """A copy of a bundle with other configurations (metadata key -> config) that keep its
    identity; ``first`` is recorded in the provenance unless an earlier copy did."""
    from safetensors.torch import load_file, save_file

    from aeic_codec.runtime.files import atomic_path

    try:
        tensors = load_file(str(info.path))
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise BundleError(f"{info.path}: cannot load bundle ({exc})") from exc
    identity = identity_of(configs["config"].identity_json(), tensors)
    if identity != info.identity:
        raise BundleError(f"{info.path}: its tensors do not give its identity {info.identity}")
    provenance = dict(info.provenance)
    provenance.setdefault(*first)
    metadata = dict(info.metadata, provenance=json.dumps(provenance, sort_keys=True))
    metadata.update({key: config.to_json() for key, config in configs.items()})
    with atomic_path(output) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return identity
