"""The two tenants' loops on the GPU, shared by in-process threads and worker processes.

`serve` plays the inference service's scheduled requests (one at a time, in arrival order,
each synchronized); `train` keeps a best-effort job's iterations queued until told to stop.
Both record raw timestamps on `lithos_atom.bench.ml_colocation.clock` relative to a common
start ``t0``; `ml_figures.lc_figures` / `be_figures` turn them into figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ContextManager

from lithos_atom.bench import ml_services
from lithos_atom.bench.ml_colocation import MLColocationConfig, clock
from lithos_sched.scheduler import Tenant


@dataclasses.dataclass
class LCRecord:
    """Raw per-request records of the LC tenant (completed requests only).

    Attributes
    ----------
    arrivals_s : list of float
        Scheduled arrival, seconds from ``t0``.
    latencies_ms : list of float
        Arrival to completion.
    phases_ms : list of (float, float, float)
        Start late (queueing behind the previous request, or a late wake-up), issuing
        (host), waiting for the GPU.
    """

    arrivals_s: list[float] = dataclasses.field(default_factory=list)
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    phases_ms: list[tuple[float, float, float]] = dataclasses.field(default_factory=list)


#: GIL switch interval of every in-process scenario (the scheduler's own default).
SWITCH_INTERVAL_S = 5e-5


@contextlib.contextmanager
def host_settings() -> Iterator[None]:
    """The host settings a lithos scheduler applies, for every scenario alike.

    A short GIL switch interval and ``gc.freeze()``: without them a latency-critical
    thread waits up to 5 ms for the GIL behind a busy thread, and full collections pause
    every thread (see `lithos_sched.policy.Policy`). Applying them to the baselines
    too keeps host effects out of the comparison of GPU sharing modes.
    """
    saved = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        sys.setswitchinterval(saved)


def build_lc(cfg: MLColocationConfig, stream: Any) -> Any:
    """The inference service of ``cfg`` (`MLColocationConfig.lc_service`, serving its
    `batch_sizes`; weights and inputs set up on ``stream``)."""
    return ml_services.build_service(cfg.lc_service, cfg.size, cfg.batch_sizes(), cfg.seed, stream, cfg.lc_graphs,
                                     decoder=cfg.workload_sizes()["decoder"], rate_hz=cfg.lc_rate_hz)


def build_be(cfg: MLColocationConfig, kind: str, stream: Any) -> Any:
    """The best-effort job ``kind`` (one of `ml_services.BE_JOBS`) of ``cfg``."""
    from kernels.workloads import BatchInference, TrainingJob

    sizes = cfg.workload_sizes()
    if kind == "training":
        return TrainingJob(sizes["mlp"], seed=cfg.seed, stream=stream)
    if kind == "batch_inference":
        return BatchInference(sizes["decoder"], batch=sizes["batch_inference_batch"], seed=cfg.seed + 7,
                              stream=stream)
    if kind == "gpt2_training":
        return ml_services.build_gpt2_job(cfg.size, cfg.training_gemm_max_k, cfg.seed, stream)
    raise ValueError(f"best-effort kind must be one of {ml_services.BE_JOBS}, got {kind!r}")


def _no_bracket(batch: int) -> ContextManager[Any]:
    return contextlib.nullcontext()


def request_bracket(tenant: Tenant, tpcs_by_batch: dict[int, int] | None = None
                    ) -> Callable[[int], ContextManager[Any]]:
    """What `serve` wraps each request of ``tenant`` in: `Tenant.request`, or with
    ``tpcs_by_batch`` `Tenant.on_tpcs` on the TPCs a request of that batch needs (the
    block's CuPy stream is the one the request then runs on)."""
    @contextlib.contextmanager
    def bracket(batch: int) -> Iterator[Any]:
        if tpcs_by_batch is None:
            with tenant.request():
                yield None
        else:
            with tenant.on_tpcs(tpcs_by_batch[batch]) as block_stream:
                yield block_stream.cupy
    return bracket


def serve(service: Any, stream: Any, cfg: MLColocationConfig, t0: float, stop: threading.Event,
          bracket: Callable[[int], ContextManager[Any]] = _no_bracket) -> LCRecord:
    """Play the scheduled requests of ``cfg`` from ``t0`` until ``stop`` is set.

    A request starts at its arrival or when the previous one completes, whichever is
    later; requests not started when ``stop`` is set are not run (they count as arrived
    and not completed). Each request, its issue and the wait for its result, runs inside
    ``bracket(batch)`` (see `request_bracket`), on the stream it yields if not None.
    """
    arrivals, batches = cfg.requests()
    rec = LCRecord()
    for i, (arrival, batch) in enumerate(zip(arrivals.tolist(), batches.tolist())):
        if stop.is_set():
            break
        due = t0 + arrival
        delay = due - clock()
        if delay > 0:
            time.sleep(delay)
        started = clock()
        with bracket(int(batch)) as block_stream:
            on = stream if block_stream is None else block_stream
            service.request(int(batch), on, i)
            issued = clock()
            on.synchronize()
        done = clock()
        rec.arrivals_s.append(arrival)
        rec.latencies_ms.append((done - due) * 1e3)
        rec.phases_ms.append(((started - due) * 1e3, (issued - started) * 1e3, (done - issued) * 1e3))
    return rec


def train(step: Callable[[Any], Any], stream: Any, depth: int, t0: float, stop: threading.Event) -> list[float]:
    """Issue ``step(stream)`` back to back with ``depth`` iterations queued, until ``stop``.

    Returns
    -------
    list of float
        Completion time of every iteration, seconds from ``t0``.
    """
    import cupy

    done: list[float] = []
    queued: list[Any] = []
    while not stop.is_set():
        step(stream)
        # A blocking-sync event: the waiting thread sleeps in the driver instead of
        # spinning a core beside the latency-critical thread.
        ev = cupy.cuda.Event(block=True, disable_timing=True)
        ev.record(stream)
        queued.append(ev)
        while len(queued) > depth:
            queued.pop(0).synchronize()
            done.append(clock() - t0)
    for ev in queued:
        ev.synchronize()
        done.append(clock() - t0)
    return done


@dataclasses.dataclass
class LCThread:
    """One latency-critical tenant of `run_group`.

    Attributes
    ----------
    cfg : MLColocationConfig
        Its requests (`MLColocationConfig.requests`).
    enter : callable
        ``enter()`` returns the context its thread runs in (a lithos tenant, or a stream's
        context); inside it CuPy's current stream is the one used.
    service : object
        Its service (``request(batch, stream, which)``).
    bracket : callable
        What each request runs in (`serve`'s ``bracket``; see `request_bracket`).
    """

    cfg: MLColocationConfig
    enter: Callable[[], Any]
    service: Any
    bracket: Callable[[int], ContextManager[Any]] = _no_bracket


def run_threads(cfg: MLColocationConfig, lc: tuple[Callable[[], Any], Any] | None,
                be: tuple[Callable[[], Any], Callable[[Any], Any]] | None,
                lc_bracket: Callable[[int], ContextManager[Any]] = _no_bracket) -> dict[str, Any]:
    """Run the LC and/or BE loop in threads for ``cfg.span_s``; return their raw records.

    Parameters
    ----------
    lc : (enter, service) or None
        The LC tenant (see `LCThread`).
    be : (enter, step) or None
        Likewise for the BE thread; ``step(stream)`` issues one iteration.
    lc_bracket : callable
        What each LC request runs in (`serve`'s ``bracket``; see `request_bracket`).

    Returns
    -------
    dict
        ``lc``: an `LCRecord`, ``be``: completion times (each present when run).

    Raises
    ------
    BaseException
        The first exception of either thread (the other is stopped).
    """
    lcs = [] if lc is None else [LCThread(cfg, lc[0], lc[1], lc_bracket)]
    out = run_group(cfg.span_s, lcs, be, cfg.be_queue_depth)
    return {k: (v[0] if k == "lc" else v) for k, v in out.items()}


def run_group(span_s: float, lcs: Sequence[LCThread], be: tuple[Callable[[], Any], Callable[[Any], Any]] | None,
              be_depth: int) -> dict[str, Any]:
    """Run every LC tenant's requests and the BE loop in threads of their own for ``span_s``.

    Parameters
    ----------
    span_s : float
        Warm-up plus measurement: the threads stop then.
    lcs : sequence of LCThread
        The latency-critical tenants.
    be : (enter, step) or None
        The best-effort thread: ``enter()`` as `LCThread.enter`, ``step(stream)`` issues
        one iteration.
    be_depth : int
        Iterations the BE thread keeps queued.

    Returns
    -------
    dict
        ``lc``: an `LCRecord` per LC tenant, in order (when there are any), ``be``:
        completion times (when run).

    Raises
    ------
    BaseException
        The first exception of any thread (the others are stopped).
    """
    import cupy

    stop = threading.Event()
    records: list[LCRecord | None] = [None] * len(lcs)
    out: dict[str, Any] = {}
    errors: list[BaseException] = []
    t0 = clock() + 0.05

    def lc_body(i: int) -> Callable[[], None]:
        def body() -> None:
            t = lcs[i]
            with t.enter():
                records[i] = serve(t.service, cupy.cuda.get_current_stream(), t.cfg, t0, stop, t.bracket)
        return body

    def be_body() -> None:
        enter, step = be  # type: ignore[misc]
        with enter():
            out["be"] = train(step, cupy.cuda.get_current_stream(), be_depth, t0, stop)

    def guarded(body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # re-raised below: a failed tenant fails the scenario
                errors.append(exc)
                stop.set()
        return run

    bodies = [(f"lc{i}" if len(lcs) > 1 else "lc", lc_body(i)) for i in range(len(lcs))]
    if be is not None:
        bodies.append(("be", be_body))
    threads = [threading.Thread(target=guarded(body), name=name) for name, body in bodies]
    with host_settings():
        for t in threads:
            t.start()
        stop.wait(max(0.0, t0 + span_s - clock()))
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    if lcs:
        out["lc"] = records
    return out


def measure_run(progress: Any, task: Any, description: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one scenario on the GPU under a progress bar, and time it.

    Parameters
    ----------
    progress : rich.progress.Progress
        The bar; ``task`` is shown as ``description`` while ``fn`` runs, then advanced.
    task : rich.progress.TaskID
    description : str
    fn : callable
        The scenario; returns its figures.

    Returns
    -------
    dict
        ``fn``'s figures after the device is synchronized, or ``{"error": ...}`` when it
        raised (recorded and shown: one broken scenario must not void the others); with
        its ``wall_s``.
    """
    import cupy

    progress.update(task, description=description)
    t = time.monotonic()
    try:
        out = fn()
        cupy.cuda.Device().synchronize()
    except Exception as exc:  # recorded and shown: one broken scenario must not void the others
        out = {"error": f"{type(exc).__name__}: {exc}"}
    out["wall_s"] = time.monotonic() - t
    progress.advance(task)
    return out
