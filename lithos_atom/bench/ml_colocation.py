"""ML co-location benchmark: an inference service beside training or batch inference.

The latency-critical (LC) tenant is one of the services of `lithos_atom.bench.ml_services`
(`MLColocationConfig.lc_service`): by default `kernels.workloads.InferenceService` (a
transformer decoder stack, requests of batch 1-8 arriving as a Poisson process), or a
Llama decode step or prefill, ResNet-50 or BERT-base at their real shapes; the best-effort
(BE) tenant is a `TrainingJob` (MLP forward, backward, Adam), a `BatchInference` job or a
GPT-2-small training step (``gpt2_training``). For each pair, side by side in one run:

- ``lc_alone`` / ``be_alone``: each tenant alone on the whole GPU
- ``streams``: both on ordinary streams of one process
- ``priorities``: the LC tenant on a high-priority CUDA stream
- ``processes``: two processes, time-sliced by the driver (NVIDIA's default without MPS)
- ``mps``: two processes under an MPS daemon that the benchmark starts and stops itself
  (skipped, with the reason, where that is not possible)
- ``static_split``: each tenant on its own TPC partition, no stealing (MIG-like); also at
  the inference shares of `MLColocationConfig.static_sweep` (``static_split@0.25``, ...)
- ``mps_static_split``: the static split with each tenant in its own process under MPS,
  each on a green-context partition of its TPCs (no interpreter shared between them); also
  at the shares of the sweep (``mps_static_split@0.25``, ...)
- ``lithos``: the scheduler (atoms, partitions, stealing, prediction)
- ``lithos_mps``: lithos across processes under MPS: the inference process runs on a
  partition of its TPCs and marks its requests in a `RequestSignal`; the best-effort
  process runs its job in a lithos scheduler that steals those TPCs between requests
  (`Tenant.follow_requests`; `MLColocationConfig.mps_steal_max_block_us`). These two
  run only on a GPU with MPS; the simulated device has no interpreter to share, and
  reports them skipped.
- ``lithos_no_steal`` / ``lithos_no_atoms``: ablations; ``lithos_unlent`` /
  ``lithos_lend_priority``: `Policy.lend_best_effort_tpcs` "none" and "priority", only when
  asked for
- ``lithos_rightsized``: lithos with right-sizing, the TPCs the inference service does not
  need going to the best-effort job. On the GPU each request runs in `Tenant.on_tpcs` on
  the fewest of the inference TPCs that keep a request of its batch within 5% (whole
  requests profiled just before on partitions of the inference tenant's sizes): one event
  join at each end of a request. On the simulated device each kernel is sized, by a
  `RightSizer` that learns online.
- ``lithos_mps_rightsized``: ``lithos_mps`` with the same right-sizing across processes:
  the inference process runs each request on a partition of the first TPCs its batch needs
  and marks that count in the `RequestSignal`; the best-effort process keeps stealing the
  other inference TPCs while the request runs (GPU with MPS only, like ``lithos_mps``).

Load: requests arrive as a Poisson process at `MLColocationConfig.load` times the
service's capacity alone (`lithos_atom.bench.load`), unless `MLColocationConfig.lc_rate_hz`
gives the rate. The service is one server: a request that arrives while another runs waits
for it, and its latency, arrival to completion, counts that wait (an open loop).

Figures per scenario: LC p50/p99/p99.9 latency, SLO attainment and goodput (requests that
met the SLO per second), the requests left unfinished (a miss each) and whether the service
saturated (see `lithos_atom.bench.ml_figures.lc_figures`), BE throughput normalized to alone, and the sum of normalized
throughputs. A static split trades the
inference tail against best-effort throughput through its share; so that the two are
compared at one tail, each pair also names the static split of the most best-effort
throughput whose inference p99 is no worse than lithos' (``static_at_lithos_p99``), and
likewise for lithos across processes against the in-process splits
(``static_at_lithos_mps_p99``) and against the splits with a process per tenant
(``process_static_at_lithos_mps_p99``), with its ratios to each baseline in
``ratios_lithos_mps``; ``lithos_mps_rightsized`` likewise (``ratios_lithos_mps_rightsized``,
``process_static_at_lithos_mps_rightsized_p99``).
This module holds what both runs share: the settings, the scenario names and their order;
`lithos_atom.bench.ml_figures` turns a run's records into the figures.
`lithos_atom.bench.ml_gpu` runs the scenarios on the GPU; without a GPU the same scenarios run
on the simulated device (`lithos_atom.bench.sim_ml_colocation`); ``python -m lithos_atom.bench
--ml`` picks one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from lithos_atom.bench.ml_services import BE_JOBS, SERVICES, default_batch_sizes, gpt2_config, model_config
from lithos_sched.fields import is_int, is_number, require
from lithos_sched.policy import Policy
from lithos_sched.scheduler import Scheduler

#: Best-effort workloads paired with the inference service by default, one pair each
#: (`BE_JOBS` are all there are: ``gpt2_training`` too).
PAIRS: tuple[str, ...] = ("training", "batch_inference")

#: Every scenario, in report order.
SCENARIOS: tuple[str, ...] = ("lc_alone", "be_alone", "streams", "priorities", "processes", "mps",
                              "static_split", "mps_static_split", "lithos", "lithos_mps", "lithos_no_steal",
                              "lithos_no_atoms", "lithos_rightsized", "lithos_mps_rightsized", "lithos_unlent",
                              "lithos_lend_priority")

#: The scenarios run unless asked for (the variants of TPC lending run on request).
DEFAULT_SCENARIOS: tuple[str, ...] = tuple(s for s in SCENARIOS if s not in ("lithos_unlent", "lithos_lend_priority"))

#: Scenarios with one process per tenant under MPS, each on its TPCs (GPU only).
PROCESS_SCENARIOS: tuple[str, ...] = ("mps_static_split", "lithos_mps", "lithos_mps_rightsized")

#: The scenarios that run the lithos scheduler (see `scheduler_for`).
LITHOS_SCENARIOS: tuple[str, ...] = ("lithos", "lithos_no_steal", "lithos_no_atoms", "lithos_rightsized",
                                     "lithos_unlent", "lithos_lend_priority")

#: Scenarios that run both tenants (the baselines lithos is compared with, and lithos).
COLOCATED: tuple[str, ...] = tuple(s for s in SCENARIOS if s not in ("lc_alone", "be_alone"))

#: Workload sizes by preset name (see `MLColocationConfig.size`).
SIZES: tuple[str, ...] = ("default", "small", "long")

#: The clock of every timestamp (CLOCK_MONOTONIC on Linux: shared by the worker processes).
clock = time.monotonic


@dataclasses.dataclass(frozen=True)
class MLColocationConfig:
    """Settings of the ML co-location benchmark.

    Attributes
    ----------
    pairs : tuple of str
        Best-effort workloads to pair with the inference service (of `BE_JOBS`; default
        `PAIRS`, the quick ones).
    scenarios : tuple of str
        Scenarios to run (`SCENARIOS`); the alone ones are always run (everything is
        normalized to them).
    duration_s : float
        Measured length of each scenario in each round: three rounds of 1.5 s measure each
        scenario for 4.5 s in all and leave the default bench's 35 runs per round, a dozen
        of them starting worker processes, within its 10 minutes on the GPU.
    warmup_s : float
        Unmeasured co-located run before the measurement of each scenario.
    load : float
        Mean LC request rate as a fraction of the service's capacity alone (one over its
        mean service time, `lithos_atom.bench.load`); half, so that the service alone is
        busy half the time and a request waits for another now and then, as a served model
        runs. Above 1 the service cannot keep up even alone; beyond 2 every scenario
        saturates and nothing is left to compare, so that is the limit.
    lc_rate_hz : float or None
        The mean LC request rate (Poisson arrivals), given instead of `load`; None until
        it is derived from the load (`lithos_atom.bench.load.with_rate`): `requests` needs it.
    lc_service : str
        The inference service (`lithos_atom.bench.ml_services.SERVICES`): the decoder stack
        by default, its batches the range `lc_batch`; the model services serve their own
        batch sizes (`ml_services.DEFAULT_BATCH_SIZES`) unless `lc_batch_sizes` says.
    lc_batch : (int, int)
        Inclusive range of the decoder's batch of a request, drawn uniformly per request
        (the model services ignore it).
    lc_batch_sizes : tuple of int or None
        The request sizes, each request's drawn uniformly from them (for
        ``llama-1b-prefill``, prompt lengths); None: the service's own (`batch_sizes`).
    lc_graphs : bool
        Replay each inference request as a CUDA graph captured once per batch size, as
        inference servers do (one launch per request), in every scenario alike; False
        launches its kernels one by one from Python (host time then sets most of a
        request's latency). The simulated device models no host time, so there both read alike.
    lc_share : float
        Fraction of the TPCs owned by the LC tenant in the partitioned scenarios; a half,
        since more hardly lowered the inference tail while it halved the best-effort home.
    static_sweep : tuple of float
        Further LC shares at which the static split runs too (scenarios
        ``static_split@<share>``, after ``static_split``), when ``static_split`` is
        selected: a larger share buys the inference tail with best-effort throughput, and
        `ml_figures.summarize_pair` compares lithos with the best static split at lithos' p99.
        The default shares are smaller than `lc_share`: the splits that give the best-effort
        job more at a higher tail, the ones lithos competes with (``--static-sweep`` adds
        larger ones where the line must reach lithos' p99).
    mps_steal_max_block_us : float or None
        `Policy.steal_max_block_us` of the best-effort process's scheduler under lithos
        across processes (``lithos_mps``); None keeps the `Policy` default, 1.5 ms, as
        lithos in one process does: longer blocks raised training but also the inference
        tail, which is what the service is promised.
    training_gemm_max_k : int or None
        `MLPConfig.gemm_max_k` of the training job, in every scenario alike (alone too):
        its GEMMs that reduce over more than this run deterministic split-K, so no training
        block runs longer than the 1.5 ms steal-block limit (a block cannot be preempted).
        None runs them unsplit.
    slo_mult : float
        The LC SLO is this multiple of the LC-alone p99 (unless `slo_ms` is given).
    slo_ms : float or None
        An absolute LC SLO in milliseconds.
    size : str
        Workload sizes: ``"default"`` (decoder d_model 1024, 4 layers, 128-token prompts,
        fp16; MLP training 2048 x 8192 on a 4096-row batch, fp32; batch inference of 32
        prompts), ``"long"`` (the same with 512-token prompts and batch inference of 8: more
        GPU time per launched kernel, so the inference requests are less bound by the host's
        issuing) or ``"small"`` (a quick smoke run).
    be_queue_depth : int
        BE iterations kept queued on the device (as a training loop does).
    seed : int
        Seeds arrivals, batches and weights.
    """

    pairs: tuple[str, ...] = PAIRS
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    duration_s: float = 1.5
    warmup_s: float = 0.5
    load: float = 0.5
    lc_rate_hz: float | None = None
    lc_service: str = "decoder"
    lc_batch: tuple[int, int] = (1, 8)
    lc_batch_sizes: tuple[int, ...] | None = None
    lc_graphs: bool = True
    lc_share: float = 0.5
    static_sweep: tuple[float, ...] = (0.25, 0.375)
    mps_steal_max_block_us: float | None = None
    training_gemm_max_k: int | None = 2048
    slo_mult: float = 1.5
    slo_ms: float | None = None
    size: str = "default"
    be_queue_depth: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(self.pairs))
        object.__setattr__(self, "scenarios", tuple(self.scenarios))
        object.__setattr__(self, "lc_batch", tuple(self.lc_batch))
        object.__setattr__(self, "static_sweep", tuple(self.static_sweep))
        if self.lc_batch_sizes is not None:
            object.__setattr__(self, "lc_batch_sizes", tuple(self.lc_batch_sizes))
        _check_names("pairs", self.pairs, BE_JOBS)
        _check_names("scenarios", self.scenarios, SCENARIOS)
        optional = ("slo_ms", "mps_steal_max_block_us", "lc_rate_hz")  # None: derived or left to the default
        for name in ("duration_s", "slo_mult", *optional):
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            require(is_number(value) and math.isfinite(value) and value > 0, f"MLColocationConfig.{name}",
                    "a finite number > 0", value)
        require(is_number(self.warmup_s) and self.warmup_s >= 0, "MLColocationConfig.warmup_s", "a number >= 0",
                self.warmup_s)
        lo_hi = self.lc_batch
        require(len(lo_hi) == 2 and all(is_int(b) for b in lo_hi) and 1 <= lo_hi[0] <= lo_hi[1] <= 64,
                "MLColocationConfig.lc_batch", "two ints 1 <= lo <= hi <= 64", self.lc_batch)
        require(is_number(self.lc_share) and 0 < self.lc_share < 1, "MLColocationConfig.lc_share", "in (0, 1)",
                self.lc_share)
        for share in self.static_sweep:
            require(is_number(share) and 0 < share < 1, "MLColocationConfig.static_sweep: every share", "in (0, 1)",
                    share)
        if len(set(self.static_sweep) | {self.lc_share}) != len(self.static_sweep) + 1:
            raise ValueError(f"MLColocationConfig.static_sweep repeats a share or lc_share ({self.lc_share}): "
                             f"{list(self.static_sweep)!r}")
        require(self.size in SIZES, "MLColocationConfig.size", f"one of {SIZES}", self.size)
        max_k = self.training_gemm_max_k
        require(max_k is None or (is_int(max_k) and max_k >= 1), "MLColocationConfig.training_gemm_max_k",
                "None or an int >= 1", max_k)
        require(is_int(self.be_queue_depth) and self.be_queue_depth >= 1, "MLColocationConfig.be_queue_depth",
                "an int >= 1", self.be_queue_depth)
        require(is_number(self.load) and 0 < self.load <= 2, "MLColocationConfig.load", "a number in (0, 2]",
                self.load)
        require(is_int(self.seed) and self.seed >= 0, "MLColocationConfig.seed", "an int >= 0", self.seed)
        require(isinstance(self.lc_graphs, bool), "MLColocationConfig.lc_graphs", "a bool", self.lc_graphs)
        require(self.lc_service in SERVICES, "MLColocationConfig.lc_service", f"one of {SERVICES}", self.lc_service)
        sizes = self.lc_batch_sizes
        require(sizes is None or (len(sizes) > 0 and all(is_int(b) and b >= 1 for b in sizes)
                                  and len(set(sizes)) == len(sizes)),
                "MLColocationConfig.lc_batch_sizes", "None or distinct ints >= 1", sizes)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MLColocationConfig:
        """The config of ``dataclasses.asdict(config)`` (as sent to worker processes)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MLColocationConfig fields {unknown}")
        return cls(**values)

    @property
    def span_s(self) -> float:
        """Warm-up plus measurement."""
        return self.warmup_s + self.duration_s

    def batch_sizes(self) -> tuple[int, ...]:
        """The request sizes of the service, ascending: `lc_batch_sizes`, else the service's
        own (`ml_services.default_batch_sizes`: the decoder's range `lc_batch`)."""
        sizes = self.lc_batch_sizes or default_batch_sizes(self.lc_service, self.lc_batch)
        return tuple(sorted(int(b) for b in sizes))

    def requests(self) -> tuple[np.ndarray, np.ndarray]:
        """Arrival times (seconds from the scenario start, over `span_s`) and batches (each
        uniform over `batch_sizes`).

        Raises
        ------
        ValueError
            While `lc_rate_hz` is None (derive it first: `lithos_atom.bench.load.with_rate`).
        """
        if self.lc_rate_hz is None:
            raise ValueError("MLColocationConfig.lc_rate_hz is None: derive the rate from the load first "
                             "(lithos_atom.bench.load.with_rate)")
        rng = np.random.default_rng(self.seed)
        n = int(self.span_s * self.lc_rate_hz * 2) + 10
        t = np.cumsum(rng.exponential(1.0 / self.lc_rate_hz, size=n))
        t = t[t < self.span_s]
        sizes = np.asarray(self.batch_sizes())
        batches = sizes[rng.integers(0, sizes.size, size=t.size)]
        return t, batches

    def static_shares(self) -> dict[str, float]:
        """The static-split scenarios to run, by name, with their LC shares (none unless
        ``static_split`` is selected)."""
        if "static_split" not in self.scenarios:
            return {}
        return {"static_split": self.lc_share, **{static_name(s): s for s in self.static_sweep}}

    def process_static_shares(self) -> dict[str, float]:
        """The static splits with a process per tenant to run, by name, with their LC
        shares: ``mps_static_split`` at `lc_share` and the same sweep (none unless
        ``mps_static_split`` is selected)."""
        if "mps_static_split" not in self.scenarios:
            return {}
        return {"mps_static_split": self.lc_share, **{"mps_" + static_name(s): s for s in self.static_sweep}}

    def pair_scenarios(self) -> list[str]:
        """The selected scenarios run for each pair (the alone runs are made apart)."""
        return [s for s in self.scenarios if s not in ("lc_alone", "be_alone")]

    def run_count(self) -> int:
        """The runs a benchmark of this config makes (its progress bar's length): the
        inference alone once, then per pair the best-effort job alone and every selected
        scenario, the static splits once per share of `static_shares` and of
        `process_static_shares`."""
        sweeps = max(0, len(self.static_shares()) - 1) + max(0, len(self.process_static_shares()) - 1)
        return 1 + len(self.pairs) * (1 + len(self.pair_scenarios()) + sweeps)

    def workload_sizes(self) -> dict[str, Any]:
        """The `DecoderConfig`, `MLPConfig` and batch-inference batch of `size`; with a
        model service its shape (``"service"``), with ``gpt2_training`` its `GPT2Config`."""
        from kernels.workloads import DecoderConfig, MLPConfig

        max_k = self.training_gemm_max_k
        if self.size == "long":
            out = {"decoder": DecoderConfig(seq_len=512), "mlp": MLPConfig(batch=4096, gemm_max_k=max_k),
                   "batch_inference_batch": 8}
        elif self.size == "small":
            out = {"decoder": DecoderConfig(d_model=256, n_heads=4, n_layers=2, seq_len=64),
                   "mlp": MLPConfig(d_model=512, hidden=2048, batch=1024, gemm_max_k=max_k), "batch_inference_batch": 8}
        else:
            out = {"decoder": DecoderConfig(), "mlp": MLPConfig(batch=4096, gemm_max_k=max_k),
                   "batch_inference_batch": 32}
        if self.lc_service != "decoder":
            out["service"] = model_config(self.lc_service, self.size)
        if "gpt2_training" in self.pairs:
            out["gpt2"] = gpt2_config(self.size, max_k)
        return out


def run_order(cfg: MLColocationConfig, round_index: int = 0, rounds: int = 1) -> list[tuple[str | None, str]]:
    """The runs of one round of ``cfg``, in the order they run: (pair, run name) each,
    pair None for ``lc_alone`` (shared by the pairs).

    The round's list is every run of `MLColocationConfig.run_count` (``lc_alone``, then per
    pair ``be_alone`` and the selected scenarios, each static split at each share of
    `static_shares` and `process_static_shares`), rotated to start ``round_index``
    ``rounds``-ths of the way in: over the rounds each run takes its turn early, midway and
    late, so the drift of a machine over minutes does not favour the runs that come first.

    Raises
    ------
    ValueError
        Unless ``0 <= round_index < rounds``.
    """
    if not (is_int(rounds) and is_int(round_index) and 0 <= round_index < rounds):
        raise ValueError(f"run_order: round_index must be in [0, rounds), got {round_index!r} of {rounds!r}")
    runs: list[tuple[str | None, str]] = [(None, "lc_alone")]
    for pair in cfg.pairs:
        runs.append((pair, "be_alone"))
        for name in cfg.pair_scenarios():
            if name == "static_split":
                runs += [(pair, n) for n in cfg.static_shares()]
            elif name == "mps_static_split":
                runs += [(pair, n) for n in cfg.process_static_shares()]
            else:
                runs.append((pair, name))
    start = round_index * len(runs) // rounds
    return runs[start:] + runs[:start]


def static_name(share: float) -> str:
    """The scenario name of the static split at LC share ``share`` of `static_sweep`."""
    return f"static_split@{share:g}"


def _check_names(field: str, names: Sequence[str], allowed: Sequence[str]) -> None:
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ValueError(f"MLColocationConfig.{field}: unknown or empty {bad or names!r}; choose from {list(allowed)}")
    if len(set(names)) != len(names):
        raise ValueError(f"MLColocationConfig.{field} has duplicates: {list(names)!r}")


def order(scenarios: dict[str, Any]) -> dict[str, Any]:
    """Scenarios in report order (`SCENARIOS`, each static sweep after its split at the
    default share: ``static_split@...`` after ``static_split``, ``mps_static_split@...``
    after ``mps_static_split``)."""
    out: dict[str, Any] = {}
    for n in SCENARIOS:
        if n in scenarios:
            out[n] = scenarios[n]
        if n in ("static_split", "mps_static_split"):
            out.update(sorted((k, v) for k, v in scenarios.items() if k.startswith(n + "@")))
    return out


def scheduler_for(name: str, device: Any, specs: Sequence[Any], right_sizer: Any = None) -> Scheduler:
    """The `Scheduler` of the lithos scenario ``name`` (one of `LITHOS_SCENARIOS`).

    ``right_sizer`` sizes each latency-critical kernel of ``lithos_rightsized`` (the
    simulated device's, which learns online); without one that scenario's scheduler is
    ``lithos``' and its requests are sized by the caller (`Tenant.on_tpcs`, on the GPU).
    The other scenarios have none.
    """
    policies = {"lithos": Policy(), "lithos_no_steal": Policy(stealing=False),
                "lithos_no_atoms": Policy(atomize_best_effort=False), "lithos_rightsized": Policy(),
                "lithos_unlent": Policy(lend_best_effort_tpcs="none"),
                "lithos_lend_priority": Policy(lend_best_effort_tpcs="priority")}
    if name not in policies:
        raise ValueError(f"not a lithos scenario: {name!r}; expected one of {list(policies)}")
    return Scheduler(device, specs, policies[name], right_sizer=right_sizer if name == "lithos_rightsized" else None)
