"""The kernel launches of a model's request or training step, recorded on the CPU at real shapes.

`recording` swaps CuPy's raw kernel classes for `Recorder`, which records every launch
(kernel name, grid, block, arguments, shared memory, stream) and runs nothing; a model
built on `MetadataArrays` has arrays that are metadata only (a shape, a dtype, an address
never dereferenced), so a Llama-3.1-8B decode step or a GPT-2 training step is recorded in
a fraction of a second without a GPU. The CPU tests of `kernels.models` check the models'
launches this way, and the simulated device derives its kernels from them
(`lithos_atom.bench.sim_models`).

`launch_work` reads the work of one recorded launch from its arguments: FLOPs of the GEMMs,
convolutions and attention kernels (each by its own formula, which the tests check against
the models' `cost`), and the bytes it moves (each distinct array argument once, with the
exceptions `launch_work` lists).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from kernels import dtypes
from kernels.models._common import EmulatorArrays

#: The kernel modules whose launches are recorded (their ``as_cupy_stream`` and ``empty`` are swapped too).
KERNEL_MODULES = ("gemm", "attention", "norm", "elementwise", "conv", "reduce", "optim", "transformer", "convnet",
                  "training")

#: SMs of the device the models size their grids for while recording (the H100's, as the simulated device's).
RECORDING_SMS = 132

_next_address = [1 << 30]


def fake_array(shape: tuple[int, ...] | int, dtype: Any) -> Any:
    """A ``cupy.ndarray`` at an address of its own that is never dereferenced: metadata only."""
    import cupy

    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dt = np.dtype(dtype)
    nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dt.itemsize)
    address = _next_address[0]
    _next_address[0] += -(-nbytes // 256) * 256
    mem = cupy.cuda.UnownedMemory(address, nbytes, None, device_id=0)
    return cupy.ndarray(shape, dt, memptr=cupy.cuda.MemoryPointer(mem, 0))


class MetadataArrays(EmulatorArrays):
    """A model's arrays as metadata only (`fake_array`): a model at its real shape on the CPU.

    The host values given to `asarray` (a decode step's start positions, say) are kept in
    `values`, by device address, for the costs that depend on them. Streams pass through.

    Attributes
    ----------
    values : dict
        Device address -> the host array copied there.
    """

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.values: dict[int, np.ndarray] = {}

    def normal(self, shape: Any, scale: float = 1.0, shift: float = 0.0) -> Any:
        return np.broadcast_to(np.float32(0), tuple(shape))   # no memory behind it

    def integers(self, high: int, shape: Any) -> Any:
        return fake_array(shape, np.int32)

    def store(self, x: Any, kind: str) -> Any:
        return fake_array(x.shape, dtypes.numpy_dtype(kind))

    def asarray(self, host: Any) -> Any:
        host = np.asarray(host)
        out = fake_array(host.shape, host.dtype)
        self.values[out.data.ptr] = host.copy()
        return out

    def empty(self, shape: Any, dtype: Any) -> Any:
        return fake_array(shape, dtype)

    def zeros(self, shape: Any, dtype: Any) -> Any:
        return fake_array(shape, dtype)

    def write(self, x: Any, values: np.ndarray, stream: Any) -> None:
        pass

    def assign(self, x: Any, values: Any) -> None:
        pass

    def stream(self, stream: Any) -> Any:
        return stream

    own_stream = stream


class Recorder:
    """Stands in for ``cupy.RawKernel`` / ``RawModule`` functions: each call appends
    ``(name, grid, block, args, shared_mem, stream)`` to the class's `log`."""

    log: list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[Any, ...], int, Any]] = []

    def __init__(self, code: Any = None, name: str | None = None, options: Any = (), **kw: Any):
        self.name = name

    def get_function(self, name: str) -> Recorder:
        return Recorder(name=name)

    def __call__(self, grid: Any, block: Any, args: Any, *, shared_mem: int = 0, stream: Any = None) -> None:
        Recorder.log.append((self.name, tuple(grid), tuple(block), tuple(args), shared_mem, stream))


class RecordingStream:
    """The stream recorded launches are issued on (nothing runs; synchronizing is free)."""

    def synchronize(self) -> None:
        pass


