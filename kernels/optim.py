"""Optimizer steps on float32 parameters, in place (``cupy.RawKernel``).

- ``sgd_step_f32``: ``p -= lr * (g + weight_decay * p)``.
- ``adam_step_f32``: Adam with bias correction (``m``, ``v`` updated in place).

Each thread updates 4 consecutive elements (float4 loads and stores when every array is
16-byte aligned, elementwise otherwise); 256 threads, grid ``ceil(n / 1024)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernels._compile import KernelSource, aligned, as_cupy_stream, cdiv, check_array, raw_kernel

THREADS = 256
PER_THREAD = 4

_SGD = r"""
extern "C" __global__ void __launch_bounds__(256) sgd_step_f32(float* __restrict__ p, const float* __restrict__ g,
                                                               long long n, float lr, float wd, int vec)
{
    const long long i0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (vec && i0 + 4 <= n) {
        float4 pv = *reinterpret_cast<float4*>(p + i0);
        const float4 gv = *reinterpret_cast<const float4*>(g + i0);
        pv.x -= lr * fmaf(wd, pv.x, gv.x);
        pv.y -= lr * fmaf(wd, pv.y, gv.y);
        pv.z -= lr * fmaf(wd, pv.z, gv.z);
        pv.w -= lr * fmaf(wd, pv.w, gv.w);
        *reinterpret_cast<float4*>(p + i0) = pv;
    } else {
        for (long long i = i0; i < min(n, i0 + 4); ++i) p[i] -= lr * fmaf(wd, p[i], g[i]);
    }
}
"""

_ADAM = r"""
__device__ __forceinline__ void adam1(float& p, float g, float& m, float& v, float lr, float b1, float b2,
                                      float eps, float c1, float c2) {
    m = b1 * m + (1.0f - b1) * g;
    v = b2 * v + (1.0f - b2) * g * g;
    p -= lr * (m * c1) / (sqrtf(v * c2) + eps);
}

// c1 = 1 / (1 - b1^t), c2 = 1 / (1 - b2^t): bias corrections of step t.
extern "C" __global__ void __launch_bounds__(256) adam_step_f32(
    float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
    long long n, float lr, float b1, float b2, float eps, float c1, float c2, int vec)
{
    const long long i0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (vec && i0 + 4 <= n) {
        float4 pv = *reinterpret_cast<float4*>(p + i0);
        const float4 gv = *reinterpret_cast<const float4*>(g + i0);
        float4 mv = *reinterpret_cast<float4*>(m + i0);
        float4 vv = *reinterpret_cast<float4*>(v + i0);
        adam1(pv.x, gv.x, mv.x, vv.x, lr, b1, b2, eps, c1, c2);
        adam1(pv.y, gv.y, mv.y, vv.y, lr, b1, b2, eps, c1, c2);
        adam1(pv.z, gv.z, mv.z, vv.z, lr, b1, b2, eps, c1, c2);
        adam1(pv.w, gv.w, mv.w, vv.w, lr, b1, b2, eps, c1, c2);
        *reinterpret_cast<float4*>(p + i0) = pv;
        *reinterpret_cast<float4*>(m + i0) = mv;
        *reinterpret_cast<float4*>(v + i0) = vv;
    } else {
        for (long long i = i0; i < min(n, i0 + 4); ++i) adam1(p[i], g[i], m[i], v[i], lr, b1, b2, eps, c1, c2);
    }
}
"""

SGD_SOURCE = KernelSource(key="sgd_step_f32", code=_SGD, kind="kernel", name="sgd_step_f32")
ADAM_SOURCE = KernelSource(key="adam_step_f32", code=_ADAM, kind="kernel", name="adam_step_f32")


def cupy_sources() -> list[KernelSource]:
    """Every CuPy kernel source of this module."""
    return [SGD_SOURCE, ADAM_SOURCE]


def _check_state(p: Any, **others: Any) -> None:
    check_array(p, "param", dtypes=(np.float32,))
    for name, a in others.items():
        check_array(a, name, dtypes=(np.float32,))
        if a.shape != p.shape:
            raise ValueError(f"{name} has shape {tuple(a.shape)}; expected param's {tuple(p.shape)}")


def sgd_step(param: Any, grad: Any, lr: float, weight_decay: float = 0.0, *, stream: Any = None) -> Any:
    """One SGD step, in place: ``param -= lr * (grad + weight_decay * param)``.

    Parameters
    ----------
    param, grad : cupy.ndarray
        Same shape, C-contiguous float32.
    lr, weight_decay : float
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``param``.
    """
    _check_state(param, grad=grad)
    s = as_cupy_stream(stream)
    n = int(param.size)
    raw_kernel(SGD_SOURCE)((cdiv(n, THREADS * PER_THREAD),), (THREADS,),
                           (param, grad, np.int64(n), np.float32(lr), np.float32(weight_decay),
                            np.int32(aligned(param, grad))), stream=s)
    return param


def adam_step(param: Any, grad: Any, m: Any, v: Any, step: int, lr: float = 1e-3, beta1: float = 0.9,
              beta2: float = 0.999, eps: float = 1e-8, *, stream: Any = None) -> Any:
    """One Adam step, in place on ``param``, ``m`` and ``v``.

    Parameters
    ----------
    param, grad, m, v : cupy.ndarray
        Same shape, C-contiguous float32 (``m`` and ``v`` start at zero).
    step : int
        1-based step number (for the bias corrections).
    lr, beta1, beta2, eps : float
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``param``.
    """
    _check_state(param, grad=grad, m=m, v=v)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    c1, c2 = adam_corrections(step, beta1, beta2)
    s = as_cupy_stream(stream)
    n = int(param.size)
    raw_kernel(ADAM_SOURCE)((cdiv(n, THREADS * PER_THREAD),), (THREADS,),
                            (param, grad, m, v, np.int64(n), np.float32(lr), np.float32(beta1), np.float32(beta2),
                             np.float32(eps), np.float32(c1), np.float32(c2), np.int32(aligned(param, grad, m, v))),
                            stream=s)
    return param


def adam_corrections(step: int, beta1: float, beta2: float) -> tuple[float, float]:
    """``(1 / (1 - beta1**step), 1 / (1 - beta2**step))``."""
    return 1.0 / (1.0 - math.pow(beta1, step)), 1.0 / (1.0 - math.pow(beta2, step))


def reference_sgd(param: np.ndarray, grad: np.ndarray, lr: float, weight_decay: float = 0.0) -> np.ndarray:
    """float64 parameters after one SGD step."""
    p = np.asarray(param, np.float64)
    return p - lr * (np.asarray(grad, np.float64) + weight_decay * p)


def reference_adam(param: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, step: int,
                   lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                   eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 ``(param, m, v)`` after one Adam step."""
    g = np.asarray(grad, np.float64)
    m1 = beta1 * np.asarray(m, np.float64) + (1 - beta1) * g
    v1 = beta2 * np.asarray(v, np.float64) + (1 - beta2) * g * g
    c1, c2 = adam_corrections(step, beta1, beta2)
    p1 = np.asarray(param, np.float64) - lr * (m1 * c1) / (np.sqrt(v1 * c2) + eps)
    return p1, m1, v1
