"""Test and benchmark cases: every op at a 'small' size (quick correctness) and a 'bench'
size (fills an H100 and runs for roughly 1-20 ms), with a float64 reference, a tolerance,
and FLOP and byte counts.

Usage::

    case = get_case("gemm_f16")
    prep = case.make(np.random.default_rng(0), "small")   # fresh device inputs, outputs allocated
    poison(prep)                                           # NaN in every output
    prep.run(stream); stream.synchronize()
    check(prep)                              # all written, within tolerance; else AssertionError

``bytes`` is the minimum DRAM traffic (every input read once, every output written once);
``flops`` counts multiply-adds as 2. `achieved` turns a measured time into the fraction of
the H100 peak that matters for the case (`PEAKS`): HBM bandwidth for memory-bound cases,
tensor-core or SIMT fp32 throughput for compute-bound ones.

Inputs are generated on the device (``cupy.random`` seeded from the caller's generator,
exact zeros replaced by 0.5), so 'bench' sizes are quick to set up; the reference copies
them to the host when it is called. Building a case needs a GPU; `CASES`, the sizes and
the cost formulas do not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from kernels import dtypes

#: H100 SXM peaks the achieved fractions are relative to.
PEAKS: dict[str, float] = {
    "memory": 3.0e12,     # bytes/s, measured device-to-device copy (spec 3.35 TB/s)
    "tensor": 989e12,     # dense fp16/bf16 tensor-core FLOP/s (spec; ~700 TFLOP/s is a good mma.sync result)
    "simt": 60e12,        # fp32 FMA FLOP/s (132 SMs x 128 lanes x 2 x ~1.8-1.98 GHz)
}

SIZES = ("small", "bench")
FRONTENDS = ("cupy", "numba")


@dataclasses.dataclass
class Prepared:
    """A case made ready to run: device inputs and outputs, reference, tolerance, costs.

    Attributes
    ----------
    run : callable
        ``run(stream=None)`` launches the op on ``stream`` (no synchronization) and
        returns its output.
    outputs : tuple of cupy.ndarray
        Arrays holding the results after a run (compared with the reference).
    poison : tuple of cupy.ndarray
        The outputs the op writes completely through ``out=``: fill them with NaN before
        a run (`poison`) to check that every element gets written. Empty for in-place ops.
    reference : callable
        ``reference()`` -> tuple of float64 host arrays matching ``outputs``.
    rtol, atol : float
        Elementwise tolerance: ``|got - ref| <= atol + rtol * |ref|``.
    flops, bytes : float
        Work of one run.
    params : dict
        The size parameters used.
    """

    run: Callable[..., Any]
    outputs: tuple[Any, ...]
    poison: tuple[Any, ...]
    reference: Callable[[], tuple[np.ndarray, ...]]
    rtol: float
    atol: float
    flops: float
    bytes: float
    params: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class KernelCase:
    """One registry entry.

    Attributes
    ----------
    name : str
        Unique name, e.g. ``"attention_f16_causal"``.
    frontend : str
        ``"cupy"`` or ``"numba"``.
    op : str
        The public function it runs (``"gemm"``, ``"attention"``, ...).
    dtype : str
        Storage type: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
    bound : str
        The peak it is measured against: ``"memory"``, ``"tensor"`` or ``"simt"``.
    sizes : mapping
        ``"small"`` and ``"bench"`` -> size parameters.
    build : callable
        ``build(rng, params)`` -> `Prepared` (needs a GPU).
    cost : callable
        ``cost(params)`` -> ``(flops, bytes)``.
    """

    name: str
    frontend: str
    op: str
    dtype: str
    bound: str
    sizes: Mapping[str, Mapping[str, Any]]
    build: Callable[[np.random.Generator, dict[str, Any]], Prepared]
    cost: Callable[[Mapping[str, Any]], tuple[float, float]]

    def make(self, rng: np.random.Generator, scale: str = "small") -> Prepared:
        """Fresh random device inputs at size ``scale`` and the callable that runs the op.

        The setup work runs on CuPy's current stream, which is synchronized before
        returning, so the op may then run on any stream.
        """
        if scale not in self.sizes:
            raise ValueError(f"scale must be one of {sorted(self.sizes)}, got {scale!r}")
        import cupy

        params = dict(self.sizes[scale])
        prepared = self.build(rng, params)
        prepared.flops, prepared.bytes = self.cost(params)
        prepared.params = params
        cupy.cuda.get_current_stream().synchronize()
        return prepared

    def achieved(self, prepared: Prepared, seconds: float) -> dict[str, float]:
        """Throughput of a run that took ``seconds``, and its fraction of the case's peak."""
        flops_s, bytes_s = prepared.flops / seconds, prepared.bytes / seconds
        rate = bytes_s if self.bound == "memory" else flops_s
        return {"seconds": seconds, "tflops": flops_s / 1e12, "gbytes_per_s": bytes_s / 1e9,
                "fraction_of_peak": rate / PEAKS[self.bound]}


