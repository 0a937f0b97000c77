"""Kernels that cover the cases the rewriter must get right, CuPy and Numba.

The GPU tests (``tests/gpu``) check each against its atomized form; the ``--atoms``
section of the bench reports the register and shared-memory growth of the CuPy ones. Each
case makes fresh random inputs and poisoned outputs and launches a kernel object given to
it, so the same code runs the original kernel and its atomized form with the same call
syntax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

POISON = 0xA5  # bytes written into every output before a launch; never a plausible result


@dataclasses.dataclass
class Case:
    """One kernel and how to run it.

    Attributes
    ----------
    name : str
    frontend : str
        ``"cupy"`` or ``"numba"``.
    kernel : callable
        Builds (or returns the cached) original kernel object.
    make : callable
        ``make(rng)``: the buffers, inputs and outputs, by name.
    outputs : tuple of str
        The names of the output buffers.
    launch : callable
        ``launch(kernel_like, buffers, stream)``.
    total_blocks : callable
        ``total_blocks(buffers)``: the launch's grid size in blocks.
    """

    name: str
    frontend: str  # 'cupy' | 'numba'
    kernel: Callable[[], Any]  # builds (or returns cached) the original kernel object
    make: Callable[[np.random.Generator], dict]  # returns buffers: inputs and outputs
    outputs: tuple[str, ...]
    launch: Callable[[Any, dict, Any], None]  # launch(kernel_like, bufs, stream)
    total_blocks: Callable[[dict], int]


def poison(bufs: dict, names: tuple[str, ...]) -> None:
    """Fill the buffers ``names`` of ``bufs`` with `POISON` bytes."""
    import cupy

    for n in names:
        arr = bufs[n]
        cupy.cuda.runtime.memset(arr.data.ptr, POISON, arr.nbytes)


def _cp():
    import cupy

    return cupy


def _rand(rng: np.random.Generator, shape: tuple, dtype: Any = np.float32) -> Any:
    cupy = _cp()
    if np.dtype(dtype).kind == "f":
        host = rng.standard_normal(shape).astype(dtype)
    else:
        host = rng.integers(-1000, 1000, size=shape, dtype=dtype)
    return cupy.asarray(host)


def _empty(shape: tuple, dtype: Any = np.float32) -> Any:
    return _cp().empty(shape, dtype=dtype)


_cache: dict[str, Any] = {}


def _raw(name: str, code: str, kname: str, **kw: Any) -> Callable[[], Any]:
    def build() -> Any:
        if name not in _cache:
            _cache[name] = _cp().RawKernel(code, kname, **kw)
        return _cache[name]

    return build


def _module_fn(name: str, code: str, fn: str, **kw: Any) -> Callable[[], Any]:
    def build() -> Any:
        key = f"{name}:module"
        if key not in _cache:
            _cache[key] = _cp().RawModule(code=code, **kw)
        from lithos_atom import atomize_module_function

        mod = _cache[key]
        return ModuleFunction(mod, fn, atomize_module_function)

    return build


class ModuleFunction:
    """A RawModule function plus how to atomize it (RawModule functions carry no source).

    Attributes
    ----------
    module : cupy.RawModule
    name : str
        The function's name in the module.
    atomize_fn : callable
        ``atomize_fn(module, name)``: the atomized function.
    fn : cupy.RawKernel
        The function, as written.
    """

    def __init__(self, module: Any, name: str, atomize_fn: Any):
        self.module, self.name, self.atomize_fn = module, name, atomize_fn
        self.fn = module.get_function(name)

    def __call__(self, *a: Any, **k: Any) -> None:
        self.fn(*a, **k)


# ---- CuPy sources -------------------------------------------------------------------

SAXPY = r'''
extern "C" __global__ void saxpy(const float* x, const float* y, float* out, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a * x[i] + y[i] + (float)blockIdx.x * 1e-3f;
}'''

GRID2D = r'''
extern "C" __global__ void add2d(const float* a, float* out, int h, int w) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x < w && y < h) out[y * w + x] = a[y * w + x] * 2.0f + blockIdx.y + 0.5f * blockIdx.x + gridDim.x;
}'''

GRID3D = r'''
extern "C" __global__ void tag3d(const int* in, int* out, int nx, int ny, int nz) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int z = blockIdx.z * blockDim.z + threadIdx.z;
    if (x < nx && y < ny && z < nz) {
        long long i = ((long long)z * ny + y) * nx + x;
        out[i] = in[i] + blockIdx.x + 100 * blockIdx.y + 10000 * blockIdx.z
                 + 7 * gridDim.x + 11 * gridDim.y + 13 * gridDim.z;
    }
}'''

GRID_STRIDE = r'''
extern "C" __global__ void stride_scale(const double* x, double* out, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x)
        out[i] = x[i] * 3.0 + 1.0;
}'''

DEVICE_FN = r'''
__device__ __noinline__ int block_tag() { return blockIdx.x * 1000 + blockIdx.y * 10 + gridDim.x; }
__device__ __noinline__ float scaled(float v) { return v * (float)(gridDim.y + blockIdx.y); }
extern "C" __global__ void with_funcs(const float* x, float* out, int* tags, int w, int h) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int r = blockIdx.y;
    if (c < w && r < h) {
        out[r * w + c] = scaled(x[r * w + c]);
        if (threadIdx.x == 0) tags[blockIdx.y * gridDim.x + blockIdx.x] = block_tag();
    }
}'''

TEMPLATED = r'''
template <typename T, int SCALE>
__global__ void scale_t(const T* x, T* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] * (T)SCALE + (T)blockIdx.x;
}'''

DYN_SHARED = r'''
extern "C" __global__ void block_sum(const float* x, float* out, int n) {
    extern __shared__ float buf[];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}'''

MULTI = r'''
extern "C" __global__ void first(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] + 1.0f;
}
extern "C" __global__ void second(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] * x[i] - (float)blockIdx.x;
}'''

BLOCK3D = r'''
extern "C" __global__ void block3d(const float* x, float* out, int n) {
    int t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    int per = blockDim.x * blockDim.y * blockDim.z;
    long long i = (long long)(blockIdx.y * gridDim.x + blockIdx.x) * per + t;
    if (i < n) out[i] = x[i] - (float)(threadIdx.z + blockIdx.y);
}'''

BIG_GRID = r'''
extern "C" __global__ void big_grid(unsigned int* out) {
    // one thread per block: many blocks, int64 linear index
    unsigned long long b = (unsigned long long)blockIdx.z * gridDim.y * gridDim.x
                         + (unsigned long long)blockIdx.y * gridDim.x + blockIdx.x;
    out[b] = (unsigned int)(b * 2654435761ull);
}'''


def _n_blocks(n: int, t: int) -> int:
    return (n + t - 1) // t


def cupy_cases() -> list[Case]:
    """The CuPy cases."""
    cases: list[Case] = []
    n = 1_000_003
    cases.append(Case(
        "cupy_saxpy_1d", "cupy", _raw("saxpy", SAXPY, "saxpy"),
        lambda rng: {"x": _rand(rng, (n,)), "y": _rand(rng, (n,)), "out": _empty((n,))}, ("out",),
        lambda k, b, s: k((_n_blocks(n, 256),), (256,), (b["x"], b["y"], b["out"], np.float32(1.5), np.int32(n)), stream=s),
        lambda b: _n_blocks(n, 256)))
    h, w = 301, 517
    cases.append(Case(
        "cupy_grid2d", "cupy", _raw("add2d", GRID2D, "add2d"),
        lambda rng: {"a": _rand(rng, (h, w)), "out": _empty((h, w))}, ("out",),
        lambda k, b, s: k((_n_blocks(w, 32), _n_blocks(h, 8)), (32, 8), (b["a"], b["out"], np.int32(h), np.int32(w)), stream=s),
        lambda b: _n_blocks(w, 32) * _n_blocks(h, 8)))
    nx, ny, nz = 67, 45, 23
    cases.append(Case(
        "cupy_grid3d", "cupy", _raw("tag3d", GRID3D, "tag3d"),
        lambda rng: {"i": _rand(rng, (nz, ny, nx), np.int32), "out": _empty((nz, ny, nx), np.int32)}, ("out",),
        lambda k, b, s: k((_n_blocks(nx, 8), _n_blocks(ny, 4), _n_blocks(nz, 2)), (8, 4, 2),
                          (b["i"], b["out"], np.int32(nx), np.int32(ny), np.int32(nz)), stream=s),
        lambda b: _n_blocks(nx, 8) * _n_blocks(ny, 4) * _n_blocks(nz, 2)))
    m = 3_000_017
    cases.append(Case(
        "cupy_grid_stride", "cupy", _raw("stride", GRID_STRIDE, "stride_scale"),
        lambda rng: {"x": _rand(rng, (m,), np.float64), "out": _empty((m,), np.float64)}, ("out",),
        lambda k, b, s: k((264,), (128,), (b["x"], b["out"], np.int64(m)), stream=s),
        lambda b: 264))
    fw, fh = 1000, 37
    cases.append(Case(
        "cupy_noinline_device_functions", "cupy", _raw("funcs", DEVICE_FN, "with_funcs"),
        lambda rng: {"x": _rand(rng, (fh, fw)), "out": _empty((fh, fw)), "tags": _empty((fh * _n_blocks(fw, 128),), np.int32)},
        ("out", "tags"),
        lambda k, b, s: k((_n_blocks(fw, 128), fh), (128,), (b["x"], b["out"], b["tags"], np.int32(fw), np.int32(fh)), stream=s),
        lambda b: _n_blocks(fw, 128) * fh))
    tn = 200_001
    for expr, dtype in (("scale_t<float, 3>", np.float32), ("scale_t<int, 5>", np.int32)):
        cases.append(Case(
            f"cupy_template_{np.dtype(dtype).name}", "cupy",
            _module_fn("templated", TEMPLATED, expr, name_expressions=["scale_t<float, 3>", "scale_t<int, 5>"]),
            (lambda dt: lambda rng: {"x": _rand(rng, (tn,), dt), "out": _empty((tn,), dt)})(dtype), ("out",),
            lambda k, b, s: k((_n_blocks(tn, 256),), (256,), (b["x"], b["out"], np.int32(tn)), stream=s),
            lambda b: _n_blocks(tn, 256)))
    sn = 777_777
    cases.append(Case(
        "cupy_dynamic_shared", "cupy", _raw("bsum", DYN_SHARED, "block_sum"),
        lambda rng: {"x": _rand(rng, (sn,)), "out": _empty((_n_blocks(sn, 256),))}, ("out",),
        lambda k, b, s: k((_n_blocks(sn, 256),), (256,), (b["x"], b["out"], np.int32(sn)), shared_mem=256 * 4, stream=s),
        lambda b: _n_blocks(sn, 256)))
    mn = 123_457
    for fn in ("first", "second"):
        cases.append(Case(
            f"cupy_module_{fn}", "cupy", _module_fn("multi", MULTI, fn),
            lambda rng: {"x": _rand(rng, (mn,)), "out": _empty((mn,))}, ("out",),
            lambda k, b, s: k((_n_blocks(mn, 128),), (128,), (b["x"], b["out"], np.int32(mn)), stream=s),
            lambda b: _n_blocks(mn, 128)))
    bn = 8 * 4 * 2 * 999
    cases.append(Case(
        "cupy_block3d", "cupy", _raw("block3d", BLOCK3D, "block3d"),
        lambda rng: {"x": _rand(rng, (bn,)), "out": _empty((bn,))}, ("out",),
        lambda k, b, s: k((333, 3), (8, 4, 2), (b["x"], b["out"], np.int32(bn)), stream=s),
        lambda b: 999))
    gx, gy, gz = 4099, 257, 3
    cases.append(Case(
        "cupy_big_grid_int64", "cupy", _raw("big", BIG_GRID, "big_grid"),
        lambda rng: {"out": _empty((gx * gy * gz,), np.uint32)}, ("out",),
        lambda k, b, s: k((gx, gy, gz), (1,), (b["out"],), stream=s),
        lambda b: gx * gy * gz))
    # The project's split-K GEMM (kernels.gemm.gemm with split_k): a K-slice SGEMM whose
    # operands are views into larger arrays, and the ordered sum of the slices.
    from kernels import _compile, gemm as gemm_mod

    sm, sn_, sk = 200, 300, 96   # op(a) = a^T (stored K x M), op(b) = b (K x N); the slice is K 40..96
    cases.append(Case(
        "kernels_sgemm_k_slice_views", "cupy", lambda: _compile.raw_kernel(gemm_mod.sgemm_source("64x64", True, False)),
        lambda rng: {"a": _rand(rng, (sk, sm)), "b": _rand(rng, (sk, sn_)), "out": _empty((sm, sn_))}, ("out",),
        lambda k, b, s: k((_n_blocks(sn_, 64), _n_blocks(sm, 64)), (256,),
                          (b["a"][40:], b["b"][40:], b["out"], np.int32(sm), np.int32(sn_), np.int32(sk - 40),
                           np.int64(sm), np.int64(sn_), np.int64(sn_), np.float32(1.0), np.int32(1)), stream=s),
        lambda b: _n_blocks(sn_, 64) * _n_blocks(sm, 64)))
    kn = 500_009
    cases.append(Case(
        "kernels_splitk_sum", "cupy", lambda: _compile.raw_kernel(gemm_mod.SPLITK_SUM_SOURCE),
        lambda rng: {"ws": _rand(rng, (3, kn)), "out": _empty((kn,))}, ("out",),
        lambda k, b, s: k((_n_blocks(kn, 256),), (256,), (b["ws"], b["out"], np.int64(kn), np.int32(3), np.float32(0.5)),
                          stream=s),
        lambda b: _n_blocks(kn, 256)))
    return cases


# ---- Numba kernels ------------------------------------------------------------------

def numba_cases() -> list[Case]:
    """The Numba cases."""
    from lithos_atom._compat import import_numba_cuda

    cuda = import_numba_cuda()

    def jit(name: str, fn_factory: Callable[[], Any]) -> Callable[[], Any]:
        def build() -> Any:
            if name not in _cache:
                _cache[name] = fn_factory()
            return _cache[name]

        return build

    def k1d() -> Any:
        @cuda.jit
        def axpb(x, out, a):
            i = cuda.grid(1)
            if i < x.shape[0]:
                out[i] = a * x[i] + cuda.blockIdx.x
        return axpb

    def k2d() -> Any:
        @cuda.jit
        def transpose_tag(a, out):
            x, y = cuda.grid(2)
            if y < a.shape[0] and x < a.shape[1]:
                out[x, y] = a[y, x] + cuda.blockIdx.y * 0.25 + cuda.gridDim.x
        return transpose_tag

    def k3d() -> Any:
        @cuda.jit
        def tag3(a, out):
            x, y, z = cuda.grid(3)
            if z < a.shape[0] and y < a.shape[1] and x < a.shape[2]:
                out[z, y, x] = a[z, y, x] + cuda.blockIdx.x + 100 * cuda.blockIdx.y + 10000 * cuda.blockIdx.z
        return tag3

    def kstride() -> Any:
        @cuda.jit
        def gelu_stride(x, out):
            start = cuda.grid(1)
            step = cuda.gridsize(1)
            for i in range(start, x.shape[0], step):
                v = x[i]
                out[i] = 0.5 * v * (1.0 + np.tanh(0.7978845608 * (v + 0.044715 * v * v * v)))
        return gelu_stride

    def kshared() -> Any:
        @cuda.jit
        def block_max(x, out):
            buf = cuda.shared.array(128, dtype=np.float32)
            i = cuda.grid(1)
            t = cuda.threadIdx.x
            buf[t] = x[i] if i < x.shape[0] else -np.inf
            cuda.syncthreads()
            s = 64
            while s > 0:
                if t < s:
                    buf[t] = max(buf[t], buf[t + s])
                cuda.syncthreads()
                s //= 2
            if t == 0:
                out[cuda.blockIdx.x] = buf[0]
        return block_max

    def kdevfn() -> Any:
        @cuda.jit(device=True)
        def tag(v):
            return v * 2 + cuda.blockIdx.x

        @cuda.jit
        def use_device_fn(x, out):
            i = cuda.grid(1)
            if i < x.shape[0]:
                out[i] = tag(x[i])
        return use_device_fn

    cases: list[Case] = []
    n = 1_000_001
    cases.append(Case(
        "numba_1d", "numba", jit("k1d", k1d),
        lambda rng: {"x": _rand(rng, (n,)), "out": _empty((n,))}, ("out",),
        lambda k, b, s: k[_n_blocks(n, 256), 256, s](b["x"], b["out"], np.float32(0.75)),
        lambda b: _n_blocks(n, 256)))
    h, w = 333, 257
    cases.append(Case(
        "numba_2d", "numba", jit("k2d", k2d),
        lambda rng: {"a": _rand(rng, (h, w), np.float64), "out": _empty((w, h), np.float64)}, ("out",),
        lambda k, b, s: k[(_n_blocks(w, 16), _n_blocks(h, 16)), (16, 16), s](b["a"], b["out"]),
        lambda b: _n_blocks(w, 16) * _n_blocks(h, 16)))
    z, y, x = 19, 33, 70
    cases.append(Case(
        "numba_3d", "numba", jit("k3d", k3d),
        lambda rng: {"a": _rand(rng, (z, y, x)), "out": _empty((z, y, x))}, ("out",),
        lambda k, b, s: k[(_n_blocks(x, 8), _n_blocks(y, 4), _n_blocks(z, 4)), (8, 4, 4), s](b["a"], b["out"]),
        lambda b: _n_blocks(x, 8) * _n_blocks(y, 4) * _n_blocks(z, 4)))
    m = 2_000_003
    cases.append(Case(
        "numba_grid_stride", "numba", jit("kstride", kstride),
        lambda rng: {"x": _rand(rng, (m,)), "out": _empty((m,))}, ("out",),
        lambda k, b, s: k[396, 256, s](b["x"], b["out"]),
        lambda b: 396))
    sn = 500_009
    cases.append(Case(
        "numba_shared_array", "numba", jit("kshared", kshared),
        lambda rng: {"x": _rand(rng, (sn,)), "out": _empty((_n_blocks(sn, 128),))}, ("out",),
        lambda k, b, s: k[_n_blocks(sn, 128), 128, s](b["x"], b["out"]),
        lambda b: _n_blocks(sn, 128)))
    dn = 300_007
    cases.append(Case(
        "numba_device_function", "numba", jit("kdevfn", kdevfn),
        lambda rng: {"x": _rand(rng, (dn,)), "out": _empty((dn,))}, ("out",),
        lambda k, b, s: k[_n_blocks(dn, 64), 64, s](b["x"], b["out"]),
        lambda b: _n_blocks(dn, 64)))
    return cases


def all_cases() -> list[Case]:
    """Every case, CuPy then Numba."""
    return cupy_cases() + numba_cases()
