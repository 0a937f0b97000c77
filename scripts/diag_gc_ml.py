"""Diagnostic: garbage collections during the ML co-location bench.

Runs ``python -m lithos_atom.bench --ml`` with the given extra arguments in this process,
with a `gc.callbacks` hook that times every collection; prints the collections that took
over 0.5 ms (generation, milliseconds, objects collected, seconds since start) and a
count per generation.

Usage (on the GPU): python scripts/diag_gc_ml.py OUT_JSON [bench arguments...]
"""

from __future__ import annotations

import collections
import gc
import json
import sys
import time

from lithos_atom.bench.__main__ import main

T0 = time.perf_counter()
events: list[tuple[int, float, int, float]] = []
counts: collections.Counter[int] = collections.Counter()
_start: dict[str, float] = {}


def hook(phase: str, info: dict) -> None:
    if phase == "start":
        _start["t"] = time.perf_counter()
        return
    dt = (time.perf_counter() - _start.get("t", time.perf_counter())) * 1e3
    counts[info["generation"]] += 1
    if dt > 0.5:
        events.append((info["generation"], dt, info["collected"], _start["t"] - T0))


gc.callbacks.append(hook)
rc = main(["--ml", *sys.argv[2:]])
gc.callbacks.remove(hook)
for e in events:
    print(f"gen {e[0]} {e[1]:8.2f} ms collected {e[2]:6d} at {e[3]:8.2f} s")
print("collections per generation:", dict(counts))
with open(sys.argv[1], "w") as f:
    json.dump({"slow_collections": events, "counts": dict(counts), "bench_rc": rc}, f, indent=1)
