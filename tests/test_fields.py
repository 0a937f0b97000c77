"""CPU tier: configuration fields are refused by name (`lithos_sched.fields`), bools
included wherever a number or an int is asked for."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from lithos_atom.bench.ml_colocation import MLColocationConfig
from lithos_sched import Policy, SimKernel
from lithos_sched.fields import is_int, is_number, require
from lithos_sched.partition_timing import TimingOptions
from lithos_sched.rightsizing import RightSizeOptions


def test_require_names_the_field_what_it_must_be_and_the_value():
    require(True, "Owner.field", "an int", "anything")
    with pytest.raises(ValueError, match=r"^Owner\.field must be an int >= 1, got 'x'$"):
        require(False, "Owner.field", "an int >= 1", "x")


@pytest.mark.parametrize(("value", "int_", "number"), [
    (3, True, True), (np.int64(3), True, True), (True, False, False), (2.5, False, True),
    (math.nan, False, True), ("3", False, False), (None, False, False)])
def test_ints_and_numbers_exclude_bools(value, int_, number):
    assert is_int(value) is int_
    assert is_number(value) is number


@pytest.mark.parametrize(("make", "field"), [
    (lambda v: Policy(atom_us=v), "Policy.atom_us"),
    (lambda v: Policy(steal_reserve_tpcs=v), "Policy.steal_reserve_tpcs"),
    (lambda v: Policy(gil_switch_interval_s=v), "Policy.gil_switch_interval_s"),
    (lambda v: MLColocationConfig(duration_s=v), "MLColocationConfig.duration_s"),
    (lambda v: MLColocationConfig(be_queue_depth=v), "MLColocationConfig.be_queue_depth"),
    (lambda v: RightSizeOptions(slack=v), "RightSizeOptions.slack"),
    (lambda v: TimingOptions(spin_us=v), "TimingOptions.spin_us"),
    (lambda v: TimingOptions(rounds=v), "TimingOptions.rounds"),
    (lambda v: SimKernel("k", 8, v), "SimKernel.block_us"),
])
@pytest.mark.parametrize("bad", [True, "1", -1])
def test_options_refuse_a_bad_value_by_the_fields_name(make, field, bad):
    with pytest.raises(ValueError, match="^" + re.escape(field) + " must be "):
        make(bad)


def test_policy_refuses_what_is_not_a_bool_for_a_switch():
    from lithos_sched import Policy

    with pytest.raises(ValueError, match="Policy.device_gates must be a bool"):
        Policy(device_gates="yes")
    with pytest.raises(ValueError, match="Policy.stealing must be a bool"):
        Policy(stealing=1)
