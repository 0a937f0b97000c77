"""Atomized launches of Numba ``@cuda.jit`` kernels.

Numba compiles and specializes the kernel and packs its arguments itself: lithos
intercepts ``_Kernel.launch``, the one method every Numba launch passes through, takes
the specialization's PTX, rewrites and links it, and launches atoms with the argument
list Numba's own ``_prepare_args`` builds (its array ABI: meminfo, parent, nitems,
itemsize, data, shape..., strides) followed by the four atom arguments. Each launch goes
through `Atomizer.dispatch` (`lithos_atom.atomizer`); the rewrite itself is `lithos_atom.ptx`.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

from lithos_atom._compat import import_numba_cuda
from lithos_atom.atomizer import DURATIONS, AtomizeOptions, Atomizer
from lithos_atom.active import get_atomizer
from lithos_atom.compile import link_ptx, register_cap
from lithos_atom.errors import AtomizeError, UnsupportedKernelError
from lithos_atom.plan import KernelKey, LaunchPlan, LaunchShape, arg_shapes
from lithos_atom.ptx import RewriteResult, rewrite_module
from lithos_atom.sizing import choose_atom_blocks


@dataclasses.dataclass(frozen=True)
class PreparedNumbaKernel:
    """A rewritten Numba specialization loaded through ``cuda.core``.

    Attributes
    ----------
    kernel : cuda.core.Kernel
        The rewritten kernel.
    entry : str
        Its PTX entry name.
    rewrite : RewriteResult
        The module rewrite, for reports.
    """

    kernel: Any
    entry: str
    rewrite: RewriteResult
    arch: str


_prepared: dict[int, tuple[Any, PreparedNumbaKernel | str]] = {}
_prepared_lock = threading.Lock()


def _current_cc() -> tuple[int, int]:
    cuda = import_numba_cuda()
    return tuple(cuda.get_current_device().compute_capability)  # type: ignore[return-value]


def prepare(kernel: Any) -> PreparedNumbaKernel | str:
    """Rewrite, link and load a Numba ``_Kernel`` (cached per specialization).

    Returns
    -------
    PreparedNumbaKernel or str
        The prepared kernel, or why it cannot be atomized.
    """
    with _prepared_lock:
        cached = _prepared.get(id(kernel))
    # The kernel object is kept in the entry, so its id cannot be reused while cached.
    if cached is not None and cached[0] is kernel:
        return cached[1]
    result = _prepare_uncached(kernel)
    with _prepared_lock:
        _prepared[id(kernel)] = (kernel, result)
    return result


def _prepare_uncached(kernel: Any) -> PreparedNumbaKernel | str:
    from cuda.core import ObjectCode

    if getattr(kernel, "cooperative", False):
        return "uses grid-wide synchronization (Numba launches it cooperatively)"
    if getattr(kernel, "debug", False):
        return "compiled with debug=True (its exception reporting assumes one launch)"
    cc = _current_cc()
    ptx = kernel.inspect_asm(cc)
    result = rewrite_module(ptx, skip_unsupported=True)
    entries = list(result.entries.values())
    if len(entries) != 1:
        raise AtomizeError(f"expected one entry in Numba's PTX for {kernel!r}, found {len(entries)}")
    info = entries[0]
    if not info.atomized:
        return info.reason or "the rewriter refused it"
    arch = f"sm_{cc[0]}{cc[1]}"
    cubin = link_ptx(result.ptx, arch, name=info.name)
    return PreparedNumbaKernel(ObjectCode.from_cubin(cubin).get_kernel(info.name), info.name, result, arch)


_capped: dict[tuple[int, int], Any] = {}


def kernel_for_block(prepared: PreparedNumbaKernel, threads: int) -> Any:
    """The rewritten kernel that launches with ``threads`` threads per block.

    Numba sizes a ufunc's blocks from the original kernel's registers (``forall``); the
    rewritten kernel needs a few more, so a block that fits the original may not fit it
    (``CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES``). Such blocks get a copy linked with registers
    capped to fit (cached per kernel and cap).
    """
    from cuda.core import ObjectCode

    if threads <= prepared.kernel.attributes.max_threads_per_block() or threads > 1024:  # the driver refuses > 1024
        return prepared.kernel
    cap = register_cap(threads)
    key = (id(prepared), cap)
    with _prepared_lock:
        kernel = _capped.get(key)
    if kernel is None:
        cubin = link_ptx(prepared.rewrite.ptx, prepared.arch, name=prepared.entry, max_registers=cap)
        kernel = ObjectCode.from_cubin(cubin).get_kernel(prepared.entry)
        with _prepared_lock:
            _capped[key] = kernel
    return kernel


def _core_stream(stream: Any) -> Any:
    from cuda.core import Stream

    if isinstance(stream, Stream):
        return stream
    if stream is None or stream == 0:
        return Stream.from_handle(0)
    if hasattr(stream, "__cuda_stream__"):
        return Stream.from_handle(int(stream.__cuda_stream__()[1]))
    handle = getattr(stream, "handle", None)  # a Numba driver Stream
    if handle is not None:
        return Stream.from_handle(int(getattr(handle, "value", handle) or 0))
    raise TypeError(f"cannot use {type(stream).__name__} as a CUDA stream")


def _wave_blocks(prepared: PreparedNumbaKernel, block: tuple[int, int, int], shared_mem: int) -> int:
    threads = block[0] * block[1] * block[2]
    per_sm = kernel_for_block(prepared, threads).occupancy.max_active_blocks_per_multiprocessor(threads, shared_mem)
    return max(1, per_sm) * import_numba_cuda().get_current_device().MULTIPROCESSOR_COUNT



def _key(kernel: Any, args: tuple, griddim: tuple[int, int, int], blockdim: tuple[int, int, int],
         sharedmem: int) -> KernelKey:
    name = getattr(kernel, "entry_name", None) or str(getattr(kernel, "py_func", kernel))
    return KernelKey(name, tuple(griddim), tuple(blockdim), int(sharedmem), arg_shapes(args))


def launch_shape(kernel: Any, args: tuple, griddim: tuple[int, int, int], blockdim: tuple[int, int, int],
                 sharedmem: int) -> LaunchShape:
    """The `LaunchShape` of one Numba launch (for a scheduler that runs it unsplit)."""
    prepared = prepare(kernel)
    wave = 0 if isinstance(prepared, str) else _wave_blocks(prepared, tuple(blockdim), sharedmem)
    return LaunchShape(_key(kernel, args, griddim, blockdim, sharedmem), griddim[0] * griddim[1] * griddim[2], wave)


def plan_launch(
    kernel: Any,
    args: tuple,
    griddim: tuple[int, int, int],
    blockdim: tuple[int, int, int],
    stream: Any,
    sharedmem: int,
    options: AtomizeOptions,
    original_launch: Any,
    sized: bool = True,
) -> LaunchPlan:
    """Build the `LaunchPlan` of one Numba launch (arguments are packed now, once).

    With ``sized=False`` (for an atomizer that sizes atoms itself: a scheduler, see
    `Atomizer.wants_sized_plans`) the plan is one atom of every block, and no launch
    duration is looked up to size it.

    Raises
    ------
    UnsupportedKernelError
        In strict mode, when the kernel cannot be atomized.
    """
    from cuda.core import LaunchConfig, launch

    key = _key(kernel, args, griddim, blockdim, sharedmem)
    total = griddim[0] * griddim[1] * griddim[2]
    prepared = prepare(kernel)
    if isinstance(prepared, str):
        if options.strict:
            raise UnsupportedKernelError(prepared, entry=key.name)

        def launch_whole(s: Any) -> None:
            original_launch(kernel, args, griddim, blockdim, _core_stream(s), sharedmem)

        return LaunchPlan.whole(key, total, launch_whole, prepared)

    retr: list = []
    kernelargs: list = []
    for ty, value in zip(kernel.argument_types, args):
        kernel._prepare_args(ty, value, stream, retr, kernelargs)
    grid_args = [ctypes.c_uint32(d) for d in griddim]
    rewritten = kernel_for_block(prepared, blockdim[0] * blockdim[1] * blockdim[2])

    def issue_range(start: int, count: int, s: Any) -> None:
        config = LaunchConfig(grid=(count, 1, 1), block=tuple(blockdim), shmem_size=sharedmem)
        launch(_core_stream(s), config, rewritten, *kernelargs, ctypes.c_uint64(start), *grid_args)

    def finish() -> None:
        for writeback in retr:  # copies of host arrays Numba moved to the device
            writeback()

    wave = _wave_blocks(prepared, tuple(blockdim), sharedmem)
    atom_blocks = total if not sized else choose_atom_blocks(
        total, wave, atom_blocks=options.atom_blocks, atom_us=options.atom_us, launch_us=DURATIONS.estimate_us(key)
    )
    return LaunchPlan.build(key, total, atom_blocks, issue_range, wave_blocks=wave, finish=finish)


# ---- interception of _Kernel.launch -----------------------------------------------------

_local = threading.local()
_hook_lock = threading.Lock()
_hook_users = 0
_original_launch: Any = None


def _launch_hook(self: Any, args: Any, griddim: Any, blockdim: Any, stream: Any = 0, sharedmem: int = 0) -> None:
    explicit: tuple[AtomizeOptions, Atomizer] | None = getattr(_local, "explicit", None)
    atomizer = get_atomizer()
    if explicit is None and atomizer is None:
        return _original_launch(self, args, griddim, blockdim, stream, sharedmem)
    if explicit is not None:
        options, direct = explicit
        atomizer = atomizer or direct
    else:
        assert atomizer is not None
        options = atomizer.options
    original = _original_launch
    atomizer.dispatch(lambda s: original(self, args, griddim, blockdim, _core_stream(s), sharedmem), stream,
                      lambda: launch_shape(self, tuple(args), tuple(griddim), tuple(blockdim), sharedmem),
                      lambda: plan_launch(self, tuple(args), tuple(griddim), tuple(blockdim), stream, sharedmem,
                                          options, original, atomizer.wants_sized_plans))


def acquire_hook() -> None:
    """Route Numba launches through lithos (reference counted)."""
    global _hook_users, _original_launch
    import_numba_cuda()
    from numba.cuda.dispatcher import _Kernel

    with _hook_lock:
        _hook_users += 1
        if _hook_users == 1:
            _original_launch = _Kernel.launch
            _Kernel.launch = _launch_hook


def release_hook() -> None:
    """Undo one `acquire_hook`; the original ``_Kernel.launch`` is restored at zero."""
    global _hook_users, _original_launch
    from numba.cuda.dispatcher import _Kernel

    with _hook_lock:
        _hook_users -= 1
        if _hook_users == 0:
            _Kernel.launch = _original_launch
            _original_launch = None


@contextlib.contextmanager
def _explicit(options: AtomizeOptions, direct: Atomizer) -> Iterator[None]:
    previous = getattr(_local, "explicit", None)
    _local.explicit = (options, direct)
    acquire_hook()
    try:
        yield
    finally:
        _local.explicit = previous
        release_hook()


class _AtomizedLaunch:
    def __init__(self, owner: AtomizedNumbaKernel, configured: Any):
        self._owner = owner
        self._configured = configured

    def __call__(self, *args: Any) -> None:
        with _explicit(self._owner.options, self._owner._direct):
            self._configured(*args)


class AtomizedNumbaKernel:
    """A Numba kernel whose launches run as atoms; launch it like the kernel itself.

    ``k[grid, block, stream, shared_mem](*args)`` compiles and packs arguments exactly as
    Numba does, then launches the grid as atoms (or hands them to the active scheduler).
    Every other attribute is the wrapped dispatcher's.

    Parameters
    ----------
    dispatcher : numba.cuda.dispatcher.CUDADispatcher
        The ``@cuda.jit`` kernel.
    options : AtomizeOptions, optional
        Atom sizing; defaults from the settings.
    """

    def __init__(self, dispatcher: Any, options: AtomizeOptions | None = None):
        self._dispatcher = dispatcher
        self._direct = Atomizer(**dataclasses.asdict(options or AtomizeOptions()))

    @property
    def options(self) -> AtomizeOptions:
        """The atom sizing used when no scheduler is active."""
        return self._direct.options

    def __getitem__(self, config: Any) -> _AtomizedLaunch:
        return _AtomizedLaunch(self, self._dispatcher[config])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dispatcher, name)

    def __repr__(self) -> str:
        return f"<lithos atomized {self._dispatcher!r}>"
