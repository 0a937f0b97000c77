"""GPU tier: device-side gates stop queued best-effort atoms at the next atom boundary and
resume them with no host round trip, in one process and across processes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from lithos_atom.bench import atom_cases

pytestmark = pytest.mark.gpu

STAMP = r'''
__device__ unsigned long long now(){ unsigned long long x; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(x)); return x; }
extern "C" __global__ void spin_ns(unsigned long long ns, unsigned long long* t){
  unsigned long long t0 = now(), t1 = t0; while (t1 - t0 < ns) t1 = now();
  if (threadIdx.x == 0 && blockIdx.x == 0) { t[0] = t0; t[1] = t1; } }
extern "C" __global__ void stamp(unsigned long long* t){ if (threadIdx.x == 0 && blockIdx.x == 0) t[0] = now(); }
'''


def _kernels():  # noqa: ANN202
    import cupy

    m = cupy.RawModule(code=STAMP)
    return m.get_function("spin_ns"), m.get_function("stamp")


def test_a_gate_closed_while_an_atom_runs_holds_the_next_one_until_it_opens(device):
    """The wait is evaluated when the running atom ends, not when the stream's front end
    reaches it: a gate closed mid-atom holds the next atom (reclaim within one atom)."""
    import cupy

    from lithos_sched.gates import CLOSED, OPEN, GateBoard
    from lithos_sched.timeline import CupyTimeline

    spin, stamp = _kernels()
    tl = CupyTimeline()
    board = GateBoard()
    tl.prepare_gates(board.memory)
    gate = board.new_gate()
    be, lc = device.partition(range(0, 10)), device.partition(range(10, 20))
    t_atom, t_next, t_close, t_open = (cupy.zeros(2, np.uint64) for _ in range(4))
    spin((1,), (32,), (np.uint64(5_000_000), t_atom), stream=be.normal.cupy)  # the running atom: 5 ms
    tl.wait_gate(be.normal, gate)
    stamp((1,), (32,), (t_next,), stream=be.normal.cupy)  # the next atom
    time.sleep(0.001)
    stamp((1,), (32,), (t_close,), stream=lc.high.cupy)
    tl.write_gate(lc.high, gate, CLOSED)  # a request starts while the atom runs
    time.sleep(0.012)
    stamp((1,), (32,), (t_open,), stream=lc.high.cupy)
    tl.write_gate(lc.high, gate, OPEN)  # and ends 12 ms later
    be.normal.synchronize()
    lc.high.synchronize()
    atom_end = int(cupy.asnumpy(t_atom)[1])
    nxt, closed, opened = (int(cupy.asnumpy(t)[0]) for t in (t_next, t_close, t_open))
    assert closed < atom_end  # closed while the atom ran
    assert nxt > opened  # the next atom waited for the open, not only for the atom's end
    assert nxt - opened < 1_000_000  # and started within a millisecond of it (no host involved)
    be.close()
    lc.close()
    board.close()


def test_a_request_stops_stolen_atoms_and_results_stay_bitwise(device):
    """A best-effort tenant runs a chain of saxpy launches (atoms queued deep at home and on
    the idle latency-critical TPCs) while the latency-critical tenant serves requests: no
    stolen atom starts inside a request, stolen atoms did run, and the chain's result is
    bitwise the plain run's."""
    import cupy

    from lithos_sched import Policy, Priority, Scheduler, TenantSpec

    spin, _ = _kernels()
    sched = Scheduler(device, [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5),
                               TenantSpec("be", Priority.BEST_EFFORT, share=0.5)], Policy(atom_us=250.0))
    assert sched.tenant("lc").gate is not None  # the device can use gates
    rng = np.random.default_rng()
    n = 1 << 24
    xh, yh = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    steps = 40
    out: dict[str, np.ndarray] = {}

    def best_effort() -> None:
        with sched.tenant("be"):
            k = cupy.RawKernel(atom_cases.SAXPY, "saxpy")
            x, bufs = cupy.asarray(xh), [cupy.asarray(yh), cupy.full(n, np.nan, np.float32)]
            blocks = (n + 255) // 256
            for i in range(steps):
                k((blocks,), (256,), (x, bufs[(i + 1) % 2], bufs[i % 2], np.float32(0.5 + i % 3), np.int32(n)))
            out["be"] = cupy.asnumpy(bufs[(steps - 1) % 2])

    thread = threading.Thread(target=best_effort)
    thread.start()
    with sched.tenant("lc") as lc:
        t = cupy.zeros(2, np.uint64)
        while thread.is_alive():
            time.sleep(0.003)
            with lc.request():
                spin((264,), (128,), (np.uint64(500_000), t))  # a 0.5 ms request on its TPCs
                lc.synchronize()
    thread.join()
    windows = sched.request_windows()
    stolen = [r for r in sched.atoms() if r.stolen]
    sched.close()
    assert windows and stolen
    inside = [r for r in stolen for _, start, dur in windows if start + 20.0 < r.start_us < start + dur]
    assert not inside, inside[:3]
    ref = [cupy.asarray(yh), cupy.empty(n, np.float32)]
    k = cupy.RawKernel(atom_cases.SAXPY, "saxpy")
    x = cupy.asarray(xh)
    for i in range(steps):
        k(((n + 255) // 256,), (256,), (x, ref[(i + 1) % 2], ref[i % 2], np.float32(0.5 + i % 3), np.int32(n)))
    assert np.array_equal(out["be"], cupy.asnumpy(ref[(steps - 1) % 2]))


def test_a_request_of_another_process_closes_the_gate_with_its_own_stream(device, tmp_path):
    """The latency-critical process marks a request with its stream
    (`RequestSignal.request(stream=...)`): atoms this process queued behind the shared gate
    wait until the request's own kernels are done."""
    import cupy

    from lithos_sched.request_signal import RequestSignal
    from lithos_sched.timeline import CupyTimeline

    spin, stamp = _kernels()
    tl = CupyTimeline()
    with RequestSignal.create(tmp_path) as signal:
        tl.prepare_gates(signal.gate.memory)
        child = textwrap.dedent(f"""
            import sys, time
            import numpy as np
            if not hasattr(np, "row_stack"):
                np.row_stack = np.vstack
            import cupy
            from lithos_sched.request_signal import RequestSignal
            m = cupy.RawModule(code={STAMP!r})
            spin = m.get_function("spin_ns")
            s = cupy.cuda.Stream(non_blocking=True)
            t = cupy.zeros(2, np.uint64)
            sig = RequestSignal.attach({str(signal.path)!r})
            print("ready", flush=True)
            sys.stdin.readline()
            with sig.request(stream=s):
                spin((1,), (32,), (np.uint64(20_000_000), t), stream=s)  # its request: 20 ms of GPU work
            s.synchronize()  # the block exited before the work ended: the stream opens the gate
            print(int(cupy.asnumpy(t)[1]), flush=True)
            sig.close()
        """)
        proc = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "ready"
        part = device.partition(range(0, 10))
        t_atom, t_next = cupy.zeros(2, np.uint64), cupy.zeros(2, np.uint64)
        spin((1,), (32,), (np.uint64(10_000_000), t_atom), stream=part.normal.cupy)  # 10 ms atom
        tl.wait_gate(part.normal, signal.gate)
        stamp((1,), (32,), (t_next,), stream=part.normal.cupy)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        request_end = int(proc.stdout.readline())
        assert proc.wait(60) == 0
        part.normal.synchronize()
        atom_end, nxt = int(cupy.asnumpy(t_atom)[1]), int(cupy.asnumpy(t_next)[0])
        assert nxt > request_end > atom_end  # held past its atom, until the other process's kernel ended
        assert nxt - request_end < 1_000_000
        part.close()


def test_graphs_captured_in_tenants_run_on_their_tpcs_and_a_latency_critical_one_closes_its_gate(device):
    """Unchanged CuPy code captures a graph inside ``with tenant:`` and replays it: the
    latency-critical graph runs on its tenant's TPCs as one request (its gate closed
    around it), a best-effort one whole on its own TPCs; both give the eager result."""
    import cupy

    from lithos_sched import Priority, Scheduler, TenantSpec
    from lithos_sched.smid_probe import SMID

    sched = Scheduler(device, [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5),
                               TenantSpec("be", Priority.BEST_EFFORT, share=0.5)])
    blocks = 8 * device.num_sms
    for name in ("lc", "be"):
        with sched.tenant(name) as tenant:
            probe = cupy.RawKernel(SMID, "smid")  # made inside: intercepted
            ids = cupy.full(blocks, -1, np.int32)
            capture = cupy.cuda.Stream(non_blocking=True)
            with capture:
                capture.begin_capture()
                probe((blocks,), (32,), (ids,))
                graph = capture.end_capture()
            assert type(graph).__name__ == "CapturedGraph"
            requests = tenant.stats.requests
            with pytest.warns(UserWarning, match="runs whole") if name == "be" else contextlib.nullcontext():
                graph.launch()  # on the current stream: the tenant's
            seen = set(cupy.asnumpy(ids).tolist())
            assert -1 not in seen and seen <= set(tenant.home.sm_ids), name
            if name == "lc":
                assert tenant.stats.requests == requests + 1 and tenant.gate.is_open()  # reopened after it
    sched.close()
