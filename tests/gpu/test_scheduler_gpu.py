"""GPU tier: tenants keep the semantics of the code they run, on their own TPCs."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lithos_atom.bench import atom_cases
from tests.sizers import FixedSizer

pytestmark = pytest.mark.gpu


def _saxpy_inputs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh random ``x`` and ``y`` of ``n`` float32 each."""
    rng = np.random.default_rng()
    return rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)


def _plain_saxpy(xh: np.ndarray, yh: np.ndarray, a: float) -> np.ndarray:
    """``a * x + y`` by one plain, unsplit launch of the saxpy kernel outside lithos."""
    import cupy

    n = xh.size
    out = cupy.empty(n, np.float32)
    cupy.RawKernel(atom_cases.SAXPY, "saxpy")(((n + 255) // 256,), (256,), (cupy.asarray(xh), cupy.asarray(yh), out,
                                                                           np.float32(a), np.int32(n)))
    return cupy.asnumpy(out)


def _half_split(device, policy=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
    """A `Scheduler` of a latency-critical tenant ``"lc"`` and a best-effort one ``"be"``,
    half of the TPCs each; ``kwargs`` go to the scheduler (``right_sizer``)."""
    from lithos_sched import Priority, Scheduler, TenantSpec

    return Scheduler(device, [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=0.5),
                              TenantSpec("be", Priority.BEST_EFFORT, share=0.5)], policy, **kwargs)


def _saxpy_operands(xh: np.ndarray, yh: np.ndarray) -> tuple:
    """The saxpy kernel, ``x`` and ``y`` on the device and a NaN-poisoned output, made on
    the current stream (inside a tenant: its stream), as user code would."""
    import cupy

    k = cupy.RawKernel(atom_cases.SAXPY, "saxpy")
    return k, cupy.asarray(xh), cupy.asarray(yh), cupy.full(xh.size, np.nan, np.float32)


def test_unchanged_code_in_a_tenant_sees_its_results_and_runs_on_its_tpcs(device):
    import cupy

    from lithos_atom._compat import import_numba_cuda
    from lithos_sched.smid_probe import SMID

    cuda = import_numba_cuda()
    sched = _half_split(device)
    rng = np.random.default_rng()
    n = 3_000_001
    xh = rng.standard_normal(n).astype(np.float32)
    yh = rng.standard_normal(n).astype(np.float32)
    with sched.tenant("be"):
        k = cupy.RawKernel(atom_cases.SAXPY, "saxpy")  # user code, unchanged
        x, y = cupy.asarray(xh), cupy.asarray(yh)
        out = cupy.full(n, np.nan, np.float32)
        blocks = (n + 255) // 256
        for _ in range(3):  # the first (never timed) runs as one-wave atoms, later ones whole (short)
            k((blocks,), (256,), (x, y, out, np.float32(2.0), np.int32(n)))
        z = cupy.asnumpy(out * 3)  # an opaque op and a host read after the launches

        @cuda.jit
        def add_one(a):
            i = cuda.grid(1)
            if i < a.shape[0]:
                a[i] += 1.0

        add_one[blocks, 256](out)  # Numba on the default stream: the tenant's stream
        w = cupy.asnumpy(out)
    plain = cupy.RawKernel(atom_cases.SAXPY, "saxpy")  # the same launch, unsplit, outside lithos
    ref = cupy.empty(n, np.float32)
    plain((blocks,), (256,), (cupy.asarray(xh), cupy.asarray(yh), ref, np.float32(2.0), np.int32(n)))
    assert np.array_equal(z, cupy.asnumpy(ref * 3))
    assert np.array_equal(w, cupy.asnumpy(ref + 1))
    with sched.tenant("lc") as lc:
        probe = cupy.RawKernel(SMID, "smid")
        ids = cupy.full(4096, -1, np.int32)
        probe((4096,), (32,), (ids,))
        seen = set(cupy.asnumpy(ids).tolist())
    assert seen <= set(lc.home.sm_ids)
    stats = sched.stats()["tenants"]
    assert stats["be"]["kernels"] == 4 and stats["be"]["atoms"] > 4 and stats["lc"]["kernels"] == 1
    sched.close()


def _saxpy_chain(kernel, x, bufs, n, steps, stream=None, first=0):
    """buf[i % 2] = i * x + buf[(i + 1) % 2]: each launch reads the previous one's output."""
    blocks = (n + 255) // 256
    for i in range(first, first + steps):
        kernel((blocks,), (256,), (x, bufs[(i + 1) % 2], bufs[i % 2], np.float32(i), np.int32(n)), stream=stream)


