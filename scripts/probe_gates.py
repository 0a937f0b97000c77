"""GPU probe of the questions behind device-side atom gates (stream memory operations).

Answers, in one short run, each as a JSON field:

- ``order``: is a ``cuStreamWaitValue32`` gate queued behind a running kernel evaluated when
  that kernel ends (a flag closed while it runs holds the next atom) or when the stream's
  front end reaches it? For a flag in device memory written by another stream, for a
  flag in host-pinned memory written by a plain host store, and for lithos' own gate (a
  32-bit open word written by a stream, waited on with ``cuStreamWaitValue64`` AND a mask
  that also passes on the forced word after it).
- ``channels``: while one stream is blocked at a closed gate, do kernels on many other
  streams (plain and green-context streams) still run? (A blocked hardware queue shared
  with the latency-critical stream would deadlock the gate protocol.)
- ``cross_process``: a gate word in a shared ``/dev/shm`` file, registered with
  ``cuMemHostRegister`` in two processes: does a stream write (and a host store) of one
  process open a gate waited on by a stream of the other, and how soon does the gated
  kernel start?
- ``host_cost_us``: host time per call of the operations a deep queue issues (ctypes,
  GIL held): wait-value, write-value, ``cuLaunchKernel``, CuPy's launch, a graph launch.
- ``graph_green``: does a CUDA graph captured with CuPy run confined to a green context's
  SMs when launched on its stream, and can stream memory operations be captured into a
  graph?

Usage: python3 scripts/probe_gates.py OUT.json
"""
from __future__ import annotations

import ctypes
import json
import mmap
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

import numpy as np

if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

SRC = r'''
__device__ unsigned long long now(){ unsigned long long x; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(x)); return x; }
extern "C" __global__ void spin_ns(unsigned long long ns, unsigned long long* t){
  unsigned long long t0 = now(), t1 = t0; while (t1 - t0 < ns) t1 = now();
  if (threadIdx.x == 0 && blockIdx.x == 0) { t[0] = t0; t[1] = t1; } }
extern "C" __global__ void stamp(unsigned long long* t){ if (threadIdx.x == 0 && blockIdx.x == 0) t[0] = now(); }
extern "C" __global__ void empty(){ }
extern "C" __global__ void smid(int* out){ unsigned int id; asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  __nanosleep(4000); if (threadIdx.x == 0) out[blockIdx.x] = (int)id; }
'''

CU_STREAM_WAIT_VALUE_EQ = 0x1
CU_STREAM_WAIT_VALUE_AND = 0x2
MASK = (1 << 32) | 1  # lithos' gates: pass while the open word or the forced word is non-zero
CU_MEMHOSTREGISTER_PORTABLE = 0x1
CU_MEMHOSTREGISTER_DEVICEMAP = 0x2


