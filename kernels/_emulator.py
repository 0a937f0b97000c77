"""Run the package's CUDA C++ kernels on the CPU, for tests on machines without a GPU.

`EmulatedRawKernel` and `EmulatedRawModule` stand in for ``cupy.RawKernel`` and
``cupy.RawModule``: the kernel source is compiled as C++ with g++ against a small
prelude that emulates what the kernels use (``threadIdx``/``blockIdx``, ``__shared__``
memory, ``__syncthreads``, ``__syncwarp``, ``__shfl_xor_sync``, fp16/bf16 conversions,
``nvcuda::wmma`` 16x16x16 fragments, ``float4``), and a launch runs every thread of a
block as a fiber (``ucontext``) on the calling thread, switching at barriers (blocks one
after another; a block whose threads all wait at barriers the others never reach aborts
the process with a message rather than hang). `host_array` wraps a NumPy array as a
``cupy.ndarray`` whose data pointer is host memory, so the real op functions (argument
checks, grid sizes, argument packing) run unchanged and their kernels read and write
NumPy memory.

The emulation checks what a GPU would not report clearly: the packed argument list must
match the kernel's parameter list (count, pointer or not, size), so a Python ``int``
passed where CuPy would silently pack a 64-bit value is caught. It does not model the
memory model of a GPU beyond barriers, nor performance.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

_PRELUDE = r"""
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>
#include <ucontext.h>

using std::min;
using std::max;

struct dim3 { unsigned x = 1, y = 1, z = 1; };
static dim3 threadIdx, blockIdx;   // of the running GPU thread (fiber)
static dim3 blockDim, gridDim;
static float emu_shfl[32][32];
static unsigned char* emu_dyn_smem = nullptr;

// The GPU threads of a block run as fibers (ucontext) on the calling thread; a barrier is
// a phase counter, and a fiber waiting on it yields to the scheduler until the last
// participant arrives. A thread that returns leaves the barriers (like arrive_and_drop).
struct EmuBarrier { unsigned participants = 0, arrived = 0; unsigned long phase = 0; };
struct EmuFiber { ucontext_t ctx; std::unique_ptr<char[]> stack; bool done = false; };
static EmuBarrier emu_block_bar, emu_warp_bar[32];
static std::vector<EmuFiber> emu_fibers;
static ucontext_t emu_sched;
static unsigned emu_current = 0;
static unsigned long emu_events = 0;   // arrivals and exits: progress of the block

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

static inline unsigned emu_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
static inline void emu_arrive(EmuBarrier& b) {
    ++emu_events;
    const unsigned long phase = b.phase;
    if (++b.arrived == b.participants) { b.arrived = 0; ++b.phase; return; }
    while (b.phase == phase) swapcontext(&emu_fibers[emu_current].ctx, &emu_sched);
}
static inline void emu_drop(EmuBarrier& b) {
    ++emu_events;
    if (--b.participants == b.arrived && b.arrived > 0) { b.arrived = 0; ++b.phase; }
}
static inline void __syncthreads() { emu_arrive(emu_block_bar); }
static inline void __syncwarp(unsigned = 0xffffffffu) { emu_arrive(emu_warp_bar[emu_tid() / 32]); }
static inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const unsigned t = emu_tid(), w = t / 32, l = t % 32;
    emu_shfl[w][l] = v;
    __syncwarp();
    const float r = emu_shfl[w][l ^ lane_mask];
    __syncwarp();
    return r;
}
static inline float emu_expf(float x) { return expf(x); }
#define __expf emu_expf
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }

struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
static inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

