"""CPU tier: one place sizes atoms. Under a scheduler (`Atomizer.wants_sized_plans` False)
the front ends build one-atom plans without asking `choose_atom_blocks` or the measured
durations; without one they size as before. The blocks a plan covers, and so the results,
are the same either way."""

from __future__ import annotations

import types

import pytest

import lithos
from lithos_atom import cupy_frontend, numba_frontend
from lithos_atom.plan import KernelKey
from lithos_sched import Policy, Priority, Scheduler, SimDevice, TenantSpec

SPECS = [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5), TenantSpec("be", Priority.BEST_EFFORT, share=0.5)]


def test_a_scheduler_and_its_tenants_size_atoms_themselves():
    sched = Scheduler(SimDevice(num_tpcs=4, seed=0), SPECS, Policy())
    assert lithos.Atomizer().wants_sized_plans
    assert not sched.wants_sized_plans
    assert not any(t.atomizer.wants_sized_plans for t in sched.tenants.values())


@pytest.fixture
def spies(monkeypatch):
    """Count the sizing calls of both front ends (their device-side steps stubbed out)."""
    calls = {"choose": 0, "estimate": 0}

    def choose(total, wave, **kw):  # noqa: ANN001, ANN003, ANN202
        calls["choose"] += 1
        return 7

    def estimate(key):  # noqa: ANN001, ANN202
        calls["estimate"] += 1
        return 100.0

    for module in (cupy_frontend, numba_frontend):
        monkeypatch.setattr(module, "choose_atom_blocks", choose)
        monkeypatch.setattr(module, "_wave_blocks", lambda *a: 264)
    monkeypatch.setattr(cupy_frontend.DURATIONS, "estimate_us", estimate)
    monkeypatch.setattr(numba_frontend.DURATIONS, "estimate_us", estimate)
    return calls


@pytest.mark.parametrize("sized", [True, False])
def test_the_cupy_front_end_sizes_only_for_an_atomizer_that_wants_it(monkeypatch, spies, sized):
    source = cupy_frontend.CupySource(code="__global__ void k() {}", name="k")
    prepared = cupy_frontend.PreparedKernel(function=types.SimpleNamespace(ptr=1), entry="k", rewrite=None, arch="sm_90")
    monkeypatch.setattr(cupy_frontend, "prepare", lambda src: prepared)
    monkeypatch.setattr(cupy_frontend.PreparedKernel, "for_block", lambda self, threads: self.function)
    kernel = cupy_frontend.AtomizedRawKernel(object(), source=source)
    plan = kernel.plan((100,), (128,), (), sized=sized)
    assert plan.total_blocks == 100 and plan.atomized
    assert plan.atom_blocks == (7 if sized else 100)
    assert spies == ({"choose": 1, "estimate": 1} if sized else {"choose": 0, "estimate": 0})


@pytest.mark.parametrize("sized", [True, False])
def test_the_numba_front_end_sizes_only_for_an_atomizer_that_wants_it(monkeypatch, spies, sized):
    pytest.importorskip("cuda.core")
    kernel = types.SimpleNamespace(entry_name="k", argument_types=())
    monkeypatch.setattr(numba_frontend, "prepare", lambda k: object())
    monkeypatch.setattr(numba_frontend, "kernel_for_block", lambda prepared, threads: object())
    plan = numba_frontend.plan_launch(kernel, (), (50, 2, 1), (64, 1, 1), 0, 0, lithos.AtomizeOptions(),
                                      None, sized)
    assert plan.key == KernelKey("k", (50, 2, 1), (64, 1, 1), 0, ())
    assert plan.atom_blocks == (7 if sized else 100)
    assert spies == ({"choose": 1, "estimate": 1} if sized else {"choose": 0, "estimate": 0})
