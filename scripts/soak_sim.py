"""The soak on the simulated device: tenants that come and go for a long virtual time.

Eight tenants in four *members* (one scheduler each, as four processes would have,
registered in a ledger with request signals in a folder): two of a latency-critical and
a best-effort tenant, one of two best-effort tenants and one of two latency-critical
tenants. Every ``rotate_ms`` of virtual time the oldest member leaves (its scheduler,
signals and ledger entries closed) and one of the same make-up joins on the TPCs freed;
the best-effort tenants of every member follow the latency-critical tenants of the
others, as `lithos_sched.ledger_watch` does between processes.

Latency-critical tenants act at random times, as virtual-time callbacks: a marked
request (`Tenant.request`), a request on fewer TPCs (`Tenant.on_tpcs`), an unmarked
launch (its gate held until the tenant is idle), a graph launch or a request through a
launch plan. Best-effort tenants take turns issuing atomized launches of random sizes,
synchronizing now and then or launching a graph; one launch in ``interrupt_every`` is
interrupted at its second wait (its thread raises), and the rest of its blocks must
still run.

Checked: every block of every launch ran exactly once (the device records every block;
`BlockCounts`), no request was left open and every gate was open when its tenant left,
every partition closed, and host memory, file descriptors, threads and the folder's
files came back to what they were after a warm-up round (`Resources`).

A single thread plays every tenant in virtual time (the simulated device is not
thread-safe); the GPU mode (``scripts/soak_gpu.py``) runs real threads.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from soak_common import (
    BE, BlockCounts, LC, Resources, compare, follow_member, join_member, request_left_open,
    unfollow_member,
)

from lithos_atom.plan import KernelKey, LaunchPlan, LaunchShape
from lithos_sched import Policy, Priority, Scheduler, SimDevice, SimKernel
from lithos_sched import tenant_runtime
from lithos_sched.ledger import Ledger
from lithos_sched.processes import ProcessId
from lithos_sched.request_signal import RequestSignal
from lithos_sched.timeline import SimTimeline

#: The make-up of the four members: eight tenants, four of each priority.
MEMBERS = ((LC, BE), (LC, BE), (BE, BE), (LC, LC))
TPCS_PER_TENANT = 8
#: The TPC counts of right-sized requests (`Tenant.on_tpcs`): each is a partition of its own.
ON_TPCS = (2, 4, TPCS_PER_TENANT)
#: Kernel shapes (blocks, block us): a fixed menu, so the predictor's tables stay bounded;
#: blocks of a millisecond or more keep the simulation's events per virtual second few.
LC_SHAPES = ((16, 300.0), (32, 500.0), (64, 200.0), (24, 800.0))
BE_SHAPES = ((264, 1500.0), (528, 1000.0), (132, 3000.0), (396, 2000.0), (660, 800.0))


class SoakInterrupt(Exception):
    """Raised in a best-effort thread's wait, to interrupt its launch mid-way."""


@dataclasses.dataclass
class Member:
    """One scheduler of two tenants, as one process would hold."""

    key: int
    process: ProcessId
    scheduler: Scheduler
    signals: dict[str, RequestSignal]
    alive: bool = True

    def tenants(self, priority: Priority) -> list[Any]:
        return [t for t in self.scheduler.tenants.values() if t.priority is priority and not t.remote]


class SimGraph:
    """A captured graph stand-in: launching it runs its kernels whole, in order, on a stream."""

    def __init__(self, launches: list[Callable[[Any], None]]) -> None:
        self._launches = launches

    def launch(self, stream: Any) -> None:
        for launch in self._launches:
            launch(stream)


