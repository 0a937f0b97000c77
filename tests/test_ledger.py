"""CPU tier: the per-GPU ledger (`lithos_sched.ledger`): allocation rules, stale entries,
access checks, and one ledger per physical GPU (`lithos_sched.visible_gpus`)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lithos_sched import PartitionError, Priority, TenantConfigError, device_count, open_device
from lithos_sched.ledger import Ledger, TenantClaim, TPCsUnavailableError, ledger_path
from lithos_sched import ledger_file
from lithos_sched.ledger_file import snapshot
from lithos_sched.processes import ProcessId, file_locked
from lithos_sched.request_signal import RequestSignal

LC, BE = Priority.LATENCY_CRITICAL, Priority.BEST_EFFORT


def fake(n: int) -> ProcessId:
    """A process that does not exist (pid numbers beyond pid_max), for ledgers told it lives."""
    return ProcessId(2**30 + n, n)


def test_the_first_process_creates_the_file_owner_only_and_the_last_removes_it(tmp_path):
    with Ledger("GPU-a", 66, directory=tmp_path) as ledger:
        assert ledger.path == ledger_path("GPU-a", tmp_path) == tmp_path / f"lithos-ledger-{os.getuid()}-GPU-a"
        assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o600
        ledger.register([TenantClaim("a", BE, tpcs=2)])
        assert file_locked(ledger.path)  # in use, as /proc/locks tells other users
        ledger.unregister()
        assert not ledger.path.exists()
        ledger.register([TenantClaim("b", BE, tpcs=2)])  # the next registration starts a new file
        generation = ledger.generation()
        assert ledger.path.exists() and generation > 0
        ledger.register([TenantClaim("c", BE, tpcs=2)])
        assert ledger.generation() == generation + 1 and [e["name"] for e in snapshot(ledger.path)["entries"]] == [
            "b", "c"]
        ledger.unregister(["c"])
        with Ledger("GPU-a", 66, directory=tmp_path) as other:  # another reader of the same file
            assert [e.name for e in other.entries()] == ["b"]
        assert ledger.path.exists()  # "b" is still registered
    assert ledger.path.exists()  # and still is: its process lives
    with Ledger("GPU-a", 66, directory=tmp_path) as ledger:
        ledger.unregister(["b"])
    assert not ledger.path.exists()  # the last to leave removed it


def test_allocation_takes_the_lowest_free_tpcs_floor_of_shares_and_is_stable(tmp_path):
    ledger = Ledger("GPU-a", 66, directory=tmp_path, alive=lambda p: True)
    assert ledger.register([TenantClaim("lc", LC, share=0.3)], fake(1)) == {"lc": frozenset(range(19))}  # 19.8
    assert ledger.register([TenantClaim("be", BE, tpcs=4)], fake(2)) == {"be": frozenset(range(19, 23))}
    assert ledger.register([TenantClaim("lc", LC, share=0.3)], fake(1)) == {"lc": frozenset(range(19))}  # stable
    ledger.unregister(["lc"], fake(1))
    assert ledger.register([TenantClaim("x", BE, tpcs=20)], fake(3))["x"] == frozenset([*range(19), 23])
    assert ledger.register([TenantClaim("y", BE, share=0.5)], fake(3))["y"] == frozenset(range(24, 57))
    assert [e.name for e in ledger.entries()] == ["be", "x", "y"]
    ledger.close()


def test_a_claim_that_cannot_be_met_names_who_holds_what(tmp_path):
    ledger = Ledger("GPU-a", 66, directory=tmp_path, alive=lambda p: True)
    ledger.register([TenantClaim("inference", LC, share=0.5)], fake(1))
    ledger.register([TenantClaim("training", BE, tpcs=30)], fake(2))
    with pytest.raises(TPCsUnavailableError, match=r"^tenant 'late' asks for 5 TPCs of GPU GPU-a but 2 of 66 are "
                                                   r"free; held: 'inference' \(pid \d+, latency-critical\): 33 TPCs; "
                                                   r"'training' \(pid \d+, best-effort\): 30 TPCs; "
                                                   r"'ok' \(pid \d+, best-effort\): 1 TPC$"):
        ledger.register([TenantClaim("ok", BE, tpcs=1), TenantClaim("late", BE, tpcs=5)], fake(3))
    assert "ok" not in {e.name for e in ledger.entries()}  # all or none
    with pytest.raises(TenantConfigError, match="'training' is taken on GPU GPU-a by pid"):
        ledger.register([TenantClaim("training", BE, tpcs=1)], fake(3))
    with pytest.raises(TenantConfigError, match="registered already .* unregister it first"):
        ledger.register([TenantClaim("training", BE, tpcs=2)], fake(2))
    with pytest.raises(TenantConfigError, match="duplicate tenant names"):
        ledger.register([TenantClaim("d", BE, tpcs=1), TenantClaim("d", BE, tpcs=1)], fake(3))
    with pytest.raises(TenantConfigError, match="asks for 67 TPCs; the GPU has 66"):
        ledger.register([TenantClaim("big", BE, tpcs=67)], fake(3))
    with pytest.raises(TenantConfigError, match="less than one TPC"):
        ledger.register([TenantClaim("tiny", BE, share=0.01)], fake(3))
    ledger.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"share": 0.5, "tpcs": 2}, "exactly one of share= and tpcs="),
    ({}, "exactly one of share= and tpcs="),
    ({"share": 0.0}, "share must be a number in"),
    ({"share": True}, "share must be a number in"),
    ({"tpcs": 0}, "tpcs must be an int >= 1"),
    ({"tpcs": 2, "memory_limit": 0}, "memory_limit must be an int >= 1"),
    ({"tpcs": 2, "signal": "/dev/shm/x"}, "only a latency-critical tenant publishes"),
])
def test_claims_are_checked_field_by_field(kwargs, message):
    with pytest.raises(TenantConfigError, match=message):
        TenantClaim("t", BE, **kwargs)


_ops = st.lists(st.tuples(st.sampled_from(["register", "unregister", "kill"]), st.integers(0, 5),
                          st.one_of(st.integers(1, 30), st.floats(0.01, 1.0))), max_size=25)


@settings(max_examples=40, deadline=None)
@given(ops=_ops)
def test_live_entries_hold_disjoint_tpcs_of_the_counts_they_claimed(tmp_path_factory, ops):
    """Any sequence of registrations, leaves and deaths among six processes: the live
    entries' TPCs are disjoint, in range, of the claimed counts and never move, and a
    registration fails exactly when too few TPCs are free."""
    dead: set[ProcessId] = set()
    ledger = Ledger("GPU-h", 40, directory=tmp_path_factory.mktemp("l"), alive=lambda p: p not in dead)
    owned: dict[str, frozenset[int]] = {}
    for op, k, size in ops:
        process, name = fake(k), f"t{k}"
        if op == "kill":
            dead.add(process)
            owned.pop(name, None)
        elif op == "unregister" and process not in dead:
            ledger.unregister(process=process)
            owned.pop(name, None)
        elif op == "register" and process not in dead:
            size_kw = {"tpcs": size} if isinstance(size, int) else {"share": size}
            claim = TenantClaim(name, LC if k % 2 else BE, **size_kw)
            free = 40 - sum(len(t) for n, t in owned.items() if n != name)
            try:
                n = claim.tpc_count(40)
            except TenantConfigError:
                continue
            try:
                got = ledger.register([claim], process)[name]
            except TenantConfigError:  # a different claim for a registered name
                assert name in owned
                continue
            except TPCsUnavailableError:
                assert name not in owned and n > free
                continue
            assert len(got) == n and owned.get(name, got) == got
            owned[name] = got
        live = {e.name: e.tpcs for e in ledger.entries()}
        assert live == owned
        assert sum(len(t) for t in live.values()) == len(frozenset().union(*live.values())) <= 40
    ledger.close()


def test_threads_of_one_process_register_through_one_ledger_without_losing_updates(tmp_path, monkeypatch):
    write = ledger_file.write
    monkeypatch.setattr(ledger_file, "write", lambda fd, doc: (time.sleep(0.0005), write(fd, doc)))  # a wide window
    ledger = Ledger("GPU-a", 66, directory=tmp_path, alive=lambda p: True)
    threads = [threading.Thread(target=lambda k=k: [ledger.register([TenantClaim(f"t{k}-{i}", BE, tpcs=1)], fake(k))
                                                    for i in range(8)]) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = ledger.entries()
    assert len(entries) == 64 and len(frozenset().union(*(e.tpcs for e in entries))) == 64
    ledger.close()


def test_a_dead_process_entry_is_reclaimed_by_the_next_reader_with_its_signal_file(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    gone = ProcessId.of(child.pid)
    reused = ProcessId(os.getpid(), ProcessId.current().start + 1)  # this pid, another start: not this process
    signal = RequestSignal.create(tmp_path)
    ledger = Ledger("GPU-a", 66, directory=tmp_path)
    ledger.register([TenantClaim("dead", LC, tpcs=10, signal=str(signal.path))], gone)
    ledger.register([TenantClaim("reused", BE, tpcs=10)], reused)
    ledger.register([TenantClaim("me", BE, tpcs=10)])
    assert {e.name for e in ledger.entries()} == {"dead", "me"}  # a reused pid is not the live process
    child.kill()
    child.wait()
    assert [e.name for e in ledger.entries()] == ["me"]
    assert not signal.path.exists()  # its signal file went with it
    assert ledger.register([TenantClaim("next", BE, tpcs=20)])["next"] == frozenset([*range(10), *range(20, 30)])
    signal.close()
    ledger.close()


def test_a_zombie_counts_as_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    process = ProcessId.of(child.pid)
    while ProcessId.of(child.pid) is not None:  # exited, not yet reaped
        pass
    assert process is None or not process.alive()
    child.wait()


def test_another_users_ledger_or_signal_is_refused_with_the_reason(tmp_path, monkeypatch):
    mine = Ledger("GPU-a", 66, directory=tmp_path)  # open: a live ledger of user `real`
    mine.register([TenantClaim("lc", LC, tpcs=4)])
    signal = RequestSignal.create(tmp_path)
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 1)
    with pytest.raises(PermissionError, match=rf"^GPU GPU-a is shared by lithos processes of user id {real} "
                                              rf"\(.*\); this user \({real + 1}\) cannot join them"):
        Ledger("GPU-a", 66, directory=tmp_path)
    with pytest.raises(PermissionError, match=rf"belongs to user id {real}, not to this user \({real + 1}\)"):
        RequestSignal.attach(signal.path)  # so it cannot close the tenant's gate either
    # a file of another user where this user's ledger goes (planted, say): refused
    ledger_path("GPU-b", tmp_path).write_bytes(b"")
    with pytest.raises(PermissionError, match=rf"^ledger .* belongs to user id {real}, not to this user"):
        Ledger("GPU-b", 66, directory=tmp_path)
    monkeypatch.undo()
    # no live process holds a ledger: another user may start one (only the ownership check fails here)
    mine.close()
    monkeypatch.setattr(os, "getuid", lambda: real + 1)
    with pytest.raises(PermissionError, match="belongs to user id"):
        Ledger("GPU-a", 66, directory=tmp_path)
    monkeypatch.undo()
    signal.close()


def test_a_ledger_open_to_others_or_of_another_gpu_shape_is_refused(tmp_path):
    path = ledger_path("GPU-a", tmp_path)
    path.touch(mode=0o644)
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="open to other users .*mode 644"):
        Ledger("GPU-a", 66, directory=tmp_path)
    path.chmod(0o600)
    path.write_bytes(b"something else")
    with pytest.raises(ValueError, match="is not a lithos ledger"):
        Ledger("GPU-a", 66, directory=tmp_path)
    path.unlink()
    with Ledger("GPU-a", 66, directory=tmp_path) as ledger:
        ledger.register([TenantClaim("a", BE, tpcs=1)])
        with pytest.raises(ValueError, match="with 66 TPCs; this process sees GPU GPU-a with 60"):
            Ledger("GPU-a", 60, directory=tmp_path)


def test_each_simulated_gpu_has_its_own_ledger_keyed_by_the_physical_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("LITHOS_SIM_GPUS", "3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_count(simulate=True) == 3
    uuids = [open_device(i, simulate=True, num_tpcs=8).uuid for i in range(device_count(simulate=True))]
    assert uuids == ["SIM-0", "SIM-1", "SIM-2"]
    ledgers = [Ledger(u, 8, directory=tmp_path) for u in uuids]
    for i, ledger in enumerate(ledgers):
        assert ledger.register([TenantClaim(f"t{i}", BE, share=1.0)])[f"t{i}"] == frozenset(range(8))
    assert len({lg.path for lg in ledgers}) == 3
    # a process that sees GPU 2 as its GPU 0 (CUDA_VISIBLE_DEVICES) opens GPU 2's ledger
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert device_count(simulate=True) == 2
    assert open_device(0, simulate=True, num_tpcs=8).uuid == "SIM-2"
    with pytest.raises(TPCsUnavailableError, match="'t2'"):
        Ledger("SIM-2", 8, directory=tmp_path).register([TenantClaim("other", BE, tpcs=1)])
    with pytest.raises(PartitionError, match="device_id 2 out of range: 2 simulated GPU"):
        open_device(2, simulate=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU CI's "no GPU": every simulated GPU
    assert device_count(simulate=True) == 3
    monkeypatch.setenv("LITHOS_SIM_GPUS", "zero")
    with pytest.raises(ValueError, match="LITHOS_SIM_GPUS='zero' must be an int >= 1"):
        device_count(simulate=True)
    for ledger in ledgers:
        ledger.close()


def test_a_process_killed_while_writing_leaves_the_previous_document_whole(tmp_path, monkeypatch):
    path = tmp_path / "ledger"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    ledger_file.write(fd, {"entries": ["a"]})
    writes = []
    real_pwrite = os.pwrite

    def dies_before_the_header(fd: int, data: bytes, offset: int) -> int:
        if offset == 0:
            raise SystemExit("killed")  # the document is written, the header not yet
        writes.append(offset)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", dies_before_the_header)
    for doc in ({"entries": ["a", "b" * 100]}, {"entries": []}):
        with pytest.raises(SystemExit):
            ledger_file.write(fd, doc)
        assert ledger_file.read(fd, path) == {"entries": ["a"]} and ledger_file.generation(fd) == 1
    monkeypatch.undo()
    assert writes[0] > 64  # the longer document went past the current one, not over it
    real_pwrite(fd, b"{not json", 64)
    with pytest.raises(ValueError, match="is corrupt"):
        ledger_file.read(fd, path)
    os.close(fd)