# ---- device inputs, poisoning, checking ---------------------------------------------------


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63 - 1))


def randn(rng: np.random.Generator, shape: tuple[int, ...], kind: str = dtypes.FLOAT32, scale: float = 1.0) -> Any:
    """Standard-normal device array (times ``scale``) in storage ``kind``, with no zeros."""
    import cupy

    x = cupy.random.default_rng(_seed(rng)).standard_normal(shape, dtype=cupy.float32)
    if scale != 1.0:
        x *= np.float32(scale)
    if kind == dtypes.FLOAT32:
        return cupy.where(x == 0, np.float32(0.5), x)
    if kind == dtypes.FLOAT16:
        y = x.astype(cupy.float16)
        return cupy.where(y == 0, np.float16(0.5), y)
    u = x.view(cupy.uint32).astype(cupy.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(cupy.uint16)   # round to nearest even
    return cupy.where((bits & 0x7FFF) == 0, np.uint16(0x3F00), bits)


def uniform(rng: np.random.Generator, shape: tuple[int, ...], low: float, high: float) -> Any:
    """Uniform float32 device array in ``[low, high)`` (``low > 0`` for positive data)."""
    import cupy

    return cupy.random.default_rng(_seed(rng)).uniform(low, high, shape, dtype=cupy.float32)


def empty_like_kind(shape: tuple[int, ...], kind: str) -> Any:
    """Uninitialized device array of storage ``kind``."""
    import cupy

    return cupy.empty(shape, dtype=dtypes.numpy_dtype(kind))


def poison(prepared: Prepared) -> None:
    """Fill every array of ``prepared.poison`` with NaN (bfloat16 bits: 0x7FC0).

    The fills run on CuPy's current stream, which is then synchronized, so the op may
    run on any stream afterwards.
    """
    import cupy

    for arr in prepared.poison:
        if dtypes.storage_kind(arr.dtype) == dtypes.BFLOAT16 and arr.dtype == np.uint16:
            arr.fill(0x7FC0)
        else:
            arr.fill(np.nan)
    cupy.cuda.get_current_stream().synchronize()


def host(arr: Any) -> np.ndarray:
    """A device array's values as a float64 host array (bfloat16 bits decoded)."""
    import cupy

    return dtypes.to_float64(cupy.asnumpy(arr))


def check(prepared: Prepared, reference: tuple[np.ndarray, ...] | None = None) -> None:
    """Assert every output is finite and within tolerance of the reference.

    Synchronize the stream the op ran on first (the outputs are read on CuPy's current
    stream).

    Raises
    ------
    AssertionError
        Naming the output, the count of unwritten (NaN) or out-of-tolerance elements,
        and the worst element.
    """
    refs = prepared.reference() if reference is None else reference
    if len(refs) != len(prepared.outputs):
        raise AssertionError(f"{len(prepared.outputs)} outputs but {len(refs)} references")
    for i, (out, ref) in enumerate(zip(prepared.outputs, refs)):
        got = host(out)
        ref = np.asarray(ref, np.float64)
        if got.shape != ref.shape:
            raise AssertionError(f"output {i}: shape {got.shape}, reference {ref.shape}")
        nonfinite = ~np.isfinite(got)
        if nonfinite.any():
            idx = np.unravel_index(int(np.argmax(nonfinite)), got.shape)
            raise AssertionError(f"output {i}: {int(nonfinite.sum())} of {got.size} elements not finite "
                                 f"(unwritten or overflow), first at {idx}")
        err = np.abs(got - ref)
        bad = err > prepared.atol + prepared.rtol * np.abs(ref)
        if bad.any():
            worst = np.unravel_index(int(np.argmax(err - prepared.rtol * np.abs(ref))), got.shape)
            raise AssertionError(
                f"output {i}: {int(bad.sum())} of {got.size} elements out of tolerance "
                f"(rtol={prepared.rtol:g}, atol={prepared.atol:g}); worst at {worst}: "
                f"got {got[worst]!r}, reference {ref[worst]!r}")


# ---- cost formulas ------------------------------------------------------------------------


def _item(kind: str) -> int:
    return dtypes.numpy_dtype(kind).itemsize


def gemm_cost(p: Mapping[str, Any]) -> tuple[float, float]:
    """GEMM: ``2 M N K`` FLOPs; ``(M K + K N) * in_item + M N * out_item`` bytes."""
    M, N, K = p["M"], p["N"], p["K"]
    out_kind = p.get("out", p["kind"])
    return 2.0 * M * N * K, float((M * K + K * N) * _item(p["kind"]) + M * N * _item(out_kind))


def attention_flops(B: int, H: int, Sq: int, Sk: int, D: int, causal: bool) -> float:
    """``4 B H D`` times the number of (query, key) pairs scored: ``Sq Sk``, or
    ``Sq (Sq + 1) / 2`` when causal (QK^T and PV, 2 FLOPs per multiply-add)."""
    pairs = Sq * (Sq + 1) / 2 if causal else Sq * Sk
    return 4.0 * B * H * D * pairs


def attention_cost(p: Mapping[str, Any]) -> tuple[float, float]:
    """Attention: `attention_flops`; bytes ``(2 B H Sq D + 2 B H Sk D) * item`` (Q, O, K, V)."""
    B, H, Sq, Sk, D = p["B"], p["H"], p["Sq"], p.get("Sk", p["Sq"]), p["D"]
    return attention_flops(B, H, Sq, Sk, D, p["causal"]), float(2 * B * H * (Sq + Sk) * D * _item(p["kind"]))


def rowwise_cost(flops_per_element: float, params_per_col: int) -> Callable[[Mapping[str, Any]], tuple[float, float]]:
    """Row-wise ops on (rows, cols): ``f * rows * cols`` FLOPs; read x + write y (+ per-column params)."""

    def cost(p: Mapping[str, Any]) -> tuple[float, float]:
        n = p["rows"] * p["cols"]
        return flops_per_element * n, float((2 * n + params_per_col * p["cols"]) * _item(p["kind"]))

    return cost


def elementwise_cost(flops_per_element: float, arrays: int) -> Callable[[Mapping[str, Any]], tuple[float, float]]:
    """Elementwise ops over n elements: ``f * n`` FLOPs; ``arrays * n * item`` bytes (inputs + outputs)."""

    def cost(p: Mapping[str, Any]) -> tuple[float, float]:
        return flops_per_element * p["n"], float(arrays * p["n"] * _item(p["kind"]))

    return cost


def conv_output_hw(p: Mapping[str, Any]) -> tuple[int, int]:
    """Output height and width of a conv size dict."""
    P = (p["H"] + 2 * p["pad"] - p["dil"] * (p["R"] - 1) - 1) // p["stride"] + 1
    Q = (p["W"] + 2 * p["pad"] - p["dil"] * (p["S"] - 1) - 1) // p["stride"] + 1
    return P, Q


def conv_cost(p: Mapping[str, Any]) -> tuple[float, float]:
    """Conv: ``2 N K P Q C R S`` FLOPs; ``(N C H W + K C R S + N K P Q) * 4`` bytes."""
    P, Q = conv_output_hw(p)
    N, C, K = p["N"], p["C"], p["K"]
    flops = 2.0 * N * K * P * Q * C * p["R"] * p["S"]
    return flops, float(4 * (N * C * p["H"] * p["W"] + K * C * p["R"] * p["S"] + N * K * P * Q))


def transpose_cost(p: Mapping[str, Any]) -> tuple[float, float]:
    """Transpose: no FLOPs; ``2 R C * item`` bytes."""
    return 0.0, float(2 * p["R"] * p["C"] * _item(p["kind"]))


# ---- builders -----------------------------------------------------------------------------


def _tol_gemm(kind: str, out_kind: str, K: int) -> tuple[float, float]:
    """Tolerance of a K-term product of ~unit inputs with fp32 accumulation: the output
    has magnitude ~sqrt(K); rounding to a 16-bit output costs its unit roundoff, and
    tensor-core accumulation rounds a little more loosely than IEEE fp32."""
    root = math.sqrt(K)
    if out_kind != dtypes.FLOAT32:
        u = dtypes.unit_roundoff(out_kind)
        return 4 * u, (4 * u + 1e-4) * root
    if kind == dtypes.FLOAT32:
        return 1e-4, 2e-5 * root
    return 1e-4, 1e-4 * root


def _build_gemm(ta: bool = False, tb: bool = False, numba: bool = False):
    def build(rng: np.random.Generator, p: dict[str, Any]) -> Prepared:
        from kernels.gemm import gemm, gemm_numba, reference_gemm

        kind, out_kind, M, N, K = p["kind"], p.get("out", p["kind"]), p["M"], p["N"], p["K"]
        a = randn(rng, (K, M) if ta else (M, K), kind)
        b = randn(rng, (N, K) if tb else (K, N), kind)
        c = empty_like_kind((M, N), out_kind)
        tile = p.get("tile")
        if numba:
            def run(stream: Any = None) -> Any:
                return gemm_numba(a, b, out=c, stream=stream)
        else:
            def run(stream: Any = None) -> Any:
                return gemm(a, b, out=c, trans_a=ta, trans_b=tb, tile=tile, stream=stream)

        def reference() -> tuple[np.ndarray, ...]:
            import cupy

            return (reference_gemm(cupy.asnumpy(a), cupy.asnumpy(b), trans_a=ta, trans_b=tb),)

        rtol, atol = _tol_gemm(kind, out_kind, K)
        return Prepared(run, (c,), (c,), reference, rtol, atol, 0.0, 0.0, p)

    return build


def _build_attention(rng: np.random.Generator, p: dict[str, Any]) -> Prepared:
    from kernels.attention import attention, reference_attention

    kind, B, H, Sq, D, causal = p["kind"], p["B"], p["H"], p["Sq"], p["D"], p["causal"]
    Sk = p.get("Sk", Sq)
    q = randn(rng, (B, H, Sq, D), kind)
    k = randn(rng, (B, H, Sk, D), kind)
    v = randn(rng, (B, H, Sk, D), kind)
    o = empty_like_kind((B, H, Sq, D), kind)

    def run(stream: Any = None) -> Any:
        return attention(q, k, v, causal=causal, out=o, stream=stream)

    def reference() -> tuple[np.ndarray, ...]:
        import cupy

        return (reference_attention(cupy.asnumpy(q), cupy.asnumpy(k), cupy.asnumpy(v), causal=causal),)

    u = dtypes.unit_roundoff(kind)
    atol = {dtypes.FLOAT32: 2e-5, dtypes.FLOAT16: 8 * u, dtypes.BFLOAT16: 8 * u}[kind]
    return Prepared(run, (o,), (o,), reference, 4 * max(u, 2**-20), atol, 0.0, 0.0, p)


def _rowwise_tol(kind: str) -> tuple[float, float]:
    u = dtypes.unit_roundoff(kind)
    return (2e-5, 2e-5) if kind == dtypes.FLOAT32 else (4 * u, 4 * u)


def _build_softmax(numba: bool = False):
    def build(rng: np.random.Generator, p: dict[str, Any]) -> Prepared:
        from kernels.norm import reference_softmax, softmax, softmax_numba

        kind = p["kind"]
        x = randn(rng, (p["rows"], p["cols"]), kind, scale=3.0)
        y = empty_like_kind(x.shape, kind)
        op = softmax_numba if numba else softmax

        def run(stream: Any = None) -> Any:
            return op(x, out=y, stream=stream)

        def reference() -> tuple[np.ndarray, ...]:
            import cupy

            return (reference_softmax(cupy.asnumpy(x)),)

        rtol, atol = _rowwise_tol(kind)
        return Prepared(run, (y,), (y,), reference, rtol, atol * 0.1, 0.0, 0.0, p)

    return build


def _build_layernorm(rms: bool):
    def build(rng: np.random.Generator, p: dict[str, Any]) -> Prepared:
        from kernels.norm import layernorm, reference_layernorm, reference_rmsnorm, rmsnorm

        kind = p["kind"]
        x = randn(rng, (p["rows"], p["cols"]), kind, scale=2.0)
        w = randn(rng, (p["cols"],), kind)
        b = randn(rng, (p["cols"],), kind)
        y = empty_like_kind(x.shape, kind)

        def run(stream: Any = None) -> Any:
            if rms:
                return rmsnorm(x, w, eps=1e-6, out=y, stream=stream)
            return layernorm(x, w, b, eps=1e-5, out=y, stream=stream)

        def reference() -> tuple[np.ndarray, ...]:
            import cupy

            xh, wh, bh = cupy.asnumpy(x), cupy.asnumpy(w), cupy.asnumpy(b)
            return (reference_rmsnorm(xh, wh, 1e-6) if rms else reference_layernorm(xh, wh, bh, 1e-5),)

        rtol, atol = _rowwise_tol(kind)
        return Prepared(run, (y,), (y,), reference, rtol, 4 * atol, 0.0, 0.0, p)

    return build


def _build_unary(op_name: str):
    def build(rng: np.random.Generator, p: dict[str, Any]) -> Prepared:
        from kernels import elementwise as ew

        kind, n = p["kind"], p["n"]
        x = randn(rng, (n,), kind, scale=2.0)
        y = empty_like_kind((n,), kind)
        op = {"gelu": ew.gelu, "silu": ew.silu, "gelu_numba": ew.gelu_numba}[op_name]
        ref = {"gelu": ew.reference_gelu, "silu": ew.reference_silu, "gelu_numba": ew.reference_gelu}[op_name]

        def run(stream: Any = None) -> Any:
            return op(x, out=y, stream=stream)

        def reference() -> tuple[np.ndarray, ...]:
            import cupy

            return (ref(cupy.asnumpy(x)),)

        rtol, atol = _rowwise_tol(kind)
        return Prepared(run, (y,), (y,), reference, rtol, atol * 0.1, 0.0, 0.0, p)

    return build


def _build_residual_add(rng: np.random.Generator, p: dict[str, Any]) -> Prepared:
    from kernels.elementwise import reference_residual_add, residual_add

    kind, rows, cols = p["kind"], p["rows"], p["cols"]
    x = randn(rng, (rows, cols), kind)
    r = randn(rng, (rows, cols), kind)
    b = randn(rng, (cols,), kind)
    y = empty_like_kind((rows, cols), kind)

    def run(stream: Any = None) -> Any:
        return residual_add(x, r, bias=b, out=y, stream=stream)

    def reference() -> tuple[np.ndarray, ...]:
        import cupy

        return (reference_residual_add(cupy.asnumpy(x), cupy.asnumpy(r), cupy.asnumpy(b)),)

    rtol, atol = _rowwise_tol(kind)
    return Prepared(run, (y,), (y,), reference, rtol, atol, 0.0, 0.0, p)


def _build_gelu_backward(rng: np.random.Generator, p: dict[str, Any]) -> Prepared:
    from kernels.elementwise import gelu_backward, reference_gelu_backward

    kind, n = p["kind"], p["n"]
    x = randn(rng, (n,), kind, scale=2.0)
    g = randn(rng, (n,), kind)
    y = empty_like_kind((n,), kind)

    def run(stream: Any = None) -> Any:
        return gelu_backward(x, g, out=y, stream=stream)

    def reference() -> tuple[np.ndarray, ...]:
        import cupy

        return (reference_gelu_backward(cupy.asnumpy(x), cupy.asnumpy(g)),)

    rtol, atol = _rowwise_tol(kind)
    return Prepared(run, (y,), (y,), reference, rtol, atol, 0.0, 0.0, p)


def _build_mse_grad(rng: np.random.Generator, p: dict[str, Any]) -> Prepared:
    from kernels.elementwise import mse_grad, reference_mse_grad

    kind, n = p["kind"], p["n"]
    pred = randn(rng, (n,), kind)
    target = randn(rng, (n,), kind)
    y = empty_like_kind((n,), kind)

    def run(stream: Any = None) -> Any:
        return mse_grad(pred, target, out=y, stream=stream)

    def reference() -> tuple[np.ndarray, ...]:
        import cupy

        return (reference_mse_grad(cupy.asnumpy(pred), cupy.asnumpy(target)),)

    return Prepared(run, (y,), (y,), reference, 1e-5, 1e-12, 0.0, 0.0, p)


def _build_conv(rng: np.random.Generator, p: dict[str, Any]) -> Prepared:
    from kernels.conv import conv2d, reference_conv2d

    N, C, H, W, K, R, S = (p[k] for k in ("N", "C", "H", "W", "K", "R", "S"))
    P, Q = conv_output_hw(p)
    x = randn(rng, (N, C, H, W))
    w = randn(rng, (K, C, R, S))
    bias = randn(rng, (K,)) if p["bias"] else None
    y = empty_like_kind((N, K, P, Q), dtypes.FLOAT32)
    conv_args = {"stride": p["stride"], "padding": p["pad"], "dilation": p["dil"]}

    def run(stream: Any = None) -> Any:
        return conv2d(x, w, bias, out=y, stream=stream, **conv_args)

    def reference() -> tuple[np.ndarray, ...]:
        import cupy

        bh = None if bias is None else cupy.asnumpy(bias)
        return (reference_conv2d(cupy.asnumpy(x), cupy.asnumpy(w), bh, **conv_args),)

    crs = C * R * S
    return Prepared(run, (y,), (y,), reference, 1e-4, 2e-5 * math.sqrt(crs), 0.0, 0.0, p)


def _build_reduce(op_name: str):
    def build(rng: np.random.Generator, p: dict[str, Any]) -> Prepared:
        import cupy

        from kernels.reduce import reduce_max, reduce_sum, reference_max, reference_sum

        n = p["n"]
        x = randn(rng, (n,))
        out = cupy.empty((), dtype=cupy.float32)
        op, ref = (reduce_sum, reference_sum) if op_name == "sum" else (reduce_max, reference_max)

        def run(stream: Any = None) -> Any:
            return op(x, out=out, stream=stream)

        def reference() -> tuple[np.ndarray, ...]:
            return (ref(cupy.asnumpy(x)),)

        atol = 1e-6 * n if op_name == "sum" else 0.0   # fp32 tree sum of n standard normals
        return Prepared(run, (out,), (out,), reference, 1e-5 if op_name == "sum" else 0.0, atol, 0.0, 0.0, p)

    return build


def _build_transpose(rng: np.random.Generator, p: dict[str, Any]) -> Prepared:
    from kernels.gemm import transpose

    kind = p["kind"]
    x = randn(rng, (p["R"], p["C"]), kind)
    y = empty_like_kind((p["C"], p["R"]), kind)

    def run(stream: Any = None) -> Any:
        return transpose(x, out=y, stream=stream)

    def reference() -> tuple[np.ndarray, ...]:
        import cupy

        return (dtypes.to_float64(cupy.asnumpy(x), kind).T.copy(),)

    return Prepared(run, (y,), (y,), reference, 0.0, 0.0, 0.0, 0.0, p)


def _build_optim(adam: bool):
    def build(rng: np.random.Generator, p: dict[str, Any]) -> Prepared:
        import cupy

        from kernels.optim import adam_step, reference_adam, reference_sgd, sgd_step

        n = p["n"]
        param = randn(rng, (n,))
        grad = randn(rng, (n,))
        m = randn(rng, (n,), scale=0.1)
        v = uniform(rng, (n,), 0.01, 1.0)
        host0 = [cupy.asnumpy(a) for a in (param, grad, m, v)]
        step, lr = 3, 1e-2

        def run(stream: Any = None) -> Any:
            if adam:
                return adam_step(param, grad, m, v, step, lr=lr, stream=stream)
            return sgd_step(param, grad, lr, weight_decay=1e-2, stream=stream)

        def reference() -> tuple[np.ndarray, ...]:
            p0, g0, m0, v0 = host0
            if adam:
                return reference_adam(p0, g0, m0, v0, step, lr=lr)
            return (reference_sgd(p0, g0, lr, 1e-2),)

        outputs = (param, m, v) if adam else (param,)
        return Prepared(run, outputs, (), reference, 1e-5, 1e-6, 0.0, 0.0, p)

    return build


# ---- the cases ----------------------------------------------------------------------------

F32, F16, BF16 = dtypes.FLOAT32, dtypes.FLOAT16, dtypes.BFLOAT16
_MEM_N = {F32: 1 << 29, F16: 1 << 30, BF16: 1 << 30}   # bench sizes of elementwise ops: 2 GiB per array


def _sizes(small: dict[str, Any], bench: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"small": small, "bench": bench}


def _cases() -> list[KernelCase]:
    cases: list[KernelCase] = []
    add = cases.append

    # GEMM
    add(KernelCase("gemm_f32", "cupy", "gemm", F32, "simt",
                   _sizes(dict(kind=F32, M=300, N=200, K=130), dict(kind=F32, M=4096, N=4096, K=4096)),
                   _build_gemm(), gemm_cost))
    add(KernelCase("gemm_f32_tile128", "cupy", "gemm", F32, "simt",
                   _sizes(dict(kind=F32, M=261, N=390, K=77, tile="128x128"),
                          dict(kind=F32, M=4096, N=4096, K=4096, tile="128x128")),
                   _build_gemm(), gemm_cost))
    add(KernelCase("gemm_f32_tn", "cupy", "gemm", F32, "simt",
                   _sizes(dict(kind=F32, M=140, N=333, K=97), dict(kind=F32, M=4096, N=4096, K=4096)),
                   _build_gemm(ta=True), gemm_cost))
    add(KernelCase("gemm_f32_nt", "cupy", "gemm", F32, "simt",
                   _sizes(dict(kind=F32, M=257, N=64, K=200), dict(kind=F32, M=4096, N=4096, K=4096)),
                   _build_gemm(tb=True), gemm_cost))
    for kind in (F16, BF16):
        sfx = dtypes.SUFFIX[kind]
        add(KernelCase(f"gemm_{sfx}", "cupy", "gemm", kind, "tensor",
                       _sizes(dict(kind=kind, M=200, N=136, K=72), dict(kind=kind, M=8192, N=8192, K=8192)),
                       _build_gemm(), gemm_cost))
        add(KernelCase(f"gemm_{sfx}_f32out", "cupy", "gemm", kind, "tensor",
                       _sizes(dict(kind=kind, out=F32, M=130, N=264, K=96),
                              dict(kind=kind, out=F32, M=8192, N=8192, K=8192)),
                       _build_gemm(), gemm_cost))
    add(KernelCase("gemm_f16_unaligned", "cupy", "gemm", F16, "tensor",
                   _sizes(dict(kind=F16, M=77, N=50, K=33), dict(kind=F16, M=8191, N=8190, K=8189)),
                   _build_gemm(), gemm_cost))
    add(KernelCase("gemm_f16_tn", "cupy", "gemm", F16, "tensor",
                   _sizes(dict(kind=F16, M=64, N=96, K=40), dict(kind=F16, M=8192, N=8192, K=8192)),
                   _build_gemm(ta=True), gemm_cost))
    add(KernelCase("gemm_f32_numba", "numba", "gemm_numba", F32, "simt",
                   _sizes(dict(kind=F32, M=150, N=100, K=70), dict(kind=F32, M=4096, N=4096, K=4096)),
                   _build_gemm(numba=True), gemm_cost))

    # attention
    att = [
        ("attention_f32", F32, False, dict(B=2, H=3, Sq=77, D=64), dict(B=8, H=16, Sq=2048, D=64)),
        ("attention_f32_cross", F32, False, dict(B=1, H=2, Sq=70, Sk=45, D=64),
         dict(B=8, H=16, Sq=2048, Sk=1024, D=64)),
        ("attention_f32_causal_d128", F32, True, dict(B=1, H=2, Sq=100, D=128), dict(B=4, H=16, Sq=2048, D=128)),
        ("attention_f16", F16, False, dict(B=1, H=2, Sq=100, D=128), dict(B=4, H=16, Sq=2048, D=128)),
        ("attention_f16_causal", F16, True, dict(B=2, H=2, Sq=130, D=64), dict(B=8, H=16, Sq=2048, D=64)),
        ("attention_bf16_causal", BF16, True, dict(B=1, H=3, Sq=65, D=64), dict(B=8, H=16, Sq=2048, D=64)),
    ]
    for name, kind, causal, small, bench in att:
        add(KernelCase(name, "cupy", "attention", kind, "simt",
                       _sizes(dict(kind=kind, causal=causal, **small), dict(kind=kind, causal=causal, **bench)),
                       _build_attention, attention_cost))

    # row-wise
    for name, kind, small, bench in [
        ("softmax_f32", F32, dict(rows=37, cols=1000), dict(rows=16384, cols=16384)),
        ("softmax_f16", F16, dict(rows=20, cols=3000), dict(rows=32768, cols=16384)),
        ("softmax_bf16", BF16, dict(rows=33, cols=129), dict(rows=1 << 20, cols=1024)),
    ]:
        add(KernelCase(name, "cupy", "softmax", kind, "memory",
                       _sizes(dict(kind=kind, **small), dict(kind=kind, **bench)),
                       _build_softmax(), rowwise_cost(5, 0)))
    add(KernelCase("softmax_f32_numba", "numba", "softmax_numba", F32, "memory",
                   _sizes(dict(kind=F32, rows=37, cols=1000), dict(kind=F32, rows=16384, cols=16384)),
                   _build_softmax(numba=True), rowwise_cost(5, 0)))
    for name, kind, small, bench in [
        ("layernorm_f32", F32, dict(rows=45, cols=1000), dict(rows=65536, cols=4096)),
        ("layernorm_f16", F16, dict(rows=17, cols=4100), dict(rows=131072, cols=4096)),
        ("layernorm_bf16", BF16, dict(rows=9, cols=33), dict(rows=131072, cols=4096)),
    ]:
        add(KernelCase(name, "cupy", "layernorm", kind, "memory",
                       _sizes(dict(kind=kind, **small), dict(kind=kind, **bench)),
                       _build_layernorm(rms=False), rowwise_cost(8, 2)))
    for name, kind, small, bench in [
        ("rmsnorm_f32", F32, dict(rows=30, cols=777), dict(rows=65536, cols=4096)),
        ("rmsnorm_bf16", BF16, dict(rows=12, cols=2048), dict(rows=131072, cols=4096)),
    ]:
        add(KernelCase(name, "cupy", "rmsnorm", kind, "memory",
                       _sizes(dict(kind=kind, **small), dict(kind=kind, **bench)),
                       _build_layernorm(rms=True), rowwise_cost(4, 1)))

    # elementwise
    for op, kind in [("gelu", F32), ("gelu", F16), ("gelu", BF16), ("silu", F32), ("silu", F16)]:
        add(KernelCase(f"{op}_{dtypes.SUFFIX[kind]}", "cupy", op, kind, "memory",
                       _sizes(dict(kind=kind, n=1_000_003), dict(kind=kind, n=_MEM_N[kind])),
                       _build_unary(op), elementwise_cost(10, 2)))
    add(KernelCase("gelu_f32_numba", "numba", "gelu_numba", F32, "memory",
                   _sizes(dict(kind=F32, n=1_000_003), dict(kind=F32, n=_MEM_N[F32])),
                   _build_unary("gelu_numba"), elementwise_cost(10, 2)))
    for kind, cols in [(F32, 1001), (F16, 1024), (BF16, 4100)]:
        add(KernelCase(f"residual_add_bias_{dtypes.SUFFIX[kind]}", "cupy", "residual_add", kind, "memory",
                       _sizes(dict(kind=kind, rows=37, cols=cols),
                              dict(kind=kind, rows=(_MEM_N[kind] // 4096), cols=4096)),
                       _build_residual_add, lambda p: (2.0 * p["rows"] * p["cols"],
                                                       float((3 * p["rows"] + 1) * p["cols"] * _item(p["kind"])))))
    add(KernelCase("gelu_backward_f32", "cupy", "gelu_backward", F32, "memory",
                   _sizes(dict(kind=F32, n=100_001), dict(kind=F32, n=_MEM_N[F32])),
                   _build_gelu_backward, elementwise_cost(20, 3)))
    add(KernelCase("mse_grad_f32", "cupy", "mse_grad", F32, "memory",
                   _sizes(dict(kind=F32, n=100_003), dict(kind=F32, n=_MEM_N[F32])),
                   _build_mse_grad, elementwise_cost(2, 3)))

    # conv, reduce, transpose, optimizers
    add(KernelCase("conv2d_f32", "cupy", "conv2d", F32, "simt",
                   _sizes(dict(N=2, C=5, H=11, W=13, K=70, R=3, S=3, stride=1, pad=1, dil=1, bias=True),
                          dict(N=32, C=256, H=56, W=56, K=256, R=3, S=3, stride=1, pad=1, dil=1, bias=True)),
                   _build_conv, conv_cost))
    add(KernelCase("conv2d_f32_s2d2", "cupy", "conv2d", F32, "simt",
                   _sizes(dict(N=3, C=4, H=17, W=15, K=9, R=5, S=3, stride=2, pad=2, dil=2, bias=False),
                          dict(N=32, C=128, H=112, W=112, K=128, R=3, S=3, stride=2, pad=2, dil=2, bias=False)),
                   _build_conv, conv_cost))
    for op in ("sum", "max"):
        add(KernelCase(f"reduce_{op}_f32", "cupy", f"reduce_{op}", F32, "memory",
                       _sizes(dict(kind=F32, n=1_000_003), dict(kind=F32, n=_MEM_N[F32])),
                       _build_reduce(op), elementwise_cost(1, 1)))
    for kind in (F32, F16):
        add(KernelCase(f"transpose_{dtypes.SUFFIX[kind]}", "cupy", "transpose", kind, "memory",
                       _sizes(dict(kind=kind, R=300, C=77), dict(kind=kind, R=16384, C=16384 * (4 // _item(kind)))),
                       _build_transpose, transpose_cost))
    add(KernelCase("sgd_f32", "cupy", "sgd_step", F32, "memory",
                   _sizes(dict(kind=F32, n=10_001), dict(kind=F32, n=1 << 28)),
                   _build_optim(adam=False), elementwise_cost(3, 3)))
    add(KernelCase("adam_f32", "cupy", "adam_step", F32, "memory",
                   _sizes(dict(kind=F32, n=10_001), dict(kind=F32, n=1 << 27)),
                   _build_optim(adam=True), elementwise_cost(12, 7)))
    return cases


#: Every case, in a stable order.
CASES: list[KernelCase] = _cases()
_BY_NAME = {c.name: c for c in CASES}


def get_case(name: str) -> KernelCase:
    """The case called ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no kernel case {name!r}; known: {', '.join(sorted(_BY_NAME))}") from None


def case_names(frontend: str | None = None) -> list[str]:
    """Names of all cases (of one ``frontend``)."""
    return [c.name for c in CASES if frontend is None or c.frontend == frontend]
