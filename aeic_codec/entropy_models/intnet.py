"""Integer entropy networks: h_s and the context model in exact integer arithmetic.

Float sums round differently with another summation order, thread count, instruction
set or device, and one flipped table index desynchronises the range decoder for the rest
of the stream. Here everything both sides compute to find the entropy parameters is
integer: 16-bit activations with one power-of-two exponent per tensor (real value =
integer * 2**-f), integer weights with a scale per output channel (a bundle's int8 weights
as they are, else the 8-bit or 16-bit ones its conversion made), exact accumulators,
requantisation by an integer multiply and shift, LayerNorm through an integer square
root and GELU through a stored table. docs/format.md ("Integer entropy path") specifies
every operation bit for bit; ``tests/test_intnet.py`` checks this module against a numpy
int64 reference.

IntOps holds the integers in float64 tensors. The dense products run as float64 GEMMs:
every product and partial sum is an integer below 2**53 (|activation| <= 2**15,
|weight| < 2**15, at most 2048 terms, |bias| <= 2**45), so every float64 addition is
exact whatever its order and the result is the integer sum. On CPUs with int8 dot-product
instructions (AVX512-VNNI, AVX-VNNI, AMX) where a check of the worst cases finds torch's
int8 GEMM (int32 sums) exact, they run on it instead: the bytes of the activations times
the weights' bytes (one for int8 weights, two for 16-bit ones), recombined exactly
(``_digit_gemm``; 3-10x faster there). Without those instructions (AVX2 alone) the int8
GEMM is about 5x slower than the float64 one, so the float64 one runs. Depthwise layers run as
float32 convolutions of byte digits (partial sums below 2**24), requantisation as an
exact float64 multiply where the shift allows (else in int64), LayerNorm in int64.

One program (``hyper_synthesis``, ``context_params``) describes the networks; it runs on
``FloatOps`` (float64 reals, to calibrate the exponents and to build the integer
parameters) and on ``IntOps`` (the integer path both coder sides run).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from aeic_codec.format.container import QSTEP_ONE
from aeic_codec.nn.config import ModelConfig
from aeic_codec.nn.context import POSITIONS, STEPS, step_masks
from aeic_codec.nn.int8 import SCALE_PREFIX
from aeic_codec.runtime.cpu import has

from .priors import SCALE_LEVELS, SCALE_MAX, SCALE_MIN, SKIP_SCALE

INTEGER_FORMAT = "1"  # the bundle's ``integer_format``: the layout of the integer tensors
ACT_MIN, ACT_MAX = -(1 << 15), (1 << 15) - 1
WEIGHT_MAX = (1 << 15) - 1
# How a conversion makes float weights integer: all 8-bit, all 16-bit, or "mixed": 8-bit in
# the layers named by MIXED_8BIT (the context model's blocks, most of the work) and 16-bit
# in h_s and the context adapters, whose outputs are the entropy parameters.
WEIGHT_PLANS = ("8", "mixed", "16")
MIXED_8BIT = ("context.g_c.",)
BIAS_MAX = 1 << 45
MAX_TERMS = 2048  # inputs per output: keeps every accumulator below 2**46
MULT_BITS = 16  # multipliers are normalised to [2**15, 2**16]
SHIFT_RANGE = (1, 62)
LN_PRECISION = 24  # LayerNorm's 1 / sigma has this many fractional bits
LN_EPS = 1e-6
EXPONENT_RANGE = (-16, 40)
SYMBOL_CLAMP = 1 << 16  # symbols beyond saturate the 16-bit context either way
# y's quantisation step is qstep / QSTEP_ONE (container.py): a dyadic rational, so that
# sym * step and the scale comparisons stay exact integers.
QSTEP_BITS = QSTEP_ONE.bit_length() - 1
DIGIT_CHUNK = 1 << 20  # output values per band of rows in _digit_gemm
FLOAT_SHIFT_MAX = 37  # requantisation shifts up to this run exactly in float64 (IntOps)


class Act(NamedTuple):
    """An activation: NHWC values and the exponent f (real = v * 2**-f).

    IntOps holds int64 integers; FloatOps holds float64 reals and, when building, the
    exponent the integer path will use for this tensor (0 while calibrating).
    """

    v: torch.Tensor
    f: int


# --------------------------------------------------------------------------- program


def hyper_synthesis(ops: Ops, z_hat: Act, cfg: ModelConfig, size: tuple[int, int]) -> Act:
    """h_s: Up, StarBlocks, Up; cropped to y's size; output at the context exponent."""
    n = cfg.hyper_blocks
    x = _up(ops, "h_s.increase.0", z_hat, "h_s.up")
    for i in range(1, n + 1):
        x = _star_block(ops, f"h_s.increase.{i}", x)
    x = _up(ops, f"h_s.increase.{n + 1}", x, "ctx")
    return Act(x.v[:, : size[0], : size[1]], x.f)


