"""CPU tier: real processes on one simulated GPU through one ledger: they get disjoint
TPCs, best-effort ones follow every latency-critical one, and a process that leaves or is
killed (-9, even inside a request) gives its TPCs back to the survivors within 100 ms,
none of them stalling."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lithos_sched.ledger_file import snapshot

REPO = Path(__file__).resolve().parents[1]

#: A tenant process: joins as told by argv[1], reports its followed tenants at 1 ms
#: resolution, and obeys "hold" (open a request, never close it), "run" (a best-effort
#: kernel; reports the TPCs it stole), "leave" and "exit" on stdin.
CHILD = """
import json, sys, threading, time
import lithos
from lithos_atom.plan import KernelKey, LaunchPlan
from lithos_sched import SimKernel

lock = threading.Lock()

def say(**kw):  # one line at a time: two threads report
    with lock:
        sys.stdout.write(json.dumps({"t": time.monotonic(), **kw}) + "\\n")
        sys.stdout.flush()

m = lithos.join(simulate=True, **json.loads(sys.argv[1]))
say(event="joined", pid=__import__("os").getpid(), tpcs=sorted(m.tenant.tpcs))

def report():
    last = None
    while True:
        now = m.scheduler.followed()
        if now != last:
            say(event="followed", followed=now)
            last = now
        time.sleep(0.001)

threading.Thread(target=report, daemon=True).start()
kernel = SimKernel("k", grid_blocks=m.device.num_sms * 8, block_us=50.0)
for line in sys.stdin:
    command = line.strip()
    if command == "hold":
        held = m.tenant.request()
        held.__enter__()
        say(event="holding")
    elif command == "run":
        t0 = m.scheduler.timeline.now_us()
        key = KernelKey("k", (kernel.grid_blocks, 1, 1), (256, 1, 1), 0)
        plan = LaunchPlan.build(key, kernel.grid_blocks, kernel.grid_blocks,
                                lambda s, n, stream: stream.launch(kernel, s, n), wave_blocks=m.device.num_sms)
        m.scheduler.submit_for(m.tenant, plan)
        m.tenant.synchronize()
        stolen = sorted({t for r in m.scheduler.atoms() if r.stolen and r.start_us >= t0 for t in r.tpcs}
                        - m.tenant.tpcs)
        say(event="ran", stolen=stolen)
    elif command == "leave":
        lithos.leave()
        say(event="left")
    elif command == "exit":
        break
"""


class Child:
    """One tenant process and the events it printed."""

    def __init__(self, script: Path, env: dict[str, str], **join: Any):
        self.name = join["name"]
        self.proc = subprocess.Popen([sys.executable, str(script), json.dumps(join)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.events.put(json.loads(line))

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def wait_for(self, test: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """The first event (seen before or arriving within ``timeout``) that passes ``test``."""
        for event in self.seen:
            if test(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.name}: no such event in {timeout} s; stderr: "
                                     f"{self.proc.stderr.read() if self.proc.poll() is not None else ''}") from None
            self.seen.append(event)
            if test(event):
                return event

    def followed(self, names: list[str], after: float = 0.0) -> float:
        """When the process came to follow exactly ``names`` (after host time ``after``)."""
        return self.wait_for(lambda e: e["event"] == "followed" and e["followed"] == names and e["t"] >= after)["t"]


def raw_entries(folder: Path) -> list[str]:
    """The tenant names in the ledger file as it is, without reclaiming anything."""
    [path] = folder.glob("lithos-ledger-*")
    return [e["name"] for e in snapshot(path)["entries"]]


def gone_from_ledger(folder: Path, name: str, since: float, timeout: float = 2.0) -> float:
    """How long after ``since`` the ledger file stopped listing ``name``."""
    while name in raw_entries(folder):
        assert time.monotonic() < since + timeout, f"{name} still in the ledger"
        time.sleep(0.001)
    return time.monotonic() - since


def test_processes_join_follow_leave_and_die_without_stalling_the_survivors(tmp_path):
    script = tmp_path / "tenant.py"
    script.write_text(CHILD)
    folder = tmp_path / "shm"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "LITHOS_LEDGER_DIR": str(folder)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("LITHOS_SIM_GPUS", None)
    children = {c.name: c for c in (
        Child(script, env, name="lc-a", priority="latency-critical", share=0.25),
        Child(script, env, name="lc-b", priority="latency-critical", tpcs=10),
        Child(script, env, name="be-a", priority="best-effort", share=0.25),
        Child(script, env, name="be-b", priority="best-effort", tpcs=12))}
    try:
        owned = {n: set(c.wait_for(lambda e: e["event"] == "joined")["tpcs"]) for n, c in children.items()}
        assert [len(owned[n]) for n in ("lc-a", "lc-b", "be-a", "be-b")] == [16, 10, 16, 12]
        assert len(set().union(*owned.values())) == 54  # disjoint
        assert sorted(raw_entries(folder)) == sorted(children)
        lc_a, lc_b, be_a, be_b = (children[n] for n in ("lc-a", "lc-b", "be-a", "be-b"))
        for be in (be_a, be_b):
            be.followed(["lc-a", "lc-b"])

        # a request of lc-a stops stealing its TPCs; lc-b's idle ones are still stolen
        lc_a.send("hold")
        lc_a.wait_for(lambda e: e["event"] == "holding")
        be_a.send("run")
        assert set(be_a.wait_for(lambda e: e["event"] == "ran")["stolen"]) == owned["lc-b"]

        # lc-b leaves (its process goes on): its TPCs and signal are gone at once
        signals = {e["name"]: e["signal"] for e in snapshot(next(folder.glob("lithos-ledger-*")))["entries"]
                   if e["signal"]}
        t_leave = time.monotonic()
        lc_b.send("leave")
        lc_b.wait_for(lambda e: e["event"] == "left")
        assert "lc-b" not in raw_entries(folder) and not Path(signals["lc-b"]).exists()
        for be in (be_a, be_b):
            be.followed(["lc-a"], after=t_leave)

        # lc-a is killed inside its request: its gate stays closed for good
        t_kill = time.monotonic()
        os.kill(lc_a.proc.pid, signal.SIGKILL)
        noticed = [be.followed([], after=t_kill) - t_kill for be in (be_a, be_b)]
        reclaimed = gone_from_ledger(folder, "lc-a", t_kill)
        print(f"kill -9 of lc-a: unfollowed after {[round(n * 1e3, 1) for n in noticed]} ms, "
              f"its entry reclaimed after {reclaimed * 1e3:.1f} ms")
        assert max(noticed) < 0.1 and reclaimed < 0.1
        assert not Path(signals["lc-a"]).exists()
        be_b.send("run")  # no stall behind the dead tenant's closed gate
        assert be_b.wait_for(lambda e: e["event"] == "ran")["stolen"] == []

        # a best-effort process killed: the other processes' watches reclaim it too
        t_kill = time.monotonic()
        os.kill(be_b.proc.pid, signal.SIGKILL)
        assert gone_from_ledger(folder, "be-b", t_kill) < 0.1
        for child in (be_a, lc_b):
            child.send("exit")
            assert child.proc.wait(timeout=10) == 0
        assert list(folder.iterdir()) == []  # the last to leave removed the ledger
    finally:
        for child in children.values():
            if child.proc.poll() is None:
                child.proc.kill()
            child.proc.wait()
            for stream in (child.proc.stdin, child.proc.stdout, child.proc.stderr):
                stream.close()  # type: ignore[union-attr]
