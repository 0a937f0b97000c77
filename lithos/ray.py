"""Ray actors as lithos tenants: fractional GPUs that are TPC partitions.

Ray's fractional GPUs are a scheduling label: two actors started with ``num_gpus=0.5``
share the GPU Ray gave them with no isolation. `remote`, in place of ``ray.remote``,
makes an actor class whose instances `lithos.join` the GPU Ray assigned them
(`assigned_gpu`: ``ray.get_gpu_ids()`` through ``CUDA_VISIBLE_DEVICES``) before their own
``__init__`` runs. Each gets its own TPCs (its GPU fraction of them, unless ``share`` or
``tpcs`` say otherwise) and, if asked, a memory limit; a latency-critical actor publishes
its requests, a best-effort actor steals the TPCs of the latency-critical actors of its
GPU between their requests. An actor that exits leaves the GPU; one that is killed gets
its TPCs back through the other actors' ledger watches. ``ray.shutdown()`` kills every
actor at once, leaving no survivor to reclaim them: have actors call `lithos.leave` first
(else the next lithos process on the GPU reclaims their entries). `join_assigned` does
the same from inside any actor. Ray is imported with this module
(``pip install 'lithos[ray]'``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import ray

from lithos.membership import Membership, join
from lithos_sched.fields import is_number
from lithos_sched.tenant import Priority


def assigned_gpu() -> tuple[int, float]:
    """The GPU Ray assigned the calling actor (its index among those the actor sees) and
    the fraction of it the actor asked for.

    Raises
    ------
    RuntimeError
        For an actor without a GPU, or with more than one.
    """
    ids = [str(i) for i in ray.get_gpu_ids()]
    if len(ids) != 1:
        raise RuntimeError(f"lithos.ray: an actor joins one GPU; Ray assigned this one {ids or 'none'} "
                           "(start it with 0 < num_gpus <= 1)")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    gpu = visible.index(ids[0]) if ids[0] in visible else int(ids[0])
    fraction = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 1.0))
    return gpu, fraction


def join_assigned(priority: str | Priority, *, share: float | None = None, tpcs: int | None = None,
                  **options: Any) -> Membership:
    """`lithos.join` the GPU Ray assigned the calling actor.

    Parameters
    ----------
    priority : {"latency-critical", "best-effort"} or Priority
    share, tpcs : optional
        The actor's TPCs; neither: its GPU fraction (``num_gpus``) of them.
    **options
        More `lithos.join` options: ``memory_limit``, ``name``, ``simulate``, ``policy``.
    """
    gpu, fraction = assigned_gpu()
    if share is None and tpcs is None:
        share = min(1.0, fraction)
    return join(gpu, priority=priority, share=share, tpcs=tpcs, **options)


def remote(*, priority: str | Priority, num_gpus: float, share: float | None = None, tpcs: int | None = None,
           memory_limit: int | str | None = None, simulate: bool | None = None,
           **ray_options: Any) -> Callable[[type], Any]:
    """``ray.remote`` for actor classes whose actors are lithos tenants of their GPU.

    Parameters
    ----------
    priority : {"latency-critical", "best-effort"} or Priority
    num_gpus : float
        Ray's GPU request, in (0, 1]: the actor gets one GPU, or a fraction of one.
    share, tpcs : optional
        Its TPCs; neither: ``num_gpus`` of the GPU's TPCs.
    memory_limit : int or str, optional
        Device memory the actor may hold (``"8GiB"``); None: no limit.
    simulate : bool, optional
        As `lithos.join` (None: the GPU if the actor sees one, else the simulated device).
    **ray_options
        Passed to ``ray.remote`` (``num_cpus``, ``max_restarts``, ...).

    Returns
    -------
    callable
        The decorator: ``@lithos.ray.remote(priority="best-effort", num_gpus=0.5)``.
        Each actor's tenant is named ``<class>-<pid>``.

    Raises
    ------
    ValueError
        For a ``priority`` or ``num_gpus`` it cannot use.
    """
    values = [p.value for p in Priority]
    if not isinstance(priority, Priority) and priority not in values:
        raise ValueError(f"lithos.ray.remote: priority must be one of {values}, got {priority!r}")
    if not (is_number(num_gpus) and 0 < num_gpus <= 1):
        raise ValueError(f"lithos.ray.remote: num_gpus must be a number in (0, 1], got {num_gpus!r}")

    def decorate(cls: type) -> Any:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            join_assigned(priority, share=share, tpcs=tpcs, memory_limit=memory_limit, simulate=simulate,
                          name=f"{cls.__name__}-{os.getpid()}")
            cls.__init__(self, *args, **kwargs)

        tenant_class = type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                                   "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
        return ray.remote(num_gpus=num_gpus, **ray_options)(tenant_class)

    return decorate
