"""Atomized launches of CuPy ``RawKernel`` and ``RawModule`` kernels.

The kernel's source is compiled again to PTX with NVRTC (CuPy 14 keeps only a cubin),
every entry of the module is rewritten, and the result is linked and loaded once per
device. An atom is a launch of the rewritten function over a 1-D grid of ``count``
blocks with the four atom arguments appended; CuPy packs the user's arguments exactly
as it does for the original kernel. Each launch goes through `Atomizer.dispatch`
(`lithos_atom.atomizer`); the rewrite itself is `lithos_atom.ptx`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from lithos_atom.atomizer import DURATIONS, AtomizeOptions, Atomizer, as_cupy_stream
from lithos_atom.active import get_atomizer, passthrough
from lithos_atom.compile import cuda_source_to_ptx, link_ptx, register_cap
from lithos_atom import driver_calls, driver_launch
from lithos_atom.errors import AtomizeError, UnsupportedKernelError
from lithos_atom.indexing import total_blocks as count_blocks
from lithos_atom.plan import KernelKey, LaunchPlan, LaunchShape, arg_shapes
from lithos_atom.ptx import RewriteResult, rewrite_module
from lithos_atom.sizing import choose_atom_blocks

_MAX_DEFAULT_DYNAMIC_SHMEM = 48 * 1024
_CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
_CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 0


@dataclasses.dataclass(frozen=True)
class CupySource:
    """Everything needed to compile a CuPy raw kernel again, to PTX.

    Attributes
    ----------
    code : str
        CUDA source ("" when loaded from a file).
    name : str
        Kernel name, or a name expression of ``name_expressions``.
    options : tuple of str
        NVRTC options.
    name_expressions : tuple of str
        Template instantiations of the module.
    backend : str
        ``"nvrtc"`` or ``"nvcc"``.
    jitify : bool
        Whether Jitify was requested.
    cooperative : bool
        Whether the kernel was built for cooperative launch.
    file_path : str or None
        Path the module was loaded from, if any.
    """

    code: str
    name: str
    options: tuple[str, ...] = ()
    name_expressions: tuple[str, ...] = ()
    backend: str = "nvrtc"
    jitify: bool = False
    cooperative: bool = False
    file_path: str | None = None

    def unsupported_reason(self) -> str | None:
        """Why this kernel cannot be rewritten from its source, or None."""
        if self.cooperative:
            return "built with enable_cooperative_groups=True (its blocks may rely on being co-resident)"
        if self.jitify:
            return "compiled with jitify (deprecated in CuPy; compile without it to atomize)"
        if self.backend != "nvrtc":
            return f"backend={self.backend!r}; only NVRTC-compiled kernels are rewritten"
        if self.file_path is not None and not self.file_path.endswith(".ptx"):
            return f"loaded from {self.file_path!r}, a binary without PTX to rewrite"
        return None


def source_of_raw_kernel(kernel: Any) -> CupySource:
    """The `CupySource` of a ``cupy.RawKernel``.

    Raises
    ------
    TypeError
        For a kernel without source code (a ``RawModule`` function; use
        `lithos_atom.atomize_module_function`).
    """
    if not kernel.code and not getattr(kernel, "file_path", None):
        raise TypeError(
            f"kernel {kernel.name!r} carries no source to rewrite; for a RawModule function use "
            "lithos_atom.atomize_module_function(module, name)"
        )
    return CupySource(
        code=kernel.code or "",
        name=kernel.name,
        options=tuple(kernel.options),
        backend=kernel.backend,
        jitify=bool(getattr(kernel, "_jitify", False)),
        cooperative=bool(kernel.enable_cooperative_groups),
        file_path=getattr(kernel, "file_path", None),
    )


def source_of_module_function(module: Any, name: str) -> CupySource:
    """The `CupySource` of function ``name`` of a ``cupy.RawModule``."""
    return CupySource(
        code=module.code or "",
        name=name,
        options=tuple(module.options),
        name_expressions=tuple(module.name_expressions or ()),
        backend=module.backend,
        cooperative=bool(module.enable_cooperative_groups),
        file_path=module.file_path,
    )


def _cupy_default_options(options: Sequence[str]) -> tuple[str, ...]:
    # CuPy 14 compiles raw kernels as C++17 unless the user chose a standard.
    if any(o.startswith(("-std", "--std")) for o in options):
        return tuple(options)
    return (*options, "-std=c++17")


@dataclasses.dataclass(frozen=True)
class PreparedKernel:
    """A rewritten, linked and loaded kernel ready for atom launches.

    Attributes
    ----------
    function : cupy.cuda.function.Function
        The rewritten kernel.
    entry : str
        Its PTX entry name.
    rewrite : RewriteResult
        The module rewrite, for reports (register and shared-memory growth).
    """

    function: Any
    entry: str
    rewrite: RewriteResult
    arch: str

    def for_block(self, threads: int) -> Any:
        """The rewritten function that launches with ``threads`` threads per block.

        A block size chosen for the original kernel (CuPy's own kernels pick theirs) may
        not fit the rewritten one, which needs a few more registers; such blocks get a
        copy linked with registers capped to fit (cached).
        """
        import cupy

        if threads <= _max_threads(self.function.ptr) or threads > 1024:  # the driver refuses > 1024 anyway
            return self.function
        cap = register_cap(threads)
        key = (self.function.ptr, cap)
        with _prepared_lock:
            function = _capped.get(key)
        if function is None:
            module = cupy.cuda.function.Module()
            module.load(link_ptx(self.rewrite.ptx, self.arch, name=self.entry, max_registers=cap))
            function = module.get_function(self.entry)
            with _prepared_lock:
                _capped[key] = function
        return function


_capped: dict[tuple[int, int], Any] = {}
_max_threads_cache: dict[int, int] = {}


def _max_threads(function: int) -> int:
    threads = _max_threads_cache.get(function)
    if threads is None:
        import cupy

        threads = _max_threads_cache[function] = cupy.cuda.driver.funcGetAttribute(
            _CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, function)
    return threads


_prepared: dict[tuple[CupySource, int], PreparedKernel | str] = {}
_prepared_lock = threading.Lock()


def _device_id_and_cc() -> tuple[int, str]:
    import cupy

    dev = cupy.cuda.Device()
    return dev.id, dev.compute_capability


def prepare(source: CupySource) -> PreparedKernel | str:
    """Rewrite, link and load ``source`` on the current device (cached).

    Returns
    -------
    PreparedKernel or str
        The prepared kernel, or the reason it cannot be atomized.
    """
    device_id, cc = _device_id_and_cc()
    key = (source, device_id)
    with _prepared_lock:
        cached = _prepared.get(key)
    if cached is not None:
        return cached
    result = _prepare_uncached(source, cc)
    with _prepared_lock:
        _prepared[key] = result
    return result


def rewrite_source(source: CupySource, cc: str) -> tuple[RewriteResult, str] | str:
    """Compile ``source`` to PTX for ``compute_<cc>`` and rewrite it (needs no device).

    Returns
    -------
    tuple of (RewriteResult, str) or str
        The module rewrite and the kernel's entry name, or why it cannot be atomized.

    Raises
    ------
    AtomizeError
        When the kernel is not in the compiled module.
    """
    reason = source.unsupported_reason()
    if reason is not None:
        return reason
    if source.file_path is not None:
        with open(source.file_path) as f:
            ptx, mapping = f.read(), {}
    else:
        ptx, mapping = cuda_source_to_ptx(
            source.code, _cupy_default_options(source.options), cc, source.name_expressions,
            filename=f"{hashlib.sha1(source.code.encode()).hexdigest()[:12]}.cu",
        )
    entry = mapping.get(source.name, source.name)
    result = rewrite_module(ptx, skip_unsupported=True)
    info = result.entries.get(entry)
    if info is None:
        raise AtomizeError(f"kernel {source.name!r} (entry {entry!r}) is not in the compiled module")
    if not info.atomized:
        return info.reason or "the rewriter refused it"
    return result, entry


def _prepare_uncached(source: CupySource, cc: str) -> PreparedKernel | str:
    import cupy

    rewritten = rewrite_source(source, cc)
    if isinstance(rewritten, str):
        return rewritten
    result, entry = rewritten
    cubin = link_ptx(result.ptx, f"sm_{cc}", name=entry)
    module = cupy.cuda.function.Module()
    module.load(cubin)
    return PreparedKernel(function=module.get_function(entry), entry=entry, rewrite=result, arch=f"sm_{cc}")


def _dim3(value: Any, what: str) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise ValueError(f"{what} must be an int or a tuple of 1-3 ints, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))  # type: ignore[return-value]


def _threads(block: tuple[int, int, int]) -> int:
    return max(1, block[0]) * max(1, block[1]) * max(1, block[2])



class AtomizedRawKernel:
    """A CuPy raw kernel whose launches run as atoms; call it like the kernel itself.

    ``k(grid, block, args, shared_mem=0, stream=None)`` launches the grid as atoms on
    ``stream`` in increasing block order (or hands them to the active scheduler). Every
    other attribute is the wrapped kernel's.

    Parameters
    ----------
    kernel : cupy.RawKernel
        The kernel (from ``cupy.RawKernel`` or ``RawModule.get_function``).
    options : AtomizeOptions, optional
        Atom sizing; defaults from the settings.
    source : CupySource, optional
        How to compile it again; derived from ``kernel`` when omitted.
    """

    def __init__(self, kernel: Any, options: AtomizeOptions | None = None, *, source: CupySource | None = None):
        self._kernel = kernel
        self._source = source if source is not None else source_of_raw_kernel(kernel)
        self._direct = Atomizer(**dataclasses.asdict(options or AtomizeOptions()))

    @property
    def options(self) -> AtomizeOptions:
        """The atom sizing used when no scheduler is active."""
        return self._direct.options

    @property
    def source(self) -> CupySource:
        """How the kernel is compiled to PTX."""
        return self._source

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kernel, name)

    def __repr__(self) -> str:
        return f"<lithos atomized {self._source.name!r}>"

    def prepared(self) -> PreparedKernel | str:
        """The rewritten kernel, or why the kernel cannot be atomized."""
        return prepare(self._source)

    def shape(self, grid: Any, block: Any, args: Sequence[Any], *, shared_mem: int = 0) -> LaunchShape:
        """The `LaunchShape` of one launch (for a scheduler that runs it unsplit)."""
        grid3, block3 = _dim3(grid, "grid"), _dim3(block, "block")
        key = KernelKey(self._source.name, grid3, block3, int(shared_mem), arg_shapes(tuple(args)))
        prepared = self.prepared()
        wave = (_wave_blocks(prepared.for_block(_threads(block3)), block3, shared_mem)
                if isinstance(prepared, PreparedKernel) else 0)
        return LaunchShape(key, grid3[0] * grid3[1] * grid3[2], wave)

    def plan(
        self,
        grid: Any,
        block: Any,
        args: Sequence[Any],
        *,
        shared_mem: int = 0,
        options: AtomizeOptions | None = None,
        sized: bool = True,
    ) -> LaunchPlan:
        """Build the `LaunchPlan` of one launch without issuing anything.

        With ``sized=False`` (for an atomizer that sizes atoms itself: a scheduler, see
        `Atomizer.wants_sized_plans`) the plan is one atom of every block, and no launch
        duration is looked up to size it.

        Raises
        ------
        UnsupportedKernelError
            In strict mode, when the kernel cannot be atomized.
        """
        opts = options or self.options
        grid3, block3 = _dim3(grid, "grid"), _dim3(block, "block")
        args = tuple(args)
        key = KernelKey(self._source.name, grid3, block3, int(shared_mem), arg_shapes(args))
        total = grid3[0] * grid3[1] * grid3[2]
        reason = None
        prepared = self.prepared()
        if isinstance(prepared, str):
            reason = prepared
        if reason is None:
            try:
                count_blocks(grid3)
            except ValueError as exc:
                reason = str(exc)  # let CuPy report the bad grid from the original launch
        if reason is not None:
            if opts.strict:
                raise UnsupportedKernelError(reason, entry=self._source.name)

            def launch_whole(stream: Any) -> None:
                with passthrough():  # maybe from another thread: not caught again by the compile seam
                    self._kernel(grid, block, args, shared_mem=shared_mem, stream=as_cupy_stream(stream))

            return LaunchPlan.whole(key, total, launch_whole, reason)
        assert isinstance(prepared, PreparedKernel)
        function = prepared.for_block(_threads(block3))
        wave = _wave_blocks(function, block3, shared_mem)
        gx, gy, gz = (np.uint32(d) for d in grid3)
        start_param = len(args)
        block_dims = tuple(max(1, d) for d in block3)
        # The first atom (block 0 on) goes through CuPy's call. From the second on, the
        # arguments are packed once and each atom only rewrites its first block (see
        # `lithos_atom.driver_launch`), so a launch that is one atom never packs.
        packable = type(shared_mem) is int and shared_mem >= 0
        packed: driver_launch.PackedParams | None = None

        def issue_range(start: int, count: int, stream: Any) -> None:
            nonlocal packed, packable
            if packed is None and packable and start > 0:
                packed = driver_launch.pack(function.ptr, (*args, np.uint64(0), gx, gy, gz))
                packable = packed is not None  # CuPy's call for every atom if it cannot be packed
            if packed is not None:
                packed.set_u64(start_param, start)
                driver_launch.launch_packed(function.ptr, (count, 1, 1), block_dims,  # type: ignore[arg-type]
                                            shared_mem, as_cupy_stream(stream).ptr, packed)
                return
            function((count, 1, 1), block3, (*args, np.uint64(start), gx, gy, gz),
                     shared_mem=shared_mem, stream=as_cupy_stream(stream))

        atom_blocks = total if not sized else choose_atom_blocks(
            total, wave, atom_blocks=opts.atom_blocks, atom_us=opts.atom_us, launch_us=DURATIONS.estimate_us(key)
        )
        return LaunchPlan.build(key, total, atom_blocks, issue_range, wave_blocks=wave)

    def __call__(
        self,
        grid: Any,
        block: Any,
        args: Sequence[Any],
        *,
        shared_mem: int = 0,
        stream: Any = None,
    ) -> None:
        atomizer = get_atomizer() or self._direct

        def original(s: Any) -> None:
            with passthrough():  # maybe from another thread: not caught again by the compile seam
                self._kernel(grid, block, args, shared_mem=shared_mem, stream=as_cupy_stream(s))

        with passthrough():  # kernels lithos launches while dispatching run as CuPy's
            atomizer.dispatch(original, stream, lambda: self.shape(grid, block, args, shared_mem=shared_mem),
                              lambda: self.plan(grid, block, args, shared_mem=shared_mem, options=self.options,
                                                sized=atomizer.wants_sized_plans),
                              self._source.name)


_wave_cache: dict[tuple[int, tuple[int, int, int], int], int] = {}
_shmem_limit: dict[int, int] = {}  # function -> the dynamic shared memory it was opened up to


def _wave_blocks(function: Any, block: tuple[int, int, int], shared_mem: int) -> int:
    """Blocks of one full-device wave, for a launch shape seen for the first time.

    The driver calls (and the shared-memory opt-in they need first) run once per shape,
    off the launch path of every later launch.
    """
    import cupy

    key = (function.ptr, block, shared_mem)
    wave = _wave_cache.get(key)
    if wave is None:
        driver_calls.make_cupy_context_current()
        if shared_mem > max(_MAX_DEFAULT_DYNAMIC_SHMEM, _shmem_limit.get(function.ptr, 0)):
            cupy.cuda.driver.funcSetAttribute(function.ptr, _CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                              shared_mem)
            _shmem_limit[function.ptr] = shared_mem
        threads = block[0] * block[1] * block[2]
        per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(function.ptr, threads, shared_mem)
        sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
        wave = _wave_cache[key] = max(1, per_sm) * sms
    return wave
