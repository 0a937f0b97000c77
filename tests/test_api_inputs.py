"""Bad arguments and environment settings are refused by name when a kernel is wrapped (CPU only).

Each input of issue 23's "Python API" list used to be accepted and crash at a later launch,
or fail with an error that named nothing; now `atomize`, `Atomizer` and
`atomize_module_function` refuse it before doing any work.
"""

from __future__ import annotations

import decimal
import math
import re

import numpy as np
import pytest

import lithos
from lithos_atom.atomizer import AtomizeOptions
from lithos_atom.indexing import MAX_GRID_X
from lithos_atom.settings import get_settings, reload_settings

BAD_OPTIONS = [
    ("atom_us", math.inf), ("atom_us", -math.inf), ("atom_us", math.nan), ("atom_us", np.array([1.0])),
    ("atom_us", decimal.Decimal("NaN")), ("atom_us", "250"), ("atom_us", "abc"), ("atom_us", True),
    ("atom_blocks", 2**70), ("atom_blocks", MAX_GRID_X + 1), ("atom_blocks", np.int64(0)), ("atom_blocks", 4.0),
    ("strict", 1),
]


@pytest.mark.parametrize("name, value", BAD_OPTIONS, ids=[f"{n}={v!r}" for n, v in BAD_OPTIONS])
def test_bad_options_are_refused_by_name_at_construction(name, value):
    message = f"^{name} must be .*, got {re.escape(repr(value))}$"
    for make in (AtomizeOptions, lithos.Atomizer, lithos.atomize):
        with pytest.raises(ValueError, match=message):
            make(**{name: value})


def test_numpy_numbers_are_taken_as_python_numbers():
    options = lithos.Atomizer(atom_blocks=np.int32(8)).options
    assert options.atom_blocks == 8 and type(options.atom_blocks) is int
    options = AtomizeOptions(atom_us=np.float32(300), atom_blocks=np.uint64(MAX_GRID_X))
    assert type(options.atom_us) is float and options.atom_us == 300.0 and options.atom_blocks == MAX_GRID_X
    assert lithos.Atomizer(atom_us=500).options.atom_us == 500.0


def test_atomize_module_function_checks_its_arguments():
    with pytest.raises(TypeError, match=r"^module must be a cupy\.RawModule, got NoneType$"):
        lithos.atomize_module_function(None, "k")
    with pytest.raises(ValueError, match=r"^atom_us must be "):
        lithos.atomize_module_function(None, "k", atom_us=math.inf)


def test_a_numba_device_function_is_not_a_kernel():
    from lithos_atom._compat import import_numba_cuda

    cuda = import_numba_cuda()

    @cuda.jit(device=True)
    def helper(x):
        return x + 1

    with pytest.raises(TypeError, match=r"^kernel must be a CuPy or Numba kernel, got the Numba device function "
                                        r"'helper'"):
        lithos.atomize(helper)
    with pytest.raises(TypeError, match="device function"):
        lithos.atomize(atom_blocks=4)(helper)


@pytest.mark.parametrize("name, value, message", [
    ("LITHOS_ATOM_US", "inf", "LITHOS_ATOM_US='inf' must be a finite number > 0"),
    ("LITHOS_ATOM_US", "nan", "LITHOS_ATOM_US='nan' must be a finite number > 0"),
    ("LITHOS_ATOM_US", "0", "LITHOS_ATOM_US='0' must be a finite number > 0"),
    ("LITHOS_ATOM_US", "fast", "LITHOS_ATOM_US='fast' is not a number"),
    ("LITHOS_STRICT", "maybe", "LITHOS_STRICT='maybe' is not a boolean"),
    ("LITHOS_DISK_CACHE", "2", "LITHOS_DISK_CACHE='2' is not a boolean"),
    ("LITHOS_HOLD_GIL", "some", "LITHOS_HOLD_GIL='some' is not one of latency-critical, all, none"),
    ("LITHOS_CACHE_DIR", __file__, "is not a directory"),
])
def test_bad_settings_are_refused_by_name_when_a_kernel_is_wrapped(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        for make in (lithos.Atomizer, lambda: lithos.atomize(atom_blocks=4)):
            with pytest.raises(ValueError, match=re.escape(message)) as info:
                make()
            assert "\n" not in str(info.value)
    finally:
        monkeypatch.delenv(name)
        reload_settings()