def lib():
    cuda = ctypes.PyDLL("libcuda.so.1")
    P, U, Q = ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint64
    for name, args in {
        "cuStreamWaitValue32_v2": (P, Q, U, U), "cuStreamWriteValue32_v2": (P, Q, U, U),
        "cuStreamWaitValue64_v2": (P, Q, Q, U),
        "cuLaunchKernel": (P, U, U, U, U, U, U, U, P, P, P), "cuGraphLaunch": (P, P),
        "cuMemHostRegister_v2": (P, ctypes.c_size_t, U), "cuMemHostGetDevicePointer_v2": (ctypes.POINTER(Q), P, U),
        "cuMemHostUnregister": (P,), "cuStreamSynchronize": (P,),
    }.items():
        fn = getattr(cuda, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    return cuda


def ok(code, what):
    if code != 0:
        raise RuntimeError(f"{what}: CUDA error {code}")


def setup():
    import cupy as cp

    m = cp.RawModule(code=SRC)
    return cp, m, lib()


def order(cp, m, cu):
    """The shared probe's question, with stream and host writes of the flag."""
    spin, stamp = m.get_function("spin_ns"), m.get_function("stamp")
    S, L = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    out = {}
    for kind in ("device", "host", "lithos_pair"):
        rows = []
        for _ in range(3):
            tA, tB, tC, tO = (cp.zeros(2, cp.uint64) for _ in range(4))
            if kind == "lithos_pair":  # open word written 0/1 by the other stream, 64-bit AND wait
                pair = cp.zeros(2, cp.uint32)
                pair[0] = 1
                fptr = pair.data.ptr
                def setflag(v, t):
                    stamp((1,), (32,), (t,), stream=L)
                    ok(cu.cuStreamWriteValue32_v2(L.ptr, fptr, 1 - v, 0), "write")
            elif kind == "device":
                flag = cp.zeros(1, cp.uint32)
                fptr = flag.data.ptr
                def setflag(v, t):
                    stamp((1,), (32,), (t,), stream=L)
                    ok(cu.cuStreamWriteValue32_v2(L.ptr, fptr, v, 0), "write")
            else:
                mem = cp.cuda.alloc_pinned_memory(64)
                host = np.frombuffer(mem, np.uint32, 1)
                host[0] = 0
                fptr = cp.cuda.runtime.hostGetDevicePointer(mem.ptr, 0)
                def setflag(v, t):
                    stamp((1,), (32,), (t,), stream=L)
                    L.synchronize()
                    host[0] = v
            cp.cuda.Device().synchronize()
            spin((1,), (32,), (np.uint64(5_000_000), tA), stream=S)
            if kind == "lithos_pair":
                ok(cu.cuStreamWaitValue64_v2(S.ptr, fptr, MASK, CU_STREAM_WAIT_VALUE_AND), "wait64")
            else:
                ok(cu.cuStreamWaitValue32_v2(S.ptr, fptr, 0, CU_STREAM_WAIT_VALUE_EQ), "wait")
            stamp((1,), (32,), (tB,), stream=S)
            time.sleep(0.001)
            setflag(1, tC)
            time.sleep(0.012)
            setflag(0, tO)
            cp.cuda.Device().synchronize()
            a0, a1 = (int(x) for x in cp.asnumpy(tA)[:2])
            b, c, o = (int(cp.asnumpy(t)[0]) for t in (tB, tC, tO))
            rows.append(dict(atom_ms=round((a1 - a0) / 1e6, 3), closed_at_ms=round((c - a0) / 1e6, 3),
                             held=b > o, next_after_open_us=round((b - o) / 1e3, 1),
                             next_after_atom_end_ms=round((b - a1) / 1e6, 3)))
        out[kind] = rows
    return out


def channels(cp, m, cu):
    """One stream gated; short kernels on 64 plain and 3x6 green-context streams."""
    from lithos_sched import open_device

    stamp = m.get_function("stamp")
    flag = cp.ones(1, cp.uint32)  # closed
    gated = cp.cuda.Stream(non_blocking=True)
    ok(cu.cuStreamWaitValue32_v2(gated.ptr, flag.data.ptr, 0, CU_STREAM_WAIT_VALUE_EQ), "wait")
    tg = cp.zeros(1, cp.uint64)
    stamp((1,), (32,), (tg,), stream=gated)
    plain = [cp.cuda.Stream(non_blocking=True) for _ in range(64)]
    dev = open_device(simulate=False)
    parts = [dev.partition(range(i * 11, i * 11 + 11)) for i in range(6)]
    green = [s.cupy for p in parts for s in (p.high, p.normal, p.normal_b)]
    # a gated green stream too: the best-effort side of the protocol waits on green streams
    gg = parts[0].normal_b.cupy
    ok(cu.cuStreamWaitValue32_v2(gg.ptr, flag.data.ptr, 0, CU_STREAM_WAIT_VALUE_EQ), "wait green")
    stamps = cp.zeros(len(plain) + len(green), cp.uint64)
    for i, s in enumerate(plain + green):
        if s is gg:
            continue
        stamp((1,), (32,), (stamps[i:],), stream=s)
    t0 = time.perf_counter()
    done = [False] * len(plain + green)
    while time.perf_counter() - t0 < 0.5 and not all(d for d, s in zip(done, plain + green) if s is not gg):
        done = [s.done for s in plain + green]
    blocked = [i for i, (d, s) in enumerate(zip(done, plain + green)) if not d and s is not gg]
    still_gated = not gated.done
    cp.cuda.runtime.memset(flag.data.ptr, 0, 4)
    cp.cuda.Device().synchronize()
    dev.close()
    return dict(plain_streams=len(plain), green_streams=len(green) - 1, blocked_other_streams=blocked,
                gated_stream_held=still_gated, gated_ran_after_open=int(cp.asnumpy(tg)[0]) > 0)


def _child(path, conn, mode):
    """The other process: wait on the shared gate, then stamp the GPU clock."""
    cp, m, cu = setup()
    stamp = m.get_function("stamp")
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 4096)
    buf = ctypes.c_char.from_buffer(mm)
    addr = ctypes.addressof(buf)
    ok(cu.cuMemHostRegister_v2(addr, 4096, CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_PORTABLE), "register")
    dptr = ctypes.c_uint64()
    ok(cu.cuMemHostGetDevicePointer_v2(ctypes.byref(dptr), addr, 0), "devptr")
    S = cp.cuda.Stream(non_blocking=True)
    t = cp.zeros(1, cp.uint64)
    ok(cu.cuStreamWaitValue32_v2(S.ptr, dptr.value, 0, CU_STREAM_WAIT_VALUE_EQ), "wait")
    stamp((1,), (32,), (t,), stream=S)
    time.sleep(0.005)
    conn.send(("queued", S.done))
    S.synchronize()
    conn.send(("ran", int(cp.asnumpy(t)[0])))
    ok(cu.cuMemHostUnregister(addr), "unregister")
    del buf
    mm.close()


