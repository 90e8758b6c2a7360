"""The convolutional building blocks of AEIC (docs/architecture.md section 2).

Pointwise (1x1) convolutions run as ``F.linear`` on channels-last views: on this CPU
that is faster than oneDNN's 1x1 convolution and, unlike it, gives the same bits
with any number of threads, which the entropy parameters (h_s, context) need.

Attribute names follow the published checkpoints so that their state dicts load
without renaming: ``dwconv``/``depthconv``, ``norm``, ``fc1``, ``fc2``, ``conv``,
``body`` and ``branch1``/``branch2``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

BAND_PIXELS = 4096  # pixels per band of StarBlock.forward_banded (a few 100 KB per tensor)


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Apply a 1x1 convolution to an NHWC tensor as a matrix product."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


class Conv3x3(nn.Conv2d):
    """Dense 3x3 convolution; for h_s of the float entropy path, GEMMs in a fixed order.

    The float entropy path (format versions 1 and 2) needs h_s bit-identical on both
    sides with any number of threads; oneDNN's direct convolution rounds differently with
    1 and 2 threads in some shapes, MKL's GEMM in strict CNR mode (set in
    ``aeic_codec/__init__.py``) does not. With ``shared = True`` (h_s) float32 inference
    therefore runs nine accumulating ``addmm`` on shifted slices of the flattened image
    (rows padded to w + 2 so that every shift is one contiguous slice): this order is part
    of the float path's bitstream. The encoder's own networks (g_a, h_a) set
    ``shared = False`` and use oneDNN's convolution, about ten times faster than GEMMs on
    gathered taps at their sizes: nothing on the decoder side recomputes them, and the
    integer entropy path does not depend on how y was computed.

    Training and reduced-precision inference use ``F.conv2d`` as well.
    """

    shared = True

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32 or not self.shared:
            return super().forward(x)
        return self._shifted(x)

    def _shifted(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        wp = w + 2
        n = h * wp
        padded = to_nhwc(F.pad(x, (1, 1, 1, 2))).contiguous().view(b, (h + 3) * wp, c)
        taps = self.weight.permute(2, 3, 1, 0).to(x.dtype)  # (3, 3, cin, cout)
        outs = []
        for i in range(b):
            out = self.bias.to(x.dtype).expand(n, -1).contiguous()
            for dy in range(3):
                for dx in range(3):
                    start = dy * wp + dx
                    out = torch.addmm(out, padded[i, start : start + n], taps[dy, dx])
            outs.append(out.view(h, wp, -1)[:, :w])
        return to_nchw(torch.stack(outs))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels (eps 1e-6); applied to NHWC tensors, over the last axis."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-6)


class InceptionDW(nn.Module):
    """Depthwise mixing on three small channel groups; the large rest passes untouched.

    The split keeps most channels free of spatial mixing, which is what makes the
    encoder cheap: only 3/8 of the channels see a depthwise kernel.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        gc = dim // 8
        self.split = (dim - 3 * gc, gc, gc, gc)
        self.dwconv_hw = nn.Conv2d(gc, gc, 3, padding=1, groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, 11), padding=(0, 5), groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (11, 1), padding=(5, 0), groups=gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, self.split, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), 1)


