"""The modeled ``processes`` scenario: contexts of separate processes time-sliced by the driver.

Without MPS the GPU runs one process's context at a time. `timeslice_contexts` models that
for any number of latency-critical contexts (each serving its requests in order) and at
most one best-effort context that always has work; `timeslice_model` is the case of one
of each (the ML co-location pair). Analytic, from each request's service time on the
whole GPU: no kernel is simulated.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence


def timeslice_contexts(arrivals_s: Sequence[Sequence[float]], demands_us: Sequence[Sequence[float]], best_effort: bool,
                       timeslice_us: float, switch_us: float, window_s: tuple[float, float]
                       ) -> tuple[list[list[float]], float]:
    """LC latencies of each context and the BE context's GPU share under time-slicing.

    The contexts take the GPU in turn, round robin over those with work: the LC contexts
    in order, then the BE context (if any), which always has work and holds the GPU
    first. An LC context serves its requests in order for up to one time slice and
    yields when it runs out of work;
    the BE context holds the GPU until a request waits, and then to the end of its current
    slice (slices start when it takes the GPU). Each hand-over between contexts costs
    ``switch_us``; without a BE context the GPU idles until the next arrival.

    Parameters
    ----------
    arrivals_s : sequence of sequences of float
        Per LC context, its request arrivals (seconds, ascending).
    demands_us : sequence of sequences of float
        Per LC context, each request's service time with the whole GPU.
    best_effort : bool
        Whether a BE context shares the GPU.
    timeslice_us, switch_us : float
    window_s : (float, float)
        The measured window, for the BE share.

    Returns
    -------
    (list of list of float, float)
        Per LC context the latency (ms) of every request, in order; the fraction of the
        window the BE context held the GPU (0 without one).
    """
    n = len(arrivals_s)
    arrivals = [[a * 1e6 for a in xs] for xs in arrivals_s]
    lat = [[0.0] * len(xs) for xs in arrivals]
    nxt = [0] * n
    queues: list[collections.deque[list[float]]] = [collections.deque() for _ in range(n)]  # [index, remaining]
    w0, w1 = window_s[0] * 1e6, window_s[1] * 1e6
    be_us = 0.0

    def admit(until: float) -> None:
        for c in range(n):
            while nxt[c] < len(arrivals[c]) and arrivals[c][nxt[c]] <= until:
                queues[c].append([nxt[c], demands_us[c][nxt[c]]])
                nxt[c] += 1

    def next_arrival() -> float:
        return min((arrivals[c][nxt[c]] for c in range(n) if nxt[c] < len(arrivals[c])), default=math.inf)

    t = 0.0
    holder: int | str | None = None  # the context holding the GPU: an LC index, "be", or None at the start
    pos = n  # where the round robin looks next: LC contexts 0..n-1, then the BE context (n), which starts
    while any(nxt[c] < len(arrivals[c]) or queues[c] for c in range(n)):
        admit(t)
        ring = [(pos + i) % (n + 1) for i in range(n + 1)]
        chosen = next((r for r in ring if (r == n and best_effort) or (r < n and queues[r])), None)
        if chosen is None:  # no BE context and no request waits: idle until the next arrival
            t = max(t, next_arrival())
            continue
        who = "be" if chosen == n else chosen
        if holder is not None and who != holder:
            t += switch_us
        if who == "be":
            slice_start = t
            first_wait = t if any(queues) else next_arrival()
            hand_over = slice_start + max(1, math.ceil((first_wait - slice_start) / timeslice_us)) * timeslice_us
            be_us += max(0.0, min(hand_over, w1) - max(t, w0))
            t, holder, pos = hand_over, "be", 0
            continue
        queue, slice_end = queues[who], t + timeslice_us
        while queue and t < slice_end:
            item = queue[0]
            run = min(item[1], slice_end - t)
            t += run
            item[1] -= run
            if item[1] <= 1e-9:
                lat[who][int(item[0])] = (t - arrivals[who][int(item[0])]) / 1000.0
                queue.popleft()
            admit(t)
        holder, pos = who, who + 1
    if best_effort:
        be_us += max(0.0, w1 - max(t + (switch_us if holder != "be" else 0.0), w0))
    return lat, be_us / (w1 - w0)


def timeslice_model(arrivals_s: Sequence[float], demands_us: Sequence[float], timeslice_us: float, switch_us: float,
                    window_s: tuple[float, float]) -> tuple[list[float], float]:
    """LC latencies and the BE context's GPU share under time-slicing of two contexts
    (`timeslice_contexts` with one LC context and the BE context).

    Returns
    -------
    (list of float, float)
        Latency (ms) of every request, in order; the fraction of the window the BE
        context held the GPU.
    """
    lat, share = timeslice_contexts([arrivals_s], [demands_us], True, timeslice_us, switch_us, window_s)
    return lat[0], share


def check_timeslice_config(config: object) -> None:
    """Refuse a simulated config whose modeled ``processes`` scenario cannot run.

    Parameters
    ----------
    config : object
        A frozen config with ``timeslice_us`` (a number > 0) and ``switch_us`` (a
        number >= 0), as `SimMLConfig` and `SimStackConfig` have.

    Raises
    ------
    ValueError
        One line naming the config's class and the field.
    """
    for name in ("timeslice_us", "switch_us"):
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or (name == "timeslice_us" and v == 0):
            raise ValueError(f"{type(config).__name__}.{name} must be a number "
                             f"{'> 0' if name == 'timeslice_us' else '>= 0'}, got {v!r}")