def cross_process(cp, m, cu):
    stamp = m.get_function("stamp")
    out = {}
    for mode in ("stream_write", "host_store"):
        fd, path = tempfile.mkstemp(prefix="lithos-gate-probe-", dir="/dev/shm")
        os.write(fd, bytes(4096))
        os.close(fd)
        with open(path, "r+b") as f:
            mm = mmap.mmap(f.fileno(), 4096)
        words = np.frombuffer(mm, np.uint32, 1)
        words[0] = 1  # closed before the child queues its wait
        buf = ctypes.c_char.from_buffer(mm)
        addr = ctypes.addressof(buf)
        ok(cu.cuMemHostRegister_v2(addr, 4096, CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_PORTABLE), "register")
        dptr = ctypes.c_uint64()
        ok(cu.cuMemHostGetDevicePointer_v2(ctypes.byref(dptr), addr, 0), "devptr")
        ctx = mp.get_context("spawn")
        a, b = ctx.Pipe()
        p = ctx.Process(target=_child, args=(path, b, mode))
        p.start()
        try:
            kind, child_done_early = a.recv()
            time.sleep(0.02)
            L = cp.cuda.Stream(non_blocking=True)
            t = cp.zeros(1, cp.uint64)
            stamp((1,), (32,), (t,), stream=L)
            if mode == "stream_write":
                ok(cu.cuStreamWriteValue32_v2(L.ptr, dptr.value, 0, 0), "write")
            else:
                L.synchronize()
                words[0] = 0
            L.synchronize()
            ok_ = a.poll(10)
            kind, ran = a.recv() if ok_ else ("timeout", 0)
            opened = int(cp.asnumpy(t)[0])
            out[mode] = dict(held_while_closed=not child_done_early, opened=ok_,
                             child_start_after_open_us=round((ran - opened) / 1e3, 1) if ok_ else None)
        finally:
            p.join(20)
            ok(cu.cuMemHostUnregister(addr), "unregister")
            del buf, words
            mm.close()
            os.unlink(path)
    return out


