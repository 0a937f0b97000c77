"""Offline collection of scaling samples: time a kernel on partitions of several sizes.

Works on the GPU and on the simulated device alike: a partition's stream records events
on both, and the caller's ``launch(stream)`` issues the kernel (a registry case's
``prep.run(stream.cupy)`` on the GPU, ``stream.launch(sim_kernel)`` on the simulator).

Each launch is bracketed by its own pair of events, and on the GPU a short spin kernel is
queued first so that the timed launches queue up behind it: the events then measure the
kernels' device time back to back, not the host's launch rate (a 5 us kernel would
otherwise look as long as a ~6 us Python launch). Sizes are visited in rounds, every
round all sizes in turn, so slow drift (clocks, temperature) hits every size alike.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lithos_sched.fields import is_int, is_number, require
from lithos_sched.scaling import ScalingProfile

_SPIN = r'''
extern "C" __global__ void lithos_spin(unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < ns);
}
'''


@dataclasses.dataclass(frozen=True)
class TimingOptions:
    """How to time a kernel on partitions.

    Attributes
    ----------
    rounds : int
        Rounds over all sizes; each round times every size ``launches_per_round`` times.
    launches_per_round : int
        Timed launches of one size per round (back to back behind the spin kernel).
    warmup : int
        Untimed launches on the whole device first (compilation, caches, clocks).
    spin_us : float
        Length of the GPU spin kernel queued before each size's launches (0: none): long
        enough for Python to issue all of them (an op's wrapper can take 50-100 us), so
        no launch waits for the host and no event brackets host time.
    """

    rounds: int = 3
    launches_per_round: int = 3
    warmup: int = 2
    spin_us: float = 2000.0

    def __post_init__(self) -> None:
        for name in ("rounds", "launches_per_round"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, f"TimingOptions.{name}", "an int >= 1", value)
        require(is_int(self.warmup) and self.warmup >= 0, "TimingOptions.warmup", "an int >= 0", self.warmup)
        require(is_number(self.spin_us) and self.spin_us >= 0, "TimingOptions.spin_us", "a number >= 0", self.spin_us)


def validate_sizes(sizes: Sequence[int], num_tpcs: int) -> list[int]:
    """Distinct TPC counts, largest first, each in ``1 .. num_tpcs``.

    Raises
    ------
    ValueError
        Naming the bad sizes.
    """
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= num_tpcs]
    if bad or not sizes:
        raise ValueError(f"TPC counts must be ints in 1..{num_tpcs}, got {list(sizes)!r}")
    return sorted(set(sizes), reverse=True)


def default_sizes(num_tpcs: int, steps: int = 10) -> list[int]:
    """``steps`` TPC counts from the whole device down to a ``steps``-th of it."""
    return sorted({max(1, round(num_tpcs * (steps - i) / steps)) for i in range(steps)}, reverse=True)


class _Spinner:
    """Queues a GPU busy-wait of a given length on a stream (GPU only)."""

    def __init__(self) -> None:
        import cupy

        self._kernel = cupy.RawKernel(_SPIN, "lithos_spin")

    def __call__(self, stream: Any, us: float) -> None:
        import numpy as np

        self._kernel((1,), (1,), (np.uint64(us * 1000),), stream=stream.cupy)


def time_on_partitions(device: Any, launch: Callable[[Any], Any], sizes: Sequence[int],
                       options: TimingOptions | None = None) -> dict[int, list[float]]:
    """Device time of ``launch`` on partitions of each size, microseconds.

    Parameters
    ----------
    device
        A `GpuDevice` or `SimDevice`; partitions are its first ``n`` TPCs.
    launch : callable
        ``launch(stream)`` issues one run of the kernel on a partition stream.
    sizes : sequence of int
        TPC counts.
    options : TimingOptions, optional

    Returns
    -------
    dict
        ``{tpcs: [microseconds of each timed launch]}``.
    """
    opts = options or TimingOptions()
    sizes = validate_sizes(sizes, device.num_tpcs)
    spin = _Spinner() if not device.simulated and opts.spin_us > 0 else None
    parts = {n: device.partition(range(n)) for n in sizes}
    try:
        full = parts[sizes[0]]
        for _ in range(opts.warmup):
            launch(full.normal)
        full.normal.synchronize()
        out: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(opts.rounds):
            for n in sizes:
                stream = parts[n].normal
                if spin is not None:
                    spin(stream, opts.spin_us)
                marks = [stream.record()]
                for _ in range(opts.launches_per_round):
                    launch(stream)
                    marks.append(stream.record())
                marks[-1].synchronize()
                out[n].extend(a.elapsed_ms(b) * 1000.0 for a, b in zip(marks, marks[1:]))
        return out
    finally:
        for p in parts.values():
            p.close()


def knee_sizes(medians_us: Mapping[int, float], full_tpcs: int, slack: float) -> list[int]:
    """The TPC counts not yet timed where a choice within ``slack`` could still lie.

    More TPCs never make a kernel slower (to first order), so no count below a timed count
    that was more than ``1 + slack`` times slower than ``full_tpcs`` can be within the
    slack: the candidates are the untimed counts between the largest such count (or 0)
    and ``full_tpcs``. Timing them all makes a right-sizing choice exact to the TPC there,
    where the coarse sizes alone leave it on the next larger timed count.

    Parameters
    ----------
    medians_us : mapping
        ``{tpcs: latency_us}`` of the counts timed so far; must hold ``full_tpcs``.
    full_tpcs : int
        The reference count (the whole device or the tenant's home partition).
    slack : float
        Accepted slowdown against ``full_tpcs``.

    Returns
    -------
    list of int
        Largest first; empty when every count in between was timed.
    """
    require(is_number(slack) and slack >= 0, "slack", "a number >= 0", slack)
    if full_tpcs not in medians_us:
        raise ValueError(f"no time on the full {full_tpcs} TPCs among the timed counts {sorted(medians_us)}")
    limit = (1.0 + slack) * medians_us[full_tpcs]
    outside = [t for t, us in medians_us.items() if t < full_tpcs and us > limit]
    return [t for t in range(full_tpcs - 1, max(outside, default=0), -1) if t not in medians_us]


def profile_on_partitions(device: Any, key: str, launch: Callable[[Any], Any], sizes: Sequence[int],
                          options: TimingOptions | None = None, profile: ScalingProfile | None = None,
                          refine_slack: float | None = None) -> ScalingProfile:
    """Time ``launch`` on each size and record the medians in a scaling profile.

    Parameters
    ----------
    device, launch, sizes, options
        As `time_on_partitions`.
    key : str
        The profile's key (a new profile's; ignored when ``profile`` is given).
    profile : ScalingProfile, optional
        Add to this profile instead of a new one.
    refine_slack : float, optional
        Then also time every count of `knee_sizes` for this slack (relative to the
        largest of ``sizes``), in a second pass with the same options that times the
        largest size again (its sample is the median of both passes).

    Returns
    -------
    ScalingProfile
        With one sample per size timed: the median of its timings.
    """
    times = time_on_partitions(device, launch, sizes, options)
    if refine_slack is not None:
        medians = {n: statistics.median(ts) for n, ts in times.items()}
        knee = knee_sizes(medians, max(times), refine_slack)
        if knee:  # the full count is timed again so both passes share the reference
            for n, ts in time_on_partitions(device, launch, [max(times), *knee], options).items():
                times.setdefault(n, []).extend(ts)
    prof = profile if profile is not None else ScalingProfile(key)
    for n, ts in times.items():
        prof.add(n, statistics.median(ts), len(ts))
    return prof
