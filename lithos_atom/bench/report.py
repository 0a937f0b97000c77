"""Tables (rich) and plots (matplotlib) of benchmark results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def json_default(obj: Any) -> Any:
    """JSON for numpy scalars, tuples-as-keys and paths."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, set, frozenset)):
        return str(obj) if isinstance(obj, Path) else sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def print_mapping(values: dict[str, Any], console: Console, title: str) -> None:
    """A two-column table of the scalar entries of ``values``."""
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in values.items():
        if isinstance(value, (int, float, str, bool)):
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


def print_atoms(out: dict[str, Any], console: Console) -> None:
    """The atomization overhead tables."""
    print_mapping(out["launch_cost"], console, "launch cost (host us per launch)")
    long = out["long_kernel"]
    table = Table(title=f"long kernel {long['kernel']}: {long['blocks']} blocks, whole {long['whole_us']:.0f} us")
    for col in ("variant", "atoms", "blocks/atom", "mean atom us", "total us", "overhead"):
        table.add_column(col, justify="right")
    for name, row in long.items():
        if isinstance(row, dict) and "overhead_ratio" in row:
            table.add_row(name, str(row["atoms"]), str(row["blocks_per_atom"]), f"{row['mean_atom_us']:.0f}",
                          f"{row['total_us']:.0f}", f"{(row['overhead_ratio'] - 1) * 100:+.2f}%")
    console.print(table)
    growth = Table(title="rewritten kernels: registers and static shared memory")
    for col in ("kernel", "regs", "regs atomized", "shared B", "shared B atomized"):
        growth.add_column(col, justify="right")
    for name, r in {"burn": long["resources"], **out.get("resource_growth", {})}.items():
        growth.add_row(name, str(r["regs_original"]), str(r["regs_atomized"]),
                       str(r["static_shared_original"]), str(r["static_shared_atomized"]))
    console.print(growth)


def print_colocation(out: dict[str, Any], console: Console) -> None:
    """Per-scenario latency/throughput table and lithos-vs-baseline ratios."""
    scenarios = out.get("scenarios", {})
    table = Table(title="co-location" + (" (SIMULATED)" if out.get("simulated") else ""))
    for col in ("scenario", "hp p50 ms", "hp p99 ms", "hp done", "be throughput (norm)", "GPU W (measured)"):
        table.add_column(col, justify="right")
    for name, s in scenarios.items():
        hp, be = s.get("hp", {}), s.get("be", {})
        watts = s.get("energy", {}).get("measured", {}).get("mean_watts")
        table.add_row(name, _fmt(hp.get("p50_ms")), _fmt(hp.get("p99_ms")), str(hp.get("completed", "")),
                      _fmt(be.get("throughput_norm")), _fmt(watts))
    console.print(table)
    ratios = out.get("ratios")
    if ratios:
        rt = Table(title="lithos vs each baseline")
        for col in ("baseline", "hp p99 baseline/lithos", "95% interval", "be throughput lithos/baseline"):
            rt.add_column(col, justify="right")
        for name, r in ratios.items():
            ci = r.get("p99_reduction_ci95")
            rt.add_row(name, _fmt(r.get("p99_reduction")), f"{_fmt(ci[0])}-{_fmt(ci[1])}" if ci else "",
                       _fmt(r.get("be_throughput_gain")))
        console.print(rt)


