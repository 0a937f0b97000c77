"""Two short CUDA driver calls made without releasing the GIL: an event record and a
stream's wait on an event.

CuPy and cuda.bindings release the GIL around every driver call. For these two, which
never block and take about a microsecond, the release is a cost when threads contend:
the caller must win the GIL back, and another thread that took it in between runs its
Python first. The scheduler's timeline makes them through here. Measured on the H100
(interleaved A/B on the inference + training pair, `scripts/diag_gil_ab.py`,
bench/results/h100-2026-11-25-session3-diagnostics/run14-diag-gil-ab.json): host time per
best-effort atom 72-178 us with the GIL held against 130-232 us released, lower in all four
pairs; per latency-critical launch unchanged within the host's noise. ``ctypes.PyDLL`` is
the standard library's way to call a C function with the GIL held; no CUDA Python binding
offers that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

from lithos_sched.errors import LithosCudaError


@functools.lru_cache(maxsize=1)
def _libcuda() -> Any:
    path = ctypes.util.find_library("cuda") or "libcuda.so.1"
    lib = ctypes.PyDLL(path)  # PyDLL: the GIL stays held during each call
    for name, args in (("cuEventRecord", (ctypes.c_void_p, ctypes.c_void_p)),
                       ("cuStreamWaitEvent", (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint)),
                       ("cuGetErrorName", (ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)))):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    return lib


def _check(call: str, code: int) -> None:
    if code != 0:
        name = ctypes.c_char_p()
        _libcuda().cuGetErrorName(code, ctypes.byref(name))
        raise LithosCudaError(call, code, (name.value or b"CUDA_ERROR_UNKNOWN").decode())


def event_record(event: int, stream: int) -> None:
    """``cuEventRecord(event, stream)`` with the GIL held (handles as ints)."""
    _check("cuEventRecord", _libcuda().cuEventRecord(event, stream))


def stream_wait_event(stream: int, event: int) -> None:
    """``cuStreamWaitEvent(stream, event, 0)`` with the GIL held (handles as ints)."""
    _check("cuStreamWaitEvent", _libcuda().cuStreamWaitEvent(stream, event, 0))
