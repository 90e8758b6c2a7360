"""The training loss ``lambda * R + D`` and the networks its terms need.

Scales: images are in [-1, 1] for the networks; MSE and MS-SSIM are taken on [0, 1]
(MSE not multiplied by 255**2), the scale on which the published lambdas 1..32 against
rates below 0.05 bpp balance the distortion terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aeic_codec.codec.colour import YCC, YCC_OFFSET
from aeic_codec.codec.metrics import ms_ssim, oriented_band_power
from aeic_codec.codec.model import AEIC
from aeic_codec.nn.config import ModelConfig

from .config import LossWeights, TrainConfigError
from .distributed import Share
from .forward import ENCODER_FEATURES, feature_channels, forward_train

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's VGG-16, which LPIPS and DISTS build on


def colour_grid_fix(x_hat: torch.Tensor, x: torch.Tensor, cell: int, step: int) -> torch.Tensor:
    """What the decoder's colour grid does to x_hat (both in [0, 1]), for the training loss.

    The correction is linear in x_hat, so its gradient reaches the model: what the grid
    carries (cell means) costs the model nothing, and it learns to spend its bits on the
    rest. Crops are whole cells (validate_config checks), so pooling needs no partial cells.
    """
    ycc = torch.tensor(YCC, dtype=torch.float32, device=x.device)
    to_rgb = torch.linalg.inv(ycc)
    offset = torch.tensor(YCC_OFFSET, dtype=torch.float32, device=x.device)[:, None, None]

    def means(img: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(img.float() * 255.0, cell)
        return torch.einsum("ij,bjhw->bihw", ycc, pooled) + offset

    with torch.no_grad():
        target = torch.clamp(torch.round(means(x) / step), 0, 255 // step) * step
    shift = torch.einsum("ij,bjhw->bihw", to_rgb, target - means(x_hat)) / 255.0
    field = F.interpolate(shift, scale_factor=cell, mode="bilinear", align_corners=False)
    return x_hat + field.to(x_hat.dtype)


def spectrum_distance(
    x_hat: torch.Tensor,
    x: torch.Tensor,
    bands: int = 3,
    floor: float = 1e-5,
    window: int = 0,
    sectors: int = 1,
) -> torch.Tensor:
    """Mean squared log-ratio of luma power in the finest ``bands`` octave bands.

    Images (B, 3, H, W) in [-1, 1]; the bands are metrics.SPECTRUM_BANDS' finest, each
    image's power taken under a Hann window as band_power_db takes it. Blind to phase,
    so it asks for as much detail at each scale as the photo has there (none on a clear
    sky, much in foliage) without asking for the detail the file cannot carry. ``floor``
    is the windowed power of white noise of one 8-bit level rms: below it, flat crops
    would weigh in with their noise.

    With ``window`` > 0 the power is taken in windows of that side (half overlapping)
    instead of over the whole image, and with ``sectors`` > 1 each band is split by
    orientation into that many equal sectors: detail drawn at the wrong place or in the
    wrong direction (horizontal strokes over a photo's diagonal texture) then costs,
    which a whole-image radial average cannot see.
    """
    luma = torch.tensor(YCC[0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    p_hat, p = (oriented_band_power((t * luma).sum(1), window, sectors, bands) for t in (x_hat, x))
    return (torch.log(p_hat + floor) - torch.log(p + floor)).square().mean()


class Distiller(nn.Module):
    """Learnable 1x1 projections of the student's features onto the teacher's channels.

    Encoder features are always projected (as published); decoder features only where
    the channel counts differ, since the decoders of SE and ME have the same shape.
    """

    def __init__(self, student: ModelConfig, teacher: ModelConfig) -> None:
        super().__init__()
        if len(student.unet_widths) != len(teacher.unet_widths):
            raise TrainConfigError(
                "teacher and student denoisers have different numbers of levels; "
                "their block outputs cannot be paired"
            )
        theirs = feature_channels(teacher)
        self.proj = nn.ModuleDict()
        for name, ours in feature_channels(student).items():
            if name in ENCODER_FEATURES or ours != theirs[name]:
                self.proj[name] = nn.Conv2d(ours, theirs[name], 1)

    def use(self, weights: LossWeights) -> None:
        """Let only the projections a stage's weights use ask for gradients.

        The others get none in that stage; DistributedDataParallel must not wait for them.
        """
        names = set(ENCODER_FEATURES) if weights.distill_enc > 0 else set()
        if weights.distill_dec > 0:
            names |= set(self.proj) - set(ENCODER_FEATURES)
        for name, conv in self.proj.items():
            conv.requires_grad_(name in names)

    def loss(
        self,
        names: Sequence[str],
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Sum over ``names`` of the MSE between projected student and teacher tensors."""
        terms = []
        for name in names:
            s = self.proj[name](student[name]) if name in self.proj else student[name]
            terms.append(F.mse_loss(s.float(), teacher[name].float()))
        return torch.stack(terms).sum()


class PatchDiscriminator(nn.Module):
    """A small PatchGAN critic trained from scratch with the hinge loss.

    Spectral normalisation keeps it Lipschitz without normalisation layers, which would
    couple the patches of a batch.
    """

    def __init__(self, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        blocks: list[nn.Module] = []
        cin = 3
        for i in range(layers):
            cout = width * 2**i
            blocks += [sn(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            cin = cout
        blocks.append(sn(nn.Conv2d(cin, 1, 3, padding=1)))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def critic_loss(disc: nn.Module, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The critic's hinge loss on real x and decoded x_hat (no gradient to the codec)."""
    real, fake = disc(x).float(), disc(x_hat.detach()).float()
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


class _Perceptual(nn.Module):
    """A frozen perceptual metric; ``unit`` says it wants [0, 1] rather than [-1, 1]."""

    def __init__(self, net: nn.Module, unit: bool) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.unit = unit

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.unit:
            x_hat, x = (x_hat.clamp(-1, 1) + 1) / 2, (x + 1) / 2
        return self.net(x_hat, x).mean()


def load_perceptual(name: str) -> nn.Module:
    """LPIPS(VGG) or DISTS, only from weights already on disk: training never downloads."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    files = [VGG16_FILE] + (["dists_weights.pt"] if name == "dists" else [])
    if name == "lpips":
        import lpips
    else:
        import piq
    for f in files:
        if not (hub / f).exists():
            raise FileNotFoundError(f"{hub / f} is missing")
    if name == "lpips":
        return _Perceptual(lpips.LPIPS(net="vgg", verbose=False), unit=False)
    return _Perceptual(piq.DISTS(reduction="none"), unit=True)


class Objective(nn.Module):
    """The loss of one micro-batch: the forward pass and every weighted term.

    A module, so that DistributedDataParallel can wrap the whole computation whose
    gradients it averages (the codec and the distiller's projections). The critic is
    passed in, not held: its own loss trains it, apart (``critic_loss``).
    """

    def __init__(
        self,
        model: AEIC,
        distiller: Distiller | None,
        perceptual: nn.ModuleDict,
        student_blocks: dict[str, torch.Tensor],
    ) -> None:
        super().__init__()
        self.model, self.distiller, self.perceptual = model, distiller, perceptual
        self.student_blocks = student_blocks  # the denoiser's block outputs, by tap_blocks

    def forward(
        self,
        x: torch.Tensor,
        weights: LossWeights,
        lam: float,
        teacher: dict[str, torch.Tensor] | None,
        disc: nn.Module | None,
        share: Share | None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(terms, x_hat): the loss under "loss", the terms it sums and PSNR, by name."""
        out = forward_train(self.model, x, share)
        if disc is not None:
            disc.requires_grad_(False)  # the codec's loss must not train the critic
        w = weights
        bpp = out.bits / (x.shape[0] * x.shape[2] * x.shape[3])
        x01, xh01 = (x + 1) / 2, (out.x_hat + 1) / 2
        cfg = self.model.cfg
        if cfg.colour_grid:
            xh01 = colour_grid_fix(xh01, x01, cfg.colour_grid, cfg.colour_grid_step)
        terms = {"bpp": bpp, "mse": F.mse_loss(xh01, x01)}
        loss = lam * bpp + w.mse * terms["mse"]
        with torch.no_grad():
            terms["psnr"] = -10 * torch.log10(F.mse_loss(xh01.clamp(0, 1), x01).clamp_min(1e-10))
        if w.msssim > 0:
            with torch.autocast(x.device.type, enabled=False):
                terms["msssim"] = ms_ssim(xh01.float().clamp(0, 1), x01)
            loss = loss + w.msssim * (1 - terms["msssim"])
        for name, net in self.perceptual.items():
            weight = getattr(w, name)
            if weight > 0:
                terms[name] = net(out.x_hat, x)
                loss = loss + weight * terms[name]
        if w.adv > 0 and disc is not None:
            terms["adv"] = -disc(out.x_hat).float().mean()
            loss = loss + w.adv * terms["adv"]
        if teacher is not None and self.distiller is not None:
            student = {**out.features, **self.student_blocks}
            if w.distill_enc > 0:
                terms["distill_enc"] = self.distiller.loss(ENCODER_FEATURES, student, teacher)
                loss = loss + w.distill_enc * terms["distill_enc"]
            if w.distill_dec > 0:
                names = [n for n in feature_channels(cfg) if n not in ENCODER_FEATURES]
                terms["distill_dec"] = self.distiller.loss(names, student, teacher)
                loss = loss + w.distill_dec * terms["distill_dec"]
        terms["loss"] = loss
        return terms, out.x_hat
