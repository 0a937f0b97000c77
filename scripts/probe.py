"""Environment probe for the lent GPU: versions and the library behaviours lithos relies on."""
import sys, traceback
def step(name, fn):
    try:
        print(f"[ok] {name}: {fn()}")
    except Exception as e:
        print(f"[FAIL] {name}: {type(e).__name__}: {e}")
        traceback.print_exc(limit=2)

import numpy as np, cupy
step("versions", lambda: (sys.version.split()[0], np.__version__, cupy.__version__))
if not hasattr(np, 'row_stack'): np.row_stack = np.vstack
from numba import cuda
import numba_cuda, cuda.core as cc
from cuda.bindings import nvjitlink, nvrtc, driver
step("numba-cuda/cuda.core", lambda: (numba_cuda.__version__, cc.__version__))
step("nvjitlink/nvrtc", lambda: (nvjitlink.version(), nvrtc.nvrtcVersion()))
step("driver", lambda: driver.cuDriverGetVersion())
step("device", lambda: (cupy.cuda.Device().compute_capability, cupy.cuda.Device().attributes["MultiProcessorCount"]))
m = cupy.RawModule(code='template<class T> __global__ void g(T* x){ x[threadIdx.x] += (T)1; }\nextern "C" __global__ void h(float* x){}', name_expressions=['g<float>'])
f = m.get_function('g<float>')
step("module fn attrs", lambda: (type(f).__name__, repr(getattr(f, 'code', None))[:40], f.name, f.num_regs))
@cuda.jit
def k(x):
    i = cuda.grid(1)
    if i < x.shape[0]:
        x[i] += cuda.blockIdx.x
x = cupy.zeros(1000, np.float32)
k[4, 256](x)
kern = next(iter(k.overloads.values()))
step("numba PTX version", lambda: [l for l in kern.inspect_asm((9, 0)).splitlines() if l.startswith('.version')])
step("numba kernel attrs", lambda: (kern.entry_name, [str(t) for t in kern.argument_types], getattr(kern, 'cooperative', None)))
step("numba ext stream", lambda: cuda.external_stream(cupy.cuda.Stream(non_blocking=True).ptr))
step("cupy from_external", lambda: cupy.cuda.Stream.from_external(cc.Device().create_stream()))
step("cuda.core SMResource", lambda: [n for n in dir(cc.Device()) if 'resource' in n.lower()])
step("sm split by count", lambda: driver.cuDevSmResourceSplitByCount)
