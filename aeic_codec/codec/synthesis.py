"""The generative half of decoding: y_hat to pixels through g_s, eps and the VAE decoder.

eps (the one-step denoiser) runs on overlapping tiles of l_T (tiling.py) and D (the VAE
decoder) layer by layer in bands (layerwise.py), so that memory stays bounded at any
size. torch is imported inside, as the API that calls this keeps ``read_header`` cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .model import AEIC
    from .realism import RealismDecoder
    from .tiling import Progress


def synthesize(
    model: AEIC | RealismDecoder,
    y_hat: torch.Tensor,
    height: int,
    width: int,
    *,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    tile: int | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The generative half: g_s, eps on l_T plus l_res, D; returns (3, H, W) in [-1, 1].

    ``model`` is a whole model (its own decoder) or a realism decoder: both have these parts.
    """
    import torch

    from aeic_codec.nn.attention import local_attention

    from . import layerwise
    from .tiling import denoise_steps, tiled_denoise

    if model.g_s is None or model.denoiser is None or model.vae is None:
        raise RuntimeError("this model was loaded without its decoder")
    dtype = dtype or torch.float32
    cfg = model.cfg
    eps_tile = tile or cfg.eps_tile
    overlap = max(1, min(eps_tile * cfg.eps_overlap // cfg.eps_tile, (eps_tile - 1) // 2))
    # channels-last lets oneDNN skip a layout reorder around every convolution (1.5-2x).
    layout = torch.channels_last
    for part in (model.g_s, model.denoiser, model.vae):
        part.to(device=device, dtype=dtype, memory_format=layout)
    window = cfg.attention_window
    with (
        torch.no_grad(),
        local_attention(model.denoiser, 8, window),
        local_attention(model.vae, 8, window),
    ):
        y = y_hat.to(device=device, dtype=dtype).contiguous(memory_format=layout)
        l_t, l_res = model.g_s(y)
        l_t = model.denoiser.with_noise(l_t)  # whole l_T before tiling: the tiles agree
        # One progress count over both phases, so that a bar never starts over.
        lh, lw = l_t.shape[-2:]
        n_eps = denoise_steps(lh, lw, eps_tile, overlap)
        total = n_eps + layerwise.decoder_steps(model.vae, lh, lw)
        eps_progress = vae_progress = None
        if progress is not None:
            report = progress

            def eps_progress(done: int, _total: int) -> None:
                report(done, total)

            def vae_progress(done: int, _total: int) -> None:
                report(n_eps + done, total)

        l_0 = tiled_denoise(model.denoiser, l_t, eps_tile, overlap, eps_progress) + l_res
        del l_t, l_res
        x = layerwise.decode(model.vae, l_0, vae_progress)
    return x[0, :, :height, :width].float().clamp(-1, 1).cpu()
