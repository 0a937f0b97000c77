"""The ML co-location scenarios on the simulated device, in virtual time.

Each ML kernel of a request, training step or batch-inference pass becomes a `SimKernel`
with its real grid (128x128 GEMM tiles, 64-query attention tiles, one block per norm row,
1024 elements per elementwise block) and a per-block duration from a cost model
(`SimCostModel`: the H100 rates measured by ``python -m kernels.bench``). Grids of many
waves are coarsened (fewer, longer blocks; the same work) to keep the simulation fast.
Host launch costs are not modeled.

The in-process scenarios and lithos run on the simulated device with the same scheduler
code as on the GPU. The two multi-process scenarios are *modeled*, and labeled so:

- ``processes``: time-slicing between two contexts (`timeslice_model`): the GPU belongs to
  one context at a time; the best-effort context keeps it until the end of its time slice
  once a request waits; a context switch costs `SimMLConfig.switch_us`.
- ``mps``: spatial sharing of the SMs without priorities between clients, simulated as
  two ordinary streams.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lithos_atom.bench.ml_colocation import LITHOS_SCENARIOS, MLColocationConfig, order, scheduler_for
from lithos_atom.bench.ml_figures import be_figures, lc_figures, slo_of, summarize_pair
from lithos_atom.bench.gate_metrics import gate_figures
from lithos_atom.bench.occupancy import tenant_occupancy
from lithos_atom.bench.sim_colocation import sim_plan
from lithos_atom.bench.tenant_pair import pair_specs, pair_tpcs
from lithos_sched.rightsizing import RightSizer
from lithos_sched.sim_device import SimDevice, SimKernel
from lithos_sched.timeline import SimTimeline

PROCESSES_MODEL = "modeled: time-slicing between two contexts (analytic, from simulated service times)"
MPS_MODEL = "modeled: MPS as spatial sharing without client priorities (two ordinary streams)"
#: Why the scenarios of a process per tenant are not simulated
PROCESS_SKIP = ("one process per tenant needs MPS on a GPU; the simulated device has no interpreter for two "
                "threads to share, so it would repeat static_split and lithos")


@dataclasses.dataclass(frozen=True)
class SimCostModel:
    """Per-kernel-class rates of the whole device (H100 figures of ``kernels.bench``).

    Attributes
    ----------
    tensor_tflops : float
        fp16/bf16 tensor-core GEMM.
    simt_tflops : float
        fp32 SGEMM.
    attention_tflops : float
        Fused attention (causal, fp16).
    memory_gbps : float
        Memory-bound kernels (norms, elementwise, optimizer).
    min_block_us : float
        Shortest block (launch and tail effects of tiny kernels).
    max_waves : int
        Grids of more waves are coarsened to this many.
    """

    tensor_tflops: float = 255.0
    simt_tflops: float = 31.0
    attention_tflops: float = 22.0
    memory_gbps: float = 2800.0
    min_block_us: float = 3.0
    max_waves: int = 12

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"SimCostModel.{f.name} must be > 0, got {v!r}")


@dataclasses.dataclass(frozen=True)
class SimMLConfig(MLColocationConfig):
    """`MLColocationConfig` for the simulated device (virtual time).

    Attributes
    ----------
    duration_s : float
        Virtual seconds measured per scenario and round: the simulation of the default
        workloads takes about 10 s of host time per round at this length, and three rounds
        keep the default simulated bench within a minute.
    timeslice_us : float
        Time slice of the modeled ``processes`` scenario.
    switch_us : float
        Cost of one context switch there.
    cost : SimCostModel
    """

    duration_s: float = 0.15
    warmup_s: float = 0.05
    timeslice_us: float = 2000.0
    switch_us: float = 25.0
    cost: SimCostModel = SimCostModel()

    def __post_init__(self) -> None:
        if isinstance(self.cost, dict):
            object.__setattr__(self, "cost", SimCostModel(**self.cost))
        super().__post_init__()
        for name in ("timeslice_us", "switch_us"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or (name == "timeslice_us" and v == 0):
                raise ValueError(f"SimMLConfig.{name} must be a number {'> 0' if name == 'timeslice_us' else '>= 0'}, "
                                 f"got {v!r}")


# ---- kernels of the workloads ----------------------------------------------------------------


class KernelModel:
    """Turns kernel shapes into `SimKernel`s for a device of ``num_sms`` SMs."""

    def __init__(self, cost: SimCostModel, num_sms: int):
        self.cost, self.num_sms = cost, num_sms

    def _per_sm_us(self, tflops: float) -> float:
        """FLOP per microsecond of one SM."""
        return tflops * 1e12 / self.num_sms / 1e6

    def kernel(self, name: str, blocks: int, blocks_per_sm: int, block_us: float, max_waves: int | None = None) -> Any:
        """A `SimKernel`; grids of more than ``max_waves`` (default ``cost.max_waves``) waves
        are coarsened into that many waves of longer blocks."""
        blocks = max(1, int(blocks))
        limit = (max_waves or self.cost.max_waves) * blocks_per_sm * self.num_sms
        if blocks > limit:
            factor = math.ceil(blocks / limit)
            coarse = math.ceil(blocks / factor)
            block_us *= blocks / coarse
            blocks = coarse
        return SimKernel(name, blocks, max(self.cost.min_block_us, float(block_us)), blocks_per_sm=blocks_per_sm)

    def gemm(self, name: str, m: int, n: int, k: int, tensor: bool) -> Any:
        """128x128 output tiles, two resident blocks per SM."""
        tiles = math.ceil(m / 128) * math.ceil(n / 128)
        rate = self._per_sm_us(self.cost.tensor_tflops if tensor else self.cost.simt_tflops) / 2
        return self.kernel(name, tiles, 2, 2.0 * 128 * 128 * k / rate)

    def attention(self, batch: int, heads: int, seq: int, head_dim: int) -> Any:
        """Causal attention: 64-query tiles per (head, sequence), four blocks per SM."""
        blocks = math.ceil(seq / 64) * heads * batch
        flops = 4.0 * 64 * seq * head_dim * 0.5
        return self.kernel("attention", blocks, 4, flops / (self._per_sm_us(self.cost.attention_tflops) / 4))

    def memory(self, name: str, blocks: int, nbytes: float) -> Any:
        """A memory-bound kernel moving ``nbytes`` over ``blocks`` blocks.

        Modeled as two blocks per SM and coarsened to one wave: the real blocks are short
        (microseconds), and simulating every one of them would dominate the run time.
        """
        per_sm_bytes_us = self.cost.memory_gbps * 1e9 / self.num_sms / 1e6
        return self.kernel(name, blocks, 2, nbytes / blocks / (per_sm_bytes_us / 2), max_waves=1)

    def elementwise(self, name: str, n: int, bytes_per_elem: float) -> Any:
        """1024 elements per block."""
        return self.memory(name, math.ceil(n / 1024), n * bytes_per_elem)

    def decoder(self, dec: Any, batch: int) -> list[Any]:
        """The kernels of one `DecoderStack.forward` at ``batch`` sequences."""
        from kernels import dtypes

        e = dtypes.numpy_dtype(dec.dtype).itemsize
        tensor = dec.dtype != dtypes.FLOAT32
        t, d, f = batch * dec.seq_len, dec.d_model, dec.ffn_mult * dec.d_model
        per_layer = [
            self.memory("layernorm", t, 2.0 * t * d * e),
            self.gemm("gemm_qkv", t, 3 * d, d, tensor),
            self.attention(batch, dec.n_heads, dec.seq_len, dec.head_dim),
            self.gemm("gemm_o", t, d, d, tensor),
            self.elementwise("residual_add", t * d, 3.0 * e),
            self.memory("layernorm", t, 2.0 * t * d * e),
            self.gemm("gemm_up", t, f, d, tensor),
            self.elementwise("gelu", t * f, 2.0 * e),
            self.gemm("gemm_down", t, d, f, tensor),
            self.elementwise("residual_add", t * d, 3.0 * e),
        ]
        return per_layer * dec.n_layers

    def split_k_gemm(self, name: str, m: int, n: int, k: int, splits: int) -> list[Any]:
        """An fp32 GEMM as `kernels.gemm.gemm` runs it with ``split_k=splits``: one SGEMM
        per K-slice into a workspace, then the ordered sum of the slices."""
        if splits == 1:
            return [self.gemm(name, m, n, k, False)]
        slices = [self.gemm(name, m, n, (i + 1) * k // splits - i * k // splits, False) for i in range(splits)]
        return [*slices, self.elementwise("splitk_sum", m * n, 4.0 * (splits + 1))]

    def training_step(self, mlp: Any) -> list[Any]:
        """The kernels of one `TrainingJob.step` (fp32 SGEMM, split-K as `MLPConfig.split_k`
        says, Adam or SGD)."""
        b, d, f = mlp.batch, mlp.d_model, mlp.hidden

        def gemm(name: str, m: int, n: int, k: int) -> list[Any]:
            return self.split_k_gemm(name, m, n, k, mlp.split_k(k))

        ks: list[Any] = []
        for _ in range(mlp.n_layers):
            ks += [*gemm("sgemm_up", b, f, d), self.elementwise("gelu", b * f, 8.0),
                   *gemm("sgemm_down", b, d, f), self.elementwise("residual_add", b * d, 12.0)]
        ks.append(self.elementwise("mse_grad", b * d, 12.0))
        for layer in reversed(range(mlp.n_layers)):
            ks += [*gemm("sgemm_dw2", f, d, b), *gemm("sgemm_dh", b, f, d),
                   self.elementwise("gelu_backward", b * f, 12.0), *gemm("sgemm_dw1", d, f, b)]
            if layer > 0:
                ks += [*gemm("sgemm_dx", b, d, f), self.elementwise("residual_add", b * d, 12.0)]
        per_param = 28.0 if mlp.optimizer == "adam" else 12.0
        ks += [self.elementwise(mlp.optimizer, d * f, per_param) for _ in range(2 * mlp.n_layers)]
        return ks


# ---- one scenario -----------------------------------------------------------------------------


class _Run:
    """One scenario in virtual time: LC requests fire as timers while the BE loop waits on events."""

    def __init__(self, cfg: SimMLConfig, device: Any, timeline: Any, lc_kernels: dict[int, list[Any]],
                 be_kernels: list[Any] | None):
        self.cfg, self.device, self.timeline = cfg, device, timeline
        self.lc_kernels, self.be_kernels = lc_kernels, be_kernels
        self.arrivals_s: list[float] = []
        self.latencies_ms: list[float] = []
        self.be_done_s: list[float] = []
        self._pending: collections.deque[tuple[Any, float]] = collections.deque()

    def lc_requests(self, submit: Callable[[Any], Any], done_event: Callable[[], Any]) -> None:
        """Register every request; each issues its kernels at its arrival (they queue in
        stream order behind earlier requests, as one server's stream would)."""
        tl = self.timeline
        arrivals, batches = self.cfg.requests()

        def arrive(t_s: float, batch: int) -> Callable[[], None]:
            def fire() -> None:
                for k in self.lc_kernels[batch]:
                    submit(sim_plan(self.device, k))
                self._pending.append((done_event(), t_s))
                if len(self._pending) == 1:
                    self._check()
            return fire

        for t_s, b in zip(arrivals.tolist(), batches.tolist()):
            tl.call_at(t_s * 1e6, arrive(t_s, int(b)))

    def _check(self) -> None:
        """Record every completed request at the head of the queue; poll again at the next
        block completion while one is pending (requests complete in stream order, so only
        the oldest is polled)."""
        tl = self.timeline
        while self._pending and self._pending[0][0].query():
            _, t_s = self._pending.popleft()
            self.arrivals_s.append(t_s)
            self.latencies_ms.append((tl.now_us() - t_s * 1e6) / 1000.0)
        if self._pending:
            nxt = self.device.next_completion_us()
            tl.call_at(nxt if nxt is not None else tl.now_us() + 1.0, self._check)

    def be_loop(self, submit: Callable[[Any], Any], done_event: Callable[[], Any]) -> None:
        """BE iterations back to back, ``be_queue_depth`` queued, until the span ends."""
        tl = self.timeline
        end_us = self.cfg.span_s * 1e6
        queued: list[Any] = []
        assert self.be_kernels is not None
        while tl.now_us() < end_us:
            for k in self.be_kernels:
                submit(sim_plan(self.device, k))
            queued.append(done_event())
            while len(queued) > self.cfg.be_queue_depth:
                tl.synchronize(queued.pop(0))
                self.be_done_s.append(tl.now_us() / 1e6)
        for ev in queued:
            tl.synchronize(ev)
            self.be_done_s.append(tl.now_us() / 1e6)

    def finish(self) -> None:
        """Let the last requests complete."""
        self.timeline.advance_to(self.cfg.span_s * 1e6 + 2e5)

    def figures(self, lc: bool, be: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if lc:
            out["hp"] = lc_figures(self.arrivals_s, self.latencies_ms, self.cfg)
        if be:
            out["be"] = be_figures(self.be_done_s, self.cfg)
        return out


def _direct(run: _Run, lc_stream: Any | None, be_stream: Any | None) -> dict[str, Any]:
    tl = run.timeline
    if lc_stream is not None:
        run.lc_requests(lambda p: p.issue_all(lc_stream), lambda: tl.record(lc_stream))
    if be_stream is not None:
        run.be_loop(lambda p: p.issue_all(be_stream), lambda: tl.record(be_stream))
    run.finish()
    return run.figures(lc_stream is not None, be_stream is not None)


def _lithos(run: _Run, name: str, trace: Path | None) -> dict[str, Any]:
    cfg = run.cfg
    sched = scheduler_for(name, run.device, pair_specs(cfg.lc_share), right_sizer=RightSizer())
    sched.timeline = run.timeline  # share the scenario's timers
    lc, be = sched.tenant("lc"), sched.tenant("be")
    tl = run.timeline
    run.lc_requests(lambda p: sched.submit_for(lc, p), lambda: tl.record(lc.stream))
    run.be_loop(lambda p: sched.submit_for(be, p), lambda: tl.record(be.stream))
    run.finish()
    sched.close()
    out = run.figures(True, True)
    if trace is not None:
        out["trace_file"] = str(sched.export_trace(trace))
    out["scheduler"] = sched.stats()
    out["be_occupancy"] = tenant_occupancy(sched.atoms(), "be", cfg.duration_s * 1e6)
    out["gates"] = gate_figures(sched)
    return out


# ---- the modeled time-sliced processes ---------------------------------------------------------


def timeslice_model(arrivals_s: Sequence[float], demands_us: Sequence[float], timeslice_us: float, switch_us: float,
                    window_s: tuple[float, float]) -> tuple[list[float], float]:
    """LC latencies and the BE context's GPU share under time-slicing of two contexts.

    The BE context always has work. It holds the GPU until a request waits, and then to
    the end of its current time slice (slices start when it takes the GPU). The LC context
    then serves its requests in order for up to one slice and yields when it runs out of
    work. Each hand-over costs ``switch_us``.

    Parameters
    ----------
    arrivals_s : sequence of float
        Request arrivals (seconds, ascending).
    demands_us : sequence of float
        Each request's service time with the whole GPU.
    timeslice_us, switch_us : float
    window_s : (float, float)
        The measured window, for the BE share.

    Returns
    -------
    (list of float, float)
        Latency (ms) of every request, in order; the fraction of the window the BE
        context held the GPU.
    """
    arrivals = [a * 1e6 for a in arrivals_s]
    n = len(arrivals)
    lat = [0.0] * n
    w0, w1 = window_s[0] * 1e6, window_s[1] * 1e6
    be_us = 0.0

    def be_held(a: float, b: float) -> None:
        nonlocal be_us
        be_us += max(0.0, min(b, w1) - max(a, w0))

    t, slice_start, nxt = 0.0, 0.0, 0
    queue: collections.deque[list[float]] = collections.deque()  # [index, remaining]
    while nxt < n or queue:
        # BE holds the GPU from t
        first_wait = arrivals[nxt] if not queue else t
        k = max(1, math.ceil((first_wait - slice_start) / timeslice_us))
        hand_over = slice_start + k * timeslice_us
        be_held(t, hand_over)
        t = hand_over + switch_us
        slice_end = t + timeslice_us
        while nxt < n and arrivals[nxt] <= t:
            queue.append([nxt, demands_us[nxt]])
            nxt += 1
        # LC serves until it runs dry or its slice ends
        while queue and t < slice_end:
            item = queue[0]
            run = min(item[1], slice_end - t)
            t += run
            item[1] -= run
            if item[1] <= 1e-9:
                lat[int(item[0])] = (t - arrivals[int(item[0])]) / 1000.0
                queue.popleft()
            while nxt < n and arrivals[nxt] <= t:
                queue.append([nxt, demands_us[nxt]])
                nxt += 1
        t += switch_us
        slice_start = t
    be_held(t, w1)
    return lat, be_us / (w1 - w0)


def _service_times(cfg: SimMLConfig, lc_kernels: dict[int, list[Any]], seed: int) -> dict[int, float]:
    """Each batch size's request time alone on the whole simulated device."""
    out = {}
    for batch, ks in lc_kernels.items():
        with SimDevice(seed=seed, record_blocks=False) as dev:
            stream = dev.partition(range(dev.num_tpcs)).high
            for k in ks:
                sim_plan(dev, k).issue_all(stream)
            stream.synchronize()
            out[batch] = float(dev.now_us)
    return out


def request_service_ms(config: MLColocationConfig) -> dict[int, float]:
    """Each batch's request time alone on the whole simulated device, in ms (the service
    times of `lithos_atom.bench.load`); a plain `MLColocationConfig` is read as `run_sim` reads it."""
    cfg = config if isinstance(config, SimMLConfig) else SimMLConfig(**dataclasses.asdict(config))
    probe = SimDevice(seed=cfg.seed, record_blocks=False)
    model = KernelModel(cfg.cost, probe.num_sms)
    probe.close()
    decoder = cfg.workload_sizes()["decoder"]
    lc_kernels = {b: model.decoder(decoder, b) for b in range(cfg.lc_batch[0], cfg.lc_batch[1] + 1)}
    return {b: us / 1000.0 for b, us in _service_times(cfg, lc_kernels, cfg.seed).items()}


def _processes(cfg: SimMLConfig, demands: dict[int, float], be_alone: dict[str, Any]) -> dict[str, Any]:
    arrivals, batches = cfg.requests()
    lat, share = timeslice_model(arrivals.tolist(), [demands[int(b)] for b in batches], cfg.timeslice_us,
                                 cfg.switch_us, (cfg.warmup_s, cfg.span_s))
    rate = be_alone["be"]["iters_per_s"] * share
    return {"hp": lc_figures(arrivals.tolist(), lat, cfg),
            "be": {"iterations": int(round(rate * cfg.duration_s)), "iters_per_s": rate, "coarse": False,
                   "gpu_share": share},
            "model": PROCESSES_MODEL}


# ---- all scenarios ------------------------------------------------------------------------------


def run_sim(config: MLColocationConfig | None = None, console: Any = None, trace_dir: Any = None) -> dict[str, Any]:
    """Every selected scenario of every selected pair on fresh simulated H100-sized devices.

    Parameters
    ----------
    config : MLColocationConfig, optional
        A plain `MLColocationConfig` is turned into a `SimMLConfig` with the same fields.
    console : rich.console.Console, optional
        Where the progress bar goes.
    trace_dir : path, optional
        Where the lithos scenario's scheduler trace goes, per pair.

    Returns
    -------
    dict
        As `lithos_atom.bench.ml_gpu.run_gpu` (without ``setup_s`` and
        ``rightsizing_setup``), with ``simulated`` True and ``sim_service_ms``: each
        batch's request time alone on the simulated device (when ``processes`` ran).
    """
    from rich.progress import Progress

    if config is None:
        cfg = SimMLConfig()
    elif isinstance(config, SimMLConfig):
        cfg = config
    else:
        cfg = SimMLConfig(**dataclasses.asdict(config))
    sizes = cfg.workload_sizes()
    probe = SimDevice(seed=cfg.seed, record_blocks=False)
    model = KernelModel(cfg.cost, probe.num_sms)
    described, lc_tpcs = probe.describe(), len(pair_tpcs(cfg.lc_share, probe.num_tpcs)[0])
    probe.close()
    lc_kernels = {b: model.decoder(sizes["decoder"], b) for b in range(cfg.lc_batch[0], cfg.lc_batch[1] + 1)}
    be_kernels = {"training": model.training_step(sizes["mlp"]),
                  "batch_inference": model.decoder(sizes["decoder"], sizes["batch_inference_batch"])}
    selected = cfg.pair_scenarios()

    def scenario(be: str | None, body: Callable[[Any, _Run], dict[str, Any]]) -> dict[str, Any]:
        device = SimDevice(seed=cfg.seed, record_blocks=False)
        run = _Run(cfg, device, SimTimeline(device), lc_kernels, be_kernels[be] if be else None)
        try:
            return body(device, run)
        finally:
            device.close()

    def full(d: Any) -> Any:
        return d.partition(range(d.num_tpcs))

    def split(d: Any, share: float) -> tuple[Any, Any]:
        """The LC tenant's high-priority and the BE tenant's normal stream of a static split."""
        lc_tpcs, be_tpcs = pair_tpcs(share, d.num_tpcs)
        return d.partition(lc_tpcs).high, d.partition(be_tpcs).normal

    shares = cfg.static_shares()
    raw: dict[str, dict[str, Any]] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("ML co-location (simulated)", total=cfg.run_count())

        def measure(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            progress.update(task, description=f"ML {label} (simulated)")
            out = fn()
            progress.advance(task)
            return out

        lc_alone = measure("lc_alone", lambda: scenario(None, lambda d, r: _direct(r, full(d).high, None)))
        demands = _service_times(cfg, lc_kernels, cfg.seed) if "processes" in selected else {}
        for pair in cfg.pairs:
            r: dict[str, Any] = {"lc_alone": lc_alone}
            r["be_alone"] = measure(f"{pair}: be_alone", lambda: scenario(pair, lambda d, x: _direct(x, None, full(d).normal)))
            bodies: dict[str, Callable[[], dict[str, Any]]] = {
                "streams": lambda: scenario(pair, lambda d, x: _direct(x, full(d).normal,
                                                                       full(d).stream("normal", new=True))),
                "priorities": lambda: scenario(pair, lambda d, x: _direct(x, full(d).high, full(d).normal)),
                "processes": lambda: _processes(cfg, demands, r["be_alone"]),
                "mps": lambda: {**scenario(pair, lambda d, x: _direct(x, full(d).normal,
                                                                      full(d).stream("normal", new=True))),
                                "model": MPS_MODEL},
                "lithos_mps": lambda: {"skipped": PROCESS_SKIP},
                "lithos_mps_rightsized": lambda: {"skipped": PROCESS_SKIP},
            }
            for name in selected:
                if name == "static_split":  # and the static sweep after it
                    for run_name, share in shares.items():
                        r[run_name] = measure(f"{pair}: {run_name}", lambda: scenario(
                            pair, lambda d, x: _direct(x, *split(d, share))))
                elif name == "mps_static_split":  # and its sweep, each reported skipped
                    for run_name in cfg.process_static_shares():
                        r[run_name] = measure(f"{pair}: {run_name}", lambda: {"skipped": PROCESS_SKIP})
                elif name in LITHOS_SCENARIOS:
                    trace = Path(trace_dir) / f"trace_ml_{pair}_lithos.json" if trace_dir and name == "lithos" else None
                    r[name] = measure(f"{pair}: {name}",
                                      lambda: scenario(pair, lambda d, x: _lithos(x, name, trace)))
                else:
                    r[name] = measure(f"{pair}: {name}", bodies[name])
            raw[pair] = r
    slo = slo_of(cfg, lc_alone)
    return {"simulated": True, "config": dataclasses.asdict(cfg), "device": described, "slo_ms": slo, "lc_tpcs": lc_tpcs,
            "workloads": {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in sizes.items()},
            "sim_service_ms": {b: v / 1000.0 for b, v in demands.items()},
            "pairs": {pair: summarize_pair(order(raw[pair]), slo) for pair in cfg.pairs}}
