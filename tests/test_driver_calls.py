"""CPU tier: lithos' driver calls pass handles through, read the driver's results, report a
failing ``CUresult`` by name, and keep the GIL only in threads that chose to (the calls
themselves run in the GPU tier, on every launch and timeline call of the scheduler)."""

from __future__ import annotations

import ctypes

import pytest

from lithos_atom import driver_calls
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
            return driver_calls.CUDA_ERROR_INVALID_VALUE
        offset._obj.value, size._obj.value = self.params[index]
        return 0

    def cuGetErrorName(self, code, out) -> int:  # noqa: ANN001, N802
        ctypes.cast(out, ctypes.POINTER(ctypes.c_char_p))[0] = b"CUDA_ERROR_INVALID_HANDLE"
        return 0


@pytest.fixture
def fake(monkeypatch):
    def install(code: int, params: tuple = ()) -> FakeLibcuda:
        lib = FakeLibcuda(code, params)
        monkeypatch.setattr(driver_calls, "_libcuda", lambda hold_gil=True: lib)
        return lib
    return install


def test_calls_pass_the_handles_through(fake):
    lib = fake(0)
    driver_calls.event_record(11, 22)
    driver_calls.stream_wait_event(22, 11)
    assert lib.calls == [("record", 11, 22), ("wait", 22, 11, 0)]


def test_a_failing_call_raises_with_the_drivers_error_name(fake):
    fake(400)
    with pytest.raises(LithosCudaError, match=r"cuStreamWaitEvent failed: CUDA_ERROR_INVALID_HANDLE \(400\)") as info:
        driver_calls.stream_wait_event(1, 2)
    assert info.value.code == 400 and info.value.name == "CUDA_ERROR_INVALID_HANDLE"
    assert SchedLithosCudaError is LithosCudaError  # one error type for both packages


@pytest.mark.parametrize("query", [driver_calls.event_query, driver_calls.stream_query])
def test_queries_read_not_ready_as_false_and_raise_on_a_fault(fake, query):
    fake(0)
    assert query(5) is True
    fake(driver_calls.CUDA_ERROR_NOT_READY)
    assert query(5) is False
    fake(700)  # an illegal address, sticky after a kernel fault: never read as "not done"
    with pytest.raises(LithosCudaError):
        query(5)


def test_elapsed_time_is_read_back(fake):
    fake(0)
    assert driver_calls.event_elapsed_ms(1, 2) == 1.5


def test_param_layout_counts_the_parameters_until_the_driver_says_no_more(fake):
    fake(0, params=((0, 8), (8, 4), (16, 8)))
    assert driver_calls.param_layout(99) == ((0, 8), (8, 4), (16, 8))
    fake(0, params=())
    assert driver_calls.param_layout(99) == ()


def test_param_layout_is_none_on_a_driver_without_cuFuncGetParamInfo(monkeypatch):
    class OldDriver:
        pass

    monkeypatch.setattr(driver_calls, "_libcuda", lambda hold_gil=True: OldDriver())
    assert driver_calls.param_layout(99) is None


def test_each_thread_chooses_whether_its_calls_keep_the_gil(monkeypatch):
    import threading

    libs = {True: FakeLibcuda(0), False: FakeLibcuda(0)}
    monkeypatch.setattr(driver_calls, "_libcuda", lambda hold_gil=True: libs[hold_gil])
    monkeypatch.delenv("LITHOS_HOLD_GIL", raising=False)
    from lithos_atom.settings import reload_settings

    reload_settings()
    driver_calls.event_record(1, 2)  # a thread that never chose: released, as CuPy's calls
    with driver_calls.gil_held(True):
        driver_calls.event_record(3, 4)
        other = threading.Thread(target=driver_calls.event_record, args=(5, 6))
        other.start()
        other.join()  # another thread is not affected by this one's choice
        with driver_calls.gil_held(False):
            driver_calls.event_record(7, 8)
        driver_calls.event_record(9, 10)  # the outer choice is back
    assert [c[1] for c in libs[True].calls] == [3, 9]
    assert [c[1] for c in libs[False].calls] == [1, 5, 7]


def test_hold_gil_all_makes_every_thread_keep_it(monkeypatch):
    from lithos_atom.settings import reload_settings

    monkeypatch.setenv("LITHOS_HOLD_GIL", "all")
    try:
        assert reload_settings().hold_gil == "all" and driver_calls.holds_gil()
        monkeypatch.setenv("LITHOS_HOLD_GIL", "sometimes")
        with pytest.raises(ValueError, match="LITHOS_HOLD_GIL='sometimes' is not one of latency-critical, all, none"):
            reload_settings()
    finally:
        monkeypatch.delenv("LITHOS_HOLD_GIL")
        reload_settings()