def print_ml(out: dict[str, Any], console: Console) -> None:
    """Per pair: each scenario's figures, then the ratios of lithos to each baseline."""
    sim = " (SIMULATED)" if out.get("simulated") else ""
    slo = out.get("slo_ms")
    console.print(f"inference SLO: {_fmt(slo)} ms; inference tenant owns {out.get('lc_tpcs')} TPCs in the split scenarios")
    for pair, res in out.get("pairs", {}).items():
        table = Table(title=f"inference + {pair}{sim}")
        for col in ("scenario", "p50 ms", "p99 ms", "p99.9 ms", "GPU wait p99", "SLO met", "done/arrived",
                    "BE thr (norm)", "sum (norm)", "note"):
            table.add_column(col, justify="left" if col in ("scenario", "note") else "right",
                             no_wrap=col == "scenario")
        notes = []
        for name, sc in res.get("scenarios", {}).items():
            if "skipped" in sc or "error" in sc:
                what, color = ("skipped", "yellow") if "skipped" in sc else ("error", "red")
                table.add_row(name, *[""] * 8, f"[{color}]{'failed' if what == 'error' else what}[/]")
                notes.append(f"[{color}]{name}: {what}: {sc[what]}[/]")
                continue
            hp, be = sc.get("hp", {}), sc.get("be", {})
            done = f"{hp['completed']}/{hp['arrived']}" if hp else ""
            gpu_wait = (hp.get("phases_p99_ms") or {}).get("gpu_wait")
            table.add_row(name, _fmt(hp.get("p50_ms")), _fmt(hp.get("p99_ms")), _fmt(hp.get("p999_ms")),
                          _fmt(gpu_wait), _fmt(hp.get("slo_attainment")), done, _fmt(be.get("throughput_norm")),
                          _fmt(sc.get("sum_norm_throughput")), "modeled" if "model" in sc else "")
            if "model" in sc:
                notes.append(f"{name}: {sc['model']}")
        console.print(table)
        for note in notes:
            console.print(f"  {note}")
        _print_lithos_summary(res, "lithos", "ratios", (("static_at_lithos_p99", ""),),
                              f"inference + {pair}{sim}", console)
        _print_lithos_summary(res, "lithos_mps", "ratios_lithos_mps",
                              (("static_at_lithos_mps_p99", " in one process"),
                               ("process_static_at_lithos_mps_p99", " with a process per tenant")),
                              f"inference + {pair}{sim}", console)
        _print_lithos_summary(res, "lithos_mps_rightsized", "ratios_lithos_mps_rightsized",
                              (("process_static_at_lithos_mps_rightsized_p99", " with a process per tenant"),),
                              f"inference + {pair}{sim}", console)


def _print_lithos_summary(res: dict[str, Any], name: str, ratios_key: str, ats: tuple[tuple[str, str], ...],
                          title: str, console: Console) -> None:
    """One lithos scenario of a pair: its best-effort occupancy, its ratios to each
    baseline and, per (key, where) of ``ats``, the static splits (run ``where``) at its
    inference p99 (each where present)."""
    occ = res.get("scenarios", {}).get(name, {}).get("be_occupancy")
    if occ:
        console.print(f"  {name}: best-effort atoms ran {occ['busy_share']:.0%} of the last "
                      f"{occ['window_ms'] / 1e3:.1f} s (stolen TPCs {occ['stolen_share']:.0%}, its own "
                      f"{occ['home_share']:.0%}); none ran in {occ['idle_gaps']} gaps, median "
                      f"{occ['idle_gap_median_us']:.0f} us, {occ['idle_ms']:.0f} ms in all")
    ratios = res.get(ratios_key)
    if ratios:
        rt = Table(title=f"{name} vs each baseline: {title}")
        for col in ("baseline", f"p99 baseline/{name}", f"p99.9 baseline/{name}", f"BE thr {name}/baseline"):
            rt.add_column(col, justify="right")
        for baseline, r in ratios.items():
            rt.add_row(baseline, _fmt(r.get("p99_reduction")), _fmt(r.get("p999_reduction")),
                       _fmt(r.get("be_throughput_gain")))
        console.print(rt)
    for at_key, where in ats:
        at = res.get(at_key)
        if not at:
            continue
        if at["static"] is None:
            console.print(f"  no static split{where} reached {name}'s inference p99 ({_fmt(at['lithos_p99_ms'])} ms)")
        else:
            console.print(f"  at {name}'s inference p99 ({_fmt(at['lithos_p99_ms'])} ms) the best static split{where} "
                          f"is {at['static']} (p99 {_fmt(at['static_p99_ms'])} ms): {name}'s best-effort throughput "
                          f"is {_fmt(at['be_throughput_gain'])}x its")
        if at.get("static_line_be_norm") is not None:
            console.print(f"  on the line of the static splits{where} at that p99 (interpolated between measured "
                          f"splits) best-effort throughput is {_fmt(at['static_line_be_norm'])} of alone: {name}'s "
                          f"is {_fmt(at['be_throughput_gain_on_line'])}x that")


