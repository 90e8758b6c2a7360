"""AEIC_MAX_CPU_ISA=AVX2: aeic takes the paths of a CPU with AVX2 alone, wherever it runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from aeic_codec import api
from aeic_codec.entropy_models import kernels
from aeic_codec.runtime import cpu


@pytest.fixture
def avx2_only(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(cpu.ISA_VARIABLE, "AVX2")
    cpu.capabilities.cache_clear()
    kernels.use_int8_gemm.cache_clear()
    yield
    monkeypatch.delenv(cpu.ISA_VARIABLE)
    cpu.capabilities.cache_clear()
    kernels.use_int8_gemm.cache_clear()


def test_the_avx2_ceiling_hides_bf16_and_int8_dot_products(avx2_only: None) -> None:
    assert cpu.has("avx2") == torch.cpu.get_capabilities().get("avx2", False)
    assert not cpu.has("avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni")
    assert not api.cpu_has_native_bf16()
    assert api.resolve_precision("auto") == torch.float32
    assert not kernels.use_int8_gemm()


def test_the_avx2_ceiling_reaches_the_libraries_before_torch_loads() -> None:
    code = (
        "import os\n"
        "import aeic_codec\n"
        "import torch\n"
        "assert os.environ['ONEDNN_MAX_CPU_ISA'] == 'AVX2'\n"
        "assert os.environ['FBGEMM_ENABLE_INSTRUCTIONS'] == 'AVX2'\n"
        "assert torch.backends.cpu.get_cpu_capability() in ('AVX2', 'DEFAULT')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in cpu.AVX2_LIBRARY_VARIABLES}
    subprocess.run([sys.executable, "-c", code], check=True, env={**env, cpu.ISA_VARIABLE: "avx2"})
