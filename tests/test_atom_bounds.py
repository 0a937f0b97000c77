"""CPU tests of two bounds on rewritten launches: atoms per launch, and registers per thread.

Numba sizes ufunc blocks from the original kernel's registers; a rewritten kernel needs a
few more, so it is linked again with registers capped to what the block needs
(`lithos_atom.compile.register_cap`). Checked here with nvJitLink's own report.
"""

from __future__ import annotations

import re

import pytest

from lithos_atom.compile import link_ptx, register_cap
from lithos_atom.ptx import rewrite_module
from lithos_atom.sizing import MAX_ATOMS_PER_LAUNCH, CoarsenedAtomsWarning, choose_atom_blocks
from tests.ptx_sources import ARCH, nvrtc_ptx


def test_fixed_atom_blocks_on_a_huge_grid_is_coarsened_with_a_warning():
    total = 22_000_000
    with pytest.warns(CoarsenedAtomsWarning, match="22000000-block"):
        n = choose_atom_blocks(total, 264, atom_blocks=1)
    assert -(-total // n) <= MAX_ATOMS_PER_LAUNCH < -(-total // (n - 1))
    assert choose_atom_blocks(MAX_ATOMS_PER_LAUNCH, 264, atom_blocks=1) == 1  # at the bound: unchanged


@pytest.mark.parametrize(("threads", "cap"), [(1024, 64), (768, 80), (512, 128), (256, 255), (33, 255), (1, 255)])
def test_register_cap_fits_one_block_in_an_sm(threads, cap):
    assert register_cap(threads) == cap
    warps = -(-threads // 32)
    assert cap * warps * 32 <= 65536 and cap % 8 in (0, 7)


def test_register_cap_rejects_impossible_blocks():
    with pytest.raises(ValueError, match="threads_per_block"):
        register_cap(1025)


# Many live values per thread: the rewritten kernel uses more registers than a 1024-thread block allows.
_HUNGRY = r'''
extern "C" __global__ void hungry(const float* x, float* out, int n) {
    float v[96];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float a = x[i % n];
    v[0] = a;
    #pragma unroll
    for (int k = 1; k < 96; ++k) v[k] = v[k - 1] * a + (float)k;  // a chain: every value stays live
    float s = 0.0f;
    #pragma unroll
    for (int k = 0; k < 96; ++k) s += v[k] * v[95 - k];
    if (i < n) out[i] = s;
}
'''


def _registers(ptx: str, max_registers: int | None) -> int:
    from cuda.core import Linker, LinkerOptions, ObjectCode

    linker = Linker(ObjectCode.from_ptx(ptx.encode(), name="hungry"),
                    options=LinkerOptions(arch=ARCH, verbose=True, max_register_count=max_registers))
    try:
        linker.link("cubin")
        return int(re.search(r"Used (\d+) registers", linker.get_info_log()).group(1))
    finally:
        linker.close()


def test_capped_link_fits_a_1024_thread_block():
    ptx = rewrite_module(nvrtc_ptx(_HUNGRY)[0], skip_unsupported=True).ptx
    cap = register_cap(1024)
    assert _registers(ptx, None) > cap  # uncapped, a 1024-thread block would not launch
    assert _registers(ptx, cap) <= cap
    assert link_ptx(ptx, ARCH, name="hungry", max_registers=cap) != link_ptx(ptx, ARCH, name="hungry")
