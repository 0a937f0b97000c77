"""`Atomizer`: what handles intercepted kernel launches, and how launches are split.

The base atomizer issues a launch's atoms on the launch's own stream; a scheduler
subclasses it to place them on partitions. Which atomizer is in effect is the opt-in's
business (`lithos_atom.optin`). An atom is a block range of a `LaunchPlan`
(`lithos_atom.plan`). Next: the scheduler, `lithos_sched.scheduler`, the atomizer that
shares a GPU between tenants.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import warnings
from collections.abc import Callable
from typing import Any

from lithos_atom.fields import is_int, is_number, require
from lithos_atom.indexing import MAX_GRID_X
from lithos_atom.plan import LaunchPlan, LaunchShape, WholeLaunch
from lithos_atom.settings import get_settings
from lithos_atom.sizing import LaunchDurations


class AtomizeWarning(UserWarning):
    """A kernel runs whole because it cannot be atomized (issued once per kernel)."""


@dataclasses.dataclass(frozen=True)
class AtomizeOptions:
    """How launches are split.

    Attributes
    ----------
    atom_blocks : int, optional
        Fixed number of blocks per atom, at most 2**31 - 1 (an atom is one 1-D launch).
        Wins over ``atom_us``. A NumPy integer is taken as an int.
    atom_us : float, optional
        Target atom duration in microseconds, finite and > 0 (default: ``LITHOS_ATOM_US``,
        1000: `lithos_atom.settings.DEFAULT_ATOM_US`). The first launch of each kernel
        shape runs whole and is timed with device events. A NumPy number is taken as a float.
    strict : bool, optional
        Raise `lithos_atom.UnsupportedKernelError` for a kernel that cannot be atomized,
        instead of running it whole with an `AtomizeWarning` (default: ``LITHOS_STRICT``).

    Raises
    ------
    ValueError
        Naming the field, when one is of the wrong type or out of range.
    """

    atom_blocks: int | None = None
    atom_us: float | None = None
    strict: bool | None = None

    def __post_init__(self) -> None:
        if self.atom_blocks is not None:
            require(is_int(self.atom_blocks) and 1 <= self.atom_blocks <= MAX_GRID_X, "atom_blocks",
                    f"an int from 1 to {MAX_GRID_X}", self.atom_blocks)
            object.__setattr__(self, "atom_blocks", int(self.atom_blocks))
        if self.atom_us is not None:
            require(is_number(self.atom_us) and math.isfinite(self.atom_us) and self.atom_us > 0, "atom_us",
                    "a finite number > 0", self.atom_us)
            object.__setattr__(self, "atom_us", float(self.atom_us))
        require(self.strict is None or isinstance(self.strict, bool), "strict", "a bool", self.strict)

    def resolved(self) -> AtomizeOptions:
        """These options with unset fields taken from the settings."""
        s = get_settings()
        return AtomizeOptions(
            atom_blocks=self.atom_blocks,
            atom_us=self.atom_us if self.atom_us is not None or self.atom_blocks is not None else s.atom_us,
            strict=s.strict if self.strict is None else self.strict,
        )


# Launch durations learned for atom sizing, shared by every front end.
DURATIONS = LaunchDurations()


class Atomizer:
    """Issues the atoms of intercepted launches.

    The base atomizer issues every atom of a launch onto the launch's own stream, in
    increasing block order, so stream semantics stay exactly as the user wrote them. A
    scheduler subclasses it and overrides `submit` to place atoms on partitions.

    Parameters
    ----------
    atom_blocks, atom_us, strict
        See `AtomizeOptions`.

    Raises
    ------
    ValueError
        Naming the parameter or the ``LITHOS_*`` variable, when one is invalid.
    """

    #: Whether `submit` issues a plan in the atoms its front end sized (`LaunchPlan.atom_blocks`).
    #: A scheduler sizes each atom where it places it, so front ends skip sizing for one.
    wants_sized_plans: bool = True

    def __init__(self, *, atom_blocks: int | None = None, atom_us: float | None = None, strict: bool | None = None):
        self.options = AtomizeOptions(atom_blocks=atom_blocks, atom_us=atom_us, strict=strict).resolved()
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()

    def submit(self, plan: LaunchPlan, stream: Any) -> None:
        """Issue ``plan`` onto ``stream``.

        When the plan's kernel shape has not been timed yet, the launch is bracketed by
        device events so later launches can be sized (read without waiting).
        """
        import cupy

        cupy_stream = as_cupy_stream(stream)
        # events recorded into a graph under capture would time nothing now
        timed = plan.atomized and DURATIONS.wants_measurement(plan.key) and not cupy_stream.is_capturing()
        if timed:
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(cupy_stream)
        if plan.num_atoms > 1 and getattr(stream, "partition", None) is None:
            issue_pipelined(plan, cupy_stream)
        else:
            plan.issue_all(stream)
        if timed:
            end.record(cupy_stream)
            DURATIONS.add_pending(plan.key, start, end)

    def launch_whole(self, launch: WholeLaunch, stream: Any, describe: Callable[[], LaunchShape]) -> bool:
        """Offer one launch to run unsplit, before a plan is built for it.

        Front ends call this first. An atomizer that wants the launch whole (a scheduler's
        latency-critical tenant: its kernels are never split) calls ``launch(target_stream)``
        and returns True, which skips rewriting arguments and building a plan, tens of
        microseconds of host time. The base atomizer splits every launch.

        Parameters
        ----------
        launch : callable
            ``launch(stream)`` runs the original kernel, unsplit, on ``stream``.
        stream
            The stream the user launched on (None: the current stream).
        describe : callable
            Returns the launch's `LaunchShape`; call it only when needed (it costs a few
            microseconds).

        Returns
        -------
        bool
            Whether the launch was issued.
        """
        return False

    def dispatch(self, launch: WholeLaunch, stream: Any, describe: Callable[[], LaunchShape],
                 plan: Callable[[], LaunchPlan], kernel_name: str | None = None) -> None:
        """Run one intercepted launch: the protocol every front end follows.

        The launch is first offered whole (`launch_whole`); otherwise ``plan()`` builds its
        `LaunchPlan`, a kernel that cannot be split is warned about once (`warn_whole`),
        and the plan is submitted (`submit`).

        Parameters
        ----------
        launch, stream, describe
            As for `launch_whole`.
        plan : callable
            Builds the launch's plan (rewriting arguments: only called when needed).
        kernel_name : str, optional
            Names the kernel in the run-whole warning (default: the plan key's name).
        """
        if self.launch_whole(launch, stream, describe):
            return
        built = plan()
        if not built.atomized:
            self.warn_whole(kernel_name or built.key.name, built.reason or "")
        self.submit(built, stream)

    def launch_graph(self, graph: Any, stream: Any) -> None:
        """Launch a CUDA graph captured under the opt-in (`lithos_atom.graphs`).

        The base atomizer launches it as CuPy would; a scheduler places it where its
        tenant runs.

        Parameters
        ----------
        graph : cupy.cuda.Graph
        stream
            The stream the user launched on (None: the current stream).
        """
        graph.launch(stream=None if stream is None else as_cupy_stream(stream))

    def warn_whole(self, kernel_name: str, reason: str) -> None:
        """Warn, once per kernel name, that a kernel runs whole."""
        with self._warned_lock:
            if kernel_name in self._warned:
                return
            self._warned.add(kernel_name)
        warnings.warn(f"lithos: kernel {kernel_name!r} runs whole (not atomized): {reason}", AtomizeWarning, stacklevel=4)


_side_streams: dict[tuple[int, int], Any] = {}
_side_lock = threading.Lock()


def _side_stream(cupy_stream: Any) -> Any:
    """A second stream beside ``cupy_stream`` (same device and priority), made once."""
    import cupy

    key = (cupy.cuda.Device().id, int(cupy_stream.ptr))
    with _side_lock:
        side = _side_streams.get(key)
        if side is None:
            priority = cupy.cuda.runtime.streamGetPriority(cupy_stream.ptr)
            side = _side_streams[key] = cupy.cuda.Stream(non_blocking=True, priority=priority)
        return side


def issue_pipelined(plan: LaunchPlan, cupy_stream: Any) -> None:
    """Issue a plan's atoms alternately on ``cupy_stream`` and a side stream.

    Atoms of one launch are independent, so atom i+1 may start while the last blocks of
    atom i drain; on one stream each boundary would idle the SMs those blocks leave. The
    side stream first waits for everything queued on ``cupy_stream``, and ``cupy_stream``
    waits for the side stream's last atom, so the launch is ordered exactly as one launch.
    Streams of a TPC partition are not used here: a side stream would escape the partition.
    """
    import cupy

    side = _side_stream(cupy_stream)
    before = cupy.cuda.Event(disable_timing=True)
    before.record(cupy_stream)
    side.wait_event(before)
    for i, atom in enumerate(plan.atoms):
        atom.issue(cupy_stream if i % 2 == 0 else side)
    after = cupy.cuda.Event(disable_timing=True)
    after.record(side)
    cupy_stream.wait_event(after)
    plan.complete()


def as_cupy_stream(stream: Any) -> Any:
    """A ``cupy.cuda.Stream`` for ``stream`` (CuPy stream, ``__cuda_stream__`` object or None)."""
    import cupy

    if stream is None:
        return cupy.cuda.get_current_stream()
    if isinstance(stream, cupy.cuda.Stream):
        return stream
    cached = getattr(stream, "cupy", None)
    if isinstance(cached, cupy.cuda.Stream):
        return cached
    if hasattr(stream, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(stream)
    raise TypeError(f"cannot use {type(stream).__name__} as a CUDA stream (no __cuda_stream__)")
