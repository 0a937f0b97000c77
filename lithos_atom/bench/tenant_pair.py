"""The two tenants of the co-location benchmarks and the TPCs each owns."""

from __future__ import annotations

from lithos_sched.tenant import Priority, TenantSpec, assign_tpcs


def pair_specs(lc_share: float) -> list[TenantSpec]:
    """The two tenants of the co-location benchmarks: a latency-critical ``"lc"`` owning
    ``lc_share`` of the TPCs and a best-effort ``"be"`` owning the rest."""
    return [TenantSpec("lc", Priority.LATENCY_CRITICAL, share=lc_share),
            TenantSpec("be", Priority.BEST_EFFORT, share=1 - lc_share)]


def pair_tpcs(lc_share: float, num_tpcs: int) -> tuple[frozenset[int], frozenset[int]]:
    """The TPCs of the two `pair_specs` tenants as `assign_tpcs` gives them, so that a
    benchmark's static split divides the device as the scheduler does."""
    owned = assign_tpcs(pair_specs(lc_share), num_tpcs)
    return owned["lc"], owned["be"]
