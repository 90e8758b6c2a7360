"""The integer entropy model: h_s and the context model in exact integer arithmetic.

Float sums round differently with another summation order, thread count, instruction
set or device, and one flipped table index desynchronises the range decoder for the rest
of the stream. Here everything both sides compute to find the entropy parameters is
integer: 16-bit activations with one power-of-two exponent per tensor (real value =
integer * 2**-f), integer weights with a scale per output channel, exact accumulators,
requantisation by an integer multiply and shift, LayerNorm through an integer square
root and GELU through a stored table. docs/format.md ("Integer entropy path") specifies
every operation bit for bit; ``tests/test_intnet.py`` checks them against a numpy int64
reference.

This module holds the networks as one program (``hyper_synthesis``, ``context_params``)
over the operations of ``ops.py``, the model a bundle loads (``IntegerEntropy``: z's
symbols and the four quadtree steps to y_hat and the entropy digest) and the conversion
of a float model (``integerize``). Below it: ``ops.py`` (IntOps, FloatOps),
``quantize.py`` (float layers made integer), ``kernels.py`` (exact products) and
``intmath.py`` (saturation, shifts, square root, tables).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from aeic_codec.format.container import QSTEP_ONE
from aeic_codec.nn.config import ModelConfig
from aeic_codec.nn.context import POSITIONS, STEPS, step_masks

from .intmath import clamp16, exponent_for, rshift_round, scale_thresholds
from .ops import Act, FloatOps, IntOps, Ops
from .quantize import WEIGHT_PLANS

INTEGER_FORMAT = "1"  # the bundle's ``integer_format``: the layout of the integer tensors
SYMBOL_CLAMP = 1 << 16  # symbols beyond saturate the 16-bit context either way
# y's quantisation step is qstep / QSTEP_ONE (container.py): a dyadic rational, so that
# sym * step and the scale comparisons stay exact integers.
QSTEP_BITS = QSTEP_ONE.bit_length() - 1


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
        v = clamp16(v + self.median.view(1, -1, 1, 1))
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
        return clamp16(rshift_round(v, QSTEP_BITS - self.f_ctx) + mean)

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
