"""CPU tier: each `Timeline` implementation offers everything the protocol states (the GPU's
cannot be constructed here, so its class is checked)."""

from __future__ import annotations

import pytest

from lithos_sched.timeline import CupyTimeline, SimTimeline, Timeline


def protocol_members() -> set[str]:
    names = {n for n in vars(Timeline) if not n.startswith("_")}
    return names | set(Timeline.__annotations__)


@pytest.mark.parametrize("impl", [CupyTimeline, SimTimeline])
def test_every_timeline_has_every_member_of_the_protocol(impl):
    members = protocol_members()
    assert {"virtual", "record", "wait", "synchronize"} <= members
    assert sorted(n for n in members if not hasattr(impl, n)) == []
