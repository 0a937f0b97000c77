"""Shared plumbing of the kernels: lazy kernel objects, streams, argument checks, PTX.

Every CuPy kernel object is built on first use by calling ``cupy.RawKernel(...)`` or
``cupy.RawModule(...)`` looked up on the ``cupy`` module *at that time*: lithos' global
opt-in swaps those two names for intercepting subclasses, so kernels built after it was
switched on are atomized. Built objects live in one dict keyed by (kernel, variant);
`reset_cache` empties it (the next call builds again, through whatever classes are
current). Nothing here touches a GPU at import time.

Each module of CUDA C sources describes them as `KernelSource` values, so the test suite
can compile every one of them to PTX with NVRTC on a machine without a GPU
(`compile_to_ptx`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

#: NVRTC options of every CuPy kernel of this package.
DEFAULT_OPTIONS: tuple[str, ...] = ("-std=c++17",)

#: The largest dynamic shared memory a kernel may use without opting in.
DEFAULT_MAX_DYNAMIC_SHMEM = 48 * 1024


@dataclasses.dataclass(frozen=True)
class KernelSource:
    """One CUDA C++ translation unit built as a ``cupy.RawKernel`` or ``cupy.RawModule``.

    Attributes
    ----------
    key : str
        Unique cache key (kernel family and variant, e.g. ``"sgemm_128x128_nn"``).
    code : str
        The CUDA C++ source.
    kind : str
        ``"kernel"`` (a ``RawKernel`` named `name`) or ``"module"`` (a ``RawModule``
        with `name_expressions`).
    name : str
        The ``extern "C"`` kernel name (``kind == "kernel"``).
    name_expressions : tuple of str
        Template instantiations (``kind == "module"``).
    options : tuple of str
        NVRTC options.
    """

    key: str
    code: str
    kind: str = "kernel"
    name: str = ""
    name_expressions: tuple[str, ...] = ()
    options: tuple[str, ...] = DEFAULT_OPTIONS

    def __post_init__(self) -> None:
        if self.kind not in ("kernel", "module"):
            raise ValueError(f"kind must be 'kernel' or 'module', got {self.kind!r}")
        if self.kind == "kernel" and not self.name:
            raise ValueError(f"RawKernel source {self.key!r} needs a kernel name")
        if self.kind == "module" and not self.name_expressions:
            raise ValueError(f"RawModule source {self.key!r} needs name_expressions")

    @property
    def entry_names(self) -> tuple[str, ...]:
        """The names a launch refers to: the kernel name or the name expressions."""
        return (self.name,) if self.kind == "kernel" else self.name_expressions


# ---- the kernel-object cache ------------------------------------------------------------

_cache: dict[tuple, Any] = {}
_lock = threading.RLock()


def reset_cache() -> None:
    """Forget every built kernel object (CuPy and Numba); the next call builds again."""
    with _lock:
        _cache.clear()


def cached(key: tuple, build: Callable[[], Any]) -> Any:
    """Return ``_cache[key]``, calling ``build()`` to fill it on first use."""
    obj = _cache.get(key)
    if obj is not None:
        return obj
    with _lock:
        obj = _cache.get(key)
        if obj is None:
            obj = _cache[key] = build()
    return obj


def raw_kernel(src: KernelSource, *, max_dynamic_shared: int = 0) -> Any:
    """The ``cupy.RawKernel`` of ``src`` (built on first use, cached).

    Parameters
    ----------
    src : KernelSource
        A ``kind == "kernel"`` source.
    max_dynamic_shared : int
        Dynamic shared memory (bytes) the kernel is launched with; above 48 KiB the
        kernel's ``max_dynamic_shared_size_bytes`` attribute is raised to it once.
    """
    if src.kind != "kernel":
        raise ValueError(f"{src.key!r} is a module source; use module_function")

    def build() -> Any:
        import cupy

        kernel = cupy.RawKernel(src.code, src.name, options=src.options)
        if max_dynamic_shared > DEFAULT_MAX_DYNAMIC_SHMEM:
            kernel.max_dynamic_shared_size_bytes = int(max_dynamic_shared)
        return kernel

    return cached(("kernel", src.key), build)


def module_function(src: KernelSource, name_expression: str) -> Any:
    """Function ``name_expression`` of the ``cupy.RawModule`` of ``src`` (cached)."""
    if src.kind != "module":
        raise ValueError(f"{src.key!r} is a RawKernel source; use raw_kernel")
    if name_expression not in src.name_expressions:
        raise KeyError(f"{name_expression!r} is not instantiated in {src.key!r}")

    def build_module() -> Any:
        import cupy

        return cupy.RawModule(code=src.code, options=src.options, name_expressions=list(src.name_expressions))

    def build_function() -> Any:
        return cached(("module", src.key), build_module).get_function(name_expression)

    return cached(("function", src.key, name_expression), build_function)


def numba_kernel(key: str, pyfunc: Callable[..., None]) -> Any:
    """``numba.cuda.jit(pyfunc)`` (built on first use, cached under ``key``)."""

    def build() -> Any:
        from kernels._numba import cuda

        return cuda.jit(pyfunc)

    return cached(("numba", key), build)


# ---- streams, allocation ----------------------------------------------------------------


def as_cupy_stream(stream: Any) -> Any:
    """A CuPy stream (``cupy.cuda.Stream`` or ``ExternalStream``) for ``stream``.

    Parameters
    ----------
    stream : cupy stream, object with ``__cuda_stream__``, or None
        None means CuPy's current stream.
    """
    import cupy

    base = getattr(cupy.cuda.stream, "_BaseStream", cupy.cuda.Stream)   # Stream and ExternalStream
    if stream is None:
        return cupy.cuda.get_current_stream()
    if isinstance(stream, base):
        return stream
    wrapped = getattr(stream, "cupy", None)  # lithos partition streams carry their CuPy twin
    if isinstance(wrapped, base):
        return wrapped
    if hasattr(stream, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(stream)
    raise TypeError("stream must be a cupy stream, an object with __cuda_stream__, or None; "
                    f"got {type(stream).__name__}")


def sm_count() -> int:
    """Number of SMs of the current device."""
    import cupy

    return int(cupy.cuda.Device().attributes["MultiProcessorCount"])


def empty(shape: Sequence[int] | int, dtype: Any, stream: Any) -> Any:
    """``cupy.empty`` with ``stream`` current, so the pool ties the memory to that stream."""
    import cupy

    with stream:
        return cupy.empty(shape, dtype=dtype)


# ---- argument checks (metadata only: they run without a GPU) ----------------------------

def check_array(
    x: Any,
    name: str,
    *,
    ndim: int | Iterable[int] | None = None,
    dtypes: Iterable[Any] | None = None,
    contiguous: bool = True,
) -> Any:
    """Check that ``x`` is a non-empty ``cupy.ndarray`` of the expected rank and dtype.

    Raises
    ------
    TypeError
        For a non-CuPy array or a dtype not in ``dtypes``.
    ValueError
        For a wrong rank, an empty array, or a non-C-contiguous one when ``contiguous``.
    """
    import cupy

    if not isinstance(x, cupy.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must be {want}-D, got shape {tuple(x.shape)}")
    if dtypes is not None:
        allowed_dt = tuple(np.dtype(d) for d in dtypes)
        if x.dtype not in allowed_dt:
            names = ", ".join(d.name for d in allowed_dt)
            raise TypeError(f"{name} has dtype {x.dtype.name}; expected {names}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if contiguous and not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (got strides {x.strides}); pass cupy.ascontiguousarray({name})")
    return x


def check_out(out: Any, shape: tuple[int, ...], dtype: Any, *, contiguous: bool = True, name: str = "out") -> None:
    """Check a caller-supplied output array (None is accepted: the op allocates one)."""
    if out is None:
        return
    check_array(out, name, contiguous=contiguous)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(out.shape)}; expected {tuple(shape)}")
    if out.dtype != np.dtype(dtype):
        raise TypeError(f"{name} has dtype {out.dtype.name}; expected {np.dtype(dtype).name}")


def aligned(*arrays: Any, bytes_: int = 16) -> bool:
    """Whether every array's data pointer is a multiple of ``bytes_``."""
    return all(a is None or a.data.ptr % bytes_ == 0 for a in arrays)


def cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)


# ---- CUDA C++ snippets shared by several sources ----------------------------------------

#: Conversions between the storage types and fp32 (``to_f32`` / ``from_f32<T>``).
CONVERT_SNIPPET = r"""
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#include <cuda_fp16.h>
#include <cuda_bf16.h>
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
"""

#: Warp- and block-wide sum and max reductions (``blockDim.x`` a multiple of 32, at most 1024).
REDUCE_SNIPPET = r"""
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Every thread of the block gets the result. `red` holds 32 floats of shared memory;
// the leading barrier lets consecutive calls reuse it.
template <bool IS_MAX>
__device__ __forceinline__ float block_reduce(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = IS_MAX ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nwarps ? red[lane] : (IS_MAX ? -INFINITY : 0.0f);
    return IS_MAX ? warp_max(v) : warp_sum(v);
}
"""

# ---- compiling sources to PTX without a GPU ---------------------------------------------


def include_dirs() -> list[str]:
    """CuPy's header directory and the CUDA toolkit's (``cuda_fp16.h``, ``mma.h``)."""
    from lithos_atom.compile import cuda_include_dirs

    return cuda_include_dirs()


def toolkit_include_options() -> tuple[str, ...]:
    """``-I`` options for kernels that include toolkit headers CuPy may not find (``mma.h``)."""
    return tuple(f"-I{d}" for d in include_dirs()[1:])


