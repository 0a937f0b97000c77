"""CPU tier: sizing, settings, options, the opt-in's install/restore, and the compile path
(NVRTC to PTX, rewrite, nvJitLink to a cubin) without a GPU."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lithos
from lithos_atom import interception
from lithos_atom.atomizer import AtomizeOptions
from lithos_atom.settings import DEFAULT_ATOM_US, reload_settings
from lithos_atom.sizing import choose_atom_blocks


def test_choose_atom_blocks_explicit_and_first_launch():
    assert choose_atom_blocks(1000, 264, atom_blocks=7) == 7
    assert choose_atom_blocks(5, 264, atom_blocks=7) == 5
    # no measurement yet: the launch runs as one atom (and gets timed)
    assert choose_atom_blocks(1000, 264, atom_us=250.0) == 1000


@given(
    total=st.integers(1, 10**7),
    wave=st.integers(1, 5000),
    launch_us=st.floats(1.0, 1e6),
    atom_us=st.floats(1.0, 1e4),
)
def test_choose_atom_blocks_whole_waves_near_target(total, wave, launch_us, atom_us):
    n = choose_atom_blocks(total, wave, atom_us=atom_us, launch_us=launch_us)
    assert 1 <= n <= total
    if n < total:
        assert n % wave == 0  # atoms are whole waves, so no SM idles inside an atom
        waves = -(-total // wave)
        wave_us = launch_us / waves
        # at most the target, unless a single wave is already longer than it
        assert n // wave * wave_us <= atom_us or n == wave


def test_choose_atom_blocks_rejects_bad_values():
    with pytest.raises(ValueError, match="total_blocks"):
        choose_atom_blocks(0, 1)
    with pytest.raises(ValueError, match="atom_blocks"):
        choose_atom_blocks(10, 1, atom_blocks=0)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"atom_blocks": 0}, "atom_blocks"), ({"atom_blocks": 2.5}, "atom_blocks"), ({"atom_blocks": True}, "atom_blocks"),
     ({"atom_us": -1.0}, "atom_us"), ({"atom_us": 0}, "atom_us"), ({"strict": "yes"}, "strict")],
)
def test_options_name_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AtomizeOptions(**kwargs)
    with pytest.raises(ValueError, match=field):
        lithos.Atomizer(**kwargs)


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("LITHOS_ATOM_US", "500")
    monkeypatch.setenv("LITHOS_STRICT", "on")
    try:
        s = reload_settings()
        assert s.atom_us == 500.0 and s.strict is True
        assert lithos.Atomizer().options.atom_us == 500.0
        monkeypatch.setenv("LITHOS_ATOM_US", "fast")
        with pytest.raises(ValueError, match="LITHOS_ATOM_US"):
            reload_settings()
        monkeypatch.setenv("LITHOS_ATOM_US", "250")
        monkeypatch.setenv("LITHOS_STRICT", "maybe")
        with pytest.raises(ValueError, match="LITHOS_STRICT"):
            reload_settings()
    finally:
        monkeypatch.delenv("LITHOS_ATOM_US")
        monkeypatch.delenv("LITHOS_STRICT")
        reload_settings()


def test_set_atomizer_swaps_and_restores_library_objects_exactly():
    import cupy

    from lithos_atom._compat import import_numba_cuda

    import_numba_cuda()
    from numba.cuda.dispatcher import _Kernel

    raw_kernel, raw_module, launch = cupy.RawKernel, cupy.RawModule, _Kernel.launch
    end_capture = cupy.cuda.Stream.end_capture
    lithos.set_atomizer(lithos.Atomizer())
    try:
        assert interception.installed()
        assert cupy.RawKernel is not raw_kernel and issubclass(cupy.RawKernel, raw_kernel)
        assert issubclass(cupy.RawModule, raw_module)
        assert _Kernel.launch is not launch
        # creating kernels needs no GPU; they are still CuPy RawKernels
        k = cupy.RawKernel('extern "C" __global__ void f(float* x) {}', "f")
        assert isinstance(k, raw_kernel)
        assert cupy.cuda.Stream.end_capture is not end_capture  # graphs launch through the atomizer
    finally:
        lithos.set_atomizer(None)
    assert not interception.installed()
    assert cupy.RawKernel is raw_kernel and cupy.RawModule is raw_module and _Kernel.launch is launch
    assert cupy.cuda.Stream.end_capture is end_capture and "end_capture" not in cupy.cuda.Stream.__dict__


def test_a_captured_graph_launches_through_the_atomizer_in_effect():
    from lithos_atom.graphs import CapturedGraph

    class Graph:  # stands in for cupy.cuda.Graph
        def __init__(self) -> None:
            self.launched: list = []
            self.graph = "handle"

        def launch(self, stream=None) -> None:  # noqa: ANN001
            self.launched.append(stream)

    class Recording(lithos.Atomizer):
        def __init__(self) -> None:
            super().__init__()
            self.graphs: list = []

        def launch_graph(self, graph, stream) -> None:  # noqa: ANN001
            self.graphs.append((graph, stream))

    g = Graph()
    captured = CapturedGraph(g)
    captured.launch("s")  # no atomizer: as CuPy would
    assert g.launched == ["s"] and captured.graph == "handle"  # other attributes are the graph's
    atomizer = Recording()
    with lithos.using_atomizer(atomizer):
        captured.launch()
    assert atomizer.graphs == [(g, None)] and g.launched == ["s"]


def test_using_atomizer_nests_per_thread_and_restores():
    a, b = lithos.Atomizer(atom_blocks=4), lithos.Atomizer(atom_blocks=8)
    seen = []
    with lithos.using_atomizer(a):
        with lithos.using_atomizer(b):
            assert lithos.get_atomizer() is b
            t = threading.Thread(target=lambda: seen.append(lithos.get_atomizer()))
            t.start()
            t.join()
        assert lithos.get_atomizer() is a
        with lithos.using_atomizer(None):
            assert lithos.get_atomizer() is None
    assert lithos.get_atomizer() is None and seen == [None] and not interception.installed()
    lithos.set_atomizer(a)
    try:
        with lithos.using_atomizer(None):
            assert lithos.get_atomizer() is None
        assert lithos.get_atomizer() is a
    finally:
        lithos.set_atomizer(None)


def test_set_atomizer_rejects_other_objects():
    with pytest.raises(TypeError, match="Atomizer"):
        lithos.set_atomizer(object())
    with pytest.raises(TypeError, match="Atomizer"):
        with lithos.using_atomizer("yes"):
            pass
    assert not interception.installed()


def test_atomize_rejects_non_kernels_and_double_wrapping():
    import cupy

    with pytest.raises(TypeError, match="RawKernel"):
        lithos.atomize(lambda x: x)
    k = lithos.atomize(cupy.RawKernel('extern "C" __global__ void f(float* x) {}', "f"))
    with pytest.raises(TypeError, match="already atomized"):
        lithos.atomize(k)
    assert lithos.atomize(atom_blocks=3)(cupy.RawKernel('extern "C" __global__ void g() {}', "g")).options.atom_blocks == 3


def test_atomize_numba_kernel_keeps_dispatcher_attributes():
    from lithos_atom._compat import import_numba_cuda

    cuda = import_numba_cuda()

    @lithos.atomize
    @cuda.jit
    def scale(x, out):
        i = cuda.grid(1)
        if i < x.shape[0]:
            out[i] = 2 * x[i]

    assert scale.py_func.__name__ == "scale"
    assert scale.options.atom_us == DEFAULT_ATOM_US  # LITHOS_ATOM_US is unset here


SOURCE = r'''
__device__ __noinline__ int tag() { return blockIdx.x + gridDim.y; }
template <typename T> __global__ void k(T* x) { x[blockIdx.x * blockDim.x + threadIdx.x] += (T)tag(); }
'''


def test_cupy_source_compiles_rewrites_and_links_without_a_gpu(tmp_path, monkeypatch):
    from lithos_atom.compile import cuda_source_to_ptx, link_ptx
    from lithos_atom.ptx import rewrite_module

    monkeypatch.setenv("LITHOS_CACHE_DIR", str(tmp_path))
    reload_settings()
    try:
        ptx, mapping = cuda_source_to_ptx(SOURCE, ("-std=c++17",), "90", ["k<float>"])
        entry = mapping["k<float>"]
        assert entry.startswith("_Z") and f".entry {entry}" in ptx
        result = rewrite_module(ptx)
        assert result.entries[entry].atomized
        cubin = link_ptx(result.ptx, "sm_90", name=entry)
        assert cubin[:4] == b"\x7fELF"
        cached = list(tmp_path.glob("*.cubin"))
        assert len(cached) == 1 and cached[0].read_bytes() == cubin
        assert link_ptx(result.ptx, "sm_90") == cubin  # served from cache
    finally:
        monkeypatch.delenv("LITHOS_CACHE_DIR")
        reload_settings()


def test_compile_errors_are_clear():
    from lithos_atom.compile import cuda_source_to_ptx, link_ptx

    with pytest.raises(lithos.AtomizeError, match="NVRTC could not compile"):
        cuda_source_to_ptx("__global__ void k( {", (), "90")
    with pytest.raises(lithos.AtomizeError, match="nvJitLink"):
        link_ptx(".version 9.0\n.target sm_90\n.address_size 64\n.visible .entry k() { garbage; }\n", "sm_90")


def test_dispatch_offers_the_launch_whole_then_builds_warns_and_submits():
    from lithos_atom.plan import KernelKey, LaunchPlan

    class Recording(lithos.Atomizer):
        def __init__(self, whole: bool) -> None:
            super().__init__()
            self.whole, self.calls = whole, []

        def launch_whole(self, launch, stream, describe) -> bool:  # noqa: ANN001
            self.calls.append("whole?")
            return self.whole

        def submit(self, plan, stream) -> None:  # noqa: ANN001
            self.calls.append(("submit", plan.atomized, stream))

    key = KernelKey("k", (4, 1, 1), (32, 1, 1), 0)
    built: list = []

    def plan(atomized: bool):  # noqa: ANN202
        def build() -> LaunchPlan:
            built.append(atomized)
            if atomized:
                return LaunchPlan.build(key, 4, 1, lambda s, c, st: None)
            return LaunchPlan.whole(key, 4, lambda st: None, "cannot be split")
        return build

    taken = Recording(whole=True)
    taken.dispatch(lambda s: None, "s", lambda: None, plan(True), "k")
    assert taken.calls == ["whole?"] and built == []  # no plan is built for a launch taken whole
    split = Recording(whole=False)
    split.dispatch(lambda s: None, "s", lambda: None, plan(True), "k")
    assert split.calls == ["whole?", ("submit", True, "s")]
    with pytest.warns(lithos.AtomizeWarning, match="'k' runs whole .*cannot be split"):
        split.dispatch(lambda s: None, "s", lambda: None, plan(False))  # named by the plan's key
    assert split.calls[-1] == ("submit", False, "s")
