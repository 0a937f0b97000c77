"""PTX for the rewriter's CPU tests: NVRTC and Numba output for sm_90, and ptxas to check it.

Everything here runs without a GPU. NVRTC (``cuda.bindings.nvrtc``) and Numba's NVVM from
the CUDA 13.5 wheels emit ``.version 9.5``, which the machine's CUDA 13.0 ptxas rejects, so
`find_ptxas` prefers the ptxas of the ``nvidia-cuda-nvcc`` wheel.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping

import pytest

ARCH = "sm_90"

# ---- ptxas -----------------------------------------------------------------------------


def _accepts(ptxas: str, version: tuple[int, int]) -> bool:
    """Whether ``ptxas`` assembles a minimal module of PTX ``version``."""
    ptx = f".version {version[0]}.{version[1]}\n.target {ARCH}\n.address_size 64\n"
    return _run_ptxas(ptxas, ptx).returncode == 0


def _run_ptxas(ptxas: str, ptx: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        return subprocess.run([ptxas, f"-arch={ARCH}", "-o", os.path.join(d, "out.cubin"), src],
                              capture_output=True, text=True, timeout=120)


@functools.lru_cache(maxsize=None)
def find_ptxas(version: tuple[int, int] = (9, 5)) -> str | None:
    """A ptxas that assembles PTX ``version``: the ``nvidia-cuda-nvcc`` wheel's, else PATH's.

    Parameters
    ----------
    version : tuple of int
        The PTX ISA version it must accept.

    Returns
    -------
    str or None
        Path of the executable, or None when no suitable ptxas is installed.
    """
    candidates = []
    try:
        dist = importlib.metadata.distribution("nvidia-cuda-nvcc")
        for f in dist.files or ():
            if f.name == "ptxas" and f.parent.name == "bin":
                candidates.append(str(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    if (on_path := shutil.which("ptxas")) is not None:
        candidates.append(on_path)
    for c in candidates:
        if os.access(c, os.X_OK) and _accepts(c, version):
            return c
    return None


def assemble(ptx: str) -> str:
    """Assemble ``ptx`` for sm_90 with `find_ptxas`; fail the test with ptxas's log if it cannot.

    Returns
    -------
    str
        ptxas's output (empty unless it warned).
    """
    m = re.search(r"^\s*\.version\s+(\d+)\.(\d+)", ptx, re.M)
    version = (int(m[1]), int(m[2])) if m else (9, 5)
    ptxas = find_ptxas(version)
    if ptxas is None:
        pytest.skip(f"no ptxas for PTX {version[0]}.{version[1]} (install nvidia-cuda-nvcc)")
    done = _run_ptxas(ptxas, ptx)
    if done.returncode != 0:
        pytest.fail(f"ptxas rejected the PTX:\n{done.stderr}", pytrace=False)
    return done.stderr


# ---- NVRTC -----------------------------------------------------------------------------


def _include_dirs() -> list[str]:
    from cuda import pathfinder

    return [d for lib in ("cudart", "cccl") if (d := pathfinder.find_nvidia_header_directory(lib))]


def nvrtc_ptx(source: str, name_expressions: tuple[str, ...] = (), options: tuple[str, ...] = ()
              ) -> tuple[str, dict[str, str]]:
    """Compile CUDA C++ to PTX for compute_90 with NVRTC.

    Returns
    -------
    tuple of (str, dict)
        The PTX and each name expression's lowered (mangled) name.
    """
    from cuda.bindings import nvrtc

    def check(result: tuple) -> tuple:
        err, *rest = result
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
        return tuple(rest)

    # -pch: NVRTC keeps the parsed headers in memory (cooperative_groups.h, about 1 s, is
    # parsed once for the cases that include it); the PTX is the same
    opts = [b"-arch=compute_90", b"-std=c++17", b"-pch", *(f"-I{d}".encode() for d in _include_dirs()),
            *(o.encode() for o in options)]
    (prog,) = check(nvrtc.nvrtcCreateProgram(source.encode(), b"case.cu", 0, [], []))
    try:
        for expr in name_expressions:
            check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()))
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            (size,) = check(nvrtc.nvrtcGetProgramLogSize(prog))
            log = b" " * size
            check(nvrtc.nvrtcGetProgramLog(prog, log))
            raise RuntimeError(f"NVRTC failed:\n{log.decode(errors='replace')}")
        (size,) = check(nvrtc.nvrtcGetPTXSize(prog))
        ptx = b" " * size
        check(nvrtc.nvrtcGetPTX(prog, ptx))
        names = {e: check(nvrtc.nvrtcGetLoweredName(prog, e.encode()))[0].decode() for e in name_expressions}
        return ptx.decode().rstrip("\0"), names
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


GRID1D = r'''
extern "C" __global__ void saxpy(const float* x, const float* y, float* out, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a * x[i] + y[i];
}'''

GRID2D = r'''
extern "C" __global__ void add2d(const float* a, float* out, int h, int w) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x < w && y < h) out[y * w + x] = a[y * w + x] + blockIdx.y + gridDim.x;
}'''

GRID3D = r'''
extern "C" __global__ void tag3d(int* out) {
    long long b = ((long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    out[b * blockDim.x + threadIdx.x] = blockIdx.x + 100 * blockIdx.y + 10000 * blockIdx.z
        + 7 * gridDim.x + 11 * gridDim.y + 13 * gridDim.z;
}'''

GRID_STRIDE = r'''
extern "C" __global__ void stride_scale(const double* x, double* out, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = 3.0 * x[i];
}'''

DEVICE_FUNCS = r'''
__device__ __noinline__ unsigned block_tag(int k) {
    return blockIdx.x + 7u * blockIdx.y + 13u * blockIdx.z + gridDim.x * k + gridDim.z;
}
__device__ __noinline__ unsigned tag_twice(int k) { return block_tag(k) + block_tag(k + 1); }
__device__ __noinline__ void zero(float* p) { p[threadIdx.x] = 0.0f; }
extern "C" __global__ void uses_funcs(unsigned* out) {
    out[blockIdx.x * blockDim.x + threadIdx.x] = tag_twice(threadIdx.x);
}
extern "C" __global__ void no_block_index(float* p) { zero(p); }
'''

TEMPLATED = r'''
template <typename T> __global__ void scale(T* x, T a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= a;
}'''

DYNAMIC_SHARED = r'''
extern "C" __global__ void reverse_block(const float* in, float* out) {
    extern __shared__ float buf[];
    unsigned base = blockIdx.x * blockDim.x;
    buf[threadIdx.x] = in[base + threadIdx.x];
    __syncthreads();
    out[base + threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}'''

MULTI = r'''
struct Pair { int a; float b[3]; };
extern "C" __global__ void __launch_bounds__(128, 2) first(int* x) { x[blockIdx.x] = gridDim.x; }
extern "C" __global__ void second(int* x, int n) { if (blockIdx.y < n) x[blockIdx.y] += 1; }
extern "C" __global__ void with_struct(Pair p, float* out) { out[blockIdx.x] = p.b[2] + p.a; }
extern "C" __global__ void no_params() { }
'''

GRID_SYNC = r'''
#include <cooperative_groups.h>
namespace cg = cooperative_groups;
extern "C" __global__ void grid_sync(float* x, int n) {
    cg::grid_group g = cg::this_grid();
    int i = g.thread_rank();
    if (i < n) x[i] += 1.0f;
    g.sync();
    if (i < n) x[i] *= 2.0f;
}
extern "C" __global__ void plain(float* x) { x[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f; }
'''

CLUSTER = r'''
#include <cooperative_groups.h>
namespace cg = cooperative_groups;
extern "C" __global__ void __cluster_dims__(2, 1, 1) cluster_swap(float* x) {
    cg::cluster_group c = cg::this_cluster();
    __shared__ float s[32];
    s[threadIdx.x] = threadIdx.x;
    c.sync();
    float* other = c.map_shared_rank(s, (c.block_rank() + 1) % 2);
    x[blockIdx.x * 32 + threadIdx.x] = other[threadIdx.x];
}
extern "C" __global__ void __cluster_dims__(2, 1, 1) cluster_only_dims(float* x) {
    x[blockIdx.x * 32 + threadIdx.x] = 1.0f;
}
extern "C" __global__ void not_clustered(float* x) { x[blockIdx.x] = 2.0f; }
'''

# A device function reading blockIdx shared by a grid-synchronizing kernel and a plain one.
SHARED_FUNC = r'''
#include <cooperative_groups.h>
namespace cg = cooperative_groups;
__device__ __noinline__ unsigned where_am_i() { return blockIdx.x + gridDim.x; }
extern "C" __global__ void synced(unsigned* x) { cg::this_grid().sync(); x[blockIdx.x] = where_am_i(); }
extern "C" __global__ void shares_with_synced(unsigned* x) { x[blockIdx.x] = where_am_i(); }
extern "C" __global__ void independent(unsigned* x) { x[blockIdx.x] = 1; }
'''


# ---- Numba -----------------------------------------------------------------------------


def _numba_kernels() -> dict[str, tuple]:
    """Numba kernels and signatures (no calls to other @cuda.jit functions: those need a GPU)."""
    from lithos_atom._compat import import_numba_cuda

    cuda = import_numba_cuda()

    def axpy(x, y, out, a):
        i = cuda.grid(1)
        if i < x.shape[0]:
            out[i] = a * x[i] + y[i] + cuda.gridsize(1)

    def tag3(a):
        i, j, k = cuda.grid(3)
        if i < a.shape[0] and j < a.shape[1] and k < a.shape[2]:
            a[i, j, k] = cuda.blockIdx.x + 10 * cuda.blockIdx.y + 100 * cuda.blockIdx.z + cuda.gridDim.z

    return {
        "numba_1d": (axpy, "void(float32[:], float32[:], float32[:], float32)"),
        "numba_3d": (tag3, "void(int32[:, :, :])"),
    }


def numba_ptx(fn, sig: str) -> str:
    """PTX of a Numba kernel for sm_90 (no GPU needed)."""
    from lithos_atom._compat import import_numba_cuda

    ptx, _ = import_numba_cuda().compile_ptx(fn, sig, cc=(9, 0))
    return ptx


# ---- the corpus ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PtxCase:
    """One compiled module and what the rewriter must do with it.

    Attributes
    ----------
    name : str
    ptx : str
    origin : str
        ``"nvrtc"`` or ``"numba"``.
    expect : mapping of str to str or None
        Entry name to None (must be atomized) or a fragment of the reason it is refused.
    names : mapping of str to str
        Name expressions to lowered names (templated kernels).
    """

    name: str
    ptx: str
    origin: str
    expect: Mapping[str, str | None]
    names: Mapping[str, str] = dataclasses.field(default_factory=dict)


_NVRTC_CASES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], dict[str, str | None]]] = {
    # name: (source, name expressions, options, expected entries (lowered names filled in below))
    "grid1d": (GRID1D, (), (), {"saxpy": None}),
    "grid2d": (GRID2D, (), (), {"add2d": None}),
    "grid3d": (GRID3D, (), (), {"tag3d": None}),
    "grid_stride": (GRID_STRIDE, (), (), {"stride_scale": None}),
    "device_funcs": (DEVICE_FUNCS, (), (), {"uses_funcs": None, "no_block_index": None}),
    "device_funcs_debug": (DEVICE_FUNCS, (), ("-G",), {"uses_funcs": None, "no_block_index": None}),
    "templated": (TEMPLATED, ("scale<float>", "scale<double>"), (), {"scale<float>": None, "scale<double>": None}),
    "dynamic_shared": (DYNAMIC_SHARED, (), (), {"reverse_block": None}),
    "multi": (MULTI, (), (), {"first": None, "second": None, "with_struct": None, "no_params": None}),
    "grid_sync": (GRID_SYNC, (), (), {"grid_sync": "%envreg", "plain": None}),
    "cluster": (CLUSTER, (), (), {"cluster_swap": "cluster", "cluster_only_dims": "cluster", "not_clustered": None}),
    "shared_func": (SHARED_FUNC, (), (), {"synced": "%envreg", "shares_with_synced": "shares device function",
                                          "independent": None}),
}
CASE_NAMES = (*_NVRTC_CASES, "numba_1d", "numba_3d")


@functools.lru_cache(maxsize=None)
def compile_case(name: str) -> PtxCase:
    """Compile one case of the corpus (once per test session)."""
    if name in _NVRTC_CASES:
        source, exprs, options, expect = _NVRTC_CASES[name]
        ptx, lowered = nvrtc_ptx(source, exprs, options)
        return PtxCase(name, ptx, "nvrtc", {lowered.get(e, e): why for e, why in expect.items()}, lowered)
    fn, sig = _numba_kernels()[name]
    ptx = numba_ptx(fn, sig)
    entry = re.search(r"\.entry\s+([\w$]+)", ptx)
    assert entry is not None
    return PtxCase(name, ptx, "numba", {entry[1]: None})


@pytest.fixture(scope="session")
def ptx_corpus() -> dict[str, PtxCase]:
    """Every case of the corpus, compiled once per session."""
    return {n: compile_case(n) for n in CASE_NAMES}
