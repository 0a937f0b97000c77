"""CPU tier: the GIL-holding driver calls report a failing ``CUresult`` by name (the
calls themselves run in the GPU tier, on every timeline record and wait)."""

from __future__ import annotations

import ctypes

import pytest

from lithos_sched import gil_held_driver
from lithos_sched.errors import LithosCudaError


class FakeLibcuda:
    """Returns the given codes and names them as the driver would."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.calls: list[tuple] = []

    def cuEventRecord(self, event, stream) -> int:  # noqa: ANN001, N802
        self.calls.append(("record", event, stream))
        return self.code

    def cuStreamWaitEvent(self, stream, event, flags) -> int:  # noqa: ANN001, N802
        self.calls.append(("wait", stream, event, flags))
        return self.code

    def cuGetErrorName(self, code, out) -> int:  # noqa: ANN001, N802
        ctypes.cast(out, ctypes.POINTER(ctypes.c_char_p))[0] = b"CUDA_ERROR_INVALID_HANDLE"
        return 0


@pytest.fixture
def fake(monkeypatch):
    def install(code: int) -> FakeLibcuda:
        lib = FakeLibcuda(code)
        monkeypatch.setattr(gil_held_driver, "_libcuda", lambda: lib)
        return lib
    return install


def test_calls_pass_the_handles_through(fake):
    lib = fake(0)
    gil_held_driver.event_record(11, 22)
    gil_held_driver.stream_wait_event(22, 11)
    assert lib.calls == [("record", 11, 22), ("wait", 22, 11, 0)]


def test_a_failing_call_raises_with_the_drivers_error_name(fake):
    fake(400)
    with pytest.raises(LithosCudaError, match=r"cuStreamWaitEvent failed: CUDA_ERROR_INVALID_HANDLE \(400\)") as info:
        gil_held_driver.stream_wait_event(1, 2)
    assert info.value.code == 400 and info.value.name == "CUDA_ERROR_INVALID_HANDLE"