def timeline_plot(trace_path: Path, out: Path, window_ms: float = 60.0) -> Path:
    """Draw ``window_ms`` of a Perfetto/Chrome trace: one row per partition stream, atoms as bars."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = json.loads(Path(trace_path).read_text())["traceEvents"]
    # Start at the median atom: a trace's span can be dominated by a gap (the first
    # launches of a kernel rewrite and link it), so a fraction of the span may show nothing.
    start = sorted(e["ts"] for e in events)[len(events) // 2]
    shown = [e for e in events if start <= e["ts"] <= start + window_ms * 1000]
    rows = sorted({(e["pid"], e["tid"]) for e in shown})
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    colors = {"lc": "tab:red", "be": "tab:blue"}
    for y, row in enumerate(rows):
        bars = [((e["ts"] - start) / 1000, e["dur"] / 1000) for e in shown if (e["pid"], e["tid"]) == row]
        tenant = next(e["args"]["tenant"] for e in shown if (e["pid"], e["tid"]) == row)
        ax.broken_barh(bars, (y - 0.4, 0.8), color=colors.get(tenant, "gray"))
    ax.set_yticks(range(len(rows)), [f"{p} / {t}" for p, t in rows], fontsize=6)
    ax.set_xlabel("time (ms)")
    ax.set_title(f"atoms per partition stream ({window_ms:g} ms window; red: latency-critical, blue: best-effort)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _fmt(v: Any) -> str:
    return "" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


def plots(results: dict[str, Any], folder: Path) -> list[Path]:
    """Write the PNG plots the results support; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    tag = " (simulated device)" if results.get("simulated") else ""
    col = results["sections"].get("colocation") or {}
    scen = col.get("scenarios") or {}
    if scen:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, s in scen.items():
            lat = s.get("hp", {}).get("latencies_ms")
            if lat:
                xs = np.sort(np.asarray(lat))
                ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=name)
        ax.set_xscale("log")
        ax.set_xlabel("latency-critical request latency (ms)")
        ax.set_ylabel("CDF")
        ax.set_title("latency CDF" + tag)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / "latency_cdf.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
        fig, ax = plt.subplots(figsize=(7, 4))
        names = [n for n in scen if scen[n].get("be", {}).get("throughput_norm") is not None]
        ax.bar(names, [scen[n]["be"]["throughput_norm"] for n in names])
        ax.set_ylabel("best-effort throughput (normalized to alone)")
        ax.set_title("best-effort throughput" + tag)
        ax.tick_params(axis="x", rotation=30, labelsize=7)
        fig.tight_layout()
        path = folder / "be_throughput.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    trace = col.get("scenarios", {}).get("lithos", {}).get("trace_file")
    if trace and Path(trace).is_file():
        written.append(timeline_plot(Path(trace), folder / "timeline_lithos.png"))
    written += _ml_plots(results["sections"].get("ml") or {}, folder, tag)
    atoms = results["sections"].get("atoms") or {}
    long = atoms.get("long_kernel")
    if long:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        names = [n for n, r in long.items() if isinstance(r, dict) and "overhead_ratio" in r]
        ax.bar(names, [(long[n]["overhead_ratio"] - 1) * 100 for n in names])
        ax.axhline(3.0, color="red", linestyle="--", label="3% goal")
        ax.set_ylabel("total-time overhead vs one launch (%)")
        ax.set_title("atomization overhead" + tag)
        ax.legend()
        fig.tight_layout()
        path = folder / "atom_overhead.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _ml_plots(ml: dict[str, Any], folder: Path, tag: str) -> list[Path]:
    """Latency CDFs, throughput bars and tail-vs-throughput points of every ML pair (one
    figure each, a panel per pair), and the lithos timeline of each pair whose trace exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = ml.get("pairs") or {}
    if not pairs:
        return []

    def latency_cdf(ax: Any, pair: str, res: dict[str, Any]) -> None:
        for name, sc in res["scenarios"].items():
            lat = sc.get("hp", {}).get("latencies_ms")
            if lat:
                xs = np.sort(np.asarray(lat))
                ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=name,
                        linewidth=2.2 if name.startswith("lithos") or name == "lc_alone" else 1.2)
        if ml.get("slo_ms"):
            ax.axvline(ml["slo_ms"], color="black", linestyle=":", label="SLO")
        ax.set_xscale("log")
        ax.set_xlabel("inference request latency (ms)")
        ax.set_ylabel("CDF")
        ax.set_title(f"inference + {pair}{tag}")

    def throughput(ax: Any, pair: str, res: dict[str, Any]) -> None:
        names = [n for n, sc in res["scenarios"].items() if sc.get("be", {}).get("throughput_norm") is not None
                 and sc.get("hp")]
        x = np.arange(len(names))
        be = [res["scenarios"][n]["be"]["throughput_norm"] for n in names]
        hp = [res["scenarios"][n]["hp"].get("slo_attainment") or 0.0 for n in names]
        ax.bar(x - 0.2, be, 0.4, label="best-effort throughput (norm. to alone)")
        ax.bar(x + 0.2, hp, 0.4, label="inference SLO attainment")
        ax.set_xticks(x, names, rotation=35, ha="right", fontsize=7)
        ax.set_ylim(0, 1.1)
        ax.set_title(f"inference + {pair}{tag}")

    def tradeoff(ax: Any, pair: str, res: dict[str, Any]) -> None:
        # The static splits trade the inference tail for best-effort throughput by their
        # share; lithos is worth it where it lies above and left of that line.
        points = {n: (sc["hp"]["p99_ms"], sc["be"]["throughput_norm"]) for n, sc in res["scenarios"].items()
                  if sc.get("hp", {}).get("p99_ms") and sc.get("be", {}).get("throughput_norm") is not None}
        # by throughput, which orders them by share; in one process, and a process per tenant
        lines = (("static_split", "gray", "static splits (one process)"),
                 ("mps_static_split", "tab:olive", "static splits (a process per tenant)"))
        for prefix, color, label in lines:
            static = sorted((v for n, v in points.items() if n == prefix or n.startswith(prefix + "@")),
                            key=lambda v: v[1])
            if static:
                ax.plot(*zip(*static), color=color, linestyle="--", marker="s", label=label)
        for name, (p99, thr) in points.items():
            if "static_split" not in name:
                ax.scatter(p99, thr, s=40 if name.startswith("lithos") else 20)
            ax.annotate(name, (p99, thr), fontsize=6, xytext=(3, 3), textcoords="offset points")
        alone = res["scenarios"].get("lc_alone", {}).get("hp", {}).get("p99_ms")
        if alone:
            ax.axvline(alone, color="black", linestyle=":", label="inference alone p99")
        ax.set_xscale("log")
        ax.set_xlabel("inference p99 (ms)")
        ax.set_ylabel("best-effort throughput (norm. to alone)")
        ax.set_title(f"tail vs throughput: inference + {pair}{tag}")

    written = []
    for file_name, draw in (("ml_latency_cdf.png", latency_cdf), ("ml_throughput.png", throughput),
                            ("ml_tradeoff.png", tradeoff)):
        fig, axes = plt.subplots(1, len(pairs), figsize=(6.5 * len(pairs), 4.5), squeeze=False)
        for ax, (pair, res) in zip(axes[0], pairs.items()):
            draw(ax, pair, res)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / file_name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    for pair, res in pairs.items():
        trace = res["scenarios"].get("lithos", {}).get("trace_file")
        if trace and Path(trace).is_file():
            written.append(timeline_plot(Path(trace), folder / f"ml_timeline_{pair}.png", window_ms=100.0))
    return written