def compile_to_ptx(src: KernelSource, arch: str = "compute_90") -> tuple[str, dict[str, str]]:
    """Compile ``src`` to PTX with NVRTC, as CuPy would (no GPU needed).

    Parameters
    ----------
    src : KernelSource
        The source.
    arch : str
        Virtual architecture, e.g. ``"compute_90"``.

    Returns
    -------
    tuple of (str, dict)
        The PTX, and each entry name (kernel name or name expression) mapped to its
        PTX entry (lowered) name.

    Raises
    ------
    RuntimeError
        With NVRTC's log when compilation fails.
    """
    from cuda.bindings import nvrtc

    def check(result: tuple, what: str) -> tuple:
        err, *rest = result
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"NVRTC {what} failed for {src.key!r}: {err.name}")
        return tuple(rest)

    opts = [*src.options, "-ftz=true", "--device-as-default-execution-space", f"-arch={arch}",
            *(f"-I{d}" for d in include_dirs())]
    (prog,) = check(nvrtc.nvrtcCreateProgram(src.code.encode(), f"{src.key}.cu".encode(), 0, [], []), "create")
    try:
        for expr in src.name_expressions:
            check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()), f"name expression {expr!r}")
        (status,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        (size,) = check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        log = b" " * size
        check(nvrtc.nvrtcGetProgramLog(prog, log), "log")
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"NVRTC could not compile {src.key!r}:\n{log.decode(errors='replace').rstrip(chr(0))}")
        (size,) = check(nvrtc.nvrtcGetPTXSize(prog), "PTX size")
        ptx = b" " * size
        check(nvrtc.nvrtcGetPTX(prog, ptx), "PTX")
        mapping = {src.name: src.name} if src.kind == "kernel" else {}
        for expr in src.name_expressions:
            (lowered,) = check(nvrtc.nvrtcGetLoweredName(prog, expr.encode()), f"lowered name of {expr!r}")
            mapping[expr] = lowered.decode()
        return ptx.decode().rstrip("\0"), mapping
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
