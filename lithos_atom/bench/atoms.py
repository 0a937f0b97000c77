"""Atomization overhead on the GPU: launch cost per atom, total-time overhead of ~250 us
atoms against one launch, and the register / shared-memory growth of rewritten kernels."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from lithos_atom.bench import atom_cases
from lithos_atom.bench.burn import BURN, median_device_us

EMPTY = r'''extern "C" __global__ void empty(float* out) { if (out == nullptr) out[0] = 1.0f; }'''


def _host_us_per_launch(fn: Any, stream: Any, n: int) -> float:
    stream.synchronize()
    t0 = time.perf_counter()
    fn()
    t1 = time.perf_counter()
    stream.synchronize()
    return (t1 - t0) * 1e6 / n


def launch_cost(stream: Any, n: int = 2000) -> dict[str, float]:
    """Host microseconds per launch: plain CuPy launch vs one atom of a rewritten kernel."""
    import cupy

    import lithos_atom

    k = cupy.RawKernel(EMPTY, "empty")
    out = cupy.empty(1, np.float32)
    a = lithos_atom.atomize(k, atom_blocks=1, strict=True)
    k((1,), (32,), (out,), stream=stream)
    plan = a.plan((n,), (32,), (out,))
    plan.atoms[0].issue(stream)

    def plain() -> None:
        for _ in range(n):
            k((1,), (32,), (out,), stream=stream)

    def atoms() -> None:
        plan.issue_all(stream)

    def atoms_with_planning() -> None:
        for _ in range(n // 10):  # a plan per launch of 10 atoms, as an intercepted launch does
            a.plan((10,), (32,), (out,)).issue_all(stream)

    reps = [(_host_us_per_launch(plain, stream, n), _host_us_per_launch(atoms, stream, n),
             _host_us_per_launch(atoms_with_planning, stream, n)) for _ in range(5)]
    return {
        "plain_launch_us": statistics.median(r[0] for r in reps),
        "atom_launch_us": statistics.median(r[1] for r in reps),
        "atom_launch_including_planning_us": statistics.median(r[2] for r in reps),
    }


def _resource_growth(original: Any, atomized: Any) -> dict[str, int]:
    import cupy

    prepared = atomized.prepared()
    f = prepared.function
    attr = cupy.cuda.driver.funcGetAttribute
    # CUfunction_attribute: 4 = NUM_REGS, 1 = SHARED_SIZE_BYTES (static)
    return {
        "regs_original": int(original.num_regs),
        "regs_atomized": int(attr(4, f.ptr)),
        "static_shared_original": int(original.shared_size_bytes),
        "static_shared_atomized": int(attr(1, f.ptr)),
    }


def total_time_overhead(stream: Any, target_ms: float = 60.0, reps: int = 7) -> dict[str, Any]:
    """Run one long kernel whole and as ~250 us atoms, side by side; report the ratio."""
    import cupy

    import lithos_atom

    k = cupy.RawKernel(BURN, "burn")
    threads = 256
    iters = 2000
    out_blocks = 132 * 8 * 40
    out = cupy.empty(out_blocks * threads, np.float32)
    args = (out, np.int32(iters))
    whole = lambda: k((out_blocks,), (threads,), args, stream=stream)  # noqa: E731
    whole_us = median_device_us(whole, stream, 3)
    # choose the block count for ~target_ms in total
    blocks = max(132 * 8, int(out_blocks * target_ms * 1000 / whole_us) // (132 * 8) * (132 * 8))
    out = cupy.empty(blocks * threads, np.float32)
    args = (out, np.int32(iters))
    whole = lambda: k((blocks,), (threads,), args, stream=stream)  # noqa: E731
    results: dict[str, Any] = {"kernel": "burn", "blocks": blocks, "threads": threads}
    wave = 132 * 8
    variants = {"atom_us_250": lithos_atom.atomize(k, atom_us=250.0, strict=True),
                "atom_us_500": lithos_atom.atomize(k, atom_us=500.0, strict=True),
                "one_atom": lithos_atom.atomize(k, atom_blocks=blocks, strict=True),
                "atom_64_waves": lithos_atom.atomize(k, atom_blocks=64 * wave, strict=True),
                "atom_16_waves": lithos_atom.atomize(k, atom_blocks=16 * wave, strict=True)}
    for a in variants.values():  # first launch runs whole and is timed; sizing uses it after
        a((blocks,), (threads,), args, stream=stream)
        stream.synchronize()
        a((blocks,), (threads,), args, stream=stream)
        stream.synchronize()
    class OneStream(lithos_atom.Atomizer):
        """Every atom on the launch's own stream (no side stream), for comparison."""

        def submit(self, plan: Any, s: Any) -> None:
            plan.issue_all(s)

    one_stream = OneStream()

    def run_variant(name: str, a: Any) -> float:
        if name.endswith("_one_stream"):
            with lithos_atom.using_atomizer(one_stream):
                return median_device_us(lambda: a((blocks,), (threads,), args, stream=stream), stream, 1)
        return median_device_us(lambda: a((blocks,), (threads,), args, stream=stream), stream, 1)

    variants["atom_us_250_one_stream"] = variants["atom_us_250"]
    rows: dict[str, list[float]] = {"whole": []} | {name: [] for name in variants}
    for _ in range(reps):  # interleaved, so drift hits every variant alike
        rows["whole"].append(median_device_us(whole, stream, 1))
        for name, a in variants.items():
            rows[name].append(run_variant(name, a))
    whole_med = statistics.median(rows["whole"])
    results["whole_us"] = whole_med
    for name, a in variants.items():
        plan = a.plan((blocks,), (threads,), args)
        med = statistics.median(rows[name])
        results[name] = {
            "total_us": med,
            "atoms": plan.num_atoms,
            "blocks_per_atom": plan.atom_blocks,
            "mean_atom_us": med / plan.num_atoms,
            "overhead_ratio": med / whole_med,
        }
    results["resources"] = _resource_growth(k, variants["atom_us_250"])
    return results


def resource_growth_suite() -> dict[str, dict[str, int]]:
    """Register and static shared-memory growth of every CuPy kernel in the GPU test cases."""
    import lithos_atom

    report = {}
    for case in atom_cases.cupy_cases():
        kernel = case.kernel()
        if isinstance(kernel, atom_cases.ModuleFunction):
            original, atomized = kernel.fn, kernel.atomize_fn(kernel.module, kernel.name)
        else:
            original, atomized = kernel, lithos_atom.atomize(kernel)
        report[case.name] = _resource_growth(original, atomized)
    return report


def run(stream: Any = None) -> dict[str, Any]:
    """The ``--atoms`` benchmark; needs a GPU."""
    import cupy

    stream = stream or cupy.cuda.Stream(non_blocking=True)
    return {
        "launch_cost": launch_cost(stream),
        "long_kernel": total_time_overhead(stream),
        "resource_growth": resource_growth_suite(),
    }
