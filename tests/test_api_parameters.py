"""CPU tier: the scheduler's constructors and functions a user meets first refuse an
argument of the wrong type or value when called, naming it.

`Policy`'s fields are checked in `tests/test_fields.py`, `lithos.join`'s arguments in
`tests/test_membership.py` and the atomizer's in `tests/test_api_inputs.py`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

import lithos
from lithos_sched import SimDevice

LC, BE = lithos.Priority.LATENCY_CRITICAL, lithos.Priority.BEST_EFFORT


@pytest.mark.parametrize("kwargs, message", [
    ({"name": 3, "priority": BE, "share": 0.5}, "tenant name must be a non-empty string, got 3"),
    ({"name": "t", "priority": 1, "share": 0.5}, "tenant 't': priority must be a lithos_sched.Priority or one of"),
    ({"name": "t", "priority": "fast", "share": 0.5}, "tenant 't': priority must be"),
    ({"name": "t", "priority": BE, "share": "0.5"}, "tenant 't': share must be a number in (0, 1], got '0.5'"),
    ({"name": "t", "priority": BE, "share": float("nan")}, "tenant 't': share must be a number in (0, 1]"),
    ({"name": "t", "priority": BE, "tpcs": 3}, "tenant 't': tpcs must be TPC ids (a sequence of ints), got 3"),
    ({"name": "t", "priority": BE, "tpcs": "012"}, "tenant 't': tpcs must be TPC ids"),
    ({"name": "t", "priority": BE, "tpcs": (1, 2.0)}, "tenant 't': tpcs must be non-negative ints, got [2.0]"),
])
def test_tenant_spec_refuses_a_bad_field_by_name(kwargs, message):
    with pytest.raises(lithos.TenantConfigError, match="^" + re.escape(message)):
        lithos.TenantSpec(**kwargs)


def test_tenant_spec_takes_what_join_takes_and_keeps_tuples():
    spec = lithos.TenantSpec("t", "best-effort", tpcs=np.arange(3))
    assert spec.priority is BE and spec.tpcs == (0, 1, 2) and all(type(t) is int for t in spec.tpcs)
    assert lithos.TenantSpec("t", LC, tpcs=[4, 5]).tpcs == (4, 5)
    assert lithos.TenantSpec("t", LC, share=np.float32(0.5)).share == 0.5


@pytest.fixture
def device() -> SimDevice:
    return SimDevice(num_tpcs=8)


SPECS = [lithos.TenantSpec("lc", LC, share=0.5), lithos.TenantSpec("be", BE, share=0.5)]


@pytest.mark.parametrize("change, message", [
    ({"device": None}, r"^Scheduler: device must be a lithos device \(lithos.open_device\(\)\), got NoneType$"),
    ({"device": "gpu0"}, "^Scheduler: device must be a lithos device"),
    ({"policy": {"atom_us": 500}}, "^Scheduler: policy must be a Policy or None, got dict$"),
    ({"predictor": "online"}, r"^Scheduler: predictor must be a LatencyPredictor \(with predict_us, .*\) or None, got str$"),
    ({"right_sizer": True}, r"^Scheduler: right_sizer must be a RightSizer \(with tpcs_for, observe\) or None, got bool$"),
    ({"trace": "yes"}, "^Scheduler: trace must be a bool, got str$"),
])
def test_scheduler_refuses_an_argument_of_the_wrong_type_by_name(device, change, message):
    kwargs: dict[str, Any] = {"device": device, "tenants": SPECS, **change}
    with pytest.raises(TypeError, match=message):
        lithos.Scheduler(**kwargs)


@pytest.mark.parametrize("tenants", [SPECS[0], None, "lc"])
def test_scheduler_wants_a_sequence_of_tenant_specs(device, tenants):
    with pytest.raises(lithos.TenantConfigError, match="^tenants must be a sequence of TenantSpec, got "):
        lithos.Scheduler(device, tenants)


@pytest.mark.parametrize("args, kwargs, message", [
    (("0",), {}, "open_device: device_id must be an int >= 0, got '0'"),
    ((-1,), {}, "open_device: device_id must be an int >= 0, got -1"),
    ((0.5,), {}, "open_device: device_id must be an int >= 0, got 0.5"),
    ((), {"simulate": "yes"}, "open_device: simulate must be True, False or None, got 'yes'"),
    ((), {"num_tpcs": "66"}, "SimDevice.num_tpcs must be an int >= 1, got '66'"),
    ((), {"name": 5}, "SimDevice.name must be a str, got 5"),
    ((), {"record_blocks": "no"}, "SimDevice.record_blocks must be a bool, got 'no'"),
])
def test_open_device_refuses_a_bad_argument_by_name(args, kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        lithos.open_device(*args, **{"simulate": True, **kwargs})


def test_open_device_names_an_option_no_device_knows():
    with pytest.raises(TypeError, match=r"unknown options \['tpcs'\]"):
        lithos.open_device(simulate=True, tpcs=8)


@pytest.mark.parametrize("n", ["3", 2.0, 0, True])
def test_on_tpcs_refuses_a_count_that_is_not_a_positive_int(device, n):
    sched = lithos.Scheduler(device, SPECS)
    with pytest.raises(ValueError, match=r"^Tenant.on_tpcs: n \(a TPC count\) must be an int >= 1, got "):
        with sched.tenant("lc").on_tpcs(n):
            pass
    sched.close()


@pytest.mark.parametrize("call, error, message", [
    (lambda: lithos.RequestSignal.create(3), TypeError,
     "RequestSignal.create: directory must be a path (str or os.PathLike), got int"),
    (lambda: lithos.RequestSignal.attach(None), TypeError,
     "RequestSignal.attach: path must be a path (str or os.PathLike), got NoneType"),
])
def test_request_signal_paths_are_checked_by_name(call, error, message):
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        call()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"tpcs": "3"}, ValueError, "RequestSignal.request: tpcs must be an int >= 1 or None, got '3'"),
    ({"tpcs": 0}, ValueError, "RequestSignal.request: tpcs must be an int >= 1 or None, got 0"),
    ({"gate": 1}, ValueError, "RequestSignal.request: gate must be a bool, got 1"),
    ({"stream": "s"}, TypeError, "RequestSignal.request: stream must be a CUDA stream"),
])
def test_a_request_refuses_a_bad_argument_by_name(tmp_path, kwargs, error, message):
    signal = lithos.RequestSignal.create(tmp_path)
    with pytest.raises(error, match="^" + re.escape(message)):
        with signal.request(**kwargs):
            pass
    assert signal.open_requests == 0
    signal.close()
