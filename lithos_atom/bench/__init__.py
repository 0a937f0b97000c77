"""The lithos benchmarks: ``python -m lithos_atom.bench`` and the harness behind it.

It imports the library (`lithos_atom`, `lithos_sched`) and `kernels`; the library never
imports it. Its tables and plots need the ``bench`` extra (``rich``, ``matplotlib``).

Sections of ``python -m lithos_atom.bench``
    `atoms` (atomization overhead, with the kernels of `atom_cases`), `partition_bench`,
    `colocation_bench` (a synthetic latency-critical tenant beside a best-effort one) and
    `ml_colocation` (an inference service beside training or batch inference); each runs
    on the GPU or on the simulated device (`sim_colocation`, `sim_ml_colocation`).
The ML co-location harness
    `ml_gpu` (the scenarios on the GPU), `ml_tenants` (the tenants' loops),
    `ml_colocation_worker` (a tenant in its own process), `mps` (a private MPS daemon),
    `occupancy` and `percentiles` (figures of a run); `tenant_pair` (the two tenants of
    both co-location benchmarks).
Right-sizing
    ``python -m lithos_atom.bench.profile`` (scaling profiles, offline) and
    ``python -m lithos_atom.bench.rightsize_bench`` (the right-sizing and DVFS report), on
    the launches of `rightsize_cases`.
"""
