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
    from lithos_sched import ml_tenants

    plain, plain2 = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)
    kernels.reset_cache()
    service = ml_tenants.build_lc(cfg, plain)
    service.warmup(plain)
    job = ml_tenants.build_be(cfg, kind, plain2)
    job.step(plain2)
    plain2.synchronize()
    return plain, plain2, service, job
