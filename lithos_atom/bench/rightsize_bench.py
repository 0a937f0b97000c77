"""Right-sizing and DVFS report: ``python -m lithos_atom.bench.rightsize_bench --out DIR``.

For every `kernels.registry` case (bench size) and every kernel of the inference
service's decoder layer (batches 1 and 8), and for a whole inference request (with
``--service NAME``, instead: the whole request of each named model service of
`lithos_atom.bench.ml_services` at each of its batch sizes, as served: its CUDA graph):

1. profile it on partitions of 10 TPC counts, then on every count where a choice within
   the slack could lie (`partition_timing.knee_sizes`; ``--no-refine``: the 10 only), and
   fit its scaling model;
2. right-size it (the fewest TPCs whose predicted slowdown is within the slack);
3. MEASURE it again on the chosen partition and on the whole device, interleaved: the
   measured slowdown, and the capacity saved, ``1 - (T * t_T) / (66 * t_66)`` of TPC-time;
4. measure its mean power at the default clock with NVML's energy counter, and choose its
   SM clock with the DVFS policy; the energy at that clock is MODELED (`PowerModel`),
   never measured: no clock is changed. A kernel's achieved DRAM bandwidth is relative to
   the device's, measured first with a device-to-device copy.

Writes ``rightsizing.json`` and ``rightsizing.png`` to ``--out``; the summary says, per
model service, at which batch sizes a whole request saves at least `TARGET_SAVED` of its
TPC-time at a measured slowdown under the slack. ``--sim``, or a machine without a GPU,
runs the same steps on the SIMULATED device with stand-in kernels, or the services'
requests as it models them (no energy).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lithos_atom.bench import rightsize_cases as rc
from lithos_atom.bench.rightsize_cases import ProfileCase
from lithos_sched import gpu_available, open_device
from lithos_sched.dvfs import DvfsActuator, DvfsPolicy, compute_share, h100_sm_clocks_mhz, time_ratio
from lithos_sched.energy import MODELED, EnergyMeter, fit_power_model
from lithos_sched.partition_timing import TimingOptions, default_sizes, profile_on_partitions, time_on_partitions
from lithos_sched.rightsizing import RightSizeOptions, choose_tpcs, predicted_latency_us
from lithos_sched.scaling import ProfileStore

#: The capacity a right-sized request should save (LithOS: about a quarter at < 4 % slowdown).
TARGET_SAVED = 0.25


def _busy_step(case: ProfileCase, stream: Any, kernel_us: float) -> Any:
    """A step for `EnergyMeter.mean_power_w` keeping ~5 ms of ``case`` queued."""
    pending: collections.deque[Any] = collections.deque()
    per_step = max(1, math.ceil(5000.0 / max(kernel_us, 1.0)))

    def step() -> None:
        for _ in range(per_step):
            case.launch(stream)
        pending.append(stream.record())
        while len(pending) > 2:
            pending.popleft().synchronize()

    return step


def best_profiled_saving(profile_us: dict[Any, float], full_tpcs: int, slack: float) -> tuple[int, float]:
    """The most TPC-time a choice among the profiled sizes saves within ``slack``.

    Of the sizes whose profiled time is at most ``(1 + slack)`` times the time on
    ``full_tpcs``, the one of least TPC-time (TPCs times time): a bound on what any
    right-sizing policy can save on that profile, since it can only choose among the
    sizes it could measure.

    Returns
    -------
    (int, float)
        That size and its capacity saved, ``1 - (T * t_T) / (full_tpcs * t_full)``.
    """
    times = {int(t): float(us) for t, us in profile_us.items()}
    if full_tpcs not in times:
        raise ValueError(f"the profile has no time on the full {full_tpcs} TPCs: sizes {sorted(times)}")
    t_full = times[full_tpcs]
    within = [t for t, us in times.items() if us <= (1.0 + slack) * t_full]
    best = min(within, key=lambda t: (t * times[t], t))
    return best, 1.0 - best * times[best] / (full_tpcs * t_full)


def copy_bandwidth_bytes_per_s(nbytes: int = 1 << 30, reps: int = 5) -> float:
    """The device's DRAM bandwidth as a device-to-device copy achieves it (GPU only).

    The best of ``reps`` copies of ``nbytes``, counting the bytes read and written: what
    the memory-bound kernels can reach, the reference of their bandwidth fraction (the
    spec sheet's figure is not reached by any kernel).
    """
    import cupy

    src = cupy.empty(nbytes, dtype=cupy.uint8)
    dst = cupy.empty_like(src)
    try:
        dst[...] = src  # first touch
        best = math.inf
        for _ in range(reps):
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            dst[...] = src
            end.record()
            end.synchronize()
            best = min(best, cupy.cuda.get_elapsed_time(start, end) * 1e-3)
        return 2.0 * nbytes / best
    finally:
        del src, dst


def measure_case(device: Any, case: ProfileCase, sizes: list[int], slack: float, meter: Any,
                 profile_timing: TimingOptions, confirm_timing: TimingOptions, energy_window_s: float,
                 store: ProfileStore, peak_bytes_per_s: float | None, refine: bool = True) -> dict[str, Any]:
    """Profile, right-size, confirm and (with a meter) measure the power of one case.

    ``peak_bytes_per_s`` is the DRAM bandwidth the case's achieved bandwidth is a
    fraction of (None: the fraction is unknown); ``refine`` also times every count where a
    choice within ``slack`` could lie.
    """
    full_tpcs = sizes[0]
    prof = profile_on_partitions(device, case.key, case.launch, sizes, profile_timing, store.profile(case.key),
                                 refine_slack=slack if refine else None)
    model = prof.model()
    assert model is not None
    samples = prof.samples
    chosen = choose_tpcs(model, full_tpcs, slack, min_saving=RightSizeOptions().min_saving, samples=samples)
    predicted = float(predicted_latency_us(model, np.array([chosen]), samples)[0]) / samples[full_tpcs][0] - 1.0
    profile_us = {t: m for t, (m, _) in samples.items()}
    best_tpcs, best_saved = best_profiled_saving(profile_us, full_tpcs, slack)
    row: dict[str, Any] = {"key": case.key, "bound": case.bound, "per_request": case.per_request,
                           "profile_us": {str(t): m for t, m in profile_us.items()},
                           "counts_refined": sorted(set(profile_us) - set(sizes)),
                           "model": model.to_json(), "tpcs": chosen, "home_tpcs": full_tpcs,
                           "predicted_slowdown": predicted,
                           "profile_bound": {"tpcs": best_tpcs, "capacity_saved": best_saved}}
    confirm = time_on_partitions(device, case.launch, sorted({full_tpcs, chosen}, reverse=True), confirm_timing)
    t_full = statistics.median(confirm[full_tpcs])
    t_chosen = statistics.median(confirm[chosen])
    row.update({"us_full": t_full, "us_chosen": t_chosen, "measured_slowdown": t_chosen / t_full - 1.0,
                "capacity_saved": 1.0 - (chosen * t_chosen) / (full_tpcs * t_full)})
    bandwidth = case.bytes / (t_full * 1e-6) if case.bytes else None
    row["bandwidth_bytes_per_s"] = bandwidth
    row["bandwidth_fraction"] = None if bandwidth is None or peak_bytes_per_s is None else bandwidth / peak_bytes_per_s
    row["elasticity"] = model.elasticity(full_tpcs)
    row["compute_share"] = compute_share(row["elasticity"], row["bandwidth_fraction"])
    # Power is measured for kernels long enough to keep the GPU busy from Python: the
    # inference layer's 10-50 us kernels would measure the host's launch rate instead.
    long_enough = not case.key.startswith("inference:") or case.key.endswith(":request")
    if meter is not None and energy_window_s > 0 and long_enough:
        full = device.partition(range(full_tpcs))
        try:
            row["power_w_measured"] = meter.mean_power_w(_busy_step(case, full.normal, t_full), energy_window_s)
            row["sm_clock_mhz_observed"] = meter.sm_clock_mhz()  # still busy: the clock the power was drawn at
        finally:
            full.normal.synchronize()
            full.close()
    return row


def _summaries(rows: list[dict[str, Any]], slack: float) -> dict[str, Any]:
    def mean(values: list[float]) -> float | None:
        return statistics.fmean(values) if values else None

    registry_rows = [r for r in rows if not r["key"].startswith(("inference:", "service:"))]  # registry (or simulated)
    out: dict[str, Any] = {}
    if registry_rows:
        out["registry"] = {
            "kernels": len(registry_rows),
            "mean_capacity_saved": mean([r["capacity_saved"] for r in registry_rows]),
            "mean_profile_bound": mean([r["profile_bound"]["capacity_saved"] for r in registry_rows]),
            "mean_measured_slowdown": mean([r["measured_slowdown"] for r in registry_rows]),
            "max_measured_slowdown": max(r["measured_slowdown"] for r in registry_rows),
            "kernels_within_slack": sum(r["measured_slowdown"] <= slack for r in registry_rows),
            "kernels_right_sized": sum(r["tpcs"] < r["home_tpcs"] for r in registry_rows),
        }
    by_batch: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        if r["key"].startswith("inference:"):
            by_batch[r["key"].split(":")[1]].append(r)
    inference: dict[str, Any] = {}
    for batch, group in sorted(by_batch.items()):
        ops = [r for r in group if not r["key"].endswith(":request")]
        req = next((r for r in group if r["key"].endswith(":request")), None)
        entry: dict[str, Any] = {}
        if ops:
            full_tpcs = ops[0]["home_tpcs"]
            t_full = sum(r["per_request"] * r["us_full"] for r in ops)
            t_chosen = sum(r["per_request"] * r["us_chosen"] for r in ops)
            tpc_time = sum(r["per_request"] * r["tpcs"] * r["us_chosen"] for r in ops)
            entry["per_kernel"] = {
                "method": "each kernel on its own right-sized partition; request figures are sums of the "
                          "kernels' measured device times (times the layers), not a timed request",
                "request_us_full": t_full, "request_us_right_sized": t_chosen,
                "measured_slowdown": t_chosen / t_full - 1.0,
                "capacity_saved": 1.0 - tpc_time / (full_tpcs * t_full),
                "profile_bound": _request_bound(ops),
                "tpcs": {r["key"].rsplit(":", 1)[1]: r["tpcs"] for r in ops},
            }
        if req is not None:
            entry["whole_request"] = {
                "method": "the whole request timed on one right-sized partition",
                "tpcs": req["tpcs"], "us_full": req["us_full"], "us_chosen": req["us_chosen"],
                "measured_slowdown": req["measured_slowdown"], "capacity_saved": req["capacity_saved"],
            }
        inference[batch] = entry
    if inference:
        out["inference"] = inference
    suite = [{"capacity_saved": r["capacity_saved"], "measured_slowdown": r["measured_slowdown"],
              "bound": r["profile_bound"]["capacity_saved"]} for r in registry_rows] + [
        {"capacity_saved": e["per_kernel"]["capacity_saved"], "measured_slowdown": e["per_kernel"]["measured_slowdown"],
         "bound": e["per_kernel"]["profile_bound"]}
        for e in inference.values() if "per_kernel" in e]
    services = _service_summaries([r for r in rows if r["key"].startswith("service:")], slack)
    if services:
        out["services"] = services
    if suite:
        out["suite"] = {
            "items": len(suite),
            "what": "registry (or simulated) cases and the inference request (per-kernel right-sizing) of each batch, "
                    "each weighted 1",
            "mean_capacity_saved": mean([r["capacity_saved"] for r in suite]),
            "mean_profile_bound": mean([r["bound"] for r in suite]),
            "mean_measured_slowdown": mean([r["measured_slowdown"] for r in suite]),
            "target": "mean capacity saved >= 25% at < 5% measured slowdown",
            "profile_bound": "the mean of what the best within-slack choice among the timed TPC counts "
                             "would save per item. With the refinement every count where a within-slack "
                             "choice could lie was timed, so, as far as more TPCs never make a kernel "
                             "slower, no right-sizing of these kernels saves more",
        }
    return out


def _service_summaries(rows: list[dict[str, Any]], slack: float) -> dict[str, Any]:
    """Per model service (rows keyed ``service:<name>:b<batch>:request``), each batch
    size's whole request right-sized, and the batch sizes where it saves at least
    `TARGET_SAVED` of its TPC-time at a measured slowdown under ``slack``."""
    by_service: dict[str, dict[str, Any]] = {}
    for r in rows:
        _, name, batch, _ = r["key"].split(":")
        reaches = r["capacity_saved"] >= TARGET_SAVED and r["measured_slowdown"] < slack
        by_service.setdefault(name, {})[int(batch[1:])] = {
            "tpcs": r["tpcs"], "home_tpcs": r["home_tpcs"], "us_full": r["us_full"], "us_chosen": r["us_chosen"],
            "measured_slowdown": r["measured_slowdown"], "capacity_saved": r["capacity_saved"],
            "profile_bound": r["profile_bound"]["capacity_saved"], "reaches_target": reaches}
    out: dict[str, Any] = {
        "target": f"a whole request saves >= {TARGET_SAVED:.0%} of its TPC-time at < {slack:.0%} measured slowdown",
        "per_service": {}}
    for name, batches in by_service.items():
        out["per_service"][name] = {
            "batches": {str(b): e for b, e in sorted(batches.items())},
            "reach_target_at": sorted(b for b, e in batches.items() if e["reaches_target"]),
            "mean_capacity_saved": statistics.fmean(e["capacity_saved"] for e in batches.values())}
    out["services_reaching_target"] = sorted(n for n, e in out["per_service"].items() if e["reach_target_at"])
    return out


def _request_bound(ops: list[dict[str, Any]]) -> float:
    """`best_profiled_saving` for a request of per-kernel choices: each kernel at its
    bound's size, with the profiled times (weighted by layers)."""
    full_tpcs = ops[0]["home_tpcs"]
    t_full = sum(r["per_request"] * r["profile_us"][str(full_tpcs)] for r in ops)
    tpc_time = sum(r["per_request"] * r["profile_bound"]["tpcs"] * r["profile_us"][str(r["profile_bound"]["tpcs"])]
                   for r in ops)
    return 1.0 - tpc_time / (full_tpcs * t_full)


def dvfs_section(rows: list[dict[str, Any]], clocks: list[int], default_mhz: int, idle_w: float | None
                 ) -> dict[str, Any]:
    """DVFS decisions per kernel (logged, never applied) and the modeled energy saving."""
    policy = DvfsPolicy(clocks, default_mhz)
    actuator = DvfsActuator()  # log-only: not enabled
    decisions = []
    for r in rows:
        d = policy.decide(r["key"], r["compute_share"], r.get("sm_clock_mhz_observed"))
        actuator.apply(d)
        r["dvfs"] = d.to_json()
        decisions.append(d)
    out: dict[str, Any] = {"policy": {"slack": policy.options.slack, "min_fraction": policy.options.min_fraction,
                                      "time_model": "t(f) = t0 * (c * f0 / f + 1 - c), c = max(elasticity, "
                                                    "1 - bandwidth / the measured copy bandwidth)"},
                           "actuator_active": actuator.active, "default_mhz": default_mhz,
                           "clocks_chosen": {r["key"]: r["dvfs"]["clock_mhz"] for r in rows}}
    powered = [r for r in rows if "power_w_measured" in r]
    if idle_w is None or not powered:
        out["energy"] = {"skipped": "no NVML energy measurements"}
        return out
    bw = [(r["bandwidth_bytes_per_s"] or 0.0) / 1e12 for r in powered]
    model = fit_power_model(idle_w, [r["power_w_measured"] for r in powered], bw,
                            [r["compute_share"] for r in powered], default_mhz, min(clocks), max(clocks))
    e_default = e_dvfs = t_default = t_dvfs = 0.0
    for r, tbs in zip(powered, bw):
        seconds = r["us_full"] * 1e-6
        f0 = r["dvfs"]["default_mhz"]
        ratio = time_ratio(r["compute_share"], r["dvfs"]["clock_mhz"], f0)
        r["energy_j_measured_default_clock"] = r["power_w_measured"] * seconds
        r["energy_j_modeled_dvfs"] = model.kernel_energy_j(r["power_w_measured"], tbs, seconds,
                                                           r["dvfs"]["clock_mhz"], ratio, f0)
        e_default += r["energy_j_measured_default_clock"]
        e_dvfs += r["energy_j_modeled_dvfs"]
        t_default += seconds
        t_dvfs += seconds * ratio
    out["energy"] = {
        "kernels": len(powered),
        "idle_power_w_measured": idle_w,
        "suite_energy_j_measured": e_default,
        "suite_energy_how": "per kernel: mean power measured with NVML's energy counter while it ran back to "
                            "back on all TPCs at the default clock setting, times its measured time; summed",
        "clock_note": "f0 of each kernel is the SM clock NVML reported while it ran (below the default "
                      "where the GPU held its power limit)",
        "suite_energy_j_at_dvfs_clocks_modeled": e_dvfs,
        "energy_saving_modeled": 1.0 - e_dvfs / e_default,
        "suite_slowdown_modeled": t_dvfs / t_default - 1.0,
        "power_model": model.to_json(),
        "source_of_savings": MODELED,
    }
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    """Capacity saved and measured slowdown per kernel; DVFS clocks (headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["kernels"]
    names = [r["key"].replace("case:", "").replace("@bench", "") for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(max(10, 0.28 * len(rows)), 11), sharex=True)
    x = range(len(rows))
    axes[0].bar(x, [100 * r["capacity_saved"] for r in rows], color="tab:green")
    axes[0].set_ylabel("capacity saved\n(% TPC-time)")
    axes[0].axhline(25, ls="--", c="gray", lw=0.8)
    axes[1].bar(x, [100 * r["measured_slowdown"] for r in rows], color="tab:red")
    axes[1].axhline(100 * report["slack"], ls="--", c="gray", lw=0.8)
    axes[1].set_ylabel("measured\nslowdown (%)")
    axes[2].bar(x, [r["dvfs"]["clock_mhz"] for r in rows], color="tab:blue")
    axes[2].set_ylabel("DVFS SM clock\n(MHz, logged only)")
    axes[2].set_xticks(list(x), names, rotation=90, fontsize=7)
    sim = " (SIMULATED)" if report["simulated"] else ""
    fig.suptitle(f"Right-sizing on {report['device']['name']}{sim}: TPCs chosen at {100 * report['slack']:.0f}% slack")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite(text: str) -> float:
    """An option's value as a finite float."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    from kernels import registry

    from lithos_atom.bench.ml_services import MODEL_SERVICES

    p = argparse.ArgumentParser(prog="python -m lithos_atom.bench.rightsize_bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="rightsizing-report", help="output directory (default ./rightsizing-report)")
    p.add_argument("--sim", action="store_true", help="SIMULATED device and stand-in kernels (the default without "
                                                      "a GPU)")
    p.add_argument("--case", action="append", choices=registry.case_names(), metavar="NAME",
                   help="registry case (repeatable; default all)")
    p.add_argument("--inference-batch", action="append", type=int, help="decoder batches (default 1 and 8)")
    p.add_argument("--service", action="append", choices=MODEL_SERVICES, metavar="NAME",
                   help=f"model service whose whole request is right-sized at each of its batch sizes (repeatable; "
                        f"one of {', '.join(MODEL_SERVICES)}); alone, only these are measured")
    p.add_argument("--service-batch", action="append", type=int, metavar="N",
                   help="a batch size of the services (repeatable; default each service's own sizes)")
    p.add_argument("--service-size", choices=("default", "small"), default="default",
                   help="the services' shapes: published (default) or 2 layers (small, a smoke run)")
    p.add_argument("--slack", type=_finite, default=0.05, help="right-sizing slack (default 0.05)")
    p.add_argument("--energy-window", type=_finite, default=0.3, help="seconds of power measurement per kernel "
                                                                      "(0: none)")
    p.add_argument("--max-seconds", type=_finite, default=170.0, help="skip the remaining kernels after this long")
    p.add_argument("--no-refine", action="store_true", help="profile the 10 TPC counts only, not also every count "
                                                            "where a choice within the slack could lie")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the report; returns the exit status.

    Without a GPU it runs on the simulated device with stand-in kernels, as ``--sim``
    does, and says so; ``--case`` and ``--inference-batch`` name kernels of ``kernels/``,
    which need a GPU (exit status 1 without one). Bad options exit with status 2 before
    any work.
    """
    p = _parser()
    args = p.parse_args(argv)
    if not 0 <= args.slack < 10:
        p.error(f"--slack must be in [0, 10), got {args.slack}")
    if args.inference_batch and any(not 1 <= b <= 8 for b in args.inference_batch):
        p.error(f"--inference-batch must be 1-8, got {args.inference_batch}")
    if args.service_batch and (not args.service or min(args.service_batch) < 1):
        p.error(f"--service-batch needs --service and sizes >= 1, got {args.service_batch}")
    if args.energy_window < 0 or args.max_seconds <= 0:
        p.error("--energy-window must be >= 0 and --max-seconds > 0")
    kernels_asked = bool(args.case or args.inference_batch)
    if args.sim and kernels_asked:
        p.error("--sim runs simulated stand-in kernels; it takes no --case or --inference-batch")
    simulate = args.sim or not gpu_available()
    if simulate and kernels_asked:
        print(f"{p.prog}: error: --case and --inference-batch measure kernels on a CUDA GPU, and none was found; "
              "--sim runs the report on the simulated device's stand-in kernels", file=sys.stderr)
        return 1
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        p.error(f"--out: cannot make the folder {args.out!r} ({exc.strerror})")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("lithos_sched.dvfs").setLevel(logging.INFO)  # the log-only DVFS decisions

    t_start = time.perf_counter()
    device = open_device(simulate=simulate)
    if device.simulated:
        why = "--sim was given" if args.sim else "no CUDA GPU was found"
        what = "the model services' requests" if args.service else "stand-in kernels"
        print(f"SIMULATED DEVICE: {why}; latencies are the simulator's model of {what}; no energy is measured")
    sizes = default_sizes(device.num_tpcs)
    meter = None
    idle_w = None
    clocks, default_mhz = h100_sm_clocks_mhz(), 1980
    energy_start = None
    peak_bytes_per_s = None if device.simulated else copy_bandwidth_bytes_per_s()
    if peak_bytes_per_s is not None:
        print(f"DRAM bandwidth of a device-to-device copy (measured): {peak_bytes_per_s / 1e12:.2f} TB/s")
    if not device.simulated:
        try:
            meter = EnergyMeter()
            clocks, default_mhz = meter.supported_sm_clocks_mhz(), meter.max_sm_clock_mhz()
            idle_w = meter.mean_power_w(lambda: time.sleep(0.005), args.energy_window) if args.energy_window else None
            energy_start = meter.energy_mj()
        except Exception as exc:  # NVML missing or not permitted: report without energy
            print(f"NVML unavailable, no energy figures: {exc}")
            meter = None
    groups: list[tuple[str, Any]] = []  # (label, builder of the group's cases): built one group at a time
    batches = tuple(sorted(set(args.service_batch))) if args.service_batch else None
    for name in args.service or []:
        if device.simulated:
            groups.append((f"service {name}", lambda n=name: rc.sim_service_cases(n, device.num_sms, args.service_size,
                                                                                  batches)))
        else:
            groups.append((f"service {name}", lambda n=name: rc.service_cases(n, args.service_size, batches)))
    if device.simulated and not args.service:
        groups += [(c.key, lambda c=c: [c]) for c in rc.sim_cases(device.num_tpcs)]
    elif not device.simulated and (not args.service or args.inference_batch or args.case):
        from kernels import registry

        # The inference workload first: it is short, and the time limit cuts from the end.
        decoder = args.inference_batch or ([] if args.service else [1, 8])
        groups += [(f"inference batch {b}", lambda b=b: rc.inference_cases(b)) for b in decoder]
        groups += [(n, lambda n=n: [rc.registry_case(n, "bench")])
                   for n in (args.case or ([] if args.service else registry.case_names()))]
    store = ProfileStore(out_dir / "profiles.json", device_name=device.name)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    profile_timing = TimingOptions(rounds=3, launches_per_round=3)
    confirm_timing = TimingOptions(rounds=5, launches_per_round=2, warmup=1)
    try:
        for label, build in groups:
            if time.perf_counter() - t_start > args.max_seconds:
                skipped.append(label)
                continue
            cases = build()
            try:
                for case in cases:
                    row = measure_case(device, case, sizes, args.slack, meter, profile_timing, confirm_timing,
                                       args.energy_window, store, peak_bytes_per_s, refine=not args.no_refine)
                    rows.append(row)
                    print(f"{case.key:40s} {row['tpcs']:3d}/{sizes[0]} TPCs  slowdown {100 * row['measured_slowdown']:+5.1f}% "
                          f"(pred {100 * row['predicted_slowdown']:+5.1f}%)  saved {100 * row['capacity_saved']:5.1f}%  "
                          f"{row['us_full']:9.1f} us" + (f"  {row['power_w_measured']:.0f} W" if "power_w_measured" in row
                                                         else ""), flush=True)
            finally:
                for case in cases:
                    case.release()
        report: dict[str, Any] = {
            "device": device.describe(), "simulated": device.simulated, "slack": args.slack, "tpc_counts": sizes,
            "refined": not args.no_refine, "dram_copy_bytes_per_s_measured": peak_bytes_per_s,
            "kernels": rows, "skipped_for_time": skipped, "summary": _summaries(rows, args.slack),
        }
        report["dvfs"] = dvfs_section(rows, clocks, default_mhz, idle_w)
        if meter is not None and energy_start is not None:
            report["dvfs"]["bench_energy_j_measured"] = (meter.energy_mj() - energy_start) / 1000.0
        report["seconds"] = time.perf_counter() - t_start
    finally:
        device.close()
    store.save()
    (out_dir / "rightsizing.json").write_text(json.dumps(report, indent=1, default=str))
    plot(report, out_dir / "rightsizing.png")
    print(json.dumps(report["summary"], indent=1))
    print(json.dumps({k: v for k, v in report["dvfs"].get("energy", {}).items() if k != "power_model"}, indent=1))
    print(f"wrote {out_dir / 'rightsizing.json'} and {out_dir / 'rightsizing.png'} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
