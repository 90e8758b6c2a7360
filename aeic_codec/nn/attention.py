"""Local self-attention: attention whose cost grows with the pixels, not faster.

eps's transformer blocks and D's mid block attend over every position of what they are
given, so the work per position grows with the picture: for the shipped D, one
256 x 256 latent (2048 x 2048 px) spent 14 of 25 CPU-seconds in its one attention
(6 % at 512 x 512), and a 4000 x 3000 decode 31 s per megapixel against 4 at 768 x 512.
While a decode runs, ``local_attention`` gives every such layer a processor that lets each
block of queries attend to the keys of a window of ``area`` image pixels (the model's
``attention_window``, at that layer's scale; square where the grid allows) centred on the
block, moved inwards at the borders. A picture whose layer has no more positions than the
window attends globally, bit for bit the same call; beyond, each query sees a window's
keys, so attention costs the same per pixel at any size. A block is half the window's
side, so every query sees at least a quarter of the window beyond its block on each side
and neighbouring blocks share half of their keys: on kodim23 upscaled to 2048 x 2048 the
columns at block edges differ from a global-attention decode no more than the others (no
seams), and the decode is as far from the source as with blocks of a quarter (which cost a
quarter more per pixel: sdpa is less efficient on few queries).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _window(size: int, start: int, stop: int, window: int) -> slice:
    """Keys of a window of ``window`` centred on queries start..stop-1, inside 0..size-1."""
    if size <= window:
        return slice(0, size)
    first = min(max((start + stop) // 2 - window // 2, 0), size - window)
    return slice(first, first + window)


def window_shape(height: int, width: int, area: int) -> tuple[int, int]:
    """The window's sides on a height x width grid: square, unless one side of the grid is
    shorter than the square's, which then spans that side (at most ``area`` positions)."""
    side = max(math.isqrt(area), 1)
    if height <= side:
        return height, min(width, max(area // height, 1))
    if width <= side:
        return min(height, max(area // width, 1)), width
    return side, side


def windowed_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    height: int,
    width: int,
    area: int,
) -> torch.Tensor:
    """Attention of (batch, heads, height * width, dim) tensors, keys within a window of
    ``area`` positions.

    One plain ``scaled_dot_product_attention`` when the grid has no more positions.
    """
    if height * width <= area:
        return F.scaled_dot_product_attention(query, key, value)
    window_h, window_w = window_shape(height, width, area)
    block_h, block_w = max(window_h // 2, 1), max(window_w // 2, 1)
    grid = (*query.shape[:2], height, width, -1)
    q, k, v = (t.reshape(grid) for t in (query, key, value))
    out = q.new_empty((*q.shape[:-1], value.shape[-1]))
    for top in range(0, height, block_h):
        rows = slice(top, min(top + block_h, height))
        key_rows = _window(height, rows.start, rows.stop, window_h)
        for left in range(0, width, block_w):
            cols = slice(left, min(left + block_w, width))
            key_cols = _window(width, cols.start, cols.stop, window_w)
            part = F.scaled_dot_product_attention(
                q[:, :, rows, cols].flatten(2, 3),
                k[:, :, key_rows, key_cols].flatten(2, 3),
                v[:, :, key_rows, key_cols].flatten(2, 3),
            )
            out[:, :, rows, cols] = part.unflatten(2, (rows.stop - rows.start, -1))
    return out.flatten(2, 3)


class LocalAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` for self-attention without a mask, keys windowed.

    A 4-D input (D's mid block) carries its grid; a sequence (eps's transformers) gets
    it from ``grid``, which a hook on the enclosing transformer sets before each call.
    """

    def __init__(self, area: int) -> None:
        self.area = area
        self.grid: tuple[int, int] | None = None

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The arguments diffusers passes, named: it warns about any this does not name."""
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("local attention is self-attention without a mask")
        residual = hidden_states
        if hidden_states.ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        elif self.grid is not None:
            height, width = self.grid
        else:
            raise RuntimeError("a sequence input needs the grid of its transformer")
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, key, value = (
            attn.to_q(hidden_states),
            attn.to_k(hidden_states),
            attn.to_v(hidden_states),
        )
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (
            t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value)
        )
        out = windowed_sdpa(query, key, value, height, width, self.area)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if residual.ndim == 4:
            out = out.transpose(-1, -2).reshape(residual.shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _supported(attn: nn.Module) -> bool:
    """Whether ``LocalAttnProcessor`` computes what the module's own processor would."""
    return (
        not attn.is_cross_attention
        and attn.spatial_norm is None
        and attn.norm_q is None
        and attn.norm_k is None
        and type(attn.processor).__name__ == "AttnProcessor2_0"
    )


@contextlib.contextmanager
def local_attention(network: nn.Module, scale: int, window: int) -> Iterator[None]:
    """Window every self-attention of ``network`` (eps or D) while the block runs.

    ``window`` is the area in image pixels, ``scale`` image pixels per input pixel of
    the network (8 for a latent); each layer's window follows from its own grid:
    window / (scale * input side / grid side)^2 positions. Modules of other kinds
    (cross-attention, masks) keep their processors.
    """
    from .diffusers_blocks import import_module

    attention = import_module("diffusers.models.attention_processor").Attention
    transformer = import_module("diffusers.models.transformers.transformer_2d").Transformer2DModel
    saved: list[tuple[nn.Module, object]] = []
    handles: list[torch.utils.hooks.RemovableHandle] = []
    side: list[int] = []  # the network input's height, set by its pre-hook

    def enter(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        side[:] = [args[0].shape[-2]]

    def leave(*_args: object) -> None:
        side.clear()

    def area(height: int) -> int:
        """The window (positions) of a layer whose grid is ``height`` high (the network's
        input's height when a layer is called on its own, as the layer-wise D does)."""
        image_side = scale * (side[0] if side else height)
        return max(window * height * height // (image_side * image_side), 1)

    def grid_of(processors: list[LocalAttnProcessor]) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            for p in processors:
                p.grid = args[0].shape[-2:]
                p.area = area(p.grid[0])

        return hook

    def window_of(processor: LocalAttnProcessor) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if args[0].ndim == 4:
                processor.area = area(args[0].shape[-2])

        return hook

    try:
        handles.append(network.register_forward_pre_hook(enter))
        handles.append(network.register_forward_hook(leave))
        covered: set[nn.Module] = set()
        for module in network.modules():
            if isinstance(module, transformer):
                processors = []
                for inner in module.modules():
                    if isinstance(inner, attention) and _supported(inner):
                        processors.append(LocalAttnProcessor(window))
                        saved.append((inner, inner.processor))
                        inner.set_processor(processors[-1])
                        covered.add(inner)
                handles.append(module.register_forward_pre_hook(grid_of(processors)))
        for module in network.modules():
            if isinstance(module, attention) and module not in covered and _supported(module):
                processor = LocalAttnProcessor(window)
                saved.append((module, module.processor))
                module.set_processor(processor)
                handles.append(module.register_forward_pre_hook(window_of(processor)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, processor in saved:
            module.set_processor(processor)
