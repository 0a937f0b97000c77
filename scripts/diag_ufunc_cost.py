"""Host cost of one CuPy ufunc launch: CuPy's own, through the seam without an atomizer, and intercepted.

Each arm launches ``cupy.add(x, y, out=o)`` on a small array (one block) ``--launches``
times and reports the host time per launch (median of ``--repeats`` rounds; the device is
synchronized only between rounds). Arms: ``cupy`` (a kernel CuPy loaded before lithos was
ever installed), ``seam_idle`` (a kernel compiled through the seam, launched with no
atomizer set), ``intercepted`` (under ``using_atomizer(Atomizer(atom_blocks=...))``, one
atom per launch) and ``intercepted_split`` (atoms of one block over a 64-block launch, for
comparison with the same launch plain). The issue's target: intercepted within 2x of cupy.

Usage: python scripts/diag_ufunc_cost.py [--launches 2000] [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _per_launch_us(launch, launches: int, repeats: int) -> float:
    import cupy

    launch()  # compile and warm
    cupy.cuda.Device().synchronize()
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(launches):
            launch()
        rounds.append((time.perf_counter() - start) / launches * 1e6)
        cupy.cuda.Device().synchronize()
    return statistics.median(rounds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--launches", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.launches < 1 or args.repeats < 1:
        ap.error("--launches and --repeats must be >= 1")
    import cupy
    import numpy as np

    import lithos
    from lithos_atom import cupy_generated

    small = [cupy.ones(100, np.float32) for _ in range(3)]
    big = [cupy.ones(64 * 128, np.float32) for _ in range(3)]
    if cupy_generated.installed():
        raise SystemExit("lithos was installed before this script: the 'cupy' arm would not be CuPy's own")
    results = {"cupy": _per_launch_us(lambda: cupy.add(*small[:2], out=small[2]), args.launches, args.repeats),
               "cupy_64_blocks": _per_launch_us(lambda: cupy.add(*big[:2], out=big[2]), args.launches, args.repeats)}
    with lithos.using_atomizer(lithos.Atomizer(atom_blocks=1 << 20)):
        pass  # installs the seam (and forgets CuPy's loaded kernels) once
    results["seam_idle"] = _per_launch_us(lambda: cupy.add(*small[:2], out=small[2]), args.launches, args.repeats)
    with lithos.using_atomizer(lithos.Atomizer(atom_blocks=1 << 20)):
        results["intercepted"] = _per_launch_us(lambda: cupy.add(*small[:2], out=small[2]), args.launches,
                                                args.repeats)
    with lithos.using_atomizer(lithos.Atomizer(atom_blocks=1)):
        results["intercepted_split_64_atoms"] = _per_launch_us(lambda: cupy.add(*big[:2], out=big[2]),
                                                               max(1, args.launches // 16), args.repeats)
    results["intercepted_over_cupy"] = results["intercepted"] / results["cupy"]
    for k, v in results.items():
        print(f"{k:>28}: {v:8.2f}" + ("" if k.endswith("over_cupy") else " us per launch"))
    print(f"device: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