def host_cost(cp, m, cu):
    """Median host microseconds per call over 2000 calls."""
    S = cp.cuda.Stream(non_blocking=True)
    flag = cp.zeros(1, cp.uint32)
    empty = m.get_function("empty")
    fn = ctypes.c_void_p(empty.ptr)
    res = {}

    def med(call, n=2000):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            call()
            ts.append(time.perf_counter_ns() - t0)
        S.synchronize()
        return round(statistics.median(ts) / 1e3, 2)

    res["wait_value32"] = med(lambda: cu.cuStreamWaitValue32_v2(S.ptr, flag.data.ptr, 0, CU_STREAM_WAIT_VALUE_EQ))
    res["write_value32"] = med(lambda: cu.cuStreamWriteValue32_v2(S.ptr, flag.data.ptr, 0, 0))
    params = (ctypes.c_void_p * 1)()
    res["cuLaunchKernel"] = med(lambda: cu.cuLaunchKernel(fn, 1, 1, 1, 32, 1, 1, 0, S.ptr, params, None))
    res["cupy_rawkernel"] = med(lambda: empty((1,), (32,), (), stream=S))

    def gate_and_launch():
        cu.cuStreamWaitValue32_v2(S.ptr, flag.data.ptr, 0, CU_STREAM_WAIT_VALUE_EQ)
        cu.cuLaunchKernel(fn, 1, 1, 1, 32, 1, 1, 0, S.ptr, params, None)
    res["gate_plus_launch"] = med(gate_and_launch)
    G = cp.cuda.Stream(non_blocking=True)
    G.begin_capture()
    for _ in range(40):
        empty((1,), (32,), (), stream=G)
    graph = G.end_capture()
    res["graph_launch_40_kernels"] = med(lambda: graph.launch(stream=S), n=500)
    return res


def graph_green(cp, m, cu):
    from lithos_sched import open_device

    smid = m.get_function("smid")
    dev = open_device(simulate=False)
    part = dev.partition(range(10))
    allowed = set(part.sm_ids)
    out = {"partition_sms": len(allowed)}
    blocks = 4 * dev.num_sms
    buf = cp.full(blocks, -1, cp.int32)
    # captured on a plain stream, launched on the green one
    G = cp.cuda.Stream(non_blocking=True)
    G.begin_capture()
    smid((blocks,), (32,), (buf,), stream=G)
    graph = G.end_capture()
    graph.launch(stream=part.high.cupy)
    part.high.cupy.synchronize()
    sms = set(int(v) for v in cp.asnumpy(buf))
    out["captured_plain_launched_green"] = dict(sms=len(sms), confined=sms <= allowed)
    # captured on the green stream itself
    buf.fill(-1)
    gs = part.normal.cupy
    try:
        gs.begin_capture()
        smid((blocks,), (32,), (buf,), stream=gs)
        graph2 = gs.end_capture()
        graph2.launch(stream=gs)
        gs.synchronize()
        sms = set(int(v) for v in cp.asnumpy(buf))
        out["captured_on_green"] = dict(sms=len(sms), confined=sms <= allowed)
    except Exception as exc:
        out["captured_on_green"] = f"ERR {type(exc).__name__}: {exc}"
    # a memory operation captured between two kernels
    flag = cp.zeros(1, cp.uint32)
    try:
        G.begin_capture()
        smid((1,), (32,), (buf,), stream=G)
        ok(cu.cuStreamWriteValue32_v2(G.ptr, flag.data.ptr, 7, 0), "write in capture")
        smid((1,), (32,), (buf,), stream=G)
        g3 = G.end_capture()
        g3.launch(stream=part.high.cupy)
        part.high.cupy.synchronize()
        out["write_value_captured"] = int(cp.asnumpy(flag)[0]) == 7
    except Exception as exc:
        try:
            G.end_capture()
        except Exception:
            pass
        out["write_value_captured"] = f"ERR {type(exc).__name__}: {exc}"
    part.close()
    dev.close()
    return out


def main(path):
    cp, m, cu = setup()
    from cuda.bindings import driver as drv

    dev = drv.cuDeviceGet(0)[1]
    out = {"device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
           "driver": drv.cuDriverGetVersion()[1]}
    for a in ("CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM", "CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED", "CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR",
              "CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS"):
        try:
            out[a] = drv.cuDeviceGetAttribute(getattr(drv.CUdevice_attribute, a), dev)[1]
        except Exception as exc:
            out[a] = f"ERR {exc}"
    for name, fn in (("order", order), ("channels", channels), ("cross_process", cross_process),
                     ("host_cost_us", host_cost), ("graph_green", graph_green)):
        t0 = time.perf_counter()
        try:
            out[name] = fn(cp, m, cu)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            out[name] = f"ERR {type(exc).__name__}: {exc}"
        print(name, round(time.perf_counter() - t0, 2), "s:", json.dumps(out[name]), flush=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "probe_gates.json")