@pytest.mark.parametrize("right_sized", [False, True], ids=["home", "right_sized"])
def test_latency_critical_launches_run_unsplit_in_order(device, right_sized):
    """Each launch runs whole, in the order written, on the tenant's stream or (right-
    sized) on a partition of 3 of its TPCs joined to that stream by event waits."""
    import cupy

    from lithos_atom._compat import import_numba_cuda
    from lithos_sched import Policy

    cuda = import_numba_cuda()
    sched = _half_split(device, Policy(lc_timing_every=3), right_sizer=FixedSizer(3) if right_sized else None)
    rng = np.random.default_rng()
    n = 1_000_003
    xh, yh = rng.standard_normal((2, n)).astype(np.float32)
    with sched.tenant("lc") as lc:
        k = cupy.RawKernel(atom_cases.SAXPY, "saxpy")
        x = cupy.asarray(xh)
        bufs = [cupy.full(n, np.nan, np.float32), cupy.asarray(yh)]
        _saxpy_chain(k, x, bufs, n, 7)  # on the tenant's stream
        other = cupy.cuda.Stream(non_blocking=True)
        with other:  # a stream of the user's choosing: ordered after what it holds, not before
            other.wait_event(cupy.cuda.get_current_stream().record())
            k(((n + 255) // 256,), (256,), (x, bufs[0], bufs[1], np.float32(0.5), np.int32(n)))
        other.synchronize()
        got_other = cupy.asnumpy(bufs[1])

        @cuda.jit
        def add_one(a):
            i = cuda.grid(1)
            if i < a.shape[0]:
                a[i] += 1.0

        add_one[(n + 255) // 256, 256](bufs[1])  # Numba on the default stream: the tenant's stream
        lc.synchronize()  # untimed launches included
        got_numba = cupy.asnumpy(bufs[1])
    plain = cupy.RawKernel(atom_cases.SAXPY, "saxpy")
    ref = [cupy.full(n, np.nan, np.float32), cupy.asarray(yh)]
    _saxpy_chain(plain, cupy.asarray(xh), ref, n, 7)
    plain(((n + 255) // 256,), (256,), (cupy.asarray(xh), ref[0], ref[1], np.float32(0.5), np.int32(n)))
    assert np.array_equal(got_other, cupy.asnumpy(ref[1]))
    assert np.array_equal(got_numba, cupy.asnumpy(ref[1] + 1))
    stats = sched.stats()["tenants"]["lc"]
    assert stats["kernels"] == 9 and stats["atoms"] == 9 and stats["timed_atoms"] == 3
    assert len(sched.tenant("lc").book.active_tpcs) == (3 if right_sized else len(sched.tenant("lc").tpcs))
    sched.close()


def test_a_request_block_runs_on_its_first_tpcs_in_order_with_the_tenant_stream(device):
    """`Tenant.on_tpcs`: the launches and CuPy ops of the block run on the tenant's first
    3 TPCs, after what the tenant queued before and before what it queues after."""
    import cupy

    from lithos_sched import Policy
    from lithos_sched.smid_probe import SMID

    sched = _half_split(device, Policy(lc_timing_every=3))
    rng = np.random.default_rng()
    n = 1_000_003
    xh, yh = rng.standard_normal((2, n)).astype(np.float32)
    with sched.tenant("lc") as lc:
        k = cupy.RawKernel(atom_cases.SAXPY, "saxpy")
        probe = cupy.RawKernel(SMID, "smid")
        x = cupy.asarray(xh)
        bufs = [cupy.full(n, np.nan, np.float32), cupy.asarray(yh)]
        _saxpy_chain(k, x, bufs, n, 3)  # before the block, on the tenant's stream
        with lc.on_tpcs(3):
            _saxpy_chain(k, x, bufs, n, 4, first=3)
            ids = cupy.full(4096, -1, np.int32)  # a CuPy op inside the block
            probe((4096,), (32,), (ids,))
        _saxpy_chain(k, x, bufs, n, 2, first=7)  # after it, on the tenant's stream again
        got = cupy.asnumpy(bufs[8 % 2])
        seen = set(cupy.asnumpy(ids).tolist())
        block_sms = set(lc.book.rightsized[3].sm_ids)
    plain = cupy.RawKernel(atom_cases.SAXPY, "saxpy")
    ref = [cupy.full(n, np.nan, np.float32), cupy.asarray(yh)]
    _saxpy_chain(plain, cupy.asarray(xh), ref, n, 9)
    assert np.array_equal(got, cupy.asnumpy(ref[8 % 2]))
    assert len(block_sms) == 6 and seen <= block_sms
    assert sched.stats()["tenants"]["lc"]["kernels"] == 10
    sched.close()


def test_numba_kernel_on_a_partition_stream(device):
    import cupy

    from lithos_atom._compat import import_numba_cuda

    cuda = import_numba_cuda()
    part = device.partition(range(5))

    @cuda.jit
    def smid(out):
        out[cuda.grid(1)] = cuda.threadIdx.x  # any write; the SM id comes from the probe below

    out = cupy.zeros(64 * 32, np.int32)
    smid[64, 32, part.normal.numba](out)
    part.normal.synchronize()
    assert int(out.sum()) == 64 * sum(range(32))


def test_a_kernel_fault_is_reported_not_hung():
    script = textwrap.dedent('''
        import cupy, numpy as np
        from lithos_sched import open_device, Scheduler, TenantSpec, Priority, KernelFaultError
        dev = open_device(simulate=False)
        s = Scheduler(dev, [TenantSpec("be", Priority.BEST_EFFORT, share=1.0)])
        with s.tenant("be"):
            k = cupy.RawKernel('extern "C" __global__ void bad(float* p) { p[(long long)blockIdx.x << 40] = 1.0f; }', "bad")
            try:
                for _ in range(3):
                    k((2048,), (32,), (cupy.empty(1, np.float32),))
                s.tenant("be").synchronize()
            except KernelFaultError as e:
                print("REPORTED:", e)
            except Exception as e:
                print("REPORTED:", type(e).__name__, e)
    ''')
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "REPORTED:" in proc.stdout, proc.stdout + proc.stderr
    assert "illegal" in (proc.stdout + proc.stderr).lower() or "fault" in proc.stdout.lower()


def test_a_best_effort_launch_waits_for_an_open_request_and_keeps_its_results(device):
    import threading

    import cupy

    from lithos_sched import Policy

    sched = _half_split(device, Policy(request_hold_max_us=10e6))
    n = 3_000_001
    xh, yh = _saxpy_inputs(n)
    opened, leave = threading.Event(), threading.Event()
    order: list[str] = []

    def serve() -> None:
        with sched.tenant("lc") as lc, lc.request():
            opened.set()
            leave.wait(10)
            order.append("request ended")

    lc_thread = threading.Thread(target=serve)
    with sched.tenant("be") as be:
        k, x, y, out = _saxpy_operands(xh, yh)
        blocks = (n + 255) // 256
        k((blocks,), (256,), (x, y, out, np.float32(2.0), np.int32(n)))  # timed whole: learns the kernel
        be.synchronize()
        lc_thread.start()
        assert opened.wait(10)
        threading.Timer(0.05, leave.set).start()
        k((blocks,), (256,), (x, y, out, np.float32(3.0), np.int32(n)))  # held until the request ends
        order.append("launch issued")
        got = cupy.asnumpy(out)
    lc_thread.join(10)
    assert np.array_equal(got, _plain_saxpy(xh, yh, 3.0))
    assert order == ["request ended", "launch issued"]
    assert be.stats.request_hold_ms > 0 and sched.tenant("lc").stats.requests == 1
    sched.close()


@pytest.mark.parametrize("mode", ["best-effort", "all"])
def test_blocking_waits_keep_atoms_results_and_retire_them(device, mode):
    """With blocking-sync waits (`Policy.blocking_waits`), a best-effort launch split into
    many atoms, each waited for asleep under a shallow queue cap, gives the unsplit
    launch's results bitwise and every atom is retired."""
    import cupy

    from lithos_sched import Policy

    sched = _half_split(device, Policy(blocking_waits=mode, atom_us=50.0, home_atom_us=50.0, queue_cap_us=20.0,
                                       home_queue_cap_us=20.0, short_best_effort_whole=False))
    n = 4_000_003
    xh, yh = _saxpy_inputs(n)
    blocks = (n + 255) // 256
    try:
        with sched.tenant("be") as be:
            k, x, y, out = _saxpy_operands(xh, yh)
            k((blocks,), (256,), (x, y, out, np.float32(2.0), np.int32(n)))  # whole, timed: learns the kernel
            be.synchronize()
            atoms_before = be.stats.atoms
            k((blocks,), (256,), (x, y, out, np.float32(3.0), np.int32(n)))  # now in atoms
            got = cupy.asnumpy(out)
            be.synchronize()
            assert be.stats.atoms - atoms_before > 1  # the launch was split
            assert not be.book.inflight  # every atom retired
    finally:
        sched.close()
    assert np.array_equal(got, _plain_saxpy(xh, yh, 3.0))


def test_short_best_effort_launches_run_whole_with_the_unsplit_results(device):
    """A best-effort launch predicted to be one atom (`Policy.short_best_effort_whole`)
    runs the original kernel unsplit: bitwise the plain launch's results, retired like an atom."""
    import cupy

    from lithos_sched import Policy

    sched = _half_split(device, Policy())
    whole = []
    short = sched.launch_short_best_effort

    def spy(*args):  # noqa: ANN002, ANN202
        whole.append(short(*args))
        return whole[-1]

    sched.launch_short_best_effort = spy
    n = 100_003
    xh, yh = _saxpy_inputs(n)
    blocks = (n + 255) // 256
    try:
        with sched.tenant("be") as be:
            k, x, y, out = _saxpy_operands(xh, yh)
            k((blocks,), (256,), (x, y, out, np.float32(2.0), np.int32(n)))  # never timed: through its plan
            be.synchronize()
            out.fill(np.nan)
            k((blocks,), (256,), (x, y, out, np.float32(3.0), np.int32(n)))  # now predicted short: whole
            got = cupy.asnumpy(out)
            be.synchronize()
            assert whole == [False, True]
            assert be.stats.kernels == be.stats.atoms == 2 and not be.book.inflight
    finally:
        sched.close()
    assert np.array_equal(got, _plain_saxpy(xh, yh, 3.0))


def test_a_followed_remote_tenants_tpcs_are_stolen_only_between_its_requests(device, tmp_path):
    """`Tenant.follow_requests`: best-effort atoms take the latency-critical TPCs only while
    the signal shows no request open, and keep the unsplit launch's results bitwise."""
    import cupy

    from lithos_sched import Policy
    from lithos_sched.request_signal import RequestSignal

    sched = _half_split(device, Policy(lc_idle_grace_us=0.0))
    n = 2_000_003
    xh, yh = _saxpy_inputs(n)
    blocks = (n + 255) // 256
    try:
        with RequestSignal.create(tmp_path) as signal:
            sched.tenant("lc").follow_requests(signal)
            with sched.tenant("be") as be:
                k, x, y, out = _saxpy_operands(xh, yh)
                stolen = []
                for a, busy in ((1.0, True), (2.0, False)):
                    before = be.stats.stolen_atoms
                    with signal.request() if busy else contextlib.nullcontext():
                        k((blocks,), (256,), (x, y, out, np.float32(a), np.int32(n)))
                        be.synchronize()
                    stolen.append(be.stats.stolen_atoms - before)
                got = cupy.asnumpy(out)
            assert stolen[0] == 0 and stolen[1] > 0  # held off during the request, stealing after it
    finally:
        sched.close()
    assert np.array_equal(got, _plain_saxpy(xh, yh, 2.0))


def _record_stolen_partitions(sched) -> list[frozenset[int]]:  # noqa: ANN001
    """The TPC set of every stolen atom ``sched`` issues from now on (a spy on its issue)."""
    stolen_on: list[frozenset[int]] = []
    issue = sched._issue

    def spy(tenant, plan, start, count, partition, stream, predicted, stolen):  # noqa: ANN001, ANN202
        if stolen:
            stolen_on.append(frozenset(partition.tpcs))
        return issue(tenant, plan, start, count, partition, stream, predicted, stolen)

    sched._issue = spy
    return stolen_on


def _best_effort_saxpy(sched, xh: np.ndarray, yh: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """``2 * x + y`` launched in the best-effort tenant (its result read before it syncs)."""
    import cupy

    n = xh.size
    with sched.tenant("be") as be:
        k, x, y, out = _saxpy_operands(xh, yh)
        k(((n + 255) // 256,), (256,), (x, y, out, np.float32(2.0), np.int32(n)))
        got = cupy.asnumpy(out)
        be.synchronize()
    return got


def test_a_right_sized_remote_request_leaves_its_other_tpcs_to_stolen_atoms(device, tmp_path):
    """A remote request marked on the first 8 of the latency-critical TPCs: best-effort
    atoms still steal, only the others, with the unsplit launch's results bitwise."""
    from lithos_sched import Policy
    from lithos_sched.request_signal import RequestSignal

    sched = _half_split(device, Policy(lc_idle_grace_us=0.0))
    in_request = set(sorted(sched.tenant("lc").tpcs)[:8])
    stolen_on = _record_stolen_partitions(sched)
    xh, yh = _saxpy_inputs(2_000_003)
    try:
        with RequestSignal.create(tmp_path) as signal:
            sched.tenant("lc").follow_requests(signal)
            with signal.request(tpcs=8):
                got = _best_effort_saxpy(sched, xh, yh)
    finally:
        sched.close()
    assert stolen_on and not any(t & in_request for t in stolen_on)
    assert all(t - sched.tenant("be").tpcs for t in stolen_on)  # the request's neighbours were stolen
    assert np.array_equal(got, _plain_saxpy(xh, yh, 2.0))


def test_stolen_atoms_leave_the_reserved_tpcs_of_an_idle_latency_critical_tenant(device):
    """`Policy.steal_reserve_tpcs`: on real partitions, atoms stolen from an idle
    latency-critical tenant never run on its first reserved TPCs, with the unsplit
    launch's results bitwise."""
    from lithos_sched import Policy

    sched = _half_split(device, Policy(lc_idle_grace_us=0.0, steal_reserve_tpcs=4))
    reserved = set(sorted(sched.tenant("lc").tpcs)[:4])
    stolen_on = _record_stolen_partitions(sched)
    xh, yh = _saxpy_inputs(2_000_003)
    try:
        got = _best_effort_saxpy(sched, xh, yh)
    finally:
        sched.close()
    assert stolen_on and not any(t & reserved for t in stolen_on)
    assert all(t - sched.tenant("be").tpcs for t in stolen_on)  # the other TPCs were stolen
    assert np.array_equal(got, _plain_saxpy(xh, yh, 2.0))


BURN = r'''
extern "C" __global__ void burn(const float* x, float* out, int iters, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    for (int k = 0; k < iters; ++k) v = v * 0.999999f + 1e-6f;  // a dependent chain: long blocks
    out[i] = v;
}
'''


def test_the_next_atom_is_issued_behind_the_running_one_with_the_unsplit_results(device):
    """`Policy.issue_ahead_of_drain` ``"all"``: on the GPU, a best-effort atom is issued
    while the one before it still runs on the stolen TPCs, and the launch keeps the
    unsplit launch's results bitwise."""
    import cupy

    from lithos_sched import Policy

    sched = _half_split(device, Policy(lc_idle_grace_us=0.0, issue_ahead_of_drain="all"))
    behind_running: list[int] = []  # per atom issued with a prediction: its partition's unfinished atoms
    issue = sched._issue

    def spy(tenant, plan, start, count, partition, stream, predicted, stolen):  # noqa: ANN001, ANN202
        if predicted is not None and stolen:
            behind_running.append(sum(not sched.timeline.done(r.end) for r in tenant.book.inflight
                                      if r.partition is partition))
        return issue(tenant, plan, start, count, partition, stream, predicted, stolen)

    sched._issue = spy
    n, iters = 40_000_000, 20_000  # about 150 waves of ~50 us blocks on the H200
    xh = np.random.default_rng().standard_normal(n).astype(np.float32)
    blocks = (n + 255) // 256
    try:
        with sched.tenant("be") as be:
            k = cupy.RawKernel(BURN, "burn")
            x, out = cupy.asarray(xh), cupy.full(n, np.nan, np.float32)
            k((blocks,), (256,), (x, out, np.int32(iters), np.int32(n)))  # never timed: learns the kernel
            be.synchronize()
            out.fill(np.nan)
            k((blocks,), (256,), (x, out, np.int32(iters), np.int32(n)))  # atoms of ~1 ms, predicted
            got = cupy.asnumpy(out)
            be.synchronize()
    finally:
        sched.close()
    assert len(behind_running) > 2 and any(behind_running)
    plain = cupy.full(n, np.nan, np.float32)
    cupy.RawKernel(BURN, "burn")((blocks,), (256,), (cupy.asarray(xh), plain, np.int32(iters), np.int32(n)))
    assert np.array_equal(got, cupy.asnumpy(plain))
