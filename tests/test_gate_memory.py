"""CPU tier: where gate words live when a GPU maps them (the driver calls faked: the real
ones run in tests/gpu/test_gates_gpu.py)."""

from __future__ import annotations

import ctypes
import mmap

import pytest

from lithos_atom import driver_calls
from lithos_sched.gates import CLOSED, OPEN, PAGE_BYTES, GateBoard, GateMemory


class FakeDriver:
    """Page-locked allocations as ctypes buffers, registrations as a set."""

    def __init__(self) -> None:
        self.pages: dict[int, ctypes.Array] = {}
        self.freed: list[int] = []
        self.registered: set[int] = set()

    def alloc(self, size: int) -> tuple[int, int]:
        page = (ctypes.c_char * size)()
        self.pages[ctypes.addressof(page)] = page
        return ctypes.addressof(page), ctypes.addressof(page) + (1 << 40)

    def free(self, address: int) -> None:
        self.freed.append(address)

    def register(self, address: int, size: int) -> int:
        self.registered.add(address)
        return address

    def unregister(self, address: int) -> None:
        self.registered.remove(address)


@pytest.fixture
def driver(monkeypatch) -> FakeDriver:
    fake = FakeDriver()
    monkeypatch.setattr(driver_calls, "in_cupy_context", lambda call, *args: call(*args))
    monkeypatch.setattr(driver_calls, "host_alloc_mapped", fake.alloc)
    monkeypatch.setattr(driver_calls, "host_free", fake.free)
    monkeypatch.setattr(driver_calls, "host_register", fake.register)
    monkeypatch.setattr(driver_calls, "host_unregister", fake.unregister)
    return fake


def test_a_process_own_gates_move_to_a_driver_allocated_page_keeping_their_state(driver):
    board = GateBoard()
    gate, other = board.new_gate(), board.new_gate()
    gate.store(CLOSED)
    other.force(True)
    address = gate.device_address()
    host = board.memory.host_address
    assert host in driver.pages and address == host + (1 << 40) + 4 * gate.index and not driver.registered
    assert gate.is_closed_by_owner() and other.forced  # the state came along
    gate.store(OPEN)
    assert ctypes.c_uint32.from_address(host + 4 * gate.index).value == OPEN  # the page the GPU reads
    board.close()
    assert driver.freed == [host]
    assert gate.is_open() and not other.forced  # a released gate reads open


def test_a_shared_files_gates_stay_in_the_file_and_are_registered(driver, tmp_path):
    path = tmp_path / "page"
    path.write_bytes(bytes(PAGE_BYTES))
    with path.open("r+b") as f:
        memory = GateMemory(mmap.mmap(f.fileno(), PAGE_BYTES))
    host = memory.host_address
    assert memory.device_address() == host and driver.registered == {host} and not driver.pages
    memory.close()
    assert driver.registered == set() and not driver.freed