struct __half { uint16_t bits; };
static inline float __half2float(__half h) { _Float16 f; memcpy(&f, &h.bits, 2); return (float)f; }
static inline __half __float2half_rn(float x) { _Float16 f = (_Float16)x; __half h; memcpy(&h.bits, &f, 2); return h; }
struct __nv_bfloat16 { uint16_t bits; };
static inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.bits << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline __nv_bfloat16 __float2bfloat16_rn(float x) {
    uint32_t u; memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fc0};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(uint16_t)(u >> 16)};
}
static inline float emu_to_float(float v) { return v; }
static inline float emu_to_float(__half v) { return __half2float(v); }
static inline float emu_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// nvcuda::wmma, 16x16x16: lane 0 of the warp holds the whole tile (a valid, if
// wasteful, choice of the unspecified fragment layout) and alone loads, multiplies and
// stores it; the other lanes' fragments are never read.
namespace nvcuda { namespace wmma {
struct matrix_a {}; struct matrix_b {}; struct accumulator {}; struct row_major {}; struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment { float v[256]; };
static inline bool emu_lane0() { return emu_tid() % 32 == 0; }
template <class Use, int M, int N, int K, class T, class L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, float x) {
    if (emu_lane0()) for (int i = 0; i < 256; ++i) f.v[i] = x;
}
template <class Use, int M, int N, int K, class T, class L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ld) {
    if (!emu_lane0()) return;
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c)
            f.v[r * 16 + c] = std::is_same<L, col_major>::value ? emu_to_float(p[c * ld + r])
                                                                 : emu_to_float(p[r * ld + c]);
}
template <class TA, class LA, class TB, class LB, class TC>
inline void mma_sync(fragment<accumulator, 16, 16, 16, TC>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, TB, LB>& b, const fragment<accumulator, 16, 16, 16, TC>& c) {
    if (!emu_lane0()) return;
    float t[256];
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
            float s = c.v[i * 16 + j];
            for (int k = 0; k < 16; ++k) s = fmaf(a.v[i * 16 + k], b.v[k * 16 + j], s);
            t[i * 16 + j] = s;
        }
    memcpy(d.v, t, sizeof t);
}
template <class TC>
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, TC>& f, unsigned ld, layout_t layout) {
    if (!emu_lane0()) return;
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) {
            if (layout == mem_row_major) p[r * ld + c] = f.v[r * 16 + c];
            else p[c * ld + r] = f.v[r * 16 + c];
        }
}
}}  // namespace nvcuda::wmma
"""

_LAUNCHER = r"""
constexpr size_t EMU_STACK = 256 * 1024;
static void (*emu_body)(const void*);
static const void* emu_body_arg;

static void emu_fiber_main() {
    emu_body(emu_body_arg);
    emu_drop(emu_warp_bar[emu_current / 32]);
    emu_drop(emu_block_bar);
    emu_fibers[emu_current].done = true;   // returns to emu_sched (uc_link)
}

template <class F>
static void emu_run(dim3 grid, dim3 block, size_t smem, const F& body) {
    gridDim = grid;
    blockDim = block;
    const unsigned nt = block.x * block.y * block.z;
    std::vector<unsigned char> dyn(smem + 256);
    unsigned char* base = dyn.data() + (256 - reinterpret_cast<uintptr_t>(dyn.data()) % 256) % 256;
    emu_dyn_smem = base;
    emu_body = [](const void* f) { (*static_cast<const F*>(f))(); };
    emu_body_arg = &body;
    while (emu_fibers.size() < nt) {
        emu_fibers.emplace_back();
        emu_fibers.back().stack.reset(new char[EMU_STACK]);
    }
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                memset(base, 0xff, smem);   // uninitialized shared memory reads as NaN
                blockIdx = dim3{bx, by, bz};
                emu_block_bar = EmuBarrier{nt};
                for (unsigned w = 0; w < (nt + 31) / 32; ++w) emu_warp_bar[w] = EmuBarrier{std::min(32u, nt - 32 * w)};
                for (unsigned t = 0; t < nt; ++t) {
                    EmuFiber& f = emu_fibers[t];
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.get();
                    f.ctx.uc_stack.ss_size = EMU_STACK;
                    f.ctx.uc_link = &emu_sched;
                    makecontext(&f.ctx, emu_fiber_main, 0);
                    f.done = false;
                }
                for (unsigned left = nt; left > 0;) {
                    const unsigned long events = emu_events;
                    for (unsigned t = 0; t < nt; ++t) {
                        if (emu_fibers[t].done) continue;
                        emu_current = t;
                        threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        swapcontext(&emu_sched, &emu_fibers[t].ctx);
                        left -= emu_fibers[t].done;
                    }
                    if (left > 0 && events == emu_events) {
                        fprintf(stderr, "kernels._emulator: every thread of block (%u, %u, %u) waits at a barrier "
                                        "the others never reach\n", bx, by, bz);
                        abort();
                    }
                }
            }
}

