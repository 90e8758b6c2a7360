"""Integer maths of the integer entropy path, specified bit for bit in docs/format.md.

Activations are 16-bit integers with one power-of-two exponent per tensor (real value =
integer * 2**-f); these are the operations on them that are not products: saturation,
rounding shifts, an exact integer square root (LayerNorm), the stored GELU table, the
exponent a tensor's range asks for, and the scale thresholds that pick a step's tables.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .priors import SCALE_LEVELS, SCALE_MAX, SCALE_MIN, SKIP_SCALE

ACT_MIN, ACT_MAX = -(1 << 15), (1 << 15) - 1
EXPONENT_RANGE = (-16, 40)


def clamp16(v: torch.Tensor) -> torch.Tensor:
    """v saturated to the 16-bit range of activations."""
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
    return clamp16(torch.round(F.gelu(a * 2.0**-f) * 2.0**f)).to(torch.int16)


def scale_thresholds(f: int) -> torch.Tensor:
    """[skip, t_1 .. t_63]: the least integer scales (exponent f) at or above 0.08 and s_i.

    A step codes a position when its integer scale is >= skip, with table index
    #{i >= 1 : scale >= t_i}; s_i = exp(ln 0.11 + i * (ln 256 - ln 0.11) / 63).
    """
    step = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (SCALE_LEVELS - 1)
    edges = [SKIP_SCALE] + [math.exp(math.log(SCALE_MIN) + i * step) for i in range(1, 64)]
    return torch.tensor([math.ceil(e * 2.0**f) for e in edges], dtype=torch.int64)
