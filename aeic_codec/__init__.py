"""aeic: ultra-low-bitrate image codec with a shallow encoder and a generative decoder."""

import os

from aeic_codec.runtime.cpu import limit_libraries

# MKL's strict reproducibility mode makes GEMM results independent of the number of
# threads. The entropy parameters must come out bit-identical on encoder and decoder,
# so this is set before torch (and MKL) is loaded; see docs/format.md.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
limit_libraries()  # AEIC_MAX_CPU_ISA=AVX2: the libraries too act as on an AVX2-only CPU

__version__ = "0.1.0"
