"""CUDA graphs captured with CuPy while lithos is opted in, launched through the atomizer.

``cupy.cuda.Graph`` is a Cython class whose ``launch`` cannot be patched, but the graph a
user launches comes from ``Stream.end_capture``, a method of CuPy's Python ``Stream``
class. While an atomizer is set, `lithos_atom.interception` makes ``end_capture`` return
a `CapturedGraph`: the same graph, whose ``launch`` goes through the atomizer in effect
(`Atomizer.launch_graph`), so a scheduler can place a latency-critical tenant's graph on
its TPCs and close its gate around it. Graphs captured before the opt-in are CuPy's own
and launch as written.

Kernels launched into a capturing stream are captured as written (a scheduler does no
placement during capture: the graph's launch is what it places).
"""

from __future__ import annotations

from typing import Any


class CapturedGraph:
    """A captured ``cupy.cuda.Graph`` whose launches go through the atomizer in effect.

    Parameters
    ----------
    graph : cupy.cuda.Graph
        The graph ``end_capture`` returned; every attribute but ``launch`` is its own.
    """

    def __init__(self, graph: Any) -> None:
        self.graph_object = graph

    def launch(self, stream: Any = None) -> None:
        """Launch the graph on ``stream`` (None: the current stream), through the atomizer
        in effect for the calling thread, or as CuPy would without one."""
        from lithos_atom.active import get_atomizer

        atomizer = get_atomizer()
        if atomizer is None:
            self.graph_object.launch(stream=stream)
        else:
            atomizer.launch_graph(self.graph_object, stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.graph_object, name)

    def __repr__(self) -> str:
        return f"<lithos CapturedGraph of {self.graph_object!r}>"


def wrap_end_capture(end_capture: Any) -> Any:
    """``end_capture`` returning a `CapturedGraph` instead of CuPy's graph."""

    def lithos_end_capture(self: Any) -> CapturedGraph:
        return CapturedGraph(end_capture(self))

    lithos_end_capture.__doc__ = end_capture.__doc__
    lithos_end_capture.__wrapped__ = end_capture  # type: ignore[attr-defined]
    return lithos_end_capture
