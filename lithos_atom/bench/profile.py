"""Collect scaling profiles offline: ``python -m lithos_atom.bench.profile``.

Times kernels on partitions of several TPC counts (and then every count where a choice
within the slack could lie, unless ``--no-refine``), fits each kernel's scaling model,
writes the profiles to the disk cache the right-sizer reads (`ProfileStore`), and prints
a table: fitted model, latency on the whole device, the TPCs right-sizing would choose
and the predicted slowdown there.

Examples::

    python -m lithos_atom.bench.profile --case gemm_f16 --case softmax_f32      # registry cases, bench size
    python -m lithos_atom.bench.profile --inference-batch 1 --inference-batch 8  # the inference service's kernels
    python -m lithos_atom.bench.profile --sim                                    # SIMULATED device, stand-in kernels

Without a GPU the command profiles the simulated device, as with ``--sim``, and says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lithos_atom.atomizer import Atomizer
from lithos_atom.optin import using_atomizer
from lithos_atom.bench import rightsize_cases as rc
from lithos_atom.bench.rightsize_cases import ProfileCase
from lithos_atom.plan import KernelKey, LaunchShape, WholeLaunch
from lithos_sched import gpu_available, open_device
from lithos_sched.partition_timing import TimingOptions, default_sizes, profile_on_partitions, validate_sizes
from lithos_sched.rightsizing import RightSizeOptions, choose_tpcs, predicted_latency_us
from lithos_sched.scaling import ProfileStore, ScalingProfile


class LaunchRecorder(Atomizer):
    """An atomizer that runs every intercepted launch as written and records its key."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[KernelKey] = []

    def launch_whole(self, launch: WholeLaunch, stream: Any, describe: Callable[[], LaunchShape]) -> bool:
        self.keys.append(describe().key)
        launch(stream)
        return True


def launch_keys(launch: Callable[[Any], None], stream: Any) -> list[KernelKey]:
    """The `KernelKey` of every kernel that ``launch(stream)`` launches.

    ``kernels/`` builds its CuPy kernels on first use into a cache, and only kernels built
    while an atomizer is set are intercepted, so the cache is emptied before (the kernels
    are built again, intercepted) and after (later launches build plain ones again).
    """
    import kernels

    recorder = LaunchRecorder()
    kernels.reset_cache()
    try:
        with using_atomizer(recorder):
            launch(stream)
    finally:
        kernels.reset_cache()
    return recorder.keys


def profile_cases(device: Any, cases: Iterable[ProfileCase | Callable[[], list[ProfileCase]]], sizes: list[int],
                  timing: TimingOptions, store: ProfileStore | None = None,
                  on_profile: Callable[[ProfileCase, ScalingProfile], None] | None = None,
                  refine_slack: float | None = None) -> dict[str, ScalingProfile]:
    """Profile each case on partitions of ``sizes`` TPCs.

    Parameters
    ----------
    device
        GPU or simulated device.
    cases : iterable
        `ProfileCase` objects, or callables building a list of them (built lazily, so
        only one case's inputs are on the device at a time).
    sizes : list of int
        TPC counts.
    timing : TimingOptions
    store : ProfileStore, optional
        Profiles are added to it (replacing the samples of the sizes timed).
    on_profile : callable, optional
        Called with each case and its profile once timed (before the case is released).
    refine_slack : float, optional
        Also time every TPC count where a choice within this slack could lie
        (`partition_timing.knee_sizes`).

    Returns
    -------
    dict
        Key -> profile.
    """
    out: dict[str, ScalingProfile] = {}
    for item in cases:
        group = item() if callable(item) and not isinstance(item, ProfileCase) else [item]
        try:
            for case in group:
                prof = store.profile(case.key) if store is not None else None
                out[case.key] = profile_on_partitions(device, case.key, case.launch, sizes, timing, prof, refine_slack)
                if store is not None and not device.simulated:
                    _alias_by_kernel_key(device, case, store)
                if on_profile is not None:
                    on_profile(case, out[case.key])
        finally:
            for case in group:
                case.release()
    return out


def _alias_by_kernel_key(device: Any, case: ProfileCase, store: ProfileStore) -> None:
    """File a one-kernel case's profile also under the kernel's `KernelKey`, the key the
    scheduler's right-sizer looks up (cases of several kernels keep their case name only)."""
    stream = device.partition(range(device.num_tpcs)).normal
    keys = set(launch_keys(case.launch, stream))
    stream.synchronize()
    if len(keys) == 1:
        store.alias(keys.pop(), case.key)


def _sizes_arg(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive ints, got {text!r}")
    return sizes


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value}")
    return value


