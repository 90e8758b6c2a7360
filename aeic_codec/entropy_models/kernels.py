"""Exact integer products on float and int8 hardware: the integer entropy path's kernels.

The integer path (``intnet.py``) holds its integers in float64 tensors, and its dense
products run as float64 GEMMs: every product and partial sum is an integer below 2**53
(|activation| <= 2**15, |weight| < 2**15, at most MAX_TERMS terms, |bias| <= 2**45), so
every float64 addition is exact whatever its order and the result is the integer sum. On
CPUs with int8 dot-product instructions (AVX512-VNNI, AVX-VNNI, AMX) where a check of the
worst cases finds torch's int8 GEMM (int32 sums) exact, they run on it instead: the bytes
of the activations times the weights' bytes (one for int8 weights, two for 16-bit ones),
recombined exactly (``digit_gemm``; 3-10x faster there). Without those instructions (AVX2
alone) the int8 GEMM is about 5x slower than the float64 one, so the float64 one runs.
Depthwise layers run as float32 convolutions, of the activations themselves where their
size and the kernel's bound every partial sum below 2**24, else of their byte digits.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from aeic_codec.runtime.cpu import has

MAX_TERMS = 2048  # inputs per output: keeps every accumulator below 2**46
DIGIT_CHUNK = 1 << 20  # output values per band of rows in digit_gemm


def im2col(v: torch.Tensor) -> torch.Tensor:
    """NHWC -> NHW(9C): the 3x3 neighbourhood of each pixel, zero padded, (dy, dx, c) order."""
    _, h, w, _ = v.shape
    p = F.pad(v, (0, 0, 1, 1, 1, 1))
    return torch.cat([p[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], -1)


def depthwise_sum(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per channel: bias + sum over the (kh, kw) taps of the zero-padded input (NHWC, float64).

    A direct convolution: only products and sums, which are exact on integer operands.
    """
    kh, kw = weight.shape[1:]
    nchw = v.permute(0, 3, 1, 2).contiguous()
    out = F.conv2d(nchw, weight[:, None], bias, padding=(kh // 2, kw // 2), groups=len(weight))
    return out.permute(0, 2, 3, 1)


def depthwise_split(v: torch.Tensor, digits: tuple[torch.Tensor, ...]) -> torch.Tensor:
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


class DepthwiseKernel(NamedTuple):
    """An integer depthwise kernel as ``depthwise_exact`` runs it: itself in float32
    (C, 1, kh, kw), the L1 norm of each channel's taps (float64) and its digits
    (``kernel_digits``)."""

    direct: torch.Tensor
    l1: torch.Tensor
    digits: tuple[torch.Tensor, ...]


def depthwise_kernel(weight: torch.Tensor) -> DepthwiseKernel:
    """DepthwiseKernel of an integer kernel (C, kh, kw), held in any dtype."""
    w = weight.double()
    return DepthwiseKernel(w.float()[:, None], w.abs().flatten(1).sum(1), kernel_digits(w))


FLOAT32_EXACT = 1 << 24  # integers below this are exact in float32, whatever the sum order


def depthwise_exact(v: torch.Tensor, kernel: DepthwiseKernel) -> torch.Tensor:
    """The depthwise sums without bias, exactly (NHWC integers in float64 in and out).

    A channel whose largest |input| times its taps' L1 norm is below 2**24 bounds every
    product and partial sum of its float32 convolution below 2**24, so that convolution
    is exact in any order: one convolution of the input as it is. Channels beyond that
    bound (on Kodak, 1 % of them, in 10 to 20 % of the layers' runs) are redone from byte
    digits (``depthwise_split``). With AVX2 alone that took a 768x512 encode's depthwise
    layers from 24 to 20 ms, and a 32 x 48 x 256 layer from 6.3 ms to 0.6 ms.
    """
    kh, kw = kernel.direct.shape[2:]
    nchw = v.float().permute(0, 3, 1, 2)
    out = F.conv2d(nchw, kernel.direct, padding=(kh // 2, kw // 2), groups=len(kernel.direct))
    out = out.permute(0, 2, 3, 1).double()
    beyond = (v.abs().amax((0, 1, 2)) * kernel.l1 >= FLOAT32_EXACT).nonzero()[:, 0]
    if len(beyond):
        digits = tuple(d[beyond] for d in kernel.digits)
        out[..., beyond] = depthwise_split(v[..., beyond], digits)
    return out


def kernel_digits(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """An integer depthwise kernel (C, kh, kw) as float32 digits for ``depthwise_split``.

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
    """A layer's weights as int8 bytes for ``digit_gemm``.

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


def digit_gemm(flat: torch.Tensor, weights: ByteWeights) -> torch.Tensor:
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
            out[r : r + rows] = digit_gemm(flat[r : r + rows], weights)
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
