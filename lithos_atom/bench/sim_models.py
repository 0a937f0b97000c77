"""The simulated device's kernels of the `kernels.models` services and of the GPT-2 job.

Nothing is written out twice: each model is built at its real shape on metadata-only
arrays, one request (or training step) is recorded launch by launch
(`model_launches.record`), and each launch becomes a `SimKernel` of its grid with a
per-block duration from its work (`model_launches.launch_work`, `KernelModel.recorded`).
So the simulated request has the model's kernels in the model's order, and the model's
FLOP count (`cost`) is what its simulated kernels compute (the CPU tests check both).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from lithos_atom.bench import ml_services
from lithos_atom.bench.model_launches import Launch, MetadataArrays, RecordingStream, Work, launch_work, record, recording
from lithos_atom.bench.sim_kernels import KernelModel


@functools.lru_cache(maxsize=16)
def service_work(service: str, size: str, batch_sizes: tuple[int, ...], seed: int = 0
                 ) -> dict[int, tuple[tuple[str, Work], ...]]:
    """(kernel name, work) of every launch of one request of ``service`` per batch size.

    Parameters
    ----------
    service : str
        A model service of `ml_services.SERVICES` (not the decoder).
    size : str
        Workload size.
    batch_sizes : tuple of int
        The sizes it serves (prompt lengths for the prefill).
    seed : int

    Returns
    -------
    dict
        Batch size -> the request's launches, in order.
    """
    arrays = MetadataArrays(seed)
    model = ml_services.build_model(service, size, batch_sizes, seed, arrays=arrays)
    prefill = service == "llama-1b-prefill"
    out = {}
    for b in batch_sizes:
        launches = record(lambda s, b=b: model.prefill(b, s) if prefill else model.forward(b, s))
        out[b] = _works(launches, arrays)
    return out


@functools.lru_cache(maxsize=4)
def gpt2_work(size: str, gemm_max_k: int | None, seed: int = 0) -> tuple[tuple[str, Work], ...]:
    """(kernel name, work) of every launch of one GPT-2 training step at ``size``."""
    arrays = MetadataArrays(seed)
    stream = RecordingStream()
    with recording() as log:  # the job's set-up launches kernels too (its compute copies)
        job = ml_services.build_gpt2_job(size, gemm_max_k, seed, stream=stream, arrays=arrays)
        del log[:]
        job.step(stream)
        launches = [Launch(n, g, b, a, sm) for n, g, b, a, sm, _ in log]
    return _works(launches, arrays)


def _works(launches: Sequence[Launch], arrays: MetadataArrays) -> tuple[tuple[str, Work], ...]:
    return tuple((la.base, launch_work(la, arrays.values)) for la in launches)


def service_kernels(model: KernelModel, service: str, size: str, batch_sizes: Sequence[int]) -> dict[int, list[Any]]:
    """The `SimKernel`s of one request of ``service`` per batch size, in launch order."""
    works = service_work(service, size, tuple(sorted(batch_sizes)))
    return {b: [model.recorded(name, w) for name, w in ws] for b, ws in works.items()}


def gpt2_kernels(model: KernelModel, size: str, gemm_max_k: int | None) -> list[Any]:
    """The `SimKernel`s of one GPT-2 training step, in launch order."""
    return [model.recorded(name, w) for name, w in gpt2_work(size, gemm_max_k)]
