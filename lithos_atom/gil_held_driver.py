"""Short CUDA driver calls made without releasing the GIL.

CuPy and cuda.bindings release the GIL around every driver call. For the calls here,
which never block and take a microsecond or a few, the release is a cost when threads
contend: the caller must win the GIL back, and another thread that took it in between
runs its Python first. A latency-critical thread issuing a request through several
launches then waits behind a best-effort thread once per launch. So lithos' hot paths
(kernel launches, event records, stream waits, event and stream queries, event timing,
event creation) come through here, and only the calls that block (event and stream
synchronization) release the GIL.

Measured on the H100 for the event calls alone (interleaved A/B on the inference +
training pair, `scripts/diag_gil_ab.py`,
bench/results/h100-2026-11-25-session3-diagnostics/run14-diag-gil-ab.json): host time per
best-effort atom 72-178 us with the GIL held against 130-232 us released, lower in all four
pairs. ``ctypes.PyDLL`` is the standard library's way to call a C function with the GIL
held; no CUDA Python binding offers that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

from lithos_atom.errors import LithosCudaError

CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_INVALID_CONTEXT = 201
CUDA_ERROR_NOT_READY = 600

EVENT_DEFAULT = 0
EVENT_BLOCKING_SYNC = 1
EVENT_DISABLE_TIMING = 2

_P = ctypes.c_void_p
_U = ctypes.c_uint
_SIGNATURES: dict[str, tuple] = {
    "cuEventCreate": (ctypes.POINTER(_P), _U),
    "cuEventDestroy_v2": (_P,),
    "cuEventRecord": (_P, _P),
    "cuEventQuery": (_P,),
    "cuEventElapsedTime_v2": (ctypes.POINTER(ctypes.c_float), _P, _P),
    "cuStreamWaitEvent": (_P, _P, _U),
    "cuStreamQuery": (_P,),
    "cuLaunchKernel": (_P, _U, _U, _U, _U, _U, _U, _U, _P, _P, _P),
    "cuFuncGetParamInfo": (_P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)),
    "cuGetErrorName": (ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)),
}


@functools.lru_cache(maxsize=1)
def _libcuda() -> Any:
    path = ctypes.util.find_library("cuda") or "libcuda.so.1"
    lib = ctypes.PyDLL(path)  # PyDLL: the GIL stays held during each call
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name, None)
        if fn is None and name == "cuEventElapsedTime_v2":  # drivers before CUDA 12.8
            fn = lib.cuEventElapsedTime_v2 = lib.cuEventElapsedTime
        if fn is not None:  # cuFuncGetParamInfo needs CUDA 12.4: see `param_layout`
            fn.argtypes, fn.restype = args, ctypes.c_int
    return lib


def _check(call: str, code: int) -> None:
    if code != 0:
        name = ctypes.c_char_p()
        _libcuda().cuGetErrorName(code, ctypes.byref(name))
        raise LithosCudaError(call, code, (name.value or b"CUDA_ERROR_UNKNOWN").decode())


def _ready(call: str, code: int) -> bool:
    if code == CUDA_ERROR_NOT_READY:
        return False
    _check(call, code)
    return True


def event_create(flags: int) -> int:
    """``cuEventCreate`` in the calling thread's current context; returns the handle."""
    handle = _P()
    _check("cuEventCreate", _libcuda().cuEventCreate(ctypes.byref(handle), flags))
    return int(handle.value or 0)


def event_destroy(event: int) -> None:
    """``cuEventDestroy`` (the driver frees it once pending work that records it is done)."""
    _check("cuEventDestroy", _libcuda().cuEventDestroy_v2(event))


def event_record(event: int, stream: int) -> None:
    """``cuEventRecord(event, stream)`` (handles as ints)."""
    _check("cuEventRecord", _libcuda().cuEventRecord(event, stream))


def event_query(event: int) -> bool:
    """Whether the work before ``event``'s latest record has completed (``cuEventQuery``)."""
    return _ready("cuEventQuery", _libcuda().cuEventQuery(event))


def event_elapsed_ms(start: int, end: int) -> float:
    """Device time between two completed timing events, in ms (``cuEventElapsedTime``)."""
    out = ctypes.c_float()
    _check("cuEventElapsedTime", _libcuda().cuEventElapsedTime_v2(ctypes.byref(out), start, end))
    return float(out.value)


def stream_wait_event(stream: int, event: int) -> None:
    """``cuStreamWaitEvent(stream, event, 0)`` (handles as ints)."""
    _check("cuStreamWaitEvent", _libcuda().cuStreamWaitEvent(stream, event, 0))


def stream_query(stream: int) -> bool:
    """Whether all work queued on ``stream`` has completed (``cuStreamQuery``)."""
    return _ready("cuStreamQuery", _libcuda().cuStreamQuery(stream))


def launch_kernel(function: int, grid: tuple[int, int, int], block: tuple[int, int, int], shared_mem: int,
                  stream: int, params: Any) -> None:
    """``cuLaunchKernel`` with ``params`` a ctypes array of pointers to the arguments."""
    _check("cuLaunchKernel", _libcuda().cuLaunchKernel(function, grid[0], grid[1], grid[2], block[0], block[1],
                                                       block[2], shared_mem, stream, params, None))


def param_layout(function: int) -> tuple[tuple[int, int], ...] | None:
    """``(offset, size)`` in bytes of each parameter of ``function`` (``cuFuncGetParamInfo``);
    None on a driver too old to say (before CUDA 12.4)."""
    lib = _libcuda()
    if not hasattr(lib, "cuFuncGetParamInfo"):
        return None
    layout: list[tuple[int, int]] = []
    offset, size = ctypes.c_size_t(), ctypes.c_size_t()
    while True:
        code = lib.cuFuncGetParamInfo(function, len(layout), ctypes.byref(offset), ctypes.byref(size))
        if code == CUDA_ERROR_INVALID_VALUE:
            return tuple(layout)  # past the last parameter
        _check("cuFuncGetParamInfo", code)
        layout.append((int(offset.value), int(size.value)))