class SimSoak:
    """One soak run; `run` returns its results.

    Parameters
    ----------
    virtual_s : float
        Virtual seconds of the measured round (the warm-up round is a tenth of it).
    seed : int
    folder : Path
        Where the ledger and the request signals live.
    rotate_ms : float
        Virtual time between a member leaving and the next joining.
    interrupt_every : int
        One best-effort launch in this many is interrupted mid-way.
    trace_memory : bool
        Measure host memory with `tracemalloc` too (about 8 times slower).
    """

    def __init__(self, virtual_s: float, seed: int, folder: Path, rotate_ms: float = 100.0,
                 interrupt_every: int = 40, trace_memory: bool = False) -> None:
        self.trace_memory = trace_memory
        self.virtual_s, self.folder, self.rotate_ms, self.interrupt_every = virtual_s, folder, rotate_ms, interrupt_every
        self.rng = random.Random(seed)
        self.device = SimDevice(num_tpcs=66, seed=seed)
        self.tl = SimTimeline(self.device)
        self.ledger = Ledger(self.device.uuid, self.device.num_tpcs, directory=folder, alive=lambda p: True)
        # atoms and the steal bound scaled to the menu's long blocks
        self.policy = Policy(atom_us=3000.0, home_atom_us=8000.0, steal_max_block_us=5000.0, wait_timeout_s=30.0)
        self.counts = BlockCounts()
        self.owner: dict[int, int] = {}  # device launch id -> soak launch id
        self.device_ids: dict[int, list[int]] = {}  # soak launch id -> its device launch ids
        self.launch_ids = itertools.count()
        self.member_keys = itertools.count()
        self.members: list[Member] = []
        self.problems: list[str] = []
        self.stats = {"joined": 0, "left": 0, "be_launches": 0, "be_graphs": 0, "be_synchronize": 0,
                      "interrupted": 0, "lc_requests": 0, "lc_on_tpcs": 0, "lc_unmarked": 0, "lc_graphs": 0,
                      "lc_plans": 0, "follows": 0}
        self._interrupt_armed = False
        self._waits = 0
        real_wait = self.tl.wait_until

        def wait_until(*args: Any, **kwargs: Any) -> bool:
            self._waits += 1
            if self._interrupt_armed and self._waits == 2:
                self._interrupt_armed = False
                raise SoakInterrupt("a best-effort thread raised mid-launch")
            return real_wait(*args, **kwargs)

        self.tl.wait_until = wait_until  # type: ignore[method-assign]

    # ---- launches whose blocks are counted ------------------------------------------

    def _new_launch(self, blocks: int) -> int:
        launch = next(self.launch_ids)
        self.counts.expect(launch, blocks)
        self.device_ids[launch] = []
        return launch

    def _launch_on(self, stream: Any, kernel: SimKernel, launch: int, start: int = 0, count: int | None = None) -> None:
        device_id = stream.launch(kernel, start, count)
        self.owner[device_id] = launch
        self.device_ids[launch].append(device_id)

    def _plan(self, blocks: int, block_us: float) -> LaunchPlan:
        kernel = SimKernel(f"be{blocks}x{block_us:g}", blocks, block_us)
        launch = self._new_launch(blocks)
        key = KernelKey(kernel.name, (blocks, 1, 1), (256, 1, 1), 0)
        return LaunchPlan.build(key, blocks, blocks, lambda s, n, stream: self._launch_on(stream, kernel, launch, s, n),
                                wave_blocks=self.device.num_sms)

    def _whole(self, blocks: int, block_us: float) -> tuple[Callable[[Any], None], Callable[[], LaunchShape]]:
        kernel = SimKernel(f"lc{blocks}x{block_us:g}", blocks, block_us)
        launch = self._new_launch(blocks)
        key = KernelKey(kernel.name, (blocks, 1, 1), (256, 1, 1), 0)
        return (lambda stream: self._launch_on(stream, kernel, launch),
                lambda: LaunchShape(key, blocks, self.device.num_sms))

    def _drain_records(self) -> None:
        """Count the blocks the device ran since the last drain, then forget them."""
        for r in self.device.records:
            launch = self.owner[r.launch_id]
            if self.counts.saw(launch, r.block):
                for device_id in self.device_ids.pop(launch):
                    del self.owner[device_id]
        self.device.records.clear()

    # ---- members ----------------------------------------------------------------------

    def _join(self, makeup: tuple[Priority, Priority]) -> Member:
        key = next(self.member_keys)
        process, sched, signals = join_member(key, makeup, self.ledger, self.folder, TPCS_PER_TENANT, self.device,
                                              self.policy, timeline=self.tl)
        member = Member(key, process, sched, signals)
        for other in self.members:
            self._follow(member, other)
            self._follow(other, member)
        self.members.append(member)
        for t in member.tenants(LC):
            self._schedule_lc(member, t)
        self.stats["joined"] += 1
        return member

    def _follow(self, follower: Member, leader: Member) -> None:
        """``follower``'s best-effort tenants steal ``leader``'s latency-critical TPCs."""
        self.stats["follows"] += follow_member(follower.scheduler, leader.scheduler, leader.signals)

    def _leave(self, member: Member) -> None:
        member.alive = False
        self.members.remove(member)
        sched = member.scheduler
        sched.synchronize()
        self.tl.advance_to(self.tl.now_us() + 2 * self.policy.lc_idle_grace_us + self.policy.steal_poll_us)
        for t in member.tenants(LC):
            if not t.gate.is_open() or t.gate_held:
                self.problems.append(f"{t.name}: its gate was closed when it left")
        if request_left_open(sched, member.signals):
            self.problems.append(f"member {member.key}: a request was left open")
        unfollow_member((other.scheduler for other in self.members), member.signals)
        sched.close()
        for signal in member.signals.values():
            signal.close()
        self.ledger.unregister(process=member.process)
        self.stats["left"] += 1

    # ---- what tenants do --------------------------------------------------------------

    def _schedule_lc(self, member: Member, tenant: Any) -> None:
        self.tl.call_at(self.tl.now_us() + self.rng.expovariate(1 / 5000.0), lambda: self._lc_step(member, tenant))

    def _lc_step(self, member: Member, tenant: Any) -> None:
        if not member.alive:
            return
        r = self.rng.random()
        blocks, block_us = self.rng.choice(LC_SHAPES)
        saved = getattr(tenant_runtime._current, "tenant", None)
        tenant_runtime._current.tenant = tenant  # its thread, as `with tenant:` binds it
        try:
            atomizer = tenant.atomizer
            if r < 0.5:
                with tenant.request():
                    for _ in range(self.rng.randint(1, 3)):
                        atomizer.launch_whole(*self._lc_launch(blocks, block_us, tenant.stream))
                self.stats["lc_requests"] += 1
            elif r < 0.65:
                with tenant.on_tpcs(self.rng.choice(ON_TPCS)) as stream:
                    atomizer.launch_whole(*self._lc_launch(blocks, block_us, stream))
                self.stats["lc_on_tpcs"] += 1
            elif r < 0.8:
                atomizer.launch_whole(*self._lc_launch(blocks, block_us, tenant.stream))
                self.stats["lc_unmarked"] += 1
            elif r < 0.9:
                graph = SimGraph([self._whole(b, us)[0] for b, us in self.rng.sample(LC_SHAPES, 2)])
                atomizer.launch_graph(graph, tenant.stream)
                self.stats["lc_graphs"] += 1
            else:
                with tenant.request():
                    member.scheduler.submit_for(tenant, self._plan(blocks, block_us))
                self.stats["lc_plans"] += 1
        finally:
            tenant_runtime._current.tenant = saved
        self._schedule_lc(member, tenant)

    def _lc_launch(self, blocks: int, block_us: float, stream: Any) -> tuple[Any, Any, Any]:
        launch, describe = self._whole(blocks, block_us)
        return launch, stream, describe

    def _be_turn(self, member: Member, tenant: Any) -> None:
        r = self.rng.random()
        if r < 0.85:
            blocks, block_us = self.rng.choice(BE_SHAPES)
            self.stats["be_launches"] += 1
            self._waits = 0
            self._interrupt_armed = self.stats["be_launches"] % self.interrupt_every == 0
            try:
                member.scheduler.submit_for(tenant, self._plan(blocks, block_us))
            except SoakInterrupt:
                self.stats["interrupted"] += 1
            self._interrupt_armed = False
        elif r < 0.93:
            tenant.synchronize()
            self.stats["be_synchronize"] += 1
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "a best-effort graph runs whole", once per scheduler
                tenant.atomizer.launch_graph(SimGraph([self._whole(*self.rng.choice(BE_SHAPES))[0]]), tenant.stream)
            self.stats["be_graphs"] += 1

    # ---- the run ----------------------------------------------------------------------

    def _round(self, virtual_s: float) -> None:
        """Members join, act, rotate and all leave again, for ``virtual_s`` of virtual time."""
        for makeup in MEMBERS:
            self._join(makeup)
        end_us = self.tl.now_us() + virtual_s * 1e6
        next_rotation = self.tl.now_us() + self.rotate_ms * 1e3
        turn = 0
        while self.tl.now_us() < end_us:
            if self.tl.now_us() >= next_rotation:
                oldest = self.members[0]
                makeup = tuple(t.priority for t in oldest.scheduler.tenants.values() if not t.remote)
                self._leave(oldest)
                self._join(makeup)  # type: ignore[arg-type]
                next_rotation = self.tl.now_us() + self.rotate_ms * 1e3
            players = [(m, t) for m in self.members for t in m.tenants(BE)]
            member, tenant = players[turn % len(players)]
            turn += 1
            self._be_turn(member, tenant)
            self._drain_records()
        while self.members:
            self._leave(self.members[0])
        self.device.run_until_idle()
        self._drain_records()

    def run(self) -> dict[str, Any]:
        """Warm up, take the resources, soak, take them again; the results and checks."""
        t0 = time.perf_counter()
        started = self.trace_memory and not tracemalloc.is_tracing()
        if started:
            tracemalloc.start()
        self._round(self.virtual_s / 10)
        start = Resources.now(self.folder)
        v0 = self.tl.now_us()
        self._round(self.virtual_s)
        virtual_s = (self.tl.now_us() - v0) / 1e6
        self.ledger.close()
        end = Resources.now(self.folder)
        if started:
            tracemalloc.stop()
        resources = compare(start, end)
        checks = {
            "blocks_exactly_once": not self.counts.problems and not self.counts.pending(),
            "requests_closed_and_gates_open": not self.problems,
            "partitions_closed": self.device.live_partitions() == 0,
            **{f"{name}_back": row["ok"] for name, row in resources.items()},
        }
        return {"mode": "simulated", "virtual_s": virtual_s, "real_s": time.perf_counter() - t0,
                "launches": self.counts.launches, "blocks": self.counts.blocks, **self.stats,
                "problems": self.counts.problems[:20] + self.problems[:20], "pending": self.counts.pending()[:20],
                "resources": resources, "checks": checks, "ok": all(checks.values())}