@contextlib.contextmanager
def recording(num_sms: int = RECORDING_SMS) -> Iterator[list[Any]]:
    """Record every kernel launch of `KERNEL_MODULES` inside the block; yields the log.

    CuPy's raw kernel classes become `Recorder`, each kernel module's ``as_cupy_stream``
    passes streams through and its ``empty`` makes `fake_array`s, and the device has
    ``num_sms`` SMs. The kernels' cache is emptied before and after, so no recording
    kernel outlives the block nor a real one leaks into it. Not thread-safe: it swaps
    module attributes.
    """
    import cupy

    import kernels
    from kernels import _compile

    saved: list[tuple[Any, str, Any]] = [(cupy, "RawKernel", cupy.RawKernel), (cupy, "RawModule", cupy.RawModule),
                                         (_compile, "sm_count", _compile.sm_count)]
    modules = [importlib.import_module(f"kernels.{n}") for n in KERNEL_MODULES]
    for mod in modules:
        saved.append((mod, "as_cupy_stream", mod.as_cupy_stream))
        if hasattr(mod, "empty"):
            saved.append((mod, "empty", mod.empty))
    log: list[Any] = []
    try:
        cupy.RawKernel = cupy.RawModule = Recorder
        _compile.sm_count = lambda: num_sms
        for mod in modules:
            mod.as_cupy_stream = lambda s: s
            if hasattr(mod, "empty"):
                mod.empty = lambda shape, dtype, s=None: fake_array(shape, dtype)
        Recorder.log = log
        kernels.reset_cache()
        yield log
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
        Recorder.log = []
        kernels.reset_cache()


@dataclasses.dataclass(frozen=True)
class Launch:
    """One recorded launch.

    Attributes
    ----------
    name : str
        The kernel's name (with its template arguments).
    grid, block : tuple of int
    args : tuple
        Its arguments: `fake_array`s and NumPy scalars.
    shared_mem : int
        Dynamic shared memory, bytes.
    """

    name: str
    grid: tuple[int, ...]
    block: tuple[int, ...]
    args: tuple[Any, ...]
    shared_mem: int

    @property
    def base(self) -> str:
        """The name without template arguments."""
        return self.name.split("<")[0]

    @property
    def family(self) -> str:
        """The kernel family of `launch_work` (``flash_attn_fwd`` for
        ``flash_attn_fwd_f16_d64``, say), else `base`."""
        return next((f for f in (*TENSOR_KERNELS, *ATTENTION_KERNELS) if self.base.startswith(f)), self.base)

    @property
    def blocks(self) -> int:
        """Blocks of the grid."""
        return math.prod(self.grid)


def record(issue: Callable[[Any], Any], num_sms: int = RECORDING_SMS) -> list[Launch]:
    """The launches of ``issue(stream)`` (a request or a step of a model on `MetadataArrays`)."""
    with recording(num_sms) as log:
        issue(RecordingStream())
        return [Launch(n, g, b, a, sm) for n, g, b, a, sm, _ in log]


# ---- the work of a launch ---------------------------------------------------------------

#: Kernels on tensor cores (GEMMs, implicit-GEMM convolutions) and the attention kernels.
TENSOR_KERNELS = ("wmma_gemm", "conv_igemm")
ATTENTION_KERNELS = ("flash_attn_fwd", "gqa_decode_partial", "attn_fwd_train", "attn_bwd_dq", "attn_bwd_dkdv")

#: Attention FLOPs per (query, key) pair, head and head-dim element, by kernel: the forward's
#: two products; the backward's dQ kernel recomputes the scores (three products), its dK/dV
#: kernel the scores and dP (four).
_ATTENTION_PRODUCTS = {"flash_attn_fwd": 4, "gqa_decode_partial": 4, "attn_fwd_train": 4, "attn_bwd_dq": 6,
                       "attn_bwd_dkdv": 8}


@dataclasses.dataclass(frozen=True)
class Work:
    """What one launch computes and moves.

    Attributes
    ----------
    kind : str
        ``"tensor"``, ``"attention"`` or ``"memory"`` (which rate of the cost model applies).
    flops : float
        FLOPs (a multiply-add is 2) of the GEMM, convolution or attention; 0 for the others.
    bytes : float
        DRAM bytes read and written, each array once.
    blocks : int
        Blocks that do work (those of the grid, but for the decode attention's: its blocks
        past a sequence's position exit at once).
    """

    kind: str
    flops: float
    bytes: float
    blocks: int


def array_bytes(x: Any) -> int:
    """Bytes of the distinct elements of array view ``x`` (a stride-0 axis counts once)."""
    return int(math.prod(n for n, s in zip(x.shape, x.strides) if s != 0)) * x.dtype.itemsize


