"""The inference service's load: its capacity alone, and the request rate a load asks for.

The service is one server (a request that arrives while another runs waits for it), so its
capacity is one over its mean service time. The service time of a batch is what a request of
that batch takes, from its issue to its completion, when it runs alone on the whole GPU
right after the previous one (back to back: no wait before it, no idle GPU between); the
mean is over the batches a request draws, each equally likely, as `MLColocationConfig.requests`
draws them. `MLColocationConfig.load` times the capacity is the mean rate of the Poisson
arrivals, unless `MLColocationConfig.lc_rate_hz` gives the rate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lithos_atom.bench.ml_colocation import MLColocationConfig, clock

#: Back-to-back requests timed per batch on the GPU: about 0.2 s of a millisecond service's
#: time over 8 batches, and a mean that one slow request moves by a few percent at most.
GPU_REQUESTS_PER_BATCH = 25

HOW = ("capacity = 1 / mean service time; the service time of a batch is the mean time of a request of that "
       "batch from its issue to its completion, run alone on the whole device right after the previous one "
       "(back to back); the mean is over the request batches, each equally likely")


def with_rate(cfg: MLColocationConfig, service_ms: dict[int, float],
              load: float | None = None) -> tuple[MLColocationConfig, dict[str, Any]]:
    """``cfg`` with its request rate set, and the record of how it was set.

    Parameters
    ----------
    cfg : MLColocationConfig
        Its `lc_rate_hz`, when set, is kept (an explicit rate); else the rate is ``load``
        (default `MLColocationConfig.load`) times the capacity.
    service_ms : dict
        Batch to its service time alone, ms (`gpu_service_ms`, `sim_service_ms`).
    load : float, optional
        The fraction of the capacity to offer instead of ``cfg.load`` (a point of a sweep).

    Returns
    -------
    (MLColocationConfig, dict)
        The config with `lc_rate_hz` (and `load`) set, and ``how``, ``service_ms``,
        ``mean_service_ms``, ``capacity_hz``, ``load`` (the rate over the capacity),
        ``rate_hz`` and ``rate_from`` (``"load"`` or ``"lc_rate_hz"``).

    Raises
    ------
    ValueError
        Without positive service times.
    """
    if not service_ms or any(not v > 0 for v in service_ms.values()):
        raise ValueError(f"service times must be positive, got {service_ms!r}")
    mean_ms = sum(service_ms.values()) / len(service_ms)
    capacity = 1000.0 / mean_ms
    if cfg.lc_rate_hz is not None:
        rate, offered, source = cfg.lc_rate_hz, cfg.lc_rate_hz / capacity, "lc_rate_hz"
    else:
        offered = cfg.load if load is None else load
        rate, source = offered * capacity, "load"
    rated = dataclasses.replace(cfg, lc_rate_hz=rate, **({"load": offered} if source == "load" else {}))
    return rated, {"how": HOW, "service_ms": {int(b): float(v) for b, v in sorted(service_ms.items())},
                   "mean_service_ms": mean_ms, "capacity_hz": capacity, "load": offered, "rate_hz": rate,
                   "rate_from": source}


def sim_service_ms(cfg: MLColocationConfig) -> dict[int, float]:
    """Each batch's service time on the simulated device (virtual time), in ms."""
    from lithos_atom.bench.sim_ml_colocation import request_service_ms

    return request_service_ms(cfg)


def gpu_service_ms(cfg: MLColocationConfig, per_batch: int = GPU_REQUESTS_PER_BATCH) -> dict[int, float]:
    """Each batch's service time on the GPU, in ms: ``per_batch`` requests of every batch,
    back to back on a stream of the whole GPU, the batches taking turns, after the
    service's warm-up (kernels built, graphs captured); the host settings of the scenarios
    (`ml_tenants.host_settings`) apply."""
    import cupy

    from lithos_atom.bench import ml_tenants

    stream = cupy.cuda.Stream(non_blocking=True)
    # The probe serves no arrivals: the service is built as the runs build it, at any rate.
    service = ml_tenants.build_lc(dataclasses.replace(cfg, lc_rate_hz=1.0), stream)
    service.warmup(stream)
    times: dict[int, list[float]] = {b: [] for b in cfg.batch_sizes()}
    with ml_tenants.host_settings():
        for i in range(per_batch):
            for batch, took in times.items():
                start = clock()
                service.request(batch, stream, i)
                stream.synchronize()
                took.append(clock() - start)
    del service
    cupy.get_default_memory_pool().free_all_blocks()
    return {b: 1e3 * sum(t) / len(t) for b, t in times.items()}
