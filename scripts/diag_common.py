"""Pieces shared by the diagnostic scripts (run as ``python scripts/diag_*.py``, which puts
this folder on the import path)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[..., Any], record: Callable[[float, float], None]) -> Callable[..., Any]:
    """``fn`` wrapped so that every call reports ``record(start_s, seconds)``, even when it raises."""
    def wrapper(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            record(t, time.perf_counter() - t)
    return wrapper


def ml_pair(cfg: Any, kind: str = "training") -> tuple[Any, Any, Any, Any]:
    """The inference service and best-effort job ``kind`` (``"training"`` or
    ``"batch_inference"``) of the ML bench, warmed on two plain streams:
    ``(stream, stream2, service, job)``."""
    import cupy

    import kernels
    from lithos_atom.bench import ml_tenants

    plain, plain2 = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)
    kernels.reset_cache()
    service = ml_tenants.build_lc(cfg, plain)
    service.warmup(plain)
    job = ml_tenants.build_be(cfg, kind, plain2)
    job.step(plain2)
    plain2.synchronize()
    return plain, plain2, service, job


def round_summary(runs: list[dict], statics_prefix: str = "mps_static") -> list[dict]:
    """Each lithos arm of each (round, pair) of a diagnostic's ``runs`` against that round's
    service alone and static splits, as the ML bench compares them
    (`lithos_atom.bench.ml_figures.static_at_p99`).

    ``runs`` are records with ``round``, ``pair``, ``arm``, ``p99_ms`` and, for co-located
    arms, ``be_norm`` (best-effort throughput over alone); the static splits are the arms
    named ``statics_prefix@share``, the lithos arms those starting with ``lithos``; records
    with an ``error`` are left out. Returns one dict per lithos arm: ``round``, ``pair``,
    ``arm``, ``p99_ms``, ``x_alone``, ``be_norm``, ``static_line_be_norm`` and
    ``x_static_line`` (None where no static split reached its p99: it is below them all).
    """
    from lithos_atom.bench.ml_figures import static_at_p99

    groups: dict[tuple[Any, Any], dict[str, dict]] = {}
    for r in runs:
        if "error" not in r:
            groups.setdefault((r["round"], r["pair"]), {})[r["arm"]] = r
    out = []
    for (rnd, pair), arms in groups.items():
        alone = arms.get("alone", {}).get("p99_ms")
        # every co-located arm in the ML bench's scenario form, the static splits by their own names
        scenarios = {name: {"hp": {"p99_ms": a["p99_ms"]},
                            "be": {"iters_per_s": a["be_norm"], "throughput_norm": a["be_norm"]}}
                     for name, a in arms.items() if "be_norm" in a}
        for name, a in arms.items():
            if not name.startswith("lithos"):
                continue
            cmp = static_at_p99(scenarios, name, statics_prefix)
            out.append({"round": rnd, "pair": pair, "arm": name, "p99_ms": a["p99_ms"],
                        "x_alone": a["p99_ms"] / alone if alone else None, "be_norm": a["be_norm"],
                        "static_line_be_norm": cmp and cmp["static_line_be_norm"],
                        "x_static_line": cmp and cmp["be_throughput_gain_on_line"]})
    return out
