"""The operations of the integer entropy networks, on integers (IntOps) or reals (FloatOps).

One program (``intnet.hyper_synthesis``, ``context_params``) describes the networks as
calls of these operations; it runs on ``IntOps`` (the integer path both coder sides run)
and on ``FloatOps`` (float64 reals on the float model's weights, to calibrate each
tensor's exponent and to build the integer parameters, ``quantize.py``). IntOps holds
the integers in float64 tensors (exact below 2**53) and runs the products on the exact
kernels (``kernels.py``); requantisation is an exact float64 multiply where the shift
allows (else in int64), LayerNorm is computed in int64.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from aeic_codec.nn.int8 import SCALE_PREFIX

from .intmath import ACT_MAX, ACT_MIN, clamp16, gelu_table, isqrt, rshift_round
from .kernels import (
    MAX_TERMS,
    ByteWeights,
    DepthwiseKernel,
    byte_weights,
    depthwise_exact,
    depthwise_kernel,
    depthwise_sum,
    digit_gemm,
    im2col,
    use_int8_gemm,
)
from .quantize import (
    LN_EPS,
    LN_PRECISION,
    integer_weight,
    layer_bits,
    quantize_layer,
    quantize_norm,
)

FLOAT_SHIFT_MAX = 37  # requantisation shifts up to this run exactly in float64 (IntOps)


class Act(NamedTuple):
    """An activation: NHWC values and the exponent f (real = v * 2**-f).

    IntOps holds integers (in float64 tensors); FloatOps holds float64 reals and, when
    building, the exponent the integer path will use for this tensor (0 while calibrating).
    """

    v: torch.Tensor
    f: int


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
        return clamp16((acc.long() * mult + rounding) >> shift).double()

    def _split(self, v: torch.Tensor, sites: tuple[str, ...]) -> list[Act]:
        parts = v.chunk(len(sites), -1)
        return [Act(p, self.exp(s)) for p, s in zip(parts, sites, strict=True)]

    def _bytes(self, name: str) -> ByteWeights | None:
        """The layer's weights for digit_gemm, or None where the float64 GEMM runs."""
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
        acc = torch.addmm(bias, flat, weight_t) if b is None else digit_gemm(flat, b)
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
            # Per group: its weight columns (float64, or bytes for digit_gemm).
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
            acc = torch.stack([digit_gemm(r, w) for r, w in zip(rows, weights, strict=True)])
        return self._split(self._requant(acc, name, index.unsqueeze(1)), sites)

    def _cell_index(self, name: str, outputs: int, sites: int, groups: int) -> torch.Tensor:
        """(groups, sites * per group) output channels: group g of every site, in site order."""
        per_site = outputs // sites
        per_group = per_site // groups
        starts = torch.arange(groups)[:, None, None] * per_group
        starts = starts + torch.arange(sites)[None, :, None] * per_site
        return (starts + torch.arange(per_group)).reshape(groups, -1)

    def conv3x3(self, name: str, x: Act, site: str) -> Act:
        return Act(self._gemm(name, im2col(x.v)), self.exp(site))

    def depthwise(self, name: str, x: Act, site: str) -> Act:
        _, bias, *_ = self._layer(name)
        acc = depthwise_exact(x.v, self._kernel(name)).add_(bias)
        return Act(self._requant(acc, name), self.exp(site))

    def _kernel(self, name: str) -> DepthwiseKernel:
        key = f"{name}|kernel"
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = depthwise_kernel(self.t[f"{name}.weight"])
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
        out = clamp16(rshift_round(t * gain + offset, int(self.t[f"{name}.shift"])))
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
        out = im2col(x.v) @ weight.t() + bias
        f = self.observe(site, out)
        self._build(name, x.f, torch.full((len(bias),), f))
        return Act(out, f)

    def depthwise(self, name: str, x: Act, site: str) -> Act:
        weight, bias, _ = self._weights(name)
        out = depthwise_sum(x.v, weight, bias)
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