def _slack(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 <= value < 10:
        raise argparse.ArgumentTypeError(f"must be in [0, 10), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    from kernels import registry

    p = argparse.ArgumentParser(prog="python -m lithos_atom.bench.profile", description=__doc__.splitlines()[0])
    p.add_argument("--sim", action="store_true", help="profile stand-in kernels on the SIMULATED device")
    p.add_argument("--case", action="append", choices=registry.case_names(), metavar="NAME",
                   help="registry case (repeatable); see python -m kernels.bench --list")
    p.add_argument("--all-cases", action="store_true", help="every registry case")
    p.add_argument("--inference-batch", action="append", type=_positive, metavar="B",
                   help="profile the inference service's kernels at this batch (repeatable, 1-8)")
    p.add_argument("--size", choices=registry.SIZES, default="bench", help="registry case size (default bench)")
    p.add_argument("--sizes", type=_sizes_arg, help="TPC counts, comma-separated (default: 10 steps down "
                                                    "from the whole device)")
    p.add_argument("--rounds", type=_positive, default=3, help="rounds over the sizes (default 3)")
    p.add_argument("--launches", type=_positive, default=3, help="timed launches per size and round (default 3)")
    p.add_argument("--slack", type=_slack, default=0.05, help="right-sizing slack for the table and the "
                                                              "refinement (default 0.05)")
    p.add_argument("--no-refine", action="store_true", help="time only --sizes, not also every TPC count where a "
                                                            "choice within the slack could lie")
    p.add_argument("--cache", help="profile cache file (default: the right-sizer's, under LITHOS_CACHE_DIR)")
    p.add_argument("--no-save", action="store_true", help="do not write the cache")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status.

    Without a GPU it profiles the simulated device's stand-in kernels, as ``--sim`` does,
    and says so; the kernels of ``kernels/`` (``--case``, ``--all-cases``,
    ``--inference-batch``) need a GPU, and asking for them without one is an error
    (exit status 1). Bad options exit with status 2 before any work.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    kernels_asked = bool(args.case or args.all_cases or args.inference_batch)
    if args.sim and kernels_asked:
        parser.error("--sim profiles simulated stand-in kernels; it takes no --case, --all-cases or --inference-batch")
    if args.inference_batch and any(b > 8 for b in args.inference_batch):
        parser.error(f"--inference-batch must be 1-8 (the service's batches), got {args.inference_batch}")
    if args.cache is not None and Path(args.cache).is_dir():
        parser.error(f"--cache must be a file, got the folder {args.cache!r}")
    simulate = args.sim or not gpu_available()
    if simulate and kernels_asked:
        print(f"{parser.prog}: error: --case, --all-cases and --inference-batch time kernels on a CUDA GPU, and none "
              "was found; --sim profiles the simulated device's stand-in kernels", file=sys.stderr)
        return 1
    if not simulate and not kernels_asked:
        parser.error("nothing to profile: give --case NAME, --all-cases, --inference-batch B, or --sim")

    from rich.console import Console
    from rich.table import Table

    console = Console()
    device = open_device(simulate=simulate)
    try:
        sizes = validate_sizes(args.sizes, device.num_tpcs) if args.sizes else default_sizes(device.num_tpcs)
    except ValueError as exc:
        device.close()
        parser.error(f"--sizes: {exc}")
    if device.simulated:
        why = "--sim was given" if args.sim else "no CUDA GPU was found"
        console.print(f"[bold yellow]SIMULATED DEVICE[/]: {why}; latencies below come from the simulator's model of "
                      "stand-in kernels, not from a GPU")
        cases: list[Any] = list(rc.sim_cases(device.num_tpcs))
    else:
        from kernels import registry

        names = registry.case_names() if args.all_cases else (args.case or [])
        cases = [lambda n=n: [rc.registry_case(n, args.size)] for n in names]
        cases += [lambda b=b: rc.inference_cases(b) for b in (args.inference_batch or [])]
    store = ProfileStore(args.cache, device_name=device.name + (" (simulated)" if device.simulated else ""))
    try:
        store.load()
    except ValueError as exc:
        device.close()
        parser.error(f"--cache: {exc}")
    table = Table(title=f"Scaling profiles on {device.name}{' (SIMULATED)' if device.simulated else ''}, "
                        f"TPC counts {sizes}")
    for col in ("kernel", "model", "fit err", "shape", f"us @{sizes[0]}", "counts timed", "TPCs chosen",
                "pred. slowdown"):
        table.add_column(col, justify="left" if col in ("kernel", "model", "shape") else "right",
                         overflow="fold")

    def add_row(case: ProfileCase, prof: ScalingProfile) -> None:
        model = prof.model()
        assert model is not None
        shape = (f"T_sat={model.t_sat:g}" if model.kind == "saturating" else
                 f"W={model.waves_w:g}" if model.kind == "wave" else "")
        samples = prof.samples
        chosen = choose_tpcs(model, sizes[0], args.slack, min_saving=RightSizeOptions().min_saving, samples=samples)
        slowdown = float(predicted_latency_us(model, np.array([chosen]), samples)[0]) / samples[sizes[0]][0] - 1
        table.add_row(case.key, model.kind, f"{100 * model.rel_rms:.1f}%", shape,
                      f"{samples[sizes[0]][0]:.1f}", str(len(samples)), f"{chosen}/{sizes[0]}",
                      f"{100 * slowdown:+.1f}%")
        console.print(f"profiled {case.key}", highlight=False)

    try:
        profile_cases(device, cases, sizes, TimingOptions(rounds=args.rounds, launches_per_round=args.launches),
                      store, add_row, refine_slack=None if args.no_refine else args.slack)
    finally:
        device.close()
    console.print(table)
    if not args.no_save:
        console.print(f"profiles written to {store.save()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
