"""Probability models of the latents: the float priors and the exact integer entropy model.

The integer model (``intnet``) runs one program over ``ops`` (IntOps, FloatOps), whose
layers ``quantize`` makes integer and whose products and arithmetic are exact
(``kernels``, ``intmath``).
"""

from __future__ import annotations

from aeic_codec.runtime.lazy import lazy_exports

_EXPORTS = {
    "ACT_MAX": "intmath",
    "ACT_MIN": "intmath",
    "EXPONENT_RANGE": "intmath",
    "clamp16": "intmath",
    "exponent_for": "intmath",
    "gelu_table": "intmath",
    "isqrt": "intmath",
    "rshift_round": "intmath",
    "scale_thresholds": "intmath",
    "INTEGER_FORMAT": "intnet",
    "IntegerEntropy": "intnet",
    "QSTEP_BITS": "intnet",
    "SYMBOL_CLAMP": "intnet",
    "Start": "intnet",
    "context_params": "intnet",
    "hyper_synthesis": "intnet",
    "integerize": "intnet",
    "step_values": "intnet",
    "ByteWeights": "kernels",
    "DIGIT_CHUNK": "kernels",
    "DIGIT_PAIR_MAX": "kernels",
    "INT8_DOT_PRODUCTS": "kernels",
    "MAX_TERMS": "kernels",
    "byte_weights": "kernels",
    "depthwise_split": "kernels",
    "depthwise_sum": "kernels",
    "digit_gemm": "kernels",
    "im2col": "kernels",
    "int8_gemm_exact": "kernels",
    "kernel_digits": "kernels",
    "use_int8_gemm": "kernels",
    "Act": "ops",
    "FLOAT_SHIFT_MAX": "ops",
    "FloatOps": "ops",
    "IntOps": "ops",
    "Ops": "ops",
    "FactorizedPrior": "priors",
    "LIKELIHOOD_MIN": "priors",
    "SCALE_LEVELS": "priors",
    "SCALE_MAX": "priors",
    "SCALE_MIN": "priors",
    "SKIP_SCALE": "priors",
    "TAIL_MASS": "priors",
    "gaussian_likelihood": "priors",
    "lower_bound": "priors",
    "scale_indexes": "priors",
    "scale_table": "priors",
    "table_scales": "priors",
    "BIAS_MAX": "quantize",
    "LN_EPS": "quantize",
    "LN_PRECISION": "quantize",
    "MIXED_8BIT": "quantize",
    "MULT_BITS": "quantize",
    "SHIFT_RANGE": "quantize",
    "WEIGHT_MAX": "quantize",
    "WEIGHT_PLANS": "quantize",
    "integer_weight": "quantize",
    "layer_bits": "quantize",
    "layout_of": "quantize",
    "quantize_layer": "quantize",
    "quantize_norm": "quantize",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
