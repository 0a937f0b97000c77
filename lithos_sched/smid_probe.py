"""Which SMs each TPC group is: run a ``%smid`` kernel on every single-TPC partition once.

TPC group i of the split is not SM pair i (DESIGN.md), so the mapping is measured.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SMID = r'''
extern "C" __global__ void smid(int* out) {
    unsigned int id;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
    if (threadIdx.x == 0) out[blockIdx.x] = (int)id;
}'''


def smid_kernel() -> Any:
    """A CuPy kernel writing each block's SM id into ``out[blockIdx.x]``."""
    import cupy

    return cupy.RawKernel(SMID, "smid")


def sms_of(stream: Any, blocks: int = 64) -> set[int]:
    """SM ids that ``blocks`` one-warp blocks launched on ``stream`` ran on."""
    import cupy

    with stream.cupy:  # fill, launch and read back in one stream's order
        out = cupy.full(blocks, -1, dtype=np.int32)
        smid_kernel()((blocks,), (32,), (out,), stream=stream.cupy)
        values = cupy.asnumpy(out, stream=stream.cupy)
    stream.synchronize()
    seen = set(int(v) for v in values)
    if -1 in seen:
        raise RuntimeError("smid probe: some blocks did not run")
    return seen


def probe_tpc_sms(device: Any) -> dict[int, tuple[int, ...]]:
    """TPC id to its SM ids, for every TPC of ``device``."""
    mapping: dict[int, tuple[int, ...]] = {}
    for t in range(device.num_tpcs):
        part = device.partition([t])
        mapping[t] = tuple(sorted(sms_of(part.normal)))
        part.close()
    return mapping