template <class... A, std::size_t... I>
static void emu_call(void (*k)(A...), void** p, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}
template <class... A>
static void emu_launch(void (*k)(A...), unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                       unsigned bz, size_t smem, void** p) {
    emu_run(dim3{gx, gy, gz}, dim3{bx, by, bz}, smem, [&] { emu_call(k, p, std::index_sequence_for<A...>{}); });
}
template <class... A>
static int emu_signature(void (*)(A...), int* sizes, int* pointers) {
    int i = 0;
    ((sizes[i] = (int)sizeof(A), pointers[i] = (int)std::is_pointer<A>::value, ++i), ...);
    return (int)sizeof...(A);
}
"""

_ENTRY = r"""
extern "C" void emu_launch_{i}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                              size_t smem, void** p) {{ emu_launch(&{entry}, gx, gy, gz, bx, by, bz, smem, p); }}
extern "C" int emu_signature_{i}(int* s, int* q) {{ return emu_signature(&{entry}, s, q); }}
"""

_DROP_INCLUDES = re.compile(r"^\s*#include\s*<(cuda_fp16\.h|cuda_bf16\.h|mma\.h)>\s*$", re.M)
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([A-Za-z_][\w\s]*?)\s+(\w+)\s*\[\s*\]\s*;")


def available() -> bool:
    """Whether a C++20 compiler (g++) is on PATH."""
    return shutil.which(os.environ.get("CXX", "g++")) is not None


def translate(code: str) -> str:
    """The kernel source rewritten for the host prelude."""
    code = _DROP_INCLUDES.sub("", code)
    return _EXTERN_SHARED.sub(lambda m: f"{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>(emu_dyn_smem);",
                              code)


_libs: dict[str, Any] = {}
_lock = threading.Lock()
_build_dirs: list[Path] = []
_prelude_lock = threading.Lock()
_prelude_headers: list[Path] = []

#: g++ options of every host build; the precompiled prelude is only used by builds with the same.
_CXXFLAGS = ("-std=c++20", "-O1", "-fno-strict-aliasing", "-w", "-fPIC", "-pthread")


def _build_dir() -> Path:
    """A private temporary directory for the host builds, removed at interpreter exit."""
    with _lock:
        if not _build_dirs:
            _build_dirs.append(Path(tempfile.mkdtemp(prefix="lithos-kernels-emu-")))
            atexit.register(shutil.rmtree, _build_dirs[0], ignore_errors=True)
        return _build_dirs[0]


def _compile(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"host compilation of {what} failed:\n{result.stderr[-6000:]}")


def _prelude_header() -> Path:
    """The prelude as a header in the build directory, precompiled on first use: every
    kernel source includes it, and most of a build's time is the standard headers."""
    with _prelude_lock:
        if not _prelude_headers:
            header = _build_dir() / "prelude.h"
            header.write_text(_PRELUDE)
            _compile([os.environ.get("CXX", "g++"), *_CXXFLAGS, "-x", "c++-header", str(header),
                      "-o", f"{header}.gch"], "the prelude")
            _prelude_headers.append(header)
        return _prelude_headers[0]


def build(code: str, entries: tuple[str, ...]) -> Any:
    """Compile ``code`` with launchers for ``entries``; returns the loaded library (cached)."""
    source = translate(code) + _LAUNCHER + "".join(_ENTRY.format(i=i, entry=e) for i, e in enumerate(entries))
    key = hashlib.sha256(source.encode()).hexdigest()[:24]
    with _lock:
        lib = _libs.get(key)
    if lib is not None:
        return lib
    cpp, so = _build_dir() / f"{key}.cpp", _build_dir() / f"{key}.so"
    cpp.write_text(source)
    _compile([os.environ.get("CXX", "g++"), *_CXXFLAGS, "-shared", "-include", str(_prelude_header()), str(cpp),
              "-o", str(so)], "the kernel source")
    lib = ctypes.CDLL(str(so))
    with _lock:
        _libs[key] = lib
    return lib


def _dim3(v: Any) -> tuple[int, int, int]:
    dims = (int(v),) if isinstance(v, (int, np.integer)) else tuple(int(d) for d in v)
    return dims + (1,) * (3 - len(dims))  # type: ignore[return-value]


_CTYPES = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
           np.dtype(np.uint32): ctypes.c_uint32, np.dtype(np.uint64): ctypes.c_uint64,
           np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}


