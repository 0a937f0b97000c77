"""CPU tier: `lithos.join` / `lithos.leave` on the simulated device, in this process, and
through ``python -m lithos run``; the memory limit it installs (`TenantMemoryLimit`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cupy.cuda import memory as cupy_memory

import lithos
from lithos.membership import parse_join_spec, parse_memory
from lithos_atom.active import get_atomizer
from lithos_sched import Priority
from lithos_sched.ledger import Ledger, TenantClaim
from lithos_sched.memory_limit import TenantMemoryLimit, TenantOutOfMemoryError
from lithos_sched.tenant_runtime import current_tenant

REPO = Path(__file__).resolve().parents[1]
LC = Priority.LATENCY_CRITICAL


@pytest.fixture
def ledgers(tmp_path, monkeypatch):
    """A folder of ledgers for this test, one simulated GPU; leaves whatever joined."""
    monkeypatch.setenv("LITHOS_LEDGER_DIR", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LITHOS_SIM_GPUS", raising=False)
    yield tmp_path
    lithos.leave()


@pytest.mark.parametrize("kwargs, message", [
    ({"priority": "high", "share": 0.5}, r"priority must be one of \['latency-critical', 'best-effort'\], got 'high'"),
    ({"gpu": -1, "priority": "best-effort", "share": 0.5}, "gpu must be an int >= 0, got -1"),
    ({"gpu": 1, "priority": "best-effort", "share": 0.5}, "gpu 1 out of range: this process sees 1 GPU"),
    ({"priority": "best-effort"}, "give exactly one of share= and tpcs="),
    ({"priority": "best-effort", "share": 0.5, "tpcs": 3}, "give exactly one of share= and tpcs="),
    ({"priority": "best-effort", "share": 1.5}, r"share must be a number in \(0, 1\], got 1.5"),
    ({"priority": "best-effort", "share": "half"}, "share must be a number"),
    ({"priority": "best-effort", "tpcs": 0}, "tpcs must be an int >= 1, got 0"),
    ({"priority": "best-effort", "tpcs": 2, "memory_limit": "lots"}, "memory_limit must be bytes"),
    ({"priority": "best-effort", "tpcs": 2, "memory_limit": -5}, "memory_limit must be bytes"),
    ({"priority": "best-effort", "tpcs": 2, "name": ""}, "name must be a non-empty string"),
    ({"priority": "best-effort", "tpcs": 2, "simulate": "yes"}, "simulate must be True, False or None"),
    ({"priority": "best-effort", "tpcs": 2, "policy": {}}, "policy must be a lithos_sched.Policy"),
])
def test_join_refuses_each_bad_argument_by_name(ledgers, kwargs, message):
    with pytest.raises(ValueError, match=rf"^lithos.join: {message}"):
        lithos.join(**{"simulate": True, **kwargs})
    assert lithos.joined() is None and not list(ledgers.iterdir())  # nothing half-made is left


def test_join_registers_binds_and_installs_and_leave_undoes_it(ledgers):
    m = lithos.join(priority="latency-critical", tpcs=10, name="inference", simulate=True)
    assert lithos.joined() is m and lithos.tenant() is m.tenant and current_tenant() is m.tenant
    seen = []
    other = threading.Thread(target=lambda: seen.append((get_atomizer(), current_tenant())))
    other.start()
    other.join()
    assert seen == [(m.scheduler, None)]  # installed process-wide; other threads run as the default tenant
    [entry] = m.ledger.entries()
    assert (entry.name, entry.tpcs, entry.claim.priority) == ("inference", frozenset(range(10)), LC)
    assert entry.claim.signal == str(m.signal.path) and m.tenant.gate is m.signal.gate  # requests published
    shown = subprocess.run([sys.executable, "-m", "lithos", "ledger"], capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60).stdout.splitlines()
    assert shown[0].startswith("SIM-0 (66 TPCs") and shown[1].split() == [
        "inference", "pid", str(os.getpid()), "latency-critical", "10", "TPCs", "0-9"]
    with pytest.raises(RuntimeError, match="is tenant 'inference' of GPU 0 already; call lithos.leave"):
        lithos.join(priority="best-effort", tpcs=1, simulate=True)
    with Ledger("SIM-0", 66) as ledger, pytest.raises(lithos.TPCsUnavailableError, match="held: 'inference'"):
        ledger.register([TenantClaim("x", Priority.BEST_EFFORT, tpcs=60)])
    lithos.leave()
    assert lithos.joined() is None and current_tenant() is None and get_atomizer() is None
    assert not list(ledgers.iterdir())  # ledger and signal files removed
    with pytest.raises(RuntimeError, match="has not joined"):
        lithos.tenant()
    lithos.leave()  # nothing to undo


def test_the_memory_limit_wraps_the_allocator_installed_before_join(ledgers):
    addresses = iter(range(1 << 20, 1 << 40, 1 << 20))

    def device_malloc(size: int):  # stands for the GPU's allocator
        return cupy_memory.MemoryPointer(cupy_memory.UnownedMemory(next(addresses), size, None, device_id=0), 0)

    cupy_memory.set_allocator(device_malloc)
    try:
        m = lithos.join(priority="best-effort", share=0.25, memory_limit="1MiB", name="train", simulate=True)
        assert m.ledger.entries()[0].claim.memory_limit == 1 << 20
        held = cupy_memory.alloc(600 << 10)
        with pytest.raises(TenantOutOfMemoryError, match=r"^tenant 'train' would exceed its memory limit of 1.00 MiB: "
                                                         r"600.00 KiB in use, 500.00 KiB asked$"):
            cupy_memory.alloc(500 << 10)
        del held
        again = cupy_memory.alloc(1 << 20)  # freed memory no longer counts
        assert m.memory.used_bytes == 1 << 20 and again.ptr >= 1 << 20
        del again
        lithos.leave()
        assert cupy_memory.get_allocator() is device_malloc  # restored
    finally:
        cupy_memory.set_allocator(None)


def test_a_memory_limit_counts_until_free_and_a_failed_allocation_counts_nothing():
    def failing(size: int):
        raise MemoryError("device full")

    limit = TenantMemoryLimit("t", 1000, failing)
    with pytest.raises(MemoryError, match="device full"):
        limit.malloc(800)
    assert limit.used_bytes == 0
    limit.allocator = lambda size: cupy_memory.MemoryPointer(cupy_memory.UnownedMemory(64, size, None, device_id=0), 0)
    with limit.using():
        kept = cupy_memory.alloc(800)
        with pytest.raises(MemoryError):  # a MemoryError, as CuPy's OutOfMemoryError
            cupy_memory.alloc(201)
        assert cupy_memory.alloc(200).mem.size == 200
    assert limit.used_bytes == 800 and kept.ptr == 64
    with pytest.raises(ValueError, match="TenantMemoryLimit.limit must be an int >= 1"):
        TenantMemoryLimit("t", 0)


def test_the_environment_form_and_sizes_parse_or_say_what_they_cannot_read():
    assert parse_join_spec("gpu=1, priority=best-effort,share=0.5,memory_limit=2GiB,simulate=1") == {
        "gpu": 1, "priority": "best-effort", "share": 0.5, "memory_limit": "2GiB", "simulate": True}
    assert parse_join_spec("") == {}
    with pytest.raises(ValueError, match=r"^LITHOS_JOIN: cannot read 'colour=red'; items are key=value with keys"):
        parse_join_spec("colour=red")
    with pytest.raises(ValueError, match="LITHOS_JOIN: share cannot be 'half'"):
        parse_join_spec("share=half")
    assert parse_memory("2GiB") == 2 << 30 and parse_memory("1.5 KiB") == 1536 and parse_memory(7) == 7


PROGRAM = """
import sys, lithos
m = lithos.joined()
print(sys.argv, m.tenant.name, len(m.tenant.tpcs), m.tenant.priority.value, m.device.uuid)
sys.exit(3)
"""


def test_python_m_lithos_run_joins_then_runs_the_unchanged_program(tmp_path):
    program = tmp_path / "serve.py"
    program.write_text(PROGRAM)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LITHOS_LEDGER_DIR": str(tmp_path),
           "LITHOS_JOIN": "gpu=0,priority=best-effort,share=0.5,simulate=1", "LITHOS_SIM_GPUS": "2",
           "CUDA_VISIBLE_DEVICES": "1"}
    run = subprocess.run([sys.executable, "-m", "lithos", "run", "--tpcs", "6", str(program), "a", "-b"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert run.returncode == 3, run.stderr  # the program's exit status
    name, tpcs, priority, uuid = run.stdout.split()[-4:]
    assert run.stdout.startswith(f"[{str(program)!r}, 'a', '-b']")
    assert name.startswith("serve-") and (tpcs, priority, uuid) == ("6", "best-effort", "SIM-1")
    assert [p.name for p in tmp_path.iterdir()] == ["serve.py"]  # left at exit: no ledger remains
    bad = subprocess.run([sys.executable, "-m", "lithos", "run", str(program)], capture_output=True, text=True,
                         env={**env, "LITHOS_JOIN": "share=0.5"}, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "the priority is missing" in bad.stderr
    module = subprocess.run([sys.executable, "-m", "lithos", "run", "--priority", "latency-critical", "-m", "serve",
                             "--port", "1"], capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={**env, "PYTHONPATH": f"{REPO}:{tmp_path}"})
    assert module.returncode == 3, module.stderr
    assert module.stdout.startswith(f"[{str(program)!r}, '--port', '1'] serve-")
    assert module.stdout.split()[-3:-1] == ["33", "latency-critical"]
