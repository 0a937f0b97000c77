"""Settings and figures of the inference-inference stacking study (`lithos_atom.bench.stacking`).

`StackConfig` names the services (`StackService`: each one's priority rank, TPC share,
arrival rate, batch sizes and SLO), the best-effort job and the scenarios;
`summarize_variant` turns one variant's raw records into each service's SLO attainment,
the goodput over all services and lithos' ratios to each baseline.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lithos_atom.bench.ml_colocation import MLColocationConfig
from lithos_atom.bench.ml_services import BE_JOBS, SERVICES
from lithos_sched.fields import is_int, is_number, require
from lithos_sched.tenant import Priority, TenantSpec

#: The scenarios of each variant (besides each service alone and the job alone), in report order.
STACK_SCENARIOS: tuple[str, ...] = ("mps", "priorities", "processes", "static_split", "lithos")

#: What the simulated ``priorities`` scenario is.
PRIORITIES_SIM = ("modeled: the simulated device has two stream priorities; the services of the best rank on "
                  "the high-priority stream, the others and the best-effort job on ordinary streams")


@dataclasses.dataclass(frozen=True)
class StackService:
    """One latency-critical service of the stack.

    Attributes
    ----------
    service : str
        One of `lithos_atom.bench.ml_services.SERVICES` (its tenant's name too).
    rank : int
        Priority, 0 the highest: its stream priority in ``priorities``.
    share : float
        Fraction of the TPCs it owns under ``static_split`` and lithos (with the
        best-effort job; without it the services share its TPCs in proportion).
    rate_hz : float
        Mean request rate (Poisson).
    batch_sizes : tuple of int or None
        Its request sizes, each request's drawn uniformly; None: the service's own.
    slo_mult : float
        Its SLO: this multiple of its p99 alone on the whole GPU.
    """

    service: str
    rank: int = 0
    share: float = 0.25
    rate_hz: float = 100.0
    batch_sizes: tuple[int, ...] | None = None
    slo_mult: float = 1.5

    def __post_init__(self) -> None:
        if self.batch_sizes is not None:
            object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        require(self.service in SERVICES, "StackService.service", f"one of {SERVICES}", self.service)
        require(is_int(self.rank) and self.rank >= 0, "StackService.rank", "an int >= 0", self.rank)
        require(is_number(self.share) and 0 < self.share < 1, "StackService.share", "in (0, 1)", self.share)
        for name in ("rate_hz", "slo_mult"):
            value = getattr(self, name)
            require(is_number(value) and math.isfinite(value) and value > 0, f"StackService.{name}",
                    "a finite number > 0", value)


#: The default stack: Llama decode first (the interactive service, the tightest SLO and the
#: most TPCs: its steps are the longest), ResNet-50 and BERT-base below it at smaller batches.
DEFAULT_SERVICES: tuple[StackService, ...] = (
    StackService("llama-1b", rank=0, share=0.35, rate_hz=100.0, batch_sizes=(1, 4, 16), slo_mult=1.5),
    StackService("resnet50", rank=1, share=0.2, rate_hz=100.0, batch_sizes=(1, 2, 4, 8), slo_mult=2.0),
    StackService("bert-base", rank=1, share=0.2, rate_hz=50.0, batch_sizes=(1, 2, 4, 8), slo_mult=2.0),
)


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """Settings of the stacking study.

    Attributes
    ----------
    services : tuple of StackService
        The latency-critical services, 1 to 4, distinct.
    be_job : str or None
        The best-effort job of the ``with_<job>`` variant (one of `BE_JOBS`); None runs
        the services by themselves only.
    scenarios : tuple of str
        Of `STACK_SCENARIOS` (each service alone, and the job alone, always run).
    be_share : float
        TPCs the best-effort job owns under ``static_split`` and lithos; the services'
        shares and this sum to at most 1.
    duration_s, warmup_s : float
        Measured and unmeasured length of each scenario.
    size : str
        Workload sizes (`MLColocationConfig.size`).
    lc_graphs : bool
        The services replay a CUDA graph per batch size (as servers do), or launch from Python.
    training_gemm_max_k : int or None
        The job's longest GEMM reduction (`MLColocationConfig.training_gemm_max_k`).
    be_queue_depth : int
        Iterations of the job kept queued.
    seed : int
        Seeds the weights; service i's arrivals are seeded ``seed + i``.
    """

    services: tuple[StackService, ...] = DEFAULT_SERVICES
    be_job: str | None = "gpt2_training"
    scenarios: tuple[str, ...] = STACK_SCENARIOS
    be_share: float = 0.25
    duration_s: float = 3.0
    warmup_s: float = 0.5
    size: str = "default"
    lc_graphs: bool = True
    training_gemm_max_k: int | None = 2048
    be_queue_depth: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        services = tuple(s if isinstance(s, StackService) else StackService(**s) for s in self.services)
        object.__setattr__(self, "services", services)
        object.__setattr__(self, "scenarios", tuple(self.scenarios))
        names = [s.service for s in services]
        require(1 <= len(names) <= 4 and len(set(names)) == len(names), "StackConfig.services",
                "1 to 4 distinct services", names)
        require(self.be_job is None or self.be_job in BE_JOBS, "StackConfig.be_job", f"None or one of {BE_JOBS}",
                self.be_job)
        bad = [n for n in self.scenarios if n not in STACK_SCENARIOS]
        require(not bad and len(set(self.scenarios)) == len(self.scenarios), "StackConfig.scenarios",
                f"distinct names of {STACK_SCENARIOS}", self.scenarios)
        require(is_number(self.be_share) and 0 < self.be_share < 1, "StackConfig.be_share", "in (0, 1)", self.be_share)
        total = sum(s.share for s in services) + self.be_share
        require(total <= 1 + 1e-9, "StackConfig: the services' shares and be_share", "at most 1 together",
                round(total, 6))
        # the rest is MLColocationConfig's to check, service by service
        self.service_config(0)
        self.be_config()

    @property
    def span_s(self) -> float:
        """Warm-up plus measurement."""
        return self.warmup_s + self.duration_s

    def service_config(self, i: int) -> MLColocationConfig:
        """Service ``i`` as the ML bench's `MLColocationConfig` (its requests, span and workload)."""
        s = self.services[i]
        return MLColocationConfig(lc_service=s.service, lc_rate_hz=s.rate_hz, lc_batch_sizes=s.batch_sizes,
                                  duration_s=self.duration_s, warmup_s=self.warmup_s, size=self.size,
                                  lc_graphs=self.lc_graphs, training_gemm_max_k=self.training_gemm_max_k,
                                  be_queue_depth=self.be_queue_depth, seed=self.seed + i)

    def be_config(self) -> MLColocationConfig:
        """The best-effort job's `MLColocationConfig` (its workload, span and queue depth)."""
        return MLColocationConfig(pairs=(self.be_job or "training",), duration_s=self.duration_s,
                                  warmup_s=self.warmup_s, size=self.size, training_gemm_max_k=self.training_gemm_max_k,
                                  be_queue_depth=self.be_queue_depth, seed=self.seed)

    def variants(self) -> dict[str, bool]:
        """Variant name -> whether the best-effort job runs in it."""
        return {"lc_only": False, **({f"with_{self.be_job}": True} if self.be_job else {})}

    def tenant_specs(self, with_be: bool) -> list[TenantSpec]:
        """The tenants of ``static_split`` and lithos: one latency-critical tenant per service
        (named after it) on its share, and the best-effort ``"be"`` on `be_share`; without
        the job the services share its TPCs in proportion to their shares."""
        shares = [s.share for s in self.services]
        if not with_be:
            scale = (sum(shares) + self.be_share) / sum(shares)
            shares = [min(1.0, x * scale) for x in shares]
        specs = [TenantSpec(s.service, Priority.LATENCY_CRITICAL, share=x) for s, x in zip(self.services, shares)]
        if with_be:
            specs.append(TenantSpec("be", Priority.BEST_EFFORT, share=self.be_share))
        return specs

    def top_rank(self) -> int:
        """The best (lowest) rank of the services."""
        return min(s.rank for s in self.services)


def cuda_priority(rank: int, greatest: int) -> int:
    """The CUDA stream priority of a service of ``rank`` on a device whose greatest priority
    is ``greatest`` (a negative number; 0 is the lowest, the best-effort job's): rank 0
    gets ``greatest``, each further rank one level less, every service above the job."""
    return min(greatest + rank, -1) if greatest < 0 else 0


# ---- figures ---------------------------------------------------------------------------------


def with_slo(hp: dict[str, Any], slo_ms: float | None) -> dict[str, Any]:
    """``hp`` (`ml_figures.lc_figures`) with ``slo_ms``, ``met`` (requests completed within
    it) and ``slo_attainment`` (met over arrived: unfinished requests are misses)."""
    out = dict(hp)
    met = sum(1 for v in hp.get("latencies_ms", []) if slo_ms is not None and v <= slo_ms)
    out.update({"slo_ms": slo_ms, "met": met if slo_ms is not None else None,
                "slo_attainment": met / hp["arrived"] if slo_ms is not None and hp.get("arrived") else None})
    return out


def summarize_variant(cfg: StackConfig, scenarios: dict[str, Any], alone: dict[str, Any],
                      be_alone: dict[str, Any] | None) -> dict[str, Any]:
    """SLOs, goodput and lithos' ratios of one variant.

    Parameters
    ----------
    cfg : StackConfig
    scenarios : dict
        Scenario -> ``{"services": {name: lc_figures}, "be": be_figures}`` (``be`` with the
        job), or ``{"skipped": why}``.
    alone : dict
        Service -> its ``lc_figures`` alone on the whole GPU (its SLO's base).
    be_alone : dict or None
        The job's ``be_figures`` alone.

    Returns
    -------
    dict
        ``slo_ms`` per service, ``scenarios`` (each service's figures with its SLO,
        ``goodput_rps``, ``slo_attainment`` over all requests, ``be`` normalized to
        alone), ``ratios`` (lithos over each baseline: ``p99_reduction`` per service,
        ``goodput_gain``) and ``best_baseline`` (the baseline of the most goodput and
        lithos' gain over it).
    """
    slos = {s.service: (s.slo_mult * alone[s.service]["p99_ms"] if alone.get(s.service, {}).get("p99_ms") else None)
            for s in cfg.services}
    out: dict[str, Any] = {}
    for name, sc in scenarios.items():
        if "services" not in sc:
            out[name] = sc
            continue
        services = {n: with_slo(hp, slos[n]) for n, hp in sc["services"].items()}
        met = sum(hp["met"] or 0 for hp in services.values())
        arrived = sum(hp["arrived"] for hp in services.values())
        entry = {**sc, "services": services, "goodput_rps": met / cfg.duration_s,
                 "slo_attainment": met / arrived if arrived else None}
        if sc.get("be") is not None:
            rate = (be_alone or {}).get("iters_per_s")
            entry["be"] = {**sc["be"], "throughput_norm": sc["be"]["iters_per_s"] / rate if rate else None}
        out[name] = entry
    ratios: dict[str, Any] = {}
    lithos = out.get("lithos", {})
    if "services" in lithos:
        for name, sc in out.items():
            if name == "lithos" or "services" not in sc:
                continue
            ratios[name] = {"p99_reduction": {n: _ratio(sc["services"][n].get("p99_ms"),
                                                        lithos["services"][n].get("p99_ms"))
                                              for n in lithos["services"]},
                            "goodput_gain": _ratio(lithos["goodput_rps"], sc["goodput_rps"])}
    baselines = {n: sc["goodput_rps"] for n, sc in out.items() if n != "lithos" and "services" in sc}
    best = max(baselines, key=lambda n: baselines[n]) if baselines else None
    return {"slo_ms": slos, "scenarios": out, "ratios": ratios,
            "best_baseline": None if best is None or not ratios else
            {"scenario": best, "goodput_rps": baselines[best], "lithos_goodput_gain": ratios[best]["goodput_gain"]}}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
