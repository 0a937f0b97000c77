"""GPU tier of the ML benchmarks' model services (`lithos_atom.bench.ml_services`).

- a service as the bench serves it (`ServedModel`, its graphs captured by `warmup`)
  computes the same bits replayed as launched from Python, for every batch size;
- `services_alone` times a service and serves it alone both ways.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name, sizes", [("bert-base", (1, 4)), ("resnet50", (1, 2)), ("llama-1b-prefill", (64, 128))])
def test_served_graph_replay_is_bitwise_the_python_launched_request(name, sizes):
    import cupy

    from lithos_atom.bench import ml_services

    stream = cupy.cuda.Stream(non_blocking=True)
    served = ml_services.build_service(name, "small", sizes, 3, stream, graphs=True)
    served.warmup(stream, n=1)
    for b in sizes:
        eager = cupy.asnumpy(served.eager_request(b, stream), stream=stream).view(np.uint8)
        stream.synchronize()
        replayed = cupy.asnumpy(served.request(b, stream), stream=stream).view(np.uint8)
        stream.synchronize()
        assert np.array_equal(eager, replayed), f"{name} batch {b}"


def test_services_alone_times_and_serves_a_service_both_ways():
    from lithos_atom.bench.services_alone import run_service

    out = run_service("bert-base", 0.3, 0.3, 0.1, "small", 0)
    assert all(t > 0 for t in out["gpu_ms"].values()) and out["rate_hz"] > 0
    for variant in ("graph", "python"):
        assert out[variant]["completed"] > 0 and out[variant]["p99_over_gpu"] >= 0.5