def _arrays(args: tuple[Any, ...]) -> list[Any]:
    """The distinct array arguments (by address and shape)."""
    import cupy

    seen: dict[tuple[int, tuple[int, ...]], Any] = {}
    for a in args:
        if isinstance(a, cupy.ndarray):
            seen.setdefault((a.data.ptr, tuple(a.shape)), a)
    return list(seen.values())


def _ints(args: tuple[Any, ...], first: int, count: int) -> list[int]:
    return [int(a) for a in args[first:first + count]]


def launch_work(launch: Launch, values: dict[int, np.ndarray] | None = None) -> Work:
    """The work of ``launch`` from its arguments.

    FLOPs: ``2 M N K`` of a GEMM, ``2 N P Q K R S C`` of a convolution, and per attention
    kernel its products (`_ATTENTION_PRODUCTS`) over the (query, key) pairs it visits
    (causal: the lower triangle; a decode step: keys ``0..position`` of each sequence, the
    positions read from ``values``, the host values of `MetadataArrays`).

    Bytes: every distinct array argument once, except that an embedding gather moves the
    rows it gathers (not its tables), a KV-cache append or decode read moves the rows it
    writes or reads (not the whole cache), a scatter into the token-embedding gradient
    reads and writes the rows it touches, Adam reads four and writes three fp32 arrays, and
    the loss reads the logits and writes their gradient in place.
    """
    base, args, arrays = launch.family, launch.args, _arrays(launch.args)
    total = float(sum(array_bytes(a) for a in arrays))
    kind = "tensor" if base in TENSOR_KERNELS else "attention" if base in ATTENTION_KERNELS else "memory"
    flops, blocks = 0.0, launch.blocks
    if base == "wmma_gemm":
        m, n, k = _ints(args, 3, 3)
        flops = 2.0 * m * n * k
    elif base == "conv_igemm":
        batch, _, _, c, k, r, s, p, q = _ints(args, 5, 9)
        flops = 2.0 * batch * p * q * k * r * s * c
    elif base == "flash_attn_fwd":
        b, h, _, d = args[0].shape
        sq, sk = _ints(args, 4, 2)
        causal = bool(int(args[-1]))
        pairs = sq * (sk - sq) + sq * (sq + 1) / 2 if causal else sq * sk
        flops = _ATTENTION_PRODUCTS[base] * b * h * d * pairs
    elif base in ("attn_fwd_train", "attn_bwd_dq", "attn_bwd_dkdv"):
        b, h, s = next(a.shape for a in arrays if a.ndim == 3)
        flops = _ATTENTION_PRODUCTS[base] * b * h * 64 * s * (s + 1) / 2
    elif base == "gqa_decode_partial":
        q, k_cache = args[0], args[2]
        _, n_kv, max_seq, d = k_cache.shape
        group, chunk, batch = int(args[8]), int(args[12]), launch.grid[2]
        known = (values or {}).get(args[4].data.ptr)
        keys = (known[:batch] + 1).astype(np.float64) if known is not None else np.full(batch, max_seq / 2)
        flops = _ATTENTION_PRODUCTS[base] * group * n_kv * d * float(keys.sum())
        blocks = int(n_kv * np.ceil(keys / chunk).sum())
        e = k_cache.dtype.itemsize
        total = 2.0 * n_kv * d * e * float(keys.sum()) + batch * group * n_kv * d * e \
            + sum(array_bytes(a) for a in arrays[6:]) * batch / k_cache.shape[0]
    elif base in ("embedding_gather", "embedding_sum"):
        out = arrays[-1]
        ids = [a for a in arrays[:-1] if a.dtype == np.int32]
        tables = len(arrays) - 1 - len(ids)
        total = float(sum(array_bytes(a) for a in ids) + array_bytes(out) * (1 + tables))
    elif base == "rope_kv_append":
        small = [a for a in arrays if a.ndim < 4]
        total = float(sum(array_bytes(a) for a in small) + array_bytes(args[0]))   # q rotated, k and v written
    elif base == "segment_sum_rows":
        table = arrays[-1]
        row = table.shape[1] * table.dtype.itemsize
        total = float(sum(array_bytes(a) for a in arrays[:-1]) + 2 * blocks * row)
    elif base.startswith("adam_step"):
        total *= 7 / 4
    elif base == "cross_entropy":
        total += array_bytes(arrays[0])
    return Work(kind, flops, total, max(1, blocks))
