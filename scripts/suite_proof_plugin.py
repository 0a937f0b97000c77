"""pytest plugin of scripts/suite_proof.py: each test's outcome, and what the opt-in did.

Loaded with ``-p suite_proof_plugin`` (``scripts/`` on ``PYTHONPATH``). ``SUITE_PROOF_OUT``
names the JSON file it writes at the end of the session; with ``SUITE_PROOF_ATOM_BLOCKS``
set, the whole session runs under the global opt-in (`lithos.set_atomizer`) with atoms of
that many blocks, and the file also counts launches, split launches and atoms, and lists
every kernel that ran whole with its reason.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import pytest

_outcomes: dict[str, str] = {}
_atomizer: Any = None


def _make_atomizer(atom_blocks: int) -> Any:
    import lithos

    class Counting(lithos.Atomizer):
        """Counts what it is handed, then issues it as the base atomizer does."""

        def __init__(self) -> None:
            super().__init__(atom_blocks=atom_blocks, strict=False)
            self.counts: collections.Counter = collections.Counter()
            self.whole: dict[str, str] = {}

        def submit(self, plan: Any, stream: Any) -> None:
            self.counts["launches"] += 1
            self.counts["multi_block_launches"] += plan.total_blocks > 1
            if plan.atomized:
                self.counts["atoms"] += plan.num_atoms
                self.counts["split_launches"] += plan.num_atoms > 1
                self.counts["split_multi_block_launches"] += plan.num_atoms > 1 and plan.total_blocks > 1
            else:
                self.counts["whole_launches"] += 1
                self.counts["whole_multi_block_launches"] += plan.total_blocks > 1
                self.whole.setdefault(plan.key.name, plan.reason or "")
            super().submit(plan, stream)

    return Counting()


def pytest_configure(config: pytest.Config) -> None:
    global _atomizer
    atom_blocks = os.environ.get("SUITE_PROOF_ATOM_BLOCKS")
    if atom_blocks:
        import lithos

        _atomizer = _make_atomizer(int(atom_blocks))
        lithos.set_atomizer(_atomizer)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped and report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed:
        _outcomes.setdefault(report.nodeid, "passed")


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("SUITE_PROOF_OUT")
    if not path:
        return
    data: dict[str, Any] = {"outcomes": _outcomes}
    if _atomizer is not None:
        import lithos

        lithos.set_atomizer(None)
        data["counts"] = dict(_atomizer.counts)
        data["whole"] = _atomizer.whole
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
