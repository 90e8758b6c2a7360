"""D over the whole latent at a cost linear in the pixels, equal to the untiled decode.

The tiled D this replaces (two tiled passes to share GroupNorm statistics, tiles of
256 latent pixels overlapping by 64 and Gaussian-blended, global attention inside each
tile) cost 4.2 times an untiled decode's convolutions at 4000 x 3000 and only
approximated it. Here:

- The SD-style D (``vae.LiteVAEDecoder``, diffusers' ``Decoder``) runs layer by layer
  over the whole picture: each residual block, upsampler and convolution in row bands
  that read one row of halo per 3x3 convolution, every GroupNorm with the exact
  statistics of its whole input, gathered before the layer runs. On a large picture an
  upsampler's output above LAZY_BYTES is never stored (``Lazy``: recomputed by rows where
  read) and a residual block that keeps its width runs fused over an input above
  FUSED_BYTES, so at most one activation of the full size is held at a time: a
  4000 x 3000 decode of the shipped D peaks at about 2.5 GB in float32 (the whole process),
  where a plain call needs several times that.
  Its mid-block attention sees the whole latent, windowed by
  ``attention.local_attention``.
- The tiny D (``tiny_vae.TinyDecoder``) has GroupNorms only in its first, latent-sized
  blocks: those run on the whole latent, and the purely convolutional rest in two stages
  (its first upsampled level, whose output is stored at a quarter of the picture's size,
  then the rest) on tiles whose halo covers the stage's receptive field, of which only
  the cores are kept. Two stages, not one: the halo of the whole rest cost a third more
  of the full-size convolutions at 12 megapixels. Tiles of TINY_CORE output pixels keep a
  stage's activations in the CPU's cache: 1.5 to 1.8 times as fast as tiles of 1,024,
  halos included, at 768 x 512 as at 12 megapixels.

Both are the untiled decode up to float rounding (the convolutions add in another
order; a GroupNorm over several bands is a batch norm with the group statistics); the
recomputations cost the shipped D a quarter more multiply-adds at 4000 x 3000 in float32.
One band (up to 4 M elements a layer: 768 x 512 and smaller) is the plain module calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .tiling import Progress, Ticker

BAND_ELEMENTS = 1 << 22  # of a band's input (times the upsampling): 16 MB in float32
TINY_CORE = 256  # side of a tiny D tile's kept core, in its stage's output pixels: in cache
# An upsampler's output above LAZY_BYTES is never held whole (``Lazy``: recomputed where
# read, three times by the block after it); a residual block's input above FUSED_BYTES runs
# fused (its inner activation recomputed once). At 4000 x 3000 in float32 that leaves the
# shipped D's last upsampler lazy and its last block fused: +25 % of its multiply-adds;
# with 512 MB for both, +47 %.
LAZY_BYTES = 1 << 30
FUSED_BYTES = 512 << 20


def _big(x: Source, dtype: torch.dtype, limit: int) -> bool:
    return math.prod(x.shape) * dtype.itemsize > limit


class Lazy:
    """A layer's output (``fn`` on ``source``) computed for the rows asked for, never
    held whole.

    ``fn`` sees at most ``halo`` rows of its input around each output row and upsamples
    by ``scale``. Reading one costs recomputing ``fn``, but the largest activations (at
    full size, in float32, 1.5 GB at 12 megapixels for the shipped D) are then never
    stored: an upsampler's output, read three times by the residual block after it
    (statistics, first and second half), and a block's inner activation, whose
    statistics alone are needed before its block runs fused (``_resnet``).
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        source: torch.Tensor,
        channels: int,
        halo: int = 1,
        scale: int = 1,
    ) -> None:
        self.fn, self.source, self.halo, self.scale = fn, source, halo, scale
        batch, _, height, width = source.shape
        self.shape = (batch, channels, scale * height, scale * width)

    def rows(self, first: int, last: int) -> torch.Tensor:
        """Rows first..last-1: ``fn`` on the source rows they depend on, cropped."""
        start = max(first // self.scale - self.halo, 0)
        stop = min(-(-last // self.scale) + self.halo, self.source.shape[-2])
        out = self.fn(self.source[..., start:stop, :])
        return out[..., first - self.scale * start : last - self.scale * start, :]


Source = torch.Tensor | Lazy


def _rows(x: Source, first: int, last: int) -> torch.Tensor:
    return x[..., first:last, :] if isinstance(x, torch.Tensor) else x.rows(first, last)


def _rows_per_band(x: Source, scale: int = 1) -> int:
    return max(BAND_ELEMENTS // (x.shape[1] * x.shape[-1] * scale * scale), 4)


def banded(
    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    x: Source,
    halo: int,
    scale: int = 1,
    extra: Source | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fn(rows of x with halo, the same rows of extra)`` over row bands of x, stitched.

    ``fn`` must see no farther than ``halo`` rows and may upsample by ``scale``;
    ``extra`` (output-sized) is an optional second input that ``fn`` may only use
    pointwise: its halo rows are cropped away, so they may be stale. ``out`` may be
    ``extra`` or ``x`` itself: x's halo rows above each band are kept aside before the
    band overwrites them.
    """
    height, width = x.shape[-2:]
    rows = _rows_per_band(x, scale)
    above: torch.Tensor | None = None  # x's original rows just above the band (in place)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        first, last = max(top - halo, 0), min(bottom + halo, height)
        piece = _rows(x, first, last)
        if out is x and above is not None:
            piece = torch.cat((above, x[..., top:last, :]), dim=-2)
        if out is x and halo:
            above = x[..., max(bottom - halo, 0) : bottom, :].clone()
        part = _rows(extra, first * scale, last * scale) if extra is not None else None
        y = fn(piece, part)[..., (top - first) * scale : (bottom - first) * scale, :]
        if out is None:
            shape = (*y.shape[:2], height * scale, width * scale)
            layout = _layout(x if isinstance(x, torch.Tensor) else x.source)
            out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=layout)
        out[..., top * scale : bottom * scale, :] = y
        del y, piece
    assert out is not None
    return out


def _layout(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last)
        else (torch.contiguous_format)
    )


def group_moments(x: Source, norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and biased variance of all of x (batch of one), float64, (1, groups).

    Per band, a batch norm in training mode gives each channel's mean and variance in
    float32 (one fused pass, no float32 copy of a bf16 band; twice as fast as two sums);
    the bands' moments then add up in float64.
    """
    if x.shape[0] != 1:
        raise ValueError("the layer-wise D decodes one latent at a time")
    rows = _rows_per_band(x)
    sums = None
    for top in range(0, x.shape[-2], rows):
        region = _rows(x, top, min(top + rows, x.shape[-2]))
        count = region.shape[-2] * region.shape[-1]
        mean = torch.zeros(x.shape[1], dtype=torch.float32, device=region.device)
        var = torch.zeros_like(mean)
        F.batch_norm(region, mean, var, None, None, True, 1.0, norm.eps)
        mean, var = mean.double(), var.double() * (count - 1) / count  # unbiased to biased
        part = torch.stack([torch.full_like(mean, count), mean * count, (var + mean**2) * count])
        sums = part if sums is None else sums + part
    assert sums is not None
    count, total, squares = sums.reshape(3, 1, norm.num_groups, -1).sum(-1)
    mean = total / count
    return mean, (squares / count - mean**2).clamp_min(0)


def _normed(
    norm: nn.GroupNorm, act: nn.Module, x: Source
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``act(norm(piece))`` for pieces of x, ``norm`` with the statistics of all of x.

    When x is one band, that is the module itself; otherwise the group statistics go to
    every channel of the group and a batch norm in inference mode applies them (one
    fused pass, float32 statistics for a bf16 input).
    """
    if x.shape[-2] <= _rows_per_band(x):
        return lambda piece: act(norm(piece))
    mean, var = group_moments(x, norm)
    per_group = x.shape[1] // norm.num_groups
    mean = mean[0].repeat_interleave(per_group).float()
    var = var[0].repeat_interleave(per_group).float()
    weight, bias = (norm.weight.float(), norm.bias.float()) if norm.affine else (None, None)

    def apply(piece: torch.Tensor) -> torch.Tensor:
        return act(F.batch_norm(piece, mean, var, weight, bias, False, 0.0, norm.eps))

    return apply


def _resnet(block: nn.Module, x: Source) -> torch.Tensor:
    """diffusers' ResnetBlock2D (no time embedding, no resampling), band by band.

    A block that keeps its width, on a tensor above FUSED_BYTES, runs fused: its
    inner activation's statistics first (its first half by rows, not stored), then
    both halves per band with two rows of halo, the result overwriting x. Otherwise
    the inner activation is stored, and the result overwrites x or it.
    """
    if block.time_emb_proj is not None or block.upsample or block.downsample:
        raise ValueError("a decoder's residual block has no time embedding and no resampling")
    shortcut = block.conv_shortcut
    norm1 = _normed(block.norm1, block.nonlinearity, x)

    def first(t: torch.Tensor) -> torch.Tensor:
        return block.conv1(norm1(t))

    fused = isinstance(x, torch.Tensor) and shortcut is None and _big(x, x.dtype, FUSED_BYTES)
    channels = block.conv1.out_channels
    h = Lazy(first, x, channels) if fused else banded(lambda t, _: first(t), x, 1)
    norm2 = _normed(block.norm2, block.nonlinearity, h)

    def second(t: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        out = block.conv2(norm2(t))
        out += shortcut(res) if shortcut is not None else res
        return out if block.output_scale_factor == 1 else out / block.output_scale_factor

    if fused:
        assert isinstance(x, torch.Tensor)
        return banded(lambda t, _: second(first(t), t), x, 2, out=x)
    assert isinstance(h, torch.Tensor)
    in_place = isinstance(x, torch.Tensor) and shortcut is None
    return banded(lambda t, res: second(t, res), h, 1, extra=x, out=x if in_place else h)


def decoder_steps(decoder: nn.Module, height: int, width: int) -> int:
    """How many progress ticks ``decode`` gives for this D and a latent of this size."""
    if not hasattr(decoder, "up_blocks"):
        steps = 1
        for layers in _tiny_stages(decoder)[1]:
            _, scale, tiles = _stage_tiles(layers, height, width)
            steps, height, width = steps + tiles, height * scale, width * scale
        return steps
    mid = decoder.mid_block
    steps = 1 + len(mid.resnets) + sum(a is not None for a in mid.attentions) + 1
    for up in decoder.up_blocks:
        steps += len(up.resnets) + len(up.upsamplers or ())
    return steps


def _sd_decode(decoder: nn.Module, l_0: torch.Tensor, tick: Ticker) -> torch.Tensor:
    """diffusers' Decoder.forward (no latent embeddings), layer by layer."""
    x = banded(lambda t, _: decoder.conv_in(t), l_0, 1)
    tick()
    mid = decoder.mid_block
    x = _resnet(mid.resnets[0], x)
    tick()
    for attn, resnet in zip(mid.attentions, mid.resnets[1:], strict=True):
        if attn is not None:
            x = attn(x)
            tick()
        x = _resnet(resnet, x)
        tick()
    for up in decoder.up_blocks:
        for resnet in up.resnets:
            x = _resnet(resnet, x)
            tick()
        for upsampler in up.upsamplers or ():
            upsample = polyphase(upsampler)
            x = Lazy(upsample, x, upsampler.out_channels, scale=2)
            if not _big(x, x.source.dtype, LAZY_BYTES):  # held whole, computed once
                x = banded(lambda t, _, u=upsample: u(t), x.source, 1, scale=2)
            tick()
    norm = _normed(decoder.conv_norm_out, decoder.conv_act, x)
    x = banded(lambda t, _: decoder.conv_out(norm(t)), x, 1)
    tick()
    return x


def polyphase(upsampler: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """diffusers' Upsample2D (nearest x2, then a 3x3 convolution) as four 2x2 convolutions
    of its input, one per phase of the output pixels; any other upsampler as it is.

    An output pixel of phase (a, b) sees, through the nearest upsampling, 2 x 2 input
    pixels, with the 3x3 kernel's taps summed where they land on the same one: the same
    sums (up to float rounding) with 16 instead of 36 multiply-adds per input pixel and
    channel pair. The upsamplers then cost 1.4 to 1.8 times less on a CPU with AVX2
    alone; at 4000 x 3000 the shipped D reads its last one three times (``Lazy``). In
    float32 only: a bf16 decode (CPUs with native bf16, where it gained 3 %) would round
    the products otherwise and move pixels by up to 3 levels.
    """
    conv = getattr(upsampler, "conv", None)
    conv = getattr(upsampler, "Conv2d_0", None) if conv is None else conv
    plain = (
        isinstance(conv, nn.Conv2d)
        and getattr(upsampler, "use_conv", False)
        and getattr(upsampler, "interpolate", False)
        and not getattr(upsampler, "use_conv_transpose", True)
        and getattr(upsampler, "norm", None) is None
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )
    if not plain:
        return upsampler
    assert isinstance(conv, nn.Conv2d)
    kernels = _phase_kernels(conv.weight.detach().float())  # sums in float32
    bias = None if conv.bias is None else conv.bias.detach().float()

    def upsample(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
            return upsampler(x)  # bf16 decodes stay as they were (see above)
        height, width = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1))
        out = None
        for (a, b), kernel in kernels.items():
            window = padded[..., a : a + height + 1, b : b + width + 1]
            y = F.conv2d(window, kernel, bias)
            if out is None:
                shape = (*y.shape[:2], 2 * height, 2 * width)
                out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=_layout(x))
            out[..., a::2, b::2] = y
        assert out is not None
        return out

    return upsample


def _phase_kernels(weight: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
    """A 3x3 kernel's four 2x2 kernels over the zero-padded input, by output phase (a, b):
    rows (and columns) of phase 0 read input i - 1 (tap 0) and i (taps 1 and 2), of phase
    1 input i (taps 0 and 1) and i + 1 (tap 2)."""

    def fold(w: torch.Tensor, axis: int, phase: int) -> torch.Tensor:
        t0, t1, t2 = w.unbind(axis)
        return torch.stack((t0, t1 + t2) if phase == 0 else (t0 + t1, t2), axis)

    return {(a, b): fold(fold(weight, 2, a), 3, b).contiguous() for a in (0, 1) for b in (0, 1)}


def reach(layers: list[nn.Module]) -> int:
    """How many input pixels of context these layers use on each side (a bound).

    Counts every convolution's half-width at the scale it runs at: an Upsample halves
    what follows it in input pixels, a strided convolution multiplies it (TAEF2's encoder).
    """
    total, step = 0.0, 1.0  # input pixels per pixel of the current layer
    for layer in layers:
        for module in layer.modules():
            if isinstance(module, nn.Upsample):
                step /= float(module.scale_factor)
            elif isinstance(module, nn.Conv2d):
                total += (module.kernel_size[0] // 2) * module.dilation[0] * step
                step *= module.stride[0]
    return math.ceil(total)


def _tiny_stages(decoder: nn.Sequential) -> tuple[list[nn.Module], list[list[nn.Module]]]:
    """The tiny D's layers with GroupNorms (run whole) and the stages of the rest: up to its
    second upsampler, then the others."""
    layers = list(decoder)
    split = 1 + max(
        (
            i
            for i, layer in enumerate(layers)
            for m in layer.modules()
            if isinstance(m, nn.GroupNorm)
        ),
        default=-1,
    )
    rest = layers[split:]
    ups = [i for i, layer in enumerate(rest) if isinstance(layer, nn.Upsample)]
    cut = ups[1] if len(ups) > 1 else len(rest)
    return layers[:split], [stage for stage in (rest[:cut], rest[cut:]) if stage]


def _scale(layers: list[nn.Module]) -> int:
    return math.prod(int(m.scale_factor) for m in layers if isinstance(m, nn.Upsample))


def _stage_tiles(layers: list[nn.Module], height: int, width: int) -> tuple[int, int, int]:
    """A stage's tile core (input pixels), its upsampling, and how many tiles it takes."""
    scale = _scale(layers)
    core = max(1, TINY_CORE // scale)
    return core, scale, math.ceil(height / core) * math.ceil(width / core)


def _tiny_decode(decoder: nn.Sequential, latent: torch.Tensor, tick: Ticker) -> torch.Tensor:
    """TinyDecoder.forward: its GroupNorm blocks on the whole latent, the rest in stages on
    tiles."""
    whole, stages = _tiny_stages(decoder)
    x = latent
    for layer in whole:
        x = layer(x)
    tick()
    for layers in stages:
        core, scale, _ = _stage_tiles(layers, *x.shape[-2:])
        x = tiled(nn.Sequential(*layers), x, core, reach(layers) + 1, up=scale, tick=tick)
    return x * 2 - 1


def tiled(
    stage: nn.Module,
    x: torch.Tensor,
    core: int,
    halo: int,
    up: int = 1,
    down: int = 1,
    tick: Callable[[], None] | None = None,
) -> torch.Tensor:
    """``stage(x)`` on tiles of ``core`` input pixels with ``halo`` pixels of context, of
    whose outputs only the cores are kept (channels-last). ``stage`` scales by up / down;
    with ``down`` > 1, x's sides, ``core`` and ``halo`` are multiples of it."""
    height, width = x.shape[-2:]
    out = None
    for top in range(0, height, core):
        for left in range(0, width, core):
            bottom, right = min(top + core, height), min(left + core, width)
            y0, x0 = max(top - halo, 0), max(left - halo, 0)
            piece = stage(x[..., y0 : min(bottom + halo, height), x0 : min(right + halo, width)])
            if out is None:
                shape = (*piece.shape[:2], height * up // down, width * up // down)
                layout = torch.channels_last
                out = torch.empty(
                    shape, dtype=piece.dtype, device=piece.device, memory_format=layout
                )
            oy, ox = top * up // down, left * up // down
            rows, cols = (bottom - top) * up // down, (right - left) * up // down
            kept = piece[..., oy - y0 * up // down :, ox - x0 * up // down :][..., :rows, :cols]
            out[..., oy : oy + rows, ox : ox + cols] = kept
            if tick is not None:
                tick()
    assert out is not None
    return out


def decode(decoder: nn.Module, l_0: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
    """D of any kind on the whole of l_0, as ``decoder(l_0)`` computes it; see the module."""
    tick = Ticker(progress, decoder_steps(decoder, *l_0.shape[-2:]))
    if not hasattr(decoder, "up_blocks"):
        return _tiny_decode(decoder, l_0, tick)
    return _sd_decode(decoder, l_0, tick)
