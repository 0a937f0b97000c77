"""CPU tier: the DVFS policy, the actuator's gate, energy attribution, the NVML meter
(against a fake NVML) and the power model."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lithos_sched import energy as energy_mod
from lithos_sched.dvfs import (ACTUATE_ENV, ClockDecision, DvfsActuator, DvfsOptions, DvfsPolicy, compute_share,
                               h100_sm_clocks_mhz, time_ratio)
from lithos_sched.energy import EnergyMeter, PowerModel, attribute_energy, fit_power_model

CLOCKS = h100_sm_clocks_mhz()


class FakeNvml(types.ModuleType):
    """A pynvml stand-in: reads work; any setter or reset is recorded, and raises unless allowed."""

    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def __init__(self, allow_setters: bool = False):
        super().__init__("pynvml")
        self.allow_setters = allow_setters
        self.calls: list[tuple] = []
        self.energy = 1_000_000

    def __getattr__(self, name: str):
        if name.startswith("nvmlDeviceSet") or name.startswith("nvmlDeviceReset"):
            def setter(*args):
                self.calls.append((name, *args))
                if not self.allow_setters:
                    raise AssertionError(f"NVML setter {name} reached")
            return setter
        raise AttributeError(name)

    def nvmlInit(self):
        self.calls.append(("nvmlInit",))

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"gpu{i}"

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return self.energy

    def nvmlDeviceGetPowerUsage(self, h):
        return 250_000

    def nvmlDeviceGetClockInfo(self, h, which):
        return 1980 if which == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetMaxClockInfo(self, h, which):
        return 1980

    def nvmlDeviceGetSupportedMemoryClocks(self, h):
        return [2619]

    def nvmlDeviceGetSupportedGraphicsClocks(self, h, mem):
        return list(reversed(CLOCKS))


# ---- policy -------------------------------------------------------------------------------


def test_compute_share_takes_the_cautious_estimate():
    assert compute_share(0.1, 0.95) == pytest.approx(0.1)
    assert compute_share(0.0, 0.2) == pytest.approx(0.8)  # far from peak bandwidth: assumed SM-bound
    assert compute_share(None, None) == 1.0
    assert compute_share(0.0, None) == 1.0  # flat scaling alone is no evidence of memory-boundedness
    assert compute_share(1.3, 0.5) == 1.0
    with pytest.raises(ValueError, match="bandwidth_fraction"):
        compute_share(0.5, -1.0)


@settings(max_examples=60, deadline=None)
@given(share=st.floats(0.0, 1.0), slack=st.floats(0.0, 0.5))
def test_policy_picks_the_lowest_clock_within_the_slack(share, slack):
    policy = DvfsPolicy(CLOCKS, 1980, DvfsOptions(slack=slack, min_fraction=0.5))
    d = policy.decide("k", share)
    assert 990 <= d.clock_mhz <= 1980
    assert d.predicted_slowdown <= slack + 1e-9
    lower = [c for c in CLOCKS if 990 <= c < d.clock_mhz]
    if lower:
        assert time_ratio(share, lower[-1], 1980) - 1 > slack


def test_memory_bound_goes_low_compute_bound_stays_high():
    policy = DvfsPolicy(CLOCKS, 1980)
    assert policy.decide("gelu", 0.04).clock_mhz < 1400
    assert policy.decide("gemm", 1.0).clock_mhz >= 1980 / 1.05
    with pytest.raises(ValueError, match="share"):
        policy.decide("x", 1.5)
    with pytest.raises(ValueError, match="slack"):
        DvfsOptions(slack=-0.1)
    with pytest.raises(ValueError, match="min_fraction"):
        DvfsOptions(min_fraction=0)
    with pytest.raises(ValueError, match="clocks_mhz"):
        DvfsPolicy([], 1980)


# ---- the actuator's gate ------------------------------------------------------------------


DECISION = ClockDecision("k", 1200, 1980, 0.1, 0.06)


@pytest.fixture
def fake_pynvml(monkeypatch):
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


@pytest.mark.parametrize("enable, env", [(False, None), (False, "1"), (True, None), (True, "0"), (True, "")])
def test_actuator_never_reaches_nvml_unless_enabled_twice(monkeypatch, fake_pynvml, enable, env):
    if env is None:
        monkeypatch.delenv(ACTUATE_ENV, raising=False)
    else:
        monkeypatch.setenv(ACTUATE_ENV, env)
    act = DvfsActuator(enable=enable)
    assert act.active is False
    assert act.apply(DECISION) is False
    assert act.reset() is False
    assert fake_pynvml.calls == []  # not even nvmlInit: NVML is never touched
    assert act.decisions == [(DECISION, False)]


@pytest.mark.parametrize("env", ["yes", "true", "2", " on"])
def test_an_actuation_switch_other_than_1_or_0_is_refused_by_name(monkeypatch, fake_pynvml, env):
    monkeypatch.setenv(ACTUATE_ENV, env)
    with pytest.raises(ValueError, match=f"^LITHOS_DVFS_ACTUATE={env!r} must be 1 \\(on\\) or 0 \\(off\\)$"):
        DvfsActuator(enable=True).active
    assert fake_pynvml.calls == []


def test_actuator_locks_and_resets_when_enabled(monkeypatch):
    fake = FakeNvml(allow_setters=True)
    monkeypatch.setenv(ACTUATE_ENV, "1")
    act = DvfsActuator(enable=True, nvml=fake)
    assert act.apply(DECISION) is True
    assert ("nvmlDeviceSetGpuLockedClocks", "gpu0", 1200, 1200) in fake.calls
    assert act.reset() is True
    assert fake.calls[-1] == ("nvmlDeviceResetGpuLockedClocks", "gpu0")


def test_only_the_actuator_names_an_nvml_setter():
    root = Path(energy_mod.__file__).parent
    offenders = [p.name for p in root.glob("*.py")
                 if p.name != "dvfs.py" and ("nvmlDeviceSet" in p.read_text() or "nvmlDeviceReset" in p.read_text())]
    assert offenders == []


# ---- measured energy ----------------------------------------------------------------------


def test_meter_reads_only(fake_pynvml):
    meter = EnergyMeter()
    assert meter.energy_mj() == 1_000_000
    assert meter.power_w() == 250.0
    assert meter.sm_clock_mhz() == 1980 and meter.max_sm_clock_mhz() == 1980
    assert meter.supported_sm_clocks_mhz() == CLOCKS
    assert [c[0] for c in fake_pynvml.calls] == ["nvmlInit"]


def test_mean_power_uses_counter_updates(monkeypatch):
    """The counter advances every 100 ms (as on the H100); each step takes 7 ms; 300 W."""
    fake = FakeNvml()
    clock = {"t": 0.0}
    monkeypatch.setattr(energy_mod, "time", types.SimpleNamespace(perf_counter=lambda: clock["t"]))

    def counter(h):
        return int(math.floor(clock["t"] / 0.1) * 0.1 * 300 * 1000)

    fake.nvmlDeviceGetTotalEnergyConsumption = counter

    def step():
        clock["t"] += 0.007

    watts = EnergyMeter(nvml=fake).mean_power_w(step, window_s=0.4)
    assert watts == pytest.approx(300.0, rel=0.05)


def test_mean_power_gives_up_on_a_stuck_counter(monkeypatch):
    fake = FakeNvml()
    clock = {"t": 0.0}
    monkeypatch.setattr(energy_mod, "time", types.SimpleNamespace(perf_counter=lambda: clock["t"]))
    with pytest.raises(RuntimeError, match="did not advance"):
        EnergyMeter(nvml=fake).mean_power_w(lambda: clock.__setitem__("t", clock["t"] + 0.01), max_s=1.0)


def test_measure_a_run(fake_pynvml):
    meter = EnergyMeter()

    def run():
        fake_pynvml.energy += 5_000

    result = meter.measure(run)
    assert result.joules == pytest.approx(5.0)
    assert result.to_json()["source"] == "measured"


@settings(max_examples=50, deadline=None)
@given(joules=st.floats(0, 1e5), tpc_ms=st.dictionaries(st.sampled_from("abcd"), st.floats(0, 1e6), min_size=1),
       spare=st.floats(0, 1e6))
def test_attribution_conserves_energy(joules, tpc_ms, spare):
    used = sum(tpc_ms.values())
    if used + spare <= 0:
        return
    split = attribute_energy(joules, tpc_ms, used + spare)
    assert sum(split.values()) == pytest.approx(joules, rel=1e-9, abs=1e-9)
    assert set(split) == set(tpc_ms) | {"(idle)"}


def test_attribution_by_tpc_time():
    split = attribute_energy(100.0, {"inference": 10.0, "training": 30.0})
    assert split == {"inference": pytest.approx(25.0), "training": pytest.approx(75.0)}
    split = attribute_energy(100.0, {"inference": 10.0, "training": 30.0}, capacity_tpc_ms=50.0)
    assert split["(idle)"] == pytest.approx(20.0) and split["training"] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="capacity_tpc_ms"):
        attribute_energy(1.0, {"a": 10.0}, capacity_tpc_ms=5.0)
    with pytest.raises(ValueError, match="tpc_ms"):
        attribute_energy(1.0, {"a": -1.0})
    with pytest.raises(ValueError, match="joules"):
        attribute_energy(-1.0, {"a": 1.0})
    with pytest.raises(ValueError, match="no TPC-time"):
        attribute_energy(1.0, {"a": 0.0})


# ---- modeled energy -----------------------------------------------------------------------


def test_power_model_fit_recovers_the_bandwidth_term():
    static = 90.0
    shares = [1.0, 0.9, 0.2, 0.1, 0.05]
    tbs = [0.05, 0.1, 2.0, 2.7, 2.9]
    busy = [static + 400 * c + 60 * b for c, b in zip(shares, tbs)]
    model = fit_power_model(static, busy, tbs, shares, 1980, 345, 1980)
    assert model.beta_w_per_tbs == pytest.approx(60.0, rel=1e-6)
    assert model.to_json()["source"] == "modeled"
    with pytest.raises(ValueError, match="one value per kernel"):
        fit_power_model(static, busy, tbs[:2], shares, 1980, 345, 1980)


def test_modeled_energy_at_the_default_clock_is_the_measured_one():
    model = PowerModel(static_w=90.0, beta_w_per_tbs=50.0, default_mhz=1980, min_mhz=345, max_mhz=1980)
    assert model.kernel_energy_j(400.0, 2.0, 0.01, 1980, 1.0) == pytest.approx(4.0)
    lower = model.kernel_energy_j(400.0, 2.0, 0.01, 1200, time_ratio(0.05, 1200, 1980))
    assert lower < 4.0
    assert model.voltage(345) == pytest.approx(0.7) and model.voltage(1980) == pytest.approx(1.0)


def test_policy_is_relative_to_the_clock_the_kernel_ran_at():
    policy = DvfsPolicy(CLOCKS, 1980)
    capped = policy.decide("gemm_f16", 1.0, running_mhz=1740)  # held at the power limit
    assert capped.default_mhz == 1740 and capped.clock_mhz <= 1740
    assert capped.predicted_slowdown <= 0.05 + 1e-9


def test_a_scheduler_runs_energy_is_split_by_the_tpc_time_used_during_it():
    from lithos_sched.energy import EnergyRun, tenant_energy

    before = {"lc": {"tpc_ms_estimated": 100.0}, "be": {"tpc_ms_estimated": 1000.0}}
    after = {"lc": {"tpc_ms_estimated": 300.0}, "be": {"tpc_ms_estimated": 3000.0}}
    out = tenant_energy(EnergyRun(joules=100.0, seconds=0.1), before, after, num_tpcs=66)
    j = out["by_tenant_j"]
    # 200 + 2000 TPC-ms used of 6600 available: the rest is idle
    assert j["lc"] == pytest.approx(100.0 * 200 / 6600) and j["be"] == pytest.approx(100.0 * 2000 / 6600)
    assert sum(j.values()) == pytest.approx(100.0) and out["measured"]["source"] == "measured"


def test_an_estimate_above_the_devices_capacity_leaves_no_idle_share():
    from lithos_sched.energy import EnergyRun, tenant_energy

    out = tenant_energy(EnergyRun(10.0, 0.001), {"a": {"tpc_ms_estimated": 0.0}}, {"a": {"tpc_ms_estimated": 5.0}}, 2)
    assert out["by_tenant_j"]["a"] == pytest.approx(10.0) and out["by_tenant_j"]["(idle)"] == pytest.approx(0.0)


def test_without_nvml_the_meter_says_why():
    from lithos_sched import energy

    class NoDriver:
        def nvmlInit(self):  # noqa: N802 - NVML's name
            raise RuntimeError("NVML Shared Library Not Found")

    saved = sys.modules.get("pynvml")
    sys.modules["pynvml"] = NoDriver()  # type: ignore[assignment]
    try:
        meter, why = energy.open_meter()
    finally:
        if saved is None:
            del sys.modules["pynvml"]
        else:
            sys.modules["pynvml"] = saved
    assert meter is None and "NVML Shared Library Not Found" in why
