"""Where the networks run and in which precision: device checks and the auto precision.

The CLI asks these before any work. torch is imported inside the functions that need
it, so that importing this module (and the API) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_device(device: str) -> None:
    """Raise ValueError (one line) when ``device`` cannot run here; cpu always can."""
    if device == "cpu":
        return
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA GPU is available to torch here")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps: no Apple GPU is available to torch here")


def resolve_precision(precision: str, device: str = "cpu") -> torch.dtype:
    """auto: bfloat16 where the CPU has native bf16 (or on CUDA), else float32.

    Native means bf16 dot-product instructions (AVX512-BF16 or AMX). oneDNN also runs
    bf16 on plain AVX-512 by converting, which measured about twice as slow as float32
    on such a CPU, so that does not count.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device == "cpu":
            raise ValueError("fp16 is for CUDA; use bf16 or fp32 on the CPU")
        return torch.float16
    if device != "cpu":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def resolve_fast(fast: bool | None, has_fast_encoder: bool, device: str = "cpu") -> bool:
    """Whether an encode runs the bundle's fast encoder: ``fast`` when given; when None, on
    the CPU where it lacks native bf16 and the bundle has one.

    There g_a runs in float32 and takes most of the analysis; the fast encoder cuts a
    768 x 512 encode by about a third, for 0.12 to 0.16 dB of PSNR with 1.5 to 3.4 % fewer
    bytes on Kodak (README, "Usage"). With native bf16, g_a is cheap enough as it is.
    """
    if fast is not None:
        return fast
    return device == "cpu" and has_fast_encoder and not cpu_has_native_bf16()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX).

    ``AEIC_MAX_CPU_ISA=AVX2`` says no (cpu.py).
    """
    from aeic_codec.runtime.cpu import has

    return has("avx512_bf16", "amx_bf16")
