"""Short CUDA driver calls of the scheduler, made with the GIL held in latency-critical threads.

CuPy and cuda.bindings release the GIL around every driver call. For the calls here
(kernel launches, event records, stream waits, event and stream queries, event timing,
event creation), which never block and take a microsecond or a few, each release is a
hand-off when threads contend: the caller must win the GIL back, and another thread that
took it in between runs its Python first. Whether a thread keeps the GIL is per thread
(`gil_held`, `holds_gil`), because what helps one tenant hurts the other:

- a latency-critical thread keeps it in the scheduler's calls on its launch path (the
  events of timed and right-sized launches), so it does not wait behind a best-effort
  thread once per call (its kernel launches themselves are CuPy's, which release it);
- a best-effort thread releases it at every call, so a latency-critical thread waiting
  for the GIL gets it within one call instead of one GIL switch interval (with every
  thread holding it, the best-effort thread starved the latency-critical one).

``ctypes.PyDLL`` is the standard library's way to call a C function with the GIL held
(``ctypes.CDLL`` releases it); no CUDA Python binding offers the choice.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from lithos_atom.errors import LithosCudaError
from lithos_atom.settings import get_settings

T = TypeVar("T")

CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_INVALID_CONTEXT = 201
CUDA_ERROR_NOT_READY = 600

#: ``cuStreamWaitValue64`` flag: wait until the word AND the value is non-zero.
WAIT_VALUE_AND = 0x2
#: ``cuMemHostRegister`` flags: usable from every context, mapped into the device's space.
HOST_REGISTER_PORTABLE = 0x1
HOST_REGISTER_DEVICEMAP = 0x2
CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED = 712

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
    "cuStreamWaitValue64_v2": (_P, ctypes.c_uint64, ctypes.c_uint64, _U),
    "cuStreamWriteValue32_v2": (_P, ctypes.c_uint64, ctypes.c_uint32, _U),
    "cuStreamIsCapturing": (_P, ctypes.POINTER(ctypes.c_int)),
    "cuMemHostRegister_v2": (_P, ctypes.c_size_t, _U),
    "cuMemHostUnregister": (_P,),
    "cuMemHostGetDevicePointer_v2": (ctypes.POINTER(ctypes.c_uint64), _P, _U),
    "cuMemHostAlloc": (ctypes.POINTER(_P), ctypes.c_size_t, _U),
    "cuMemFreeHost": (_P,),
}


@functools.lru_cache(maxsize=2)
def _libcuda(hold_gil: bool = True) -> Any:
    path = ctypes.util.find_library("cuda") or "libcuda.so.1"
    lib = (ctypes.PyDLL if hold_gil else ctypes.CDLL)(path)  # PyDLL: the GIL stays held during each call
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name, None)
        if fn is None and name == "cuEventElapsedTime_v2":  # drivers before CUDA 12.8
            fn = lib.cuEventElapsedTime_v2 = lib.cuEventElapsedTime
        if fn is not None:  # cuFuncGetParamInfo needs CUDA 12.4: see `param_layout`
            fn.argtypes, fn.restype = args, ctypes.c_int
    return lib


_local = threading.local()


def holds_gil() -> bool:
    """Whether the calling thread's driver calls keep the GIL (see `gil_held`; threads
    that never chose keep it only under ``LITHOS_HOLD_GIL=all``)."""
    hold = getattr(_local, "hold", None)
    if hold is None:
        hold = get_settings().hold_gil == "all"
    return bool(hold)


@contextlib.contextmanager
def gil_held(hold: bool) -> Iterator[None]:
    """Make the calling thread's driver calls keep the GIL (``hold``) or release it, until
    the block exits; the thread's previous choice is restored then."""
    saved = getattr(_local, "hold", None), getattr(_local, "lib", None)
    _local.hold, _local.lib = hold, None
    try:
        yield
    finally:
        _local.hold, _local.lib = saved


def _lib() -> Any:
    lib = getattr(_local, "lib", None)
    if lib is None:
        lib = _libcuda(holds_gil())
        if getattr(_local, "hold", None) is not None:
            _local.lib = lib  # chosen for this block: skip the choice on later calls
    return lib


def _check(call: str, code: int) -> None:
    if code != 0:
        name = ctypes.c_char_p()
        _libcuda(True).cuGetErrorName(code, ctypes.byref(name))
        raise LithosCudaError(call, code, (name.value or b"CUDA_ERROR_UNKNOWN").decode())


def _ready(call: str, code: int) -> bool:
    if code == CUDA_ERROR_NOT_READY:
        return False
    _check(call, code)
    return True


def make_cupy_context_current() -> None:
    """Make CuPy's context (the device's primary context) current in this thread.

    A new thread has no current context until a runtime call makes one; ``cudaFree(0)``
    is the idiom that does so without side effects.
    """
    import cupy

    cupy.cuda.runtime.free(0)


