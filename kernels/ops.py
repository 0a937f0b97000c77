"""Every public op and NumPy reference of the package, in one namespace.

``from kernels.ops import gemm, attention, layernorm`` (the modules ``kernels.gemm``,
``kernels.attention``, ... hold the same functions next to their kernel sources).
"""

from __future__ import annotations

from kernels.attention import attention, reference_attention
from kernels.conv import conv2d, reference_conv2d
from kernels.elementwise import (
    gelu,
    gelu_backward,
    gelu_numba,
    mse_grad,
    reference_gelu,
    reference_gelu_backward,
    reference_mse_grad,
    reference_residual_add,
    reference_silu,
    residual_add,
    silu,
)
from kernels.gemm import gemm, gemm_numba, reference_gemm, transpose
from kernels.norm import (
    layernorm,
    reference_layernorm,
    reference_rmsnorm,
    reference_softmax,
    rmsnorm,
    softmax,
    softmax_numba,
)
from kernels.optim import adam_step, reference_adam, reference_sgd, sgd_step
from kernels.reduce import reduce_max, reduce_sum, reference_max, reference_sum

__all__ = [
    "adam_step",
    "attention",
    "conv2d",
    "gelu",
    "gelu_backward",
    "gelu_numba",
    "gemm",
    "gemm_numba",
    "layernorm",
    "mse_grad",
    "reduce_max",
    "reduce_sum",
    "reference_adam",
    "reference_attention",
    "reference_conv2d",
    "reference_gelu",
    "reference_gelu_backward",
    "reference_gemm",
    "reference_layernorm",
    "reference_max",
    "reference_mse_grad",
    "reference_residual_add",
    "reference_rmsnorm",
    "reference_sgd",
    "reference_silu",
    "reference_softmax",
    "reference_sum",
    "residual_add",
    "rmsnorm",
    "sgd_step",
    "silu",
    "softmax",
    "softmax_numba",
    "transpose",
]