class StarBlock(nn.Module):
    """InceptionDW -> LayerNorm -> 1x1 (d->4d) -> GELU(a)*b -> 1x1 (2d->d), residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = InceptionDW(dim)
        self.norm = LayerNorm2d(dim)
        self.fc1 = nn.Conv2d(dim, 4 * dim, 1)
        self.fc2 = nn.Conv2d(2 * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = pointwise(self.fc1, self.norm(to_nhwc(self.dwconv(x)))).chunk(2, dim=-1)
        return x + to_nchw(pointwise(self.fc2, F.gelu(a) * b))

    def forward_banded(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` for inference on one NCHW image, its pointwise half in bands of rows.

        Everything after the depthwise mixing works per pixel, so bands of about
        BAND_PIXELS pixels keep the 4x-wide intermediate in cache instead of streaming it
        through memory several times: about 3x faster at g_a's full-resolution levels,
        and on the reference machine the same values bit for bit.
        """
        dw = self.dwconv
        x_id, x_hw, x_w, x_h = torch.split(x, dw.split, dim=1)
        parts = (x_id, dw.dwconv_hw(x_hw), dw.dwconv_w(x_w), dw.dwconv_h(x_h))
        out = torch.empty_like(x)
        rows = max(1, BAND_PIXELS // x.shape[-1])
        # fc1's two halves as two products: GELU then runs on contiguous rows (5-9 % less).
        (w_a, w_b), (b_a, b_b) = self.fc1.weight.flatten(1).chunk(2), self.fc1.bias.chunk(2)
        w2 = self.fc2.weight.flatten(1)
        for r in range(0, x.shape[-2], rows):
            band = slice(r, r + rows)
            # InceptionDW's concatenation, made per band and channels-last for LayerNorm.
            t = self.norm(torch.cat([p[0, :, band].permute(1, 2, 0) for p in parts], -1))
            gated = F.gelu(F.linear(t, w_a, b_a)).mul_(F.linear(t, w_b, b_b))
            res = F.linear(gated, w2, self.fc2.bias)
            torch.add(x[0, :, band], res.permute(2, 0, 1), out=out[0, :, band])
        return out


def encoding_one_image(x: torch.Tensor) -> bool:
    """Inference on one image on the CPU: where StarBlocks run in bands (``run_layers``)."""
    return not torch.is_grad_enabled() and x.shape[0] == 1 and x.device.type == "cpu"


def run_layers(layers: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The layers one after another; encoding one image on the CPU, channels-last with
    StarBlocks in bands of rows (their memory traffic, not their arithmetic, is most of
    g_a's time at full resolution), so that bands, depthwise convolutions and Downs move
    whole pixels."""
    banded = encoding_one_image(x)
    if banded:
        x = x.contiguous(memory_format=torch.channels_last)
    for layer in layers:
        x = layer.forward_banded(x) if banded and isinstance(layer, StarBlock) else layer(x)
    return x


class InceptionNeXt(nn.Module):
    """InceptionDW -> 1x1 (d->2d) -> GELU -> 1x1 (2d->d), residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.depthconv = InceptionDW(dim)
        self.conv1 = nn.Conv2d(dim, 2 * dim, 1)
        self.conv2 = nn.Conv2d(2 * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = F.gelu(pointwise(self.conv1, to_nhwc(self.depthconv(x))))
        return x + to_nchw(pointwise(self.conv2, t))


class GatedCNN(nn.Module):
    """LayerNorm -> 1x1 (d->4d) -> GELU(a) * dw3x3(b) -> 1x1 (2d->d), residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.fc1 = nn.Conv2d(dim, 4 * dim, 1)
        self.conv = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim)
        self.fc2 = nn.Conv2d(2 * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = pointwise(self.fc1, self.norm(to_nhwc(x))).chunk(2, dim=-1)
        b = to_nhwc(self.conv(to_nchw(b)))
        return x + to_nchw(pointwise(self.fc2, F.gelu(a) * b))


class BasicBlock(nn.Module):
    """InceptionNeXt then GatedCNN: the unit of the shared context network g_c."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(InceptionNeXt(dim), GatedCNN(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Down(nn.Sequential):
    """3x3 conv to o/4 channels then pixel-unshuffle: halves the size, no strided conv."""

    def __init__(self, cin: int, cout: int) -> None:
        if cout % 4:
            raise ValueError(f"Down output channels must be a multiple of 4, got {cout}")
        super().__init__()
        self.body = nn.Sequential(Conv3x3(cin, cout // 4), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # training keeps PixelUnshuffle's backward
            return self.body(x)
        # Inference: PixelUnshuffle's values as one permuting copy, 3 times faster on the CPU.
        y = self.body[0](x)
        b, c, h, w = y.shape
        if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
            # Channels-last in and out (g_a on the CPU): the copy moves whole pixels.
            t = y.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c)
            t = t.permute(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, 4 * c)
            return t.permute(0, 3, 1, 2)
        y = y.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, 4 * c, h // 2, w // 2)


class Up(nn.Sequential):
    """3x3 conv to 4o channels then pixel-shuffle: doubles the size."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(Conv3x3(cin, 4 * cout), nn.PixelShuffle(2))


class Adapter(nn.Module):
    """Channel adapter: a 1x1/dw5x5/1x1 branch plus a linear 1x1 shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = (cin + cout) // 2
        self.branch1 = nn.Sequential(
            nn.Conv2d(cin, mid, 1),
            nn.GELU(),
            nn.Conv2d(mid, mid, 5, padding=2, groups=mid),
            nn.GELU(),
            nn.Conv2d(mid, cout, 1),
        )
        self.branch2 = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv_in, _, dw, _, conv_out = self.branch1
        t = to_nhwc(x)
        b1 = pointwise(conv_out, to_nhwc(F.gelu(dw(to_nchw(F.gelu(pointwise(conv_in, t)))))))
        return to_nchw(b1 + pointwise(self.branch2, t))
