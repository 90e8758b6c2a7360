"""What this CPU offers aeic's fast paths, and an override that stands in for a smaller CPU.

The shipped encoder and decoder choose their arithmetic by the CPU: bf16 where it has bf16
dot products (``devices.resolve_precision``), int8 GEMMs where it has int8 dot products
(``kernels.use_int8_gemm``). To measure or test the paths of a CPU
with AVX2 alone on a larger one, set ``AEIC_MAX_CPU_ISA=AVX2`` before Python starts: aeic
then sees only what such a CPU has, and ``aeic_codec/__init__.py`` limits oneDNN, ATen,
MKL and fbgemm to AVX2 likewise (through their own variables, unless those are set).
"""

from __future__ import annotations

import functools
import os

ISA_VARIABLE = "AEIC_MAX_CPU_ISA"
# The libraries' own switches for an AVX2 ceiling; each is read when the library loads.
AVX2_LIBRARY_VARIABLES = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
}
# torch.cpu.get_capabilities() keys of features beyond AVX2 (and FMA, F16C, BMI).
_BEYOND_AVX2 = ("avx512", "amx", "avx_vnni", "avx10")


def avx2_ceiling() -> bool:
    """Whether ``AEIC_MAX_CPU_ISA=AVX2`` asks aeic to act as on a CPU with AVX2 alone."""
    return os.environ.get(ISA_VARIABLE, "").upper() == "AVX2"


def limit_libraries() -> None:
    """Under the AVX2 ceiling, set the libraries' own ceilings (before torch is loaded)."""
    if avx2_ceiling():
        for name, value in AVX2_LIBRARY_VARIABLES.items():
            os.environ.setdefault(name, value)


@functools.cache
def capabilities() -> dict[str, bool]:
    """torch.cpu.get_capabilities()'s features, less those beyond AVX2 under the ceiling."""
    import torch

    found = {k: v for k, v in torch.cpu.get_capabilities().items() if isinstance(v, bool)}
    if avx2_ceiling():
        return {k: v and not k.startswith(_BEYOND_AVX2) for k, v in found.items()}
    return found


def has(*features: str) -> bool:
    """Whether the CPU (as aeic sees it) has any of these features."""
    found = capabilities()
    return any(found.get(f, False) for f in features)
