"""One tenant of the ML co-location benchmark in its own process (the multi-process baselines).

Run as ``python -m lithos_atom.bench.ml_colocation_worker``; it speaks JSON lines:

1. parent -> worker (stdin): ``{"config": {...MLColocationConfig...}, "role": "lc" | "be",
   "be_kind": "training" | "batch_inference", "tpcs": [...] (optional)}``; with ``tpcs``
   the worker runs on a green-context partition of those TPCs (the high-priority stream
   for ``lc``) and its result also holds ``sms_seen``: the SMs a probe kernel on that
   stream ran on, ``partition_sms``: the partition's SMs by the device's probe (None, with
   ``probe_error``, where that probe fails); with ``"request_signal": path`` the pair is
   lithos across processes: ``lc`` marks each request in that `RequestSignal`, ``be`` runs
   its job as the best-effort tenant of a lithos `Scheduler` whose latency-critical tenant
   follows the signal (`Tenant.follow_requests`; ``"policy": {...}`` changes its `Policy`
   from the default, the ``lithos`` scenario's) and adds ``scheduler`` (its stats) and ``be_occupancy``
   to its result
2. worker -> parent (stdout): ``LITHOS-WORKER {"ready": true}`` once its workload is built and
   warmed up (kernels compiled, memory allocated)
3. parent -> worker: ``{"go": t0}``, a `ml_colocation.clock` time shared by both workers
4. worker -> parent: ``LITHOS-WORKER {"result": {...}}`` with the raw records of
   `ml_tenants.serve` (``lc``) or `ml_tenants.train` (``be``), then it exits

A failure is answered ``LITHOS-WORKER {"error": "..."}`` and exit status 1. Lines without
the prefix (a library's chatter) are ignored by the parent. `run_process_pair` is the
parent side: two workers, a synchronized start, results or a `WorkerError` with the
worker's stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from lithos_atom.optin import using_atomizer
from lithos_atom.bench import ml_tenants
from lithos_atom.bench.ml_colocation import MLColocationConfig, clock
from lithos_atom.bench.occupancy import tenant_occupancy
from lithos_atom.bench.tenant_pair import pair_specs
from lithos_sched import open_device
from lithos_sched.policy import Policy
from lithos_sched.request_signal import RequestSignal
from lithos_sched.scheduler import Scheduler
from lithos_sched.smid_probe import sms_of

PREFIX = "LITHOS-WORKER "
#: What a worker on a partition adds to its result (moved to ``placement`` by `run_process_pair`)
_PLACEMENT_KEYS = ("sms_seen", "partition_sms", "probe_error")
WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "lithos_atom.bench.ml_colocation_worker")


class WorkerError(RuntimeError):
    """A worker process failed, timed out or broke the protocol; the message says which and why."""


def send(out: IO[str], message: dict[str, Any]) -> None:
    """Write one protocol message."""
    out.write(PREFIX + json.dumps(message) + "\n")
    out.flush()


def parse(line: str) -> dict[str, Any] | None:
    """The message of a protocol line, or None for any other line."""
    if not line.startswith(PREFIX):
        return None
    return json.loads(line[len(PREFIX):])


# ---- worker side ----------------------------------------------------------------------------

#: A role builds its workload and returns ``run(t0) -> result``.
Role = Callable[[MLColocationConfig, dict[str, Any]], Callable[[float], dict[str, Any]]]


def _stop_at(deadline: float) -> threading.Event:
    stop = threading.Event()
    threading.Timer(max(0.0, deadline - clock()), stop.set).start()
    return stop


def _stream(spec: dict[str, Any], high: bool) -> tuple[Any, dict[str, Any]]:
    """The worker's stream: a plain one, or with ``spec["tpcs"]`` one of a green-context
    partition of those TPCs (its SMs probed once); and what the result reports of it."""
    import cupy

    tpcs = spec.get("tpcs")
    if tpcs is None:
        return cupy.cuda.Stream(non_blocking=True), {}
    part = open_device(simulate=False).partition(tpcs)
    stream = (part.high if high else part.normal).cupy
    where: dict[str, Any] = {"sms_seen": sorted(sms_of(stream))}
    try:
        where["partition_sms"] = sorted(part.sm_ids)
    except RuntimeError as exc:  # the device's TPC -> SM map could not be probed (under MPS, say)
        where["partition_sms"], where["probe_error"] = None, str(exc)
    return stream, where


def _sized_streams(spec: dict[str, Any]) -> dict[int, tuple[int, Any]]:
    """With ``spec["request_tpcs"]`` (batch -> TPC count), batch -> (count, the
    high-priority stream of a partition of the first count of ``spec["tpcs"]``)."""
    device = open_device(simulate=False)
    lc_tpcs = sorted(spec["tpcs"])
    parts: dict[int, Any] = {}
    out = {}
    for batch, n in spec["request_tpcs"].items():
        if n not in parts:
            parts[n] = device.partition(lc_tpcs[:n])
        out[int(batch)] = (n, parts[n].high.cupy)
    return out


def _lc_role(cfg: MLColocationConfig, spec: dict[str, Any]) -> Callable[[float], dict[str, Any]]:
    stream, where = _stream(spec, high=True)
    service = ml_tenants.build_lc(cfg, stream)
    service.warmup(stream)
    path = spec.get("request_signal")
    signal = None if path is None else RequestSignal.attach(path)
    sized = _sized_streams(spec) if signal is not None and spec.get("request_tpcs") else None
    if sized is not None:
        for batch, (_, s) in sized.items():  # a partition's first launches are not measured
            service.request(batch, s)
            s.synchronize()

    @contextlib.contextmanager
    def right_sized(batch: int) -> Iterator[Any]:
        n, s = sized[batch]
        with signal.request(tpcs=n, stream=s):  # its gate opens when the request's kernels end
            yield s

    def run(t0: float) -> dict[str, Any]:
        marked = {} if signal is None else {"bracket": right_sized if sized is not None
                                            else lambda batch: signal.request(stream=stream)}
        try:
            with ml_tenants.host_settings():
                rec = ml_tenants.serve(service, stream, cfg, t0, _stop_at(t0 + cfg.span_s), **marked)
        finally:
            if signal is not None:
                signal.close()
        return {**dataclasses.asdict(rec), **where}

    return run


def _be_role(cfg: MLColocationConfig, spec: dict[str, Any]) -> Callable[[float], dict[str, Any]]:
    if spec.get("request_signal") is not None:
        return _be_lithos_role(cfg, spec)
    stream, where = _stream(spec, high=False)
    job = ml_tenants.build_be(cfg, spec["be_kind"], stream)
    job.step(stream)
    stream.synchronize()

    def run(t0: float) -> dict[str, Any]:
        with ml_tenants.host_settings():
            done = ml_tenants.train(job.step, stream, cfg.be_queue_depth, t0, _stop_at(t0 + cfg.span_s))
        return {"done_s": done, **where}

    return run


def _be_lithos_role(cfg: MLColocationConfig, spec: dict[str, Any]) -> Callable[[float], dict[str, Any]]:
    """The best-effort job as the best-effort tenant of this process's lithos scheduler,
    beside a latency-critical tenant that runs in the other worker (`Tenant.follow_requests`)."""
    import cupy

    import kernels

    plain = cupy.cuda.Stream(non_blocking=True)
    job = ml_tenants.build_be(cfg, spec["be_kind"], plain)
    plain.synchronize()
    stack = contextlib.ExitStack()
    kernels.reset_cache()
    stack.enter_context(using_atomizer(None))  # kernel objects rebuilt from here on intercept launches
    # the lithos scenario's policy (the default), with the spec's changes; a bad field is
    # named by Policy's error, which the parent reports
    sched = Scheduler(open_device(simulate=False), pair_specs(cfg.lc_share), Policy(**(spec.get("policy") or {})))
    stack.callback(sched.close)
    signal = RequestSignal.attach(spec["request_signal"])
    stack.callback(signal.close)
    sched.tenant("lc").follow_requests(signal)
    be = sched.tenant("be")
    with be:  # untimed: rewrites and links the atomized kernels, gives the predictor its first samples
        job.step(cupy.cuda.get_current_stream())
        be.synchronize()

    def run(t0: float) -> dict[str, Any]:
        with stack:
            with be, ml_tenants.host_settings():
                done = ml_tenants.train(job.step, cupy.cuda.get_current_stream(), cfg.be_queue_depth, t0,
                                        _stop_at(t0 + cfg.span_s))
            be.synchronize()
            return {"done_s": done, "scheduler": sched.stats(),
                    "be_occupancy": tenant_occupancy(sched.atoms(), "be", cfg.duration_s * 1e6)}

    return run


ROLES: dict[str, Role] = {"lc": _lc_role, "be": _be_role}


def worker_main(inp: IO[str], out: IO[str], roles: dict[str, Role] = ROLES) -> int:
    """Serve the protocol on ``inp`` / ``out``; returns the exit status."""
    try:
        spec = json.loads(inp.readline())
        role = spec.get("role")
        if role not in roles:
            raise ValueError(f"spec.role must be one of {sorted(roles)}, got {role!r}")
        cfg = MLColocationConfig.from_dict(spec["config"])
        run = roles[role](cfg, spec)
        send(out, {"ready": True})
        line = inp.readline()
        if not line:
            raise EOFError("the parent closed stdin before sending go")
        result = run(float(json.loads(line)["go"]))
        send(out, {"result": result})
        return 0
    except Exception as exc:  # reported to the parent, which raises WorkerError with it
        send(out, {"error": f"{type(exc).__name__}: {exc}"})
        return 1


# ---- parent side ----------------------------------------------------------------------------


class _Worker:
    """A worker process with a thread that turns its protocol lines into queued messages."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str]):
        self.name = name
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, env=env, bufsize=1)
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = parse(line.rstrip("\n"))
            except json.JSONDecodeError:
                msg = {"error": f"unreadable protocol line {line.strip()[:200]!r}"}
            if msg is not None:
                self.messages.put(msg)
        self.messages.put(None)  # end of output

    def tell(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerError(f"worker {self.name}: could not write to it ({exc}); {self.stderr_tail()}") from exc

    def expect(self, key: str, timeout_s: float) -> Any:
        try:
            msg = self.messages.get(timeout=timeout_s)
        except queue.Empty:
            raise WorkerError(f"worker {self.name}: no {key!r} within {timeout_s:g} s; {self.stderr_tail()}") from None
        if msg is None:
            self.proc.wait(timeout=10)
            raise WorkerError(f"worker {self.name} exited ({self.proc.returncode}) before {key!r}; "
                              f"{self.stderr_tail()}")
        if "error" in msg:
            raise WorkerError(f"worker {self.name}: {msg['error']}; {self.stderr_tail()}")
        if key not in msg:
            raise WorkerError(f"worker {self.name}: expected {key!r}, got {sorted(msg)}")
        return msg[key]

    def stderr_tail(self, chars: int = 1500) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        text = self.stderr.read()[-chars:].strip()
        return f"stderr: {text}" if text else "no stderr"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # only on failure: a healthy worker has exited after its result
        self.proc.wait(timeout=30)
        self.stderr.close()


def run_process_pair(cfg: MLColocationConfig, be_kind: str, *, env: dict[str, str] | None = None,
                     command: Sequence[str] = WORKER_COMMAND, ready_timeout_s: float = 180.0,
                     tpcs: dict[str, Sequence[int]] | None = None, lithos: bool = False,
                     policy: dict[str, Any] | None = None,
                     role_env: dict[str, dict[str, str]] | None = None,
                     request_tpcs: dict[int, int] | None = None) -> dict[str, Any]:
    """Run the LC and the BE tenant as two worker processes with a synchronized start.

    Parameters
    ----------
    cfg : MLColocationConfig
    be_kind : str
        ``"training"`` or ``"batch_inference"``.
    env : dict, optional
        Variables added to this process's environment for both workers (MPS's pipe
        directory, say).
    command : sequence of str
        How to start a worker.
    ready_timeout_s : float
        How long a worker may take to build and warm up its workload.
    tpcs : dict, optional
        Role (``"lc"``, ``"be"``) -> the TPCs of the green-context partition that
        worker runs on; a role not given runs on a plain stream.
    lithos : bool
        Run the pair as lithos across processes: the LC worker marks its requests in a
        `RequestSignal` made here, which the BE worker's scheduler follows.
    policy : dict, optional
        With ``lithos``: `Policy` fields the BE worker's scheduler changes.
    role_env : dict, optional
        Role (``"lc"``, ``"be"``) -> variables added for that worker only, after ``env``
        (an MPS client priority for one of them, say).
    request_tpcs : dict, optional
        With ``lithos`` and ``tpcs["lc"]``: right-sizing across processes. The LC worker
        runs a request of batch ``b`` on a partition of the first ``request_tpcs[b]`` of
        its TPCs and marks it with that count, so the BE worker's scheduler keeps stealing
        the others while it runs.

    Returns
    -------
    dict
        ``lc``: the LC worker's raw records, ``be``: the BE worker's, ``setup_s``,
        ``placement``: per role with TPCs, the SMs its probe kernel ran on and those of
        its partition (see the protocol above), and with ``lithos`` ``be_scheduler``: the
        BE worker's scheduler stats and occupancy.

    Raises
    ------
    WorkerError
        A worker failed, timed out or broke the protocol (both are stopped).
    """
    unknown = sorted(set(role_env or {}) - {"lc", "be"})
    if unknown:
        raise ValueError(f"run_process_pair: role_env has roles {unknown}; the roles are 'lc' and 'be'")
    if request_tpcs is not None:
        if not lithos or not tpcs or "lc" not in tpcs:
            raise ValueError("run_process_pair: request_tpcs needs lithos=True and tpcs['lc'] (the TPCs a "
                             "right-sized request runs on the first of)")
        n_lc = len(tpcs["lc"])
        bad = {b: n for b, n in request_tpcs.items() if not 1 <= n <= n_lc}
        missing = sorted(set(cfg.batch_sizes()) - set(request_tpcs))
        if bad or missing:
            raise ValueError(f"run_process_pair: request_tpcs must give every batch size {list(cfg.batch_sizes())} "
                             f"a count in 1..{n_lc}; missing {missing}, out of range {bad}")
    signal = RequestSignal.create() if lithos else None
    try:
        specs: dict[str, dict[str, Any]] = {}
        for role in ("lc", "be"):
            spec: dict[str, Any] = {"config": dataclasses.asdict(cfg), "role": role, "be_kind": be_kind}
            if tpcs is not None and role in tpcs:
                spec["tpcs"] = sorted(int(t) for t in tpcs[role])
            if signal is not None:
                spec["request_signal"] = str(signal.path)
                if role == "be" and policy:
                    spec["policy"] = dict(policy)
                if role == "lc" and request_tpcs is not None:
                    spec["request_tpcs"] = {str(b): int(n) for b, n in request_tpcs.items()}
            specs[role] = spec
        results, setup_s = run_workers(specs, cfg.span_s, env=env, command=command, ready_timeout_s=ready_timeout_s,
                                       worker_env=role_env)
    finally:
        if signal is not None:
            signal.close()
    placement = {role: {k: results[role].pop(k) for k in _PLACEMENT_KEYS if k in results[role]}
                 for role in results if "sms_seen" in results[role]}
    out = {"lc": results["lc"], "be": results["be"].pop("done_s"), "setup_s": setup_s, "placement": placement}
    if lithos:
        out["be_scheduler"] = results["be"]
    return out


def run_workers(specs: dict[str, dict[str, Any]], span_s: float, *, env: dict[str, str] | None = None,
                command: Sequence[str] = WORKER_COMMAND, ready_timeout_s: float = 180.0,
                worker_env: dict[str, dict[str, str]] | None = None) -> tuple[dict[str, dict[str, Any]], float]:
    """Run one worker process per spec with a synchronized start; their results by name.

    Parameters
    ----------
    specs : dict
        Worker name -> its spec (the protocol's first message: ``config``, ``role``, ...).
    span_s : float
        How long the workers run once started (their results are awaited 120 s longer).
    env : dict, optional
        Variables added to this process's environment for every worker.
    command : sequence of str
        How to start a worker.
    ready_timeout_s : float
        How long a worker may take to build and warm up its workload.
    worker_env : dict, optional
        Worker name -> variables added for that worker only, after ``env``.

    Returns
    -------
    (dict, float)
        Worker name -> its result message; the seconds until every worker was ready.

    Raises
    ------
    WorkerError
        A worker failed, timed out or broke the protocol (every worker is stopped).
    """
    full_env = {**os.environ, **(env or {})}
    # Workers import the same lithos as this process, installed or not.
    root = str(Path(__file__).resolve().parents[2])
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, full_env.get("PYTHONPATH", "")) if p)
    workers: list[_Worker] = []
    t_start = clock()
    try:
        for name, spec in specs.items():
            w = _Worker(name, command, {**full_env, **(worker_env or {}).get(name, {})})
            workers.append(w)
            w.tell(spec)
        for w in workers:  # all build and warm up at the same time
            w.expect("ready", ready_timeout_s)
        setup_s = clock() - t_start
        t0 = clock() + 0.2
        for w in workers:
            w.tell({"go": t0})
        return {w.name: w.expect("result", span_s + 120.0) for w in workers}, setup_s
    finally:
        for w in workers:
            w.close()

if __name__ == "__main__":
    sys.exit(worker_main(sys.stdin, sys.stdout))