class EmulatedFunction:
    """One kernel of an emulated module; called like a CuPy raw kernel."""

    def __init__(self, lib: Any, index: int, name: str):
        self.name = name
        self._launch = getattr(lib, f"emu_launch_{index}")
        self._launch.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_size_t, ctypes.c_void_p]
        self._launch.restype = None
        sig = getattr(lib, f"emu_signature_{index}")
        sizes, pointers = (ctypes.c_int * 64)(), (ctypes.c_int * 64)()
        n = sig(sizes, pointers)
        self.signature = [(sizes[i], bool(pointers[i])) for i in range(n)]
        self.launches: list[dict[str, Any]] = []

    def _pack(self, args: tuple) -> list[Any]:
        import cupy

        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.signature)} parameters")
        packed = []
        for i, (a, (size, is_ptr)) in enumerate(zip(args, self.signature)):
            if isinstance(a, cupy.ndarray):
                if not is_ptr:
                    raise TypeError(f"{self.name}: argument {i} is an array, parameter {i} is not a pointer")
                packed.append(ctypes.c_void_p(a.data.ptr))
            elif isinstance(a, np.generic):
                if is_ptr or a.dtype.itemsize != size or a.dtype not in _CTYPES:
                    raise TypeError(f"{self.name}: argument {i} is {a.dtype.name}, parameter {i} has "
                                    f"{'a pointer' if is_ptr else f'{size} bytes'}")
                packed.append(_CTYPES[a.dtype](a.item()))
            else:
                raise TypeError(f"{self.name}: argument {i} is a {type(a).__name__}; pass NumPy scalars "
                                "(CuPy packs Python scalars as 64-bit values)")
        return packed

    def __call__(self, grid: Any, block: Any, args: tuple, *, shared_mem: int = 0, stream: Any = None) -> None:
        g, b = _dim3(grid), _dim3(block)
        if b[0] * b[1] * b[2] > 1024 or min(g) < 1 or g[1] > 65535 or g[2] > 65535:
            raise ValueError(f"{self.name}: invalid launch grid {g} block {b}")
        limit = getattr(self, "max_dynamic_shared_size_bytes", 48 * 1024)
        if shared_mem > limit:
            raise ValueError(f"{self.name}: {shared_mem} bytes of dynamic shared memory above the limit {limit}")
        packed = self._pack(tuple(args))
        params = (ctypes.c_void_p * max(1, len(packed)))(*[ctypes.addressof(p) for p in packed])
        self.launches.append({"grid": g, "block": b, "shared_mem": shared_mem, "stream": stream})
        self._launch(*g, *b, int(shared_mem), ctypes.cast(params, ctypes.c_void_p))


class EmulatedRawKernel(EmulatedFunction):
    """Stands in for ``cupy.RawKernel(code, name, options=...)``."""

    def __init__(self, code: str, name: str, options: tuple[str, ...] = (), **kwargs: Any):
        self.code, self.options = code, tuple(options)
        super().__init__(build(code, (name,)), 0, name)


class EmulatedRawModule:
    """Stands in for ``cupy.RawModule(code=..., options=..., name_expressions=[...])``."""

    def __init__(self, *, code: str, options: tuple[str, ...] = (), name_expressions: Any = (), **kwargs: Any):
        self.code, self.options = code, tuple(options)
        self.name_expressions = tuple(name_expressions)
        self._lib = build(code, self.name_expressions)
        self._functions: dict[str, EmulatedFunction] = {}

    def get_function(self, name: str) -> EmulatedFunction:
        if name not in self.name_expressions:
            raise KeyError(f"{name!r} is not a name expression of the module")
        fn = self._functions.get(name)
        if fn is None:
            fn = self._functions[name] = EmulatedFunction(self._lib, self.name_expressions.index(name), name)
        return fn


def host_array(a: np.ndarray) -> Any:
    """A ``cupy.ndarray`` viewing NumPy array ``a``'s memory (C-contiguous copy if needed).

    Only emulated kernels may touch its data; any CuPy operation on it would hand a
    host pointer to the GPU.
    """
    import cupy

    a = np.array(a, order="C", copy=True)   # (ascontiguousarray would make 0-d arrays 1-d)
    buf = np.empty(a.nbytes + 256, dtype=np.uint8)   # 256-byte aligned, like CuPy's allocations
    start = (-buf.ctypes.data) % 256
    view = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    view[...] = a
    mem = cupy.cuda.UnownedMemory(view.ctypes.data, max(1, a.nbytes), buf, device_id=0)
    _owners[mem.ptr] = buf
    return cupy.ndarray(a.shape, a.dtype, memptr=cupy.cuda.MemoryPointer(mem, 0))


_owners: dict[int, np.ndarray] = {}   # host buffers by base pointer (kept alive for the session)


def to_numpy(arr: Any) -> np.ndarray:
    """The NumPy view of a `host_array` (or of a view of one), with ``arr``'s shape and strides."""
    buf = _owners.get(arr.data.mem.ptr)
    if buf is None:
        raise TypeError("not an emulator host array")
    offset = arr.data.ptr - buf.ctypes.data
    return np.ndarray(arr.shape, arr.dtype, buffer=buf, offset=offset, strides=arr.strides)


def empty(shape: Any, dtype: Any, stream: Any = None) -> Any:
    """Emulator replacement of `kernels._compile.empty`: uninitialized (NaN-filled) host memory."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    a = np.empty(shape, dtype=dtype)
    a.reshape(-1).view(np.uint8)[...] = 0xFF   # NaN for floats: unwritten outputs stand out
    return host_array(a)
