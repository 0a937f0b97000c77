"""CPU tier: every ``LITHOS_*`` variable lithos reads is known to `lithos_atom.settings`,
checked at start with a one-line error naming it, and an unknown one is warned about."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from lithos_atom.settings import VARIABLES, check_environment, get_settings, read_variable, reload_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_environment(monkeypatch):
    """No ``LITHOS_*`` variable set; the cached settings are read again after the test."""
    import os

    for name in [k for k in os.environ if k.startswith("LITHOS_")]:
        monkeypatch.delenv(name)
    yield monkeypatch
    monkeypatch.undo()
    reload_settings()


def test_every_lithos_variable_named_in_the_library_is_a_known_one():
    named = set()
    for package in ("lithos", "lithos_sched", "lithos_atom"):
        for path in (REPO / package).rglob("*.py"):
            named |= set(re.findall(r"""(?:["'$]|``)(LITHOS_[A-Z0-9_]+)""", path.read_text()))
    assert named and named <= set(VARIABLES), sorted(named - set(VARIABLES))


@pytest.mark.parametrize("name, value, message", [
    ("LITHOS_LEDGER_DIR", "/nonexistent/lithos", "LITHOS_LEDGER_DIR='/nonexistent/lithos' does not exist"),
    ("LITHOS_LEDGER_DIR", __file__, "is not a directory"),
    ("LITHOS_SIM_GPUS", "0", "LITHOS_SIM_GPUS='0' must be an int >= 1"),
    ("LITHOS_SIM_GPUS", "²", "LITHOS_SIM_GPUS='²' must be an int >= 1"),
    ("LITHOS_SCALING_DIR", __file__, "LITHOS_SCALING_DIR="),
    ("LITHOS_TRACE_DIR", __file__, "LITHOS_TRACE_DIR="),
    ("LITHOS_DVFS_ACTUATE", "yes", "LITHOS_DVFS_ACTUATE='yes' must be 1 (on) or 0 (off)"),
    ("LITHOS_ATOM_US", "-3", "LITHOS_ATOM_US='-3' must be a finite number > 0"),
])
def test_a_bad_variable_is_refused_at_start_in_one_line_naming_it(clean_environment, name, value, message):
    clean_environment.setenv(name, value)
    for check in (check_environment, reload_settings, lambda: read_variable(name)):
        with pytest.raises(ValueError, match=re.escape(message)) as info:
            check()
        assert "\n" not in str(info.value)


def test_an_unknown_variable_gets_one_warning_naming_it_and_the_known_ones(clean_environment):
    clean_environment.setenv("LITHOS_ATOM_USS", "500")  # a typo of LITHOS_ATOM_US
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reload_settings()
        get_settings()  # cached: no second warning
    [warning] = caught
    text = str(warning.message)
    assert "LITHOS_ATOM_USS" in text and "LITHOS_ATOM_US," in text and "\n" not in text
    assert get_settings().atom_us == 250.0  # the typo changed nothing


def test_unset_variables_read_as_their_defaults(clean_environment):
    assert read_variable("LITHOS_LEDGER_DIR") is None and read_variable("LITHOS_SIM_GPUS") is None
    assert read_variable("LITHOS_DVFS_ACTUATE") is False and read_variable("LITHOS_JOIN") is None
    from lithos_sched.ledger import ledger_dir
    from lithos_sched.scaling import default_cache_dir

    assert ledger_dir() in (Path("/dev/shm"), Path("/tmp"))
    assert default_cache_dir() == Path.home() / ".cache" / "lithos" / "scaling"
    clean_environment.setenv("LITHOS_CACHE_DIR", "/tmp/lithos-cache")
    assert default_cache_dir() == Path("/tmp/lithos-cache/scaling")


def test_a_scheduler_checks_the_environment_when_it_is_made(clean_environment):
    from lithos_sched import Priority, Scheduler, SimDevice, TenantSpec

    device = SimDevice(num_tpcs=2)
    clean_environment.setenv("LITHOS_LEDGER_DIR", "/nonexistent/lithos")  # a variable the scheduler never reads
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="LITHOS_LEDGER_DIR='/nonexistent/lithos'"):
        Scheduler(device, [TenantSpec("be", Priority.BEST_EFFORT, share=1.0)])