def in_cupy_context(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``; when the calling thread has no current context yet, make CuPy's
    current and call again, as CuPy's own calls would."""
    try:
        return call(*args)
    except LithosCudaError as exc:
        if exc.code != CUDA_ERROR_INVALID_CONTEXT:
            raise
    make_cupy_context_current()
    return call(*args)


def event_create(flags: int) -> int:
    """``cuEventCreate`` in the calling thread's current context; returns the handle."""
    handle = _P()
    _check("cuEventCreate", _lib().cuEventCreate(ctypes.byref(handle), flags))
    return int(handle.value or 0)


def event_destroy(event: int) -> None:
    """``cuEventDestroy`` (the driver frees it once pending work that records it is done)."""
    _check("cuEventDestroy", _lib().cuEventDestroy_v2(event))


def event_record(event: int, stream: int) -> None:
    """``cuEventRecord(event, stream)`` (handles as ints)."""
    _check("cuEventRecord", _lib().cuEventRecord(event, stream))


def event_query(event: int) -> bool:
    """Whether the work before ``event``'s latest record has completed (``cuEventQuery``)."""
    return _ready("cuEventQuery", _lib().cuEventQuery(event))


def event_elapsed_ms(start: int, end: int) -> float:
    """Device time between two completed timing events, in ms (``cuEventElapsedTime``)."""
    out = ctypes.c_float()
    _check("cuEventElapsedTime", _lib().cuEventElapsedTime_v2(ctypes.byref(out), start, end))
    return float(out.value)


def stream_wait_event(stream: int, event: int) -> None:
    """``cuStreamWaitEvent(stream, event, 0)`` (handles as ints)."""
    _check("cuStreamWaitEvent", _lib().cuStreamWaitEvent(stream, event, 0))


def stream_query(stream: int) -> bool:
    """Whether all work queued on ``stream`` has completed (``cuStreamQuery``)."""
    return _ready("cuStreamQuery", _lib().cuStreamQuery(stream))


def launch_kernel(function: int, grid: tuple[int, int, int], block: tuple[int, int, int], shared_mem: int,
                  stream: int, params: Any) -> None:
    """``cuLaunchKernel`` with ``params`` a ctypes array of pointers to the arguments."""
    _check("cuLaunchKernel", _lib().cuLaunchKernel(function, grid[0], grid[1], grid[2], block[0], block[1],
                                                       block[2], shared_mem, stream, params, None))


def param_layout(function: int) -> tuple[tuple[int, int], ...] | None:
    """``(offset, size)`` in bytes of each parameter of ``function`` (``cuFuncGetParamInfo``);
    None on a driver too old to say (before CUDA 12.4)."""
    lib = _lib()
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


def stream_wait_value64_and(stream: int, address: int, mask: int) -> None:
    """Make later work of ``stream`` wait until the 64-bit word at device ``address``
    has a bit of ``mask`` set (``cuStreamWaitValue64``, ``CU_STREAM_WAIT_VALUE_AND``)."""
    _check("cuStreamWaitValue64", _lib().cuStreamWaitValue64_v2(stream, address, mask, WAIT_VALUE_AND))


def stream_write_value32(stream: int, address: int, value: int) -> None:
    """Write ``value`` to the 32-bit word at device ``address`` once the work queued
    before it on ``stream`` has finished (``cuStreamWriteValue32``)."""
    _check("cuStreamWriteValue32", _lib().cuStreamWriteValue32_v2(stream, address, value, 0))


def stream_is_capturing(stream: int) -> bool:
    """Whether ``stream`` is capturing a CUDA graph (``cuStreamIsCapturing``)."""
    status = ctypes.c_int()
    _check("cuStreamIsCapturing", _lib().cuStreamIsCapturing(stream, ctypes.byref(status)))
    return status.value != 0  # CU_STREAM_CAPTURE_STATUS_NONE is 0


def host_register(address: int, size: int) -> int:
    """Page-lock ``size`` bytes of host memory at ``address`` and map them into every
    context's device space (``cuMemHostRegister``, portable and device-mapped); returns
    their device address. A registration the driver still holds for the same address
    (memory of an earlier mapping, unmapped without unregistering) is dropped first."""
    lib = _lib()
    flags = HOST_REGISTER_PORTABLE | HOST_REGISTER_DEVICEMAP
    code = lib.cuMemHostRegister_v2(address, size, flags)
    if code == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED:
        _check("cuMemHostUnregister", lib.cuMemHostUnregister(address))
        code = lib.cuMemHostRegister_v2(address, size, flags)
    _check("cuMemHostRegister", code)
    return _mapped_address(address, lib.cuMemHostUnregister)


def _mapped_address(address: int, release: Callable[[int], Any]) -> int:
    """The device address of page-locked, device-mapped host memory at ``address``
    (``cuMemHostGetDevicePointer``); where the driver has none, ``release(address)`` gives
    the memory back before the error is raised."""
    device = ctypes.c_uint64()
    code = _lib().cuMemHostGetDevicePointer_v2(ctypes.byref(device), address, 0)
    if code:
        release(address)
        _check("cuMemHostGetDevicePointer", code)
    return int(device.value)


def host_alloc_mapped(size: int) -> tuple[int, int]:
    """``size`` bytes of page-locked host memory mapped into every context's device space
    (``cuMemHostAlloc``, portable and device-mapped); returns ``(host, device)`` addresses.
    Free it with `host_free`."""
    lib = _lib()
    host = _P()
    _check("cuMemHostAlloc", lib.cuMemHostAlloc(ctypes.byref(host), size,
                                                HOST_REGISTER_PORTABLE | HOST_REGISTER_DEVICEMAP))
    address = int(host.value or 0)
    return address, _mapped_address(address, lib.cuMemFreeHost)


def host_free(address: int) -> None:
    """Free memory of `host_alloc_mapped` (``cuMemFreeHost``)."""
    _check("cuMemFreeHost", _lib().cuMemFreeHost(address))


def host_unregister(address: int) -> None:
    """Undo `host_register` (``cuMemHostUnregister``)."""
    _check("cuMemHostUnregister", _lib().cuMemHostUnregister(address))