def context_params(
    ops: Ops, step: int, ctx: Act, cfg: ModelConfig, cells: tuple[int, ...] | None = None
) -> tuple[Act, Act]:
    """One quadtree step: adapter_in, g_c, adapter_out; (mean at ctx's exponent, scale).

    With ``cells`` (IntOps only: the step's 2x2 cell of each channel group), adapter_out's
    last layers compute each group only where the step codes it (``IntOps.linear_cells``).
    """
    (t,) = _adapter(ops, f"context.adapter_in.{step}", ctx, (f"context.adapter_in.{step}",))
    for i in range(cfg.context_depth):
        p = f"context.g_c.block.{i}.blocks"
        t = _inception_next(ops, f"{p}.0", t)
        t = _gated_cnn(ops, f"{p}.1", t)
    mean, scale = _adapter(ops, f"context.adapter_out.{step}", t, ("ctx", "scale"), cells)
    return mean, scale


def _up(ops: Ops, p: str, x: Act, site: str) -> Act:
    y = ops.conv3x3(f"{p}.body.0", x, site)
    v = F.pixel_shuffle(y.v.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    return Act(v, y.f)


def _inception_dw(ops: Ops, p: str, x: Act) -> Act:
    """Identity on the first channels, three depthwise kernels on three groups of C/8."""
    c = x.v.shape[-1]
    gc = c // 8
    bounds = [0, c - 3 * gc, c - 2 * gc, c - gc, c]
    parts = [ops.rescale(p, Act(x.v[..., : bounds[1]], x.f))]
    for i, name in enumerate(("dwconv_hw", "dwconv_w", "dwconv_h")):
        part = Act(x.v[..., bounds[i + 1] : bounds[i + 2]], x.f)
        parts.append(ops.depthwise(f"{p}.{name}", part, p))
    return Act(torch.cat([a.v for a in parts], -1), parts[0].f)


def _star_block(ops: Ops, p: str, x: Act) -> Act:
    t = ops.layernorm(f"{p}.norm", _inception_dw(ops, f"{p}.dwconv", x))
    a, b = ops.linear(f"{p}.fc1", t, (f"{p}.fc1.a", f"{p}.fc1.b"))
    m = ops.mul(f"{p}.mul", ops.gelu(a), b)
    (r,) = ops.linear(f"{p}.fc2", m, (p,))
    return ops.add(p, x, r)


def _inception_next(ops: Ops, p: str, x: Act) -> Act:
    t = _inception_dw(ops, f"{p}.depthconv", x)
    (h,) = ops.linear(f"{p}.conv1", t, (f"{p}.conv1",))
    (r,) = ops.linear(f"{p}.conv2", ops.gelu(h), (p,))
    return ops.add(p, x, r)


def _gated_cnn(ops: Ops, p: str, x: Act) -> Act:
    t = ops.layernorm(f"{p}.norm", x)
    a, b = ops.linear(f"{p}.fc1", t, (f"{p}.fc1.a", f"{p}.fc1.b"))
    b = ops.depthwise(f"{p}.conv", b, f"{p}.conv")
    m = ops.mul(f"{p}.mul", ops.gelu(a), b)
    (r,) = ops.linear(f"{p}.fc2", m, (p,))
    return ops.add(p, x, r)


def _adapter(
    ops: Ops, p: str, x: Act, sites: tuple[str, ...], cells: tuple[int, ...] | None = None
) -> list[Act]:
    """branch1 (1x1, GELU, dw5x5, GELU, 1x1) + branch2 (1x1), each requantised, then added."""
    (h,) = ops.linear(f"{p}.branch1.0", x, (f"{p}.branch1.0",))
    h = ops.gelu(ops.depthwise(f"{p}.branch1.2", ops.gelu(h), f"{p}.branch1.2"))
    if cells is None:
        one = ops.linear(f"{p}.branch1.4", h, sites)
        two = ops.linear(f"{p}.branch2", x, sites)
    else:
        assert isinstance(ops, IntOps)
        one = ops.linear_cells(f"{p}.branch1.4", h, sites, cells)
        two = ops.linear_cells(f"{p}.branch2", x, sites, cells)
    return [ops.add(s, a, b) for s, a, b in zip(sites, one, two, strict=True)]


# --------------------------------------------------------------------------- shared helpers


def _im2col(v: torch.Tensor) -> torch.Tensor:
    """NHWC -> NHW(9C): the 3x3 neighbourhood of each pixel, zero padded, (dy, dx, c) order."""
    _, h, w, _ = v.shape
    p = F.pad(v, (0, 0, 1, 1, 1, 1))
    return torch.cat([p[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], -1)


def _depthwise_sum(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per channel: bias + sum over the (kh, kw) taps of the zero-padded input (NHWC, float64).

    A direct convolution: only products and sums, which are exact on integer operands.
    """
    kh, kw = weight.shape[1:]
    nchw = v.permute(0, 3, 1, 2).contiguous()
    out = F.conv2d(nchw, weight[:, None], bias, padding=(kh // 2, kw // 2), groups=len(weight))
    return out.permute(0, 2, 3, 1)


def _depthwise_split(v: torch.Tensor, digits: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The depthwise sums without bias, exactly, from float32 convolutions (float64 out).

    v (NHWC integers in float64) = 256 * hi + lo with hi in [-128, 127] and lo in
    [0, 255], both made in float32 (exactly) and convolved in one batch as channels-last
    views with each of the kernel's digits (``kernel_digits``: the kernel itself, or its
    high and low bytes). Every product and partial sum is then an integer below 2**24,
    which float32 holds exactly in any order; the parts are recombined in float64.
    """
    n = v.shape[0]
    kh, kw = digits[0].shape[2:]
    v32 = v.float()
    halves = torch.empty((2 * n, *v.shape[1:]), dtype=torch.float32)
    torch.mul(v32, 1 / 256, out=halves[:n]).floor_()
    torch.sub(v32, halves[:n], alpha=256, out=halves[n:])
    outs = [
        F.conv2d(halves.permute(0, 3, 1, 2), k, padding=(kh // 2, kw // 2), groups=len(k))
        .permute(0, 2, 3, 1)
        .double()
        for k in digits
    ]
    acc = outs[0][:n].mul_(256).add_(outs[0][n:])  # (256 hi + lo) * q, or * q_hi
    if len(outs) == 2:  # q = 256 q_hi + q_lo
        acc.mul_(256).add_(outs[1][:n].mul_(256)).add_(outs[1][n:])
    return acc


def kernel_digits(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """An integer depthwise kernel (C, kh, kw) as float32 digits for ``_depthwise_split``.

    With |q| * 255 * taps below 2**24 the kernel itself; else (16-bit weights) its bytes
    q = 256 hi + lo (hi in [-128, 127], lo in [0, 255]): products of two bytes stay below
    2**16, so sums of up to 256 taps stay below 2**24. Each is (C, 1, kh, kw).
    """
    taps = weight.shape[1] * weight.shape[2]
    if int(weight.abs().max()) * 255 * taps < 1 << 24:
        return (weight.float()[:, None],)
    if taps > 256:
        raise ValueError(f"depthwise kernel of {taps} taps: at most 256 run exactly")
    hi = torch.floor(weight / 256)
    return hi.float()[:, None], (weight - 256 * hi).float()[:, None]


INT8_DOT_PRODUCTS = ("avx512_vnni", "avx_vnni", "amx_int8")  # torch.cpu.get_capabilities()


@functools.cache
def use_int8_gemm() -> bool:
    """Whether the dense products run on torch's int8 GEMM here (else on float64's).

    Where it is fast (the CPU has int8 dot products) and exact (``int8_gemm_exact``).
    Measured on an AMD EPYC with AVX2 alone: aeic-small-l12's entropy path on kodim01 took
    1.4 s with the int8 GEMM and 0.27 s with float64's. Either gives the same integers.
    """
    return has(*INT8_DOT_PRODUCTS) and int8_gemm_exact()


@functools.cache
def int8_gemm_exact() -> bool:
    """Whether torch's int8 GEMM (int32 sums) is available and exact here.

    CPUs without int8 dot-product instructions add pairs of byte products in saturating
    16-bit lanes, which the extremes of both operands overflow; so the extremes are what
    is checked, once per process, against int64 sums.
    """
    a = torch.tensor([[127] * 64, [-128] * 64, [127, -128] * 32], dtype=torch.int8)
    w = torch.tensor([[127, -128, 127], [127, -128, -128]] * 32, dtype=torch.int8)
    try:
        return torch.equal(torch._int_mm(a, w).long(), a.long() @ w.long())
    except RuntimeError:
        return False


class ByteWeights(NamedTuple):
    """A layer's weights as int8 bytes for ``_digit_gemm``.

    ``w8`` is weight.T (K, N) itself for int8 weights; for 16-bit ones, their high and
    low bytes side by side (K, 2N), w = 256 hi + lo + 128. ``offset`` is what the digit
    products leave out: the bias, plus 128 times the column sums of each byte matrix.
    ``int32_sums``: whether 256 * (hi digits @ w8) + (lo digits @ w8) fits int32 for any
    input, which the largest column sum of |w8| decides (a digit pair weighs at most
    DIGIT_PAIR_MAX).
    """

    w8: torch.Tensor
    offset: torch.Tensor
    wide: bool
    int32_sums: bool


DIGIT_PAIR_MAX = 256 * 128 + 128  # |256 hi + lo| for the two digits of a 16-bit activation


def byte_weights(weight_t: torch.Tensor, bias: torch.Tensor) -> ByteWeights:
    """ByteWeights of integer weights (K, N) (float64 holding int8 or 16-bit values)."""
    if weight_t.numel() == 0 or -128 <= float(weight_t.min()) <= float(weight_t.max()) <= 127:
        w8, offset, wide = weight_t, bias + 128 * weight_t.sum(0), False
    else:
        hi = torch.floor(weight_t / 256)
        lo = weight_t - 256 * hi - 128
        w8, offset, wide = torch.cat((hi, lo), 1), bias + 128 * (256 * hi.sum(0) + lo.sum(0)), True
    column = float(w8.abs().sum(0).max()) if w8.numel() else 0.0
    return ByteWeights(w8.to(torch.int8), offset, wide, column * DIGIT_PAIR_MAX < 1 << 31)


def _digit_gemm(flat: torch.Tensor, weights: ByteWeights) -> torch.Tensor:
    """``flat @ weight.T + bias`` exactly, for integers ``flat`` in [-2**15, 2**15) (float64).

    flat = 256 hi + lo + 128 with hi and lo in [-128, 127] (hi its high byte, lo its low
    byte less 128): one int8 GEMM of both digits against the weight bytes (sums of at most
    MAX_TERMS products, below 2**25 in int32), recombined exactly: in int32 where the
    weights' column sums allow (``ByteWeights.int32_sums``), else in float64, where
    everything stays an integer below 2**53. With 16-bit weights (``wide``), the two byte
    products are recombined likewise in float64, and the weights' 128 needs flat's row
    sums.
    """
    m = flat.shape[0]
    rows = max(1, DIGIT_CHUNK // weights.w8.shape[1])
    if m > rows:  # in bands of rows, whose temporaries stay in cache and reuse their memory
        out = torch.empty(m, len(weights.offset), dtype=torch.float64)
        for r in range(0, m, rows):
            out[r : r + rows] = _digit_gemm(flat[r : r + rows], weights)
        return out
    v = flat.to(torch.int16)
    digits = torch.cat((v >> 8, (v & 255).sub_(128))).to(torch.int8)
    products = torch._int_mm(digits, weights.w8)
    # flat @ w8, less 128 * column sums: in int32 where it cannot overflow, else in float64.
    if weights.int32_sums:
        acc = torch.add(products[m:], products[:m], alpha=256).double()
    else:
        products = products.double()
        acc = products[:m].mul_(256).add_(products[m:])
    if weights.wide:
        n = acc.shape[1] // 2
        acc = acc[:, :n].mul(256).add_(acc[:, n:]).add_(flat.sum(1, keepdim=True), alpha=128)
    return acc.add_(weights.offset)


def _clamp(v: torch.Tensor) -> torch.Tensor:
    return v.clamp(ACT_MIN, ACT_MAX)


def rshift_round(v: torch.Tensor, k: int) -> torch.Tensor:
    """v * 2**-k rounded half up (k > 0), or v * 2**-k exactly (k <= 0); int64."""
    if k > 0:
        return (v + (1 << (k - 1))) >> k
    return v << -k


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) for int64 n in [0, 2**62), exact: a float guess corrected in integers."""
    r = torch.sqrt(n.double()).floor().long()
    for _ in range(2):
        r = r - (r * r > n).long()
        r = r + ((r + 1) * (r + 1) <= n).long()
    return r


def exponent_for(peak: float) -> int:
    """The largest f with peak * 2**f <= ACT_MAX (peak 0: the largest allowed f)."""
    lo, hi = EXPONENT_RANGE
    if not peak > 0 or not math.isfinite(peak):
        return hi
    return max(lo, min(hi, math.floor(math.log2(ACT_MAX / peak))))


def gelu_table(f: int) -> torch.Tensor:
    """round(GELU(a * 2**-f) * 2**f) for a in [-2**15, 2**15), clamped to 16 bits (int16)."""
    a = torch.arange(ACT_MIN, ACT_MAX + 1, dtype=torch.float64)
    return _clamp(torch.round(F.gelu(a * 2.0**-f) * 2.0**f)).to(torch.int16)


def scale_thresholds(f: int) -> torch.Tensor:
    """[skip, t_1 .. t_63]: the least integer scales (exponent f) at or above 0.08 and s_i.

    A step codes a position when its integer scale is >= skip, with table index
    #{i >= 1 : scale >= t_i}; s_i = exp(ln 0.11 + i * (ln 256 - ln 0.11) / 63).
    """
    step = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (SCALE_LEVELS - 1)
    edges = [SKIP_SCALE] + [math.exp(math.log(SCALE_MIN) + i * step) for i in range(1, 64)]
    return torch.tensor([math.ceil(e * 2.0**f) for e in edges], dtype=torch.int64)


# --------------------------------------------------------------------------- integer ops


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


class IntOps:
    """The integer path: integer values held exactly in float64 tensors.

    Activations are integers in [-2**15, 2**15), which float64 holds exactly, so the GEMMs
    need no conversion and most requantisations run as float64 multiplies (see
    ``_layer``). LayerNorm, whose products exceed 2**53, and the table lookups of GELU
    compute in int64.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.t = tensors
        self._cache: dict[str, tuple] = {}

    def exp(self, site: str) -> int:
        return int(self.t[f"exp.{site}"])

    def _layer(self, name: str) -> tuple:
        """(weight.T, bias, scale) in float64, and the int64 (multiplier, shift) or None.

        ``scale`` = M * 2**-S exactly. With S <= 37, round-half-up(acc * scale) in float64
        is exact wherever the result fits 16 bits: there |acc * M| < 2**(S + 16) <= 2**53,
        so the product is exact, and a larger |acc * M| rounds to at least 2**16 and
        saturates as it should. Layers with a larger shift requantise in int64.
        """
        got = self._cache.get(name)
        if got is None:
            weight, bias = self.t[f"{name}.weight"], self.t[f"{name}.bias"]
            mult, shift = self.t[f"{name}.multiplier"].long(), self.t[f"{name}.shift"].long()
            scale = mult.double() * torch.pow(2.0, -shift.double())
            exact = int(shift.max()) <= FLOAT_SHIFT_MAX
            got = self._cache[name] = (
                weight.double().flatten(1).t(),
                bias.double(),
                scale,
                None if exact else (mult, shift),
            )
        return got

    def _requant(self, acc: torch.Tensor, name: str, index: torch.Tensor | None = None):
        """clamp16(round-half-up(acc * M * 2**-S)) of a float64 accumulator, in place."""
        *_, scale, wide = self._layer(name)
        if index is not None:
            scale = scale[index]
        if wide is None:
            return torch.addcmul(_HALF, acc, scale, out=acc).floor_().clamp_(ACT_MIN, ACT_MAX)
        mult, shift = wide if index is None else (wide[0][index], wide[1][index])
        rounding = torch.ones_like(shift) << (shift - 1)
        return _clamp((acc.long() * mult + rounding) >> shift).double()

    def _split(self, v: torch.Tensor, sites: tuple[str, ...]) -> list[Act]:
        parts = v.chunk(len(sites), -1)
        return [Act(p, self.exp(s)) for p, s in zip(parts, sites, strict=True)]

    def _bytes(self, name: str) -> ByteWeights | None:
        """The layer's weights for _digit_gemm, or None where the float64 GEMM runs."""
        key = f"{name}|bytes"
        if key not in self._cache:
            weight_t, bias, *_ = self._layer(name)
            int8 = weight_t.shape[0] <= MAX_TERMS and use_int8_gemm()
            self._cache[key] = byte_weights(weight_t, bias) if int8 else None
        return self._cache[key]

    def _gemm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        weight_t, bias, *_ = self._layer(name)
        flat = x.reshape(-1, x.shape[-1])
        b = self._bytes(name)
        # Either way exact (integers below 2**53), so either gives the same values.
        acc = torch.addmm(bias, flat, weight_t) if b is None else _digit_gemm(flat, b)
        return self._requant(acc, name).view(*x.shape[:-1], -1)

    def linear(self, name: str, x: Act, sites: tuple[str, ...]) -> list[Act]:
        return self._split(self._gemm(name, x.v), sites)

    def linear_cells(
        self, name: str, x: Act, sites: tuple[str, ...], cells: tuple[int, ...]
    ) -> list[Act]:
        """A 1x1 layer whose output channel group g is needed only at 2x2 cell cells[g].

        Each site's outputs fall into len(cells) equal groups; group g is computed at the
        pixels of cell cells[g] alone (one batched GEMM), so each site comes back as
        (groups, pixels of a cell, channels of a group): a quarter of the work.
        """
        weight_t, bias, *_ = self._layer(name)
        index = self._cell_index(name, weight_t.shape[1], len(sites), len(cells))
        b = self._bytes(name)
        key = f"{name}|cells"
        weights = self._cache.get(key)
        if weights is None:
            # Per group: its weight columns (float64, or bytes for _digit_gemm).
            if b is None:
                weights = (weight_t[:, index].permute(1, 0, 2).contiguous(),)
            else:
                weights = tuple(byte_weights(weight_t[:, i], bias[i]) for i in index)
            self._cache[key] = weights
        v = x.v[0]
        rows = torch.stack([v[c // 2 :: 2, c % 2 :: 2].reshape(-1, v.shape[-1]) for c in cells])
        if b is None:
            acc = torch.baddbmm(bias[index].unsqueeze(1), rows, weights[0])
        else:
            acc = torch.stack([_digit_gemm(r, w) for r, w in zip(rows, weights, strict=True)])
        return self._split(self._requant(acc, name, index.unsqueeze(1)), sites)

    def _cell_index(self, name: str, outputs: int, sites: int, groups: int) -> torch.Tensor:
        """(groups, sites * per group) output channels: group g of every site, in site order."""
        per_site = outputs // sites
        per_group = per_site // groups
        starts = torch.arange(groups)[:, None, None] * per_group
        starts = starts + torch.arange(sites)[None, :, None] * per_site
        return (starts + torch.arange(per_group)).reshape(groups, -1)

    def conv3x3(self, name: str, x: Act, site: str) -> Act:
        return Act(self._gemm(name, _im2col(x.v)), self.exp(site))

    def depthwise(self, name: str, x: Act, site: str) -> Act:
        _, bias, *_ = self._layer(name)
        acc = _depthwise_split(x.v, self._digits(name)).add_(bias)
        return Act(self._requant(acc, name), self.exp(site))

    def _digits(self, name: str) -> tuple[torch.Tensor, ...]:
        key = f"{name}|digits"
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = kernel_digits(self.t[f"{name}.weight"].double())
        return got

    def layernorm(self, name: str, x: Act) -> Act:
        v = x.v.long()
        c = v.shape[-1]
        total = v.sum(-1, keepdim=True)
        mu = torch.div(2 * total + c, 2 * c, rounding_mode="floor")
        d = v - mu
        ss = (d * d).sum(-1, keepdim=True)
        eps = int(self.t[f"{name}.eps"])
        n = torch.div((1 << (2 * LN_PRECISION)) * c, ss + c * eps, rounding_mode="floor")
        t = d * isqrt(n)  # (x - mean) / sigma with LN_PRECISION fractional bits
        gain, offset = self.t[f"{name}.gain"].long(), self.t[f"{name}.offset"].long()
        out = _clamp(rshift_round(t * gain + offset, int(self.t[f"{name}.shift"])))
        return Act(out.double(), self.exp(name))

    def gelu(self, x: Act) -> Act:
        index = x.v.int().sub_(ACT_MIN).reshape(-1)
        return Act(self._table(f"gelu.{x.f}").index_select(0, index).view(x.v.shape), x.f)

    def _table(self, key: str) -> torch.Tensor:
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = (self.t[key].double(),)
        return got[0]

    def mul(self, site: str, a: Act, b: Act) -> Act:
        f = self.exp(site)
        k = a.f + b.f - f
        if k > 0:  # 1/2 + a * b * 2**-k in one pass: products below 2**31, all exact
            out = torch.addcmul(_HALF, a.v, b.v, value=2.0**-k).floor_()
        else:
            out = (a.v * b.v).mul_(2.0**-k)
        return Act(out.clamp_(ACT_MIN, ACT_MAX), f)

    def rescale(self, site: str, x: Act) -> Act:
        f = self.exp(site)
        k = x.f - f
        if k == 0:
            return Act(x.v, f)  # already 16-bit
        if k > 0:  # smaller: no saturation
            return Act(torch.add(_HALF, x.v, alpha=2.0**-k).floor_(), f)
        return Act((x.v * 2.0**-k).clamp_(ACT_MIN, ACT_MAX), f)

    def add(self, site: str, x: Act, r: Act) -> Act:
        k = x.f - self.exp(site)
        if k > 0:  # rescale(x) + r = floor(x * 2**-k + 1/2 + r): r is an integer
            out = torch.add(r.v, x.v, alpha=2.0**-k).add_(0.5).floor_()
        else:
            out = self.rescale(site, x).v + r.v
        return Act(out.clamp_(ACT_MIN, ACT_MAX), r.f)


_HALF = torch.tensor(0.5, dtype=torch.float64)


# --------------------------------------------------------------------------- float ops


class FloatOps:
    """The same program in float64 on the float model's weights.

    Without exponents it calibrates (records the peak magnitude of every site); with
    them it also builds the integer parameters of every layer it runs through. Weights
    a bundle stores as int8 with a scale per output channel are used as those integers.
    """

    def __init__(
        self,
        model: nn.Module,
        exponents: dict[str, int] | None = None,
        stored: dict[str, torch.Tensor] | None = None,
        weight_plan: str = "16",
    ) -> None:
        self.model = model
        self.exps = exponents
        self.stored = stored or {}
        self.weight_plan = weight_plan
        self.peaks: dict[str, float] = {}
        self.params: dict[str, torch.Tensor] = {}

    def observe(self, site: str, v: torch.Tensor) -> int:
        if self.exps is None:
            peak = float(v.abs().max()) if v.numel() else 0.0
            self.peaks[site] = max(self.peaks.get(site, 0.0), peak)
            return 0
        return self.exps[site]

    def _weights(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Real weight (integer layout), real bias, and the int8 scales when stored as int8."""
        m = self.model.get_submodule(name)
        bias = m.bias.detach().double()
        raw = self.stored.get(f"{name}.weight")
        if raw is not None and raw.dtype == torch.int8:
            q = integer_weight(raw).double()
            scale = self.stored[f"{SCALE_PREFIX}{name}.weight"].double()
            return q * scale.view(-1, *[1] * (q.dim() - 1)), bias, scale
        return integer_weight(m.weight.detach().double()), bias, None

    def _build(self, name: str, f_in: int, f_out: torch.Tensor) -> None:
        if self.exps is not None and f"{name}.bias" not in self.params:
            real, bias, int8_scale = self._weights(name)
            self.params.update(
                quantize_layer(
                    name, real, bias, f_in, f_out, int8_scale, layer_bits(self.weight_plan, name)
                )
            )

    def linear(self, name: str, x: Act, sites: tuple[str, ...]) -> list[Act]:
        weight, bias, _ = self._weights(name)
        parts = (x.v @ weight.t() + bias).chunk(len(sites), -1)
        fs = [self.observe(s, p) for s, p in zip(sites, parts, strict=True)]
        self._build(
            name,
            x.f,
            torch.cat([torch.full((p.shape[-1],), f) for p, f in zip(parts, fs, strict=True)]),
        )
        return [Act(p, f) for p, f in zip(parts, fs, strict=True)]

    def conv3x3(self, name: str, x: Act, site: str) -> Act:
        weight, bias, _ = self._weights(name)
        out = _im2col(x.v) @ weight.t() + bias
        f = self.observe(site, out)
        self._build(name, x.f, torch.full((len(bias),), f))
        return Act(out, f)

    def depthwise(self, name: str, x: Act, site: str) -> Act:
        weight, bias, _ = self._weights(name)
        out = _depthwise_sum(x.v, weight, bias)
        f = self.observe(site, out)
        self._build(name, x.f, torch.full((len(bias),), f))
        return Act(out, f)

    def layernorm(self, name: str, x: Act) -> Act:
        ln = self.model.get_submodule(name)
        gamma, beta = ln.weight.detach().double(), ln.bias.detach().double()
        mu = x.v.mean(-1, keepdim=True)
        var = ((x.v - mu) ** 2).mean(-1, keepdim=True)
        out = (x.v - mu) / torch.sqrt(var + LN_EPS) * gamma + beta
        f = self.observe(name, out)
        if self.exps is not None:
            self.params.update(quantize_norm(name, gamma, beta, x.f, f))
        return Act(out, f)

    def gelu(self, x: Act) -> Act:
        if self.exps is not None:
            self.params.setdefault(f"gelu.{x.f}", gelu_table(x.f))
        return Act(F.gelu(x.v), x.f)

    def mul(self, site: str, a: Act, b: Act) -> Act:
        out = a.v * b.v
        return Act(out, self.observe(site, out))

    def rescale(self, site: str, x: Act) -> Act:
        return Act(x.v, self.observe(site, x.v))

    def add(self, site: str, x: Act, r: Act) -> Act:
        out = x.v + r.v
        return Act(out, self.observe(site, out))


Ops = IntOps | FloatOps


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
    (``_digit_gemm``) at a small rate cost, which ``integerize.integer_cost`` measures.
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


# --------------------------------------------------------------------------- the model


class Start(NamedTuple):
    """h_s's output (NHWC) and step 0's means and scales: the same at every quantisation
    step, so a rate search computes them once per z."""

    ctx: Act
    step0: tuple[torch.Tensor, torch.Tensor]


class IntegerEntropy:
    """The integer entropy model of a bundle: its tensors (without the prefix) and the run."""

    def __init__(self, cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> None:
        self.cfg = cfg
        self.tensors = dict(tensors)
        self.ops = IntOps(self.tensors)
        self.f_z = int(tensors["exp.z"])
        self.f_ctx = int(tensors["exp.ctx"])
        self.median = tensors["z_median"].long()  # integers at exponent f_z
        self.thresholds = tensors["scale_thresholds"].long()

    def start(self, z_sym: torch.Tensor, y_size: tuple[int, int]) -> Start:
        """What the four steps start from and no quantisation step changes (see Start)."""
        ctx = hyper_synthesis(self.ops, self.z_hat(z_sym), self.cfg, y_size)
        return Start(ctx, self._params(0, ctx))

    def _params(self, k: int, ctx: Act) -> tuple[torch.Tensor, torch.Tensor]:
        """Step k's integer means and scales at its positions (1-D int64, C order)."""
        mean, scale = context_params(self.ops, k, ctx, self.cfg, POSITIONS[k])
        return mean.v.transpose(1, 2).reshape(-1).long(), scale.v.transpose(1, 2).reshape(-1).long()

    def median_real(self) -> torch.Tensor:
        """The z medians the integer path rounds around (float64, exact)."""
        return self.median.double() * 2.0**-self.f_z

    def z_hat(self, z_sym: torch.Tensor) -> Act:
        """h_s's input from the z symbols (1, C, h, w): sym * 2**f_z + median, 16-bit."""
        v = z_sym.long().clamp(-SYMBOL_CLAMP, SYMBOL_CLAMP) << self.f_z
        v = _clamp(v + self.median.view(1, -1, 1, 1))
        return Act(v.permute(0, 2, 3, 1).double(), self.f_z)

    def coded_and_tables(
        self, scale: torch.Tensor, qstep: int = QSTEP_ONE
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which of a step's positions are coded, and their table indices (0..63).

        A symbol of a position with scale s at step q / 256 has scale s * 256 / q, so the
        thresholds compare against scale * 256 and threshold * q, exact in int64.
        """
        scaled = scale << QSTEP_BITS
        thresholds = self.thresholds * qstep
        coded = scaled >= thresholds[0]
        idx = torch.searchsorted(thresholds[1:], scaled[coded], right=True)
        return coded, idx

    def mean_real(self, mean: torch.Tensor) -> torch.Tensor:
        return mean.double() * 2.0**-self.f_ctx

    def dequantize(self, sym: torch.Tensor, mean: torch.Tensor, qstep: int) -> torch.Tensor:
        """The context's integers at a step's positions: sym * step + mean at exponent f_ctx."""
        v = sym.clamp(-SYMBOL_CLAMP, SYMBOL_CLAMP) * qstep
        return _clamp(rshift_round(v, QSTEP_BITS - self.f_ctx) + mean)

    def run(
        self,
        z_sym: torch.Tensor,
        y_size: tuple[int, int],
        code_step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
        qstep: int = QSTEP_ONE,
        start: Start | None = None,
    ) -> tuple[torch.Tensor, bytes]:
        """h_s and the four steps; returns y_hat (float32, sym * step + mean) and the digest.

        ``code_step(k, mean, scale)`` gets step k's integer means and scales at its
        positions (int64, in C order of the (M, h, w) latent, as ``step_values`` takes
        them from a tensor) and returns their symbols (0 where a position is not coded).
        ``qstep`` is the quantisation step of y in 1/256 (QSTEP_ONE: the trained step);
        ``start`` is ``start(z_sym, y_size)`` when the caller has it (a rate search codes
        one z at several steps). Every operation's result is exact, so any number of
        threads gives the same values.
        """
        cfg = self.cfg
        digest = hashlib.sha256()
        start = start if start is not None else self.start(z_sym, y_size)
        ctx = Act(start.ctx.v.clone(memory_format=torch.contiguous_format), start.ctx.f)
        y_hat = torch.zeros(1, cfg.latent_channels, *y_size, dtype=torch.float64)
        for k in range(STEPS):
            cells = POSITIONS[k]
            mean, scale = start.step0 if k == 0 else self._params(k, ctx)
            digest.update(mean.to(torch.int16).numpy().astype("<i2").tobytes())
            digest.update(scale.to(torch.int16).numpy().astype("<i2").tobytes())
            sym = code_step(k, mean, scale)
            _set_step(ctx.v.permute(0, 3, 1, 2), cells, self.dequantize(sym, mean, qstep))
            real = sym.double() * (qstep / QSTEP_ONE) + self.mean_real(mean)
            _set_step(y_hat, cells, real)
        return y_hat.float(), digest.digest()


def _step_parts(t: torch.Tensor, cells: tuple[int, ...]) -> list[tuple[int, torch.Tensor]]:
    """Views of a (1, M, h, w) tensor at one step's positions: (group, its channels at its cell).

    The step's positions in C order of (M, h, w) are these views flattened, in group order.
    """
    per_group = t.shape[1] // len(cells)
    return [
        (g, t[0, g * per_group : (g + 1) * per_group, c // 2 :: 2, c % 2 :: 2])
        for g, c in enumerate(cells)
    ]


def _set_step(t: torch.Tensor, cells: tuple[int, ...], values: torch.Tensor) -> None:
    """Write a step's values (1-D, C order) into a (1, M, h, w) tensor, in place."""
    parts = _step_parts(t, cells)
    values = values.view(len(parts), *parts[0][1].shape)
    for g, part in parts:
        part.copy_(values[g])


def step_values(t: torch.Tensor, step: int) -> torch.Tensor:
    """A (1, M, h, w) tensor's values at step ``step``'s positions, in C order (1-D)."""
    return torch.cat([part.reshape(-1) for _, part in _step_parts(t, POSITIONS[step])])


# --------------------------------------------------------------------------- conversion


def _program_inputs(model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y and z (float64) of a padded image in [-1, 1], from the float encoder."""
    with torch.no_grad():
        y = model.g_a(image).float()
        z = model.h_a(y).float()
    return y.double(), z.double()


def _float_pass(
    ops: FloatOps, model: nn.Module, y: torch.Tensor, z: torch.Tensor, median: torch.Tensor
) -> None:
    """The float codec on one image through ``ops``: z_hat, h_s and the four steps."""
    cfg = model.cfg
    z_hat = torch.round(z - median.view(1, -1, 1, 1)) + median.view(1, -1, 1, 1)
    f_z = ops.observe("z", z_hat)
    base = hyper_synthesis(ops, Act(z_hat.permute(0, 2, 3, 1), f_z), cfg, y.shape[-2:])
    ctx = base.v
    masks = step_masks(cfg.latent_channels, *y.shape[-2:], y.device)
    y_nhwc = y.permute(0, 2, 3, 1)
    for k in range(STEPS):
        mean, _ = context_params(ops, k, Act(ctx, base.f), cfg)
        y_hat = torch.round(y_nhwc - mean.v) + mean.v
        mask = masks[k].permute(0, 2, 3, 1)
        ops.observe("ctx", y_hat[mask])
        ctx = torch.where(mask, y_hat, ctx)


def integerize(
    model: nn.Module,
    images: Iterable[torch.Tensor],
    stored: dict[str, torch.Tensor] | None = None,
    weight_plan: str = "16",
) -> dict[str, torch.Tensor]:
    """Integer entropy tensors (without the prefix) for a float model, calibrated on images.

    ``images`` are padded (1, 3, H, W) tensors in [-1, 1]; each site's exponent is the
    finest that holds its largest magnitude over them in 16 bits. ``stored`` are the
    bundle's raw tensors: int8 weights among them are used as they are (not copied);
    float ones become integers as ``weight_plan`` (WEIGHT_PLANS) says.
    """
    if weight_plan not in WEIGHT_PLANS:  # before the calibration passes, not after them
        raise ValueError(f"integer weights {weight_plan!r}: one of {', '.join(WEIGHT_PLANS)}")
    median = model.entropy_bottleneck.medians.detach().double()
    calib = FloatOps(model)
    inputs = [_program_inputs(model, x) for x in images]
    if not inputs:
        raise ValueError("integerize needs at least one calibration image")
    with torch.no_grad():
        for y, z in inputs:
            _float_pass(calib, model, y, z, median)
        exps = {site: exponent_for(peak) for site, peak in calib.peaks.items()}
        build = FloatOps(model, exps, stored, weight_plan)
        y, z = inputs[0]
        _float_pass(build, model, y[..., :2, :2], z[..., :1, :1], median)
    params = build.params
    if exps["z"] < 0 or exps["ctx"] < 0:
        raise ValueError("z or y reaches beyond 2**15: no 16-bit integer path for this model")
    for site, f in exps.items():
        params[f"exp.{site}"] = torch.tensor([f], dtype=torch.int32)
    params["z_median"] = torch.round(median * 2.0 ** exps["z"]).to(torch.int64)
    params["scale_thresholds"] = scale_thresholds(exps["scale"])
    return params
