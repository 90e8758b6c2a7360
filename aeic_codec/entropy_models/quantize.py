"""Float layers made integer: weights, bias, requantisation multiplier and shift.

Integer weights have a scale per output channel (a bundle's int8 weights as they are,
else the 8-bit or 16-bit ones a conversion makes, as its weight plan says); each layer
requantises its exact accumulator to the next tensor's exponent by an integer multiply
and shift, and LayerNorm scales by an integer gain. ``intnet.integerize`` calls these on
every layer of the float model; docs/format.md ("Integer entropy path") gives the layout.
"""

from __future__ import annotations

import math

import torch

from .kernels import MAX_TERMS

WEIGHT_MAX = (1 << 15) - 1
# How a conversion makes float weights integer: all 8-bit, all 16-bit, or "mixed": 8-bit in
# the layers named by MIXED_8BIT (the context model's blocks, most of the work) and 16-bit
# in h_s and the context adapters, whose outputs are the entropy parameters.
WEIGHT_PLANS = ("8", "mixed", "16")
MIXED_8BIT = ("context.g_c.",)
BIAS_MAX = 1 << 45
MULT_BITS = 16  # multipliers are normalised to [2**15, 2**16]
SHIFT_RANGE = (1, 62)
LN_PRECISION = 24  # LayerNorm's 1 / sigma has this many fractional bits
LN_EPS = 1e-6


def layout_of(shape: tuple[int, ...] | torch.Size) -> str:
    """How a convolution kernel (O, I, kh, kw) is used: "linear", "depthwise" or "conv3x3"."""
    if tuple(shape[2:]) == (1, 1):
        return "linear"
    return "depthwise" if shape[1] == 1 else "conv3x3"


def integer_weight(kernel: torch.Tensor) -> torch.Tensor:
    """A kernel in the integer path's layout: (O, I), (C, kh, kw) or (O, 9I) in (dy, dx, i)."""
    kind = layout_of(kernel.shape)
    if kind == "linear":
        return kernel.flatten(1)
    if kind == "depthwise":
        return kernel[:, 0]
    return kernel.permute(0, 2, 3, 1).flatten(1)


def layer_bits(weight_plan: str, name: str) -> int:
    """The bits (8 or 16) of a float layer's integer weights under a plan (WEIGHT_PLANS)."""
    if weight_plan == "mixed":
        return 8 if name.startswith(MIXED_8BIT) else 16
    return int(weight_plan)


def quantize_layer(
    name: str,
    real: torch.Tensor,
    bias: torch.Tensor,
    f_in: int,
    f_out: torch.Tensor,
    int8_scale: torch.Tensor | None = None,
    weight_bits: int = 16,
) -> dict[str, torch.Tensor]:
    """Integer bias, multiplier and shift of one layer, and its weights unless int8-stored.

    Output channel o has integer weights q (the stored int8 ones, else ``weight_bits``-bit
    ones with scale max |w| / (2**(bits - 1) - 1)) and scale s; the accumulator counts
    units s * 2**-f_in, and the requant multiplier s * 2**(f_out - f_in) is written as
    M * 2**-S, M in [2**15, 2**16]. 8-bit weights halve the integer GEMMs' work
    (``kernels.digit_gemm``) at a small rate cost, which ``tools.integerize.integer_cost`` measures.
    """
    out: dict[str, torch.Tensor] = {}
    rows = real.flatten(1)
    if rows.shape[1] > MAX_TERMS:
        raise ValueError(f"{name}: {rows.shape[1]} inputs per output, at most {MAX_TERMS}")
    if int8_scale is None:
        top = (1 << (weight_bits - 1)) - 1
        peak = rows.abs().amax(1)
        scale = torch.where(peak > 0, peak / top, torch.ones_like(peak))
        q = torch.round(rows / scale[:, None]).clamp(-top, top)
        kind = torch.int8 if weight_bits == 8 else torch.int16
        out[f"{name}.weight"] = q.view(real.shape).to(kind)
    else:
        scale = int8_scale
    unit = scale * 2.0**-f_in
    m = unit * 2.0 ** f_out.double()
    shift = (MULT_BITS - 1 - torch.floor(torch.log2(m))).clamp(*SHIFT_RANGE)
    out[f"{name}.bias"] = torch.round(bias / unit).clamp(-BIAS_MAX, BIAS_MAX).to(torch.int64)
    out[f"{name}.multiplier"] = torch.round(m * 2.0**shift).clamp(0, 1 << MULT_BITS).to(torch.int32)
    out[f"{name}.shift"] = shift.to(torch.int32)
    return out


def quantize_norm(
    name: str, gamma: torch.Tensor, beta: torch.Tensor, f_in: int, f_out: int
) -> dict[str, torch.Tensor]:
    """LayerNorm's integers: eps, gain G = round(gamma * 2**g), offset and shift.

    out = ((x - mean) / sigma * 2**24 * G + offset) >> shift, shift = 24 + g - f_out.
    """
    peak = float(gamma.abs().max())
    g = math.floor(math.log2(WEIGHT_MAX / peak)) if peak > 0 else 0
    shift = LN_PRECISION + g - f_out
    if shift < 1:
        raise ValueError(f"{name}: LayerNorm output exponent {f_out} too fine")
    offset = torch.round(beta * 2.0 ** (LN_PRECISION + g)).clamp(-(1 << 55), 1 << 55)
    return {
        f"{name}.eps": torch.tensor([max(1, round(LN_EPS * 4.0**f_in))], dtype=torch.int64),
        f"{name}.gain": torch.round(gamma * 2.0**g).to(torch.int32),
        f"{name}.offset": offset.to(torch.int64),
        f"{name}.shift": torch.tensor([shift], dtype=torch.int32),
    }
