"""CPU tier: the GIL-holding driver calls pass handles through, read the driver's results,
and report a failing ``CUresult`` by name (the calls themselves run in the GPU tier, on
every launch and timeline call of the scheduler)."""

from __future__ import annotations

import ctypes

import pytest

from lithos_atom import gil_held_driver
from lithos_atom.errors import LithosCudaError
from lithos_sched.errors import LithosCudaError as SchedLithosCudaError


class FakeLibcuda:
    """Returns the given code and names it as the driver would; cuFuncGetParamInfo
    knows a kernel of ``params`` parameters."""

    def __init__(self, code: int, params: tuple = ()) -> None:
        self.code = code
        self.params = params
        self.calls: list[tuple] = []

    def cuEventRecord(self, event, stream) -> int:  # noqa: ANN001, N802
        self.calls.append(("record", event, stream))
        return self.code

    def cuStreamWaitEvent(self, stream, event, flags) -> int:  # noqa: ANN001, N802
        self.calls.append(("wait", stream, event, flags))
        return self.code

    def cuEventQuery(self, event) -> int:  # noqa: ANN001, N802
        return self.code

    def cuStreamQuery(self, stream) -> int:  # noqa: ANN001, N802
        return self.code

    def cuEventElapsedTime_v2(self, out, start, end) -> int:  # noqa: ANN001, N802
        out._obj.value = 1.5
        return self.code

    def cuFuncGetParamInfo(self, function, index, offset, size) -> int:  # noqa: ANN001, N802
        if index >= len(self.params):
            return gil_held_driver.CUDA_ERROR_INVALID_VALUE
        offset._obj.value, size._obj.value = self.params[index]
        return 0

    def cuGetErrorName(self, code, out) -> int:  # noqa: ANN001, N802
        ctypes.cast(out, ctypes.POINTER(ctypes.c_char_p))[0] = b"CUDA_ERROR_INVALID_HANDLE"
        return 0


@pytest.fixture
def fake(monkeypatch):
    def install(code: int, params: tuple = ()) -> FakeLibcuda:
        lib = FakeLibcuda(code, params)
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
    assert SchedLithosCudaError is LithosCudaError  # one error type for both packages


@pytest.mark.parametrize("query", [gil_held_driver.event_query, gil_held_driver.stream_query])
def test_queries_read_not_ready_as_false_and_raise_on_a_fault(fake, query):
    fake(0)
    assert query(5) is True
    fake(gil_held_driver.CUDA_ERROR_NOT_READY)
    assert query(5) is False
    fake(700)  # an illegal address, sticky after a kernel fault: never read as "not done"
    with pytest.raises(LithosCudaError):
        query(5)


def test_elapsed_time_is_read_back(fake):
    fake(0)
    assert gil_held_driver.event_elapsed_ms(1, 2) == 1.5


def test_param_layout_counts_the_parameters_until_the_driver_says_no_more(fake):
    fake(0, params=((0, 8), (8, 4), (16, 8)))
    assert gil_held_driver.param_layout(99) == ((0, 8), (8, 4), (16, 8))
    fake(0, params=())
    assert gil_held_driver.param_layout(99) == ()


def test_param_layout_is_none_on_a_driver_without_cuFuncGetParamInfo(monkeypatch):
    class OldDriver:
        pass

    monkeypatch.setattr(gil_held_driver, "_libcuda", lambda: OldDriver())
    assert gil_held_driver.param_layout(99) is None
