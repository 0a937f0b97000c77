"""Which SMs a stream's blocks run on: a ``%smid`` kernel, and checks of the unit-to-SM map.

TPC group i of the driver's split is not SM pair i (docs/design.md), so `GpuDevice.sm_map`
runs this probe once on every single-TPC partition and keeps the result.

The kernel is a CuPy `RawKernel`: CuPy compiles it to a cubin for the device's compute
capability, so the PTX version of the NVRTC wheel never meets the driver's JIT (a 13.0
driver takes PTX up to 9.0 only), and a kernel loaded in the primary context runs
confined when launched on a green-context stream (docs/design.md).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

# Each block sleeps a few microseconds, so a fast SM cannot drain the whole grid before
# the others get blocks: every SM of the partition shows up in a probe of a few blocks per SM.
SMID = r'''
extern "C" __global__ void smid(int* out) {
    unsigned int id;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
    __nanosleep(4000);
    if (threadIdx.x == 0) out[blockIdx.x] = (int)id;
}'''


@functools.lru_cache(maxsize=1)
def smid_kernel() -> Any:
    """The CuPy kernel ``smid(int* out)``: writes each block's SM id to ``out[blockIdx.x]``."""
    import cupy

    return cupy.RawKernel(SMID, "smid")


def _cupy_stream(stream: Any) -> Any:
    import cupy

    if isinstance(stream, cupy.cuda.Stream):
        return stream
    wrapped = getattr(stream, "cupy", None)  # a lithos GpuStream keeps its CuPy wrapper
    return wrapped if isinstance(wrapped, cupy.cuda.Stream) else cupy.cuda.Stream.from_external(stream)


def record_smids(stream: Any, blocks: int = 64) -> np.ndarray:
    """Launch ``blocks`` one-warp blocks on ``stream``; return each block's SM id.

    Parameters
    ----------
    stream
        A lithos GPU stream, a CuPy stream, or any object with ``__cuda_stream__``.
    blocks : int
        Grid size.

    Returns
    -------
    numpy.ndarray
        ``int32`` array of length ``blocks``: the ``%smid`` each block ran on.

    Raises
    ------
    RuntimeError
        If a block did not write its SM id.
    """
    import cupy

    cs = _cupy_stream(stream)
    with cs:  # fill, launch and read back in one stream's order
        out = cupy.full(blocks, -1, dtype=np.int32)
        smid_kernel()((blocks,), (32,), (out,), stream=cs)
        values = cupy.asnumpy(out, stream=cs)
    cs.synchronize()
    if (values < 0).any():
        raise RuntimeError(f"smid probe: {int((values < 0).sum())} of {blocks} blocks did not run")
    return values


def sms_of(stream: Any, blocks: int = 64) -> set[int]:
    """The set of SM ids that ``blocks`` probe blocks launched on ``stream`` ran on."""
    return {int(v) for v in record_smids(stream, blocks)}


def unit_map_problems(mapping: Mapping[int, tuple[int, ...]], sms_per_unit: int) -> list[str]:
    """What is wrong with a probed unit-to-SM map (empty when it is sound).

    A sound map gives every unit exactly ``sms_per_unit`` SMs and no SM to two units.
    """
    problems = [f"unit {u} ran on {len(sms)} SMs {list(sms)}, expected {sms_per_unit}"
                for u, sms in sorted(mapping.items()) if len(sms) != sms_per_unit]
    owner: dict[int, int] = {}
    for u, sms in sorted(mapping.items()):
        for sm in sms:
            if sm in owner:
                problems.append(f"SM {sm} ran blocks of unit {owner[sm]} and of unit {u}")
            owner.setdefault(sm, u)
    return problems
