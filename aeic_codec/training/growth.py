"""Growing a trained model deeper without changing what it computes.

A run may raise the depths in ``config.GROWABLE`` over its init_bundle: the blocks it
adds are residual, so they start as identities (their last layers zeroed) and the grown
model's output is the bundle's, bit for bit, before the first step.
"""

from __future__ import annotations

from torch import nn

from aeic_codec.bundles.bundle import BundleError
from aeic_codec.codec.model import AEIC
from aeic_codec.nn.blocks import BasicBlock, GatedCNN, InceptionNeXt, StarBlock
from aeic_codec.nn.config import ModelConfig

_GROWING = ("g_s.synthesis_transform.", "context.g_c.")  # the state growth changes
_RESIDUAL_OUT = {StarBlock: "fc2", GatedCNN: "fc2", InceptionNeXt: "conv2"}


def _zero_residuals(block: nn.Module) -> None:
    """Zero the last layer of every residual branch in ``block``: it then passes x through."""
    for module in block.modules():
        name = _RESIDUAL_OUT.get(type(module))
        if name is not None:
            nn.init.zeros_(getattr(module, name).weight)
            nn.init.zeros_(getattr(module, name).bias)


def _align(old: nn.Module, new: nn.Module) -> None:
    """Copy ``old``'s children into ``new``'s in order; extra new blocks become identities.

    Each old child goes to the next new child of the same type and shapes; the new children
    skipped on the way are the added blocks (residual, so the order does not matter).
    """
    fresh = list(new.children())
    shapes = [[p.shape for p in m.parameters()] for m in fresh]
    at = 0
    for child in old.children():
        want = [p.shape for p in child.parameters()]
        while at < len(fresh) and (type(fresh[at]) is not type(child) or shapes[at] != want):
            _added(fresh[at])
            at += 1
        if at == len(fresh):
            raise BundleError(f"cannot place {type(child).__name__} in the grown model")
        fresh[at].load_state_dict(child.state_dict())
        at += 1
    for extra in fresh[at:]:
        _added(extra)


def _added(block: nn.Module) -> None:
    """Start a block the growth added as an identity; only whole residual blocks qualify."""
    if not isinstance(block, (StarBlock, BasicBlock)):
        raise BundleError(f"the grown model differs in more than depth ({type(block).__name__})")
    _zero_residuals(block)


def grown_model(model: AEIC, cfg: ModelConfig) -> AEIC:
    """``model`` deepened to ``cfg`` (more g_s blocks or context blocks), same function."""
    grown = AEIC(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(_GROWING)}
    missing, unexpected = grown.load_state_dict(state, strict=False)
    stray = unexpected + [k for k in missing if not k.startswith(_GROWING)]
    if stray:
        raise BundleError(f"the grown model and the bundle differ beyond depth ({stray[0]})")
    _align(model.g_s.synthesis_transform, grown.g_s.synthesis_transform)
    _align(model.context.g_c.block, grown.context.g_c.block)
    grown.z_tables, grown.y_tables = model.z_tables, model.y_tables
    return grown.eval()
