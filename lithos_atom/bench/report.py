"""Tables (rich) and plots (matplotlib) of benchmark results: the atoms, partitions and
co-location sections, and the helpers every table uses (`fit_table`, `num`).

Every table fits 80 columns: no vertical rules, short headers, no cell wrapped, and a dim
legend under a table whose headers need one (`lithos_atom.bench.report_ml` for the ML study).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
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


def fit_table(title: str, columns: tuple[str, ...] | list[str], left: int = 1) -> Table:
    """An empty table for 80 columns: a rule under the headers only, one space between
    cells, no cell wrapped; the first ``left`` columns left-aligned, the others right."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < left else "right", no_wrap=True)
    return table


def num(v: Any) -> str:
    """A figure in at most 6 characters: three significant digits below 100, whole numbers
    up to 99999, powers of ten above; '' for None."""
    if v is None:
        return ""
    if not isinstance(v, float):
        return str(v)
    size = abs(v)
    if size >= 1e5:
        return f"{v:.1e}".replace("e+0", "e").replace("e+", "e")
    if size >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def print_mapping(values: dict[str, Any], console: Console, title: str) -> None:
    """A two-column table of the scalar entries of ``values``."""
    table = fit_table(title, ("measure", "value"))
    for key, value in values.items():
        if isinstance(value, (int, float, str, bool)):
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


def print_atoms(out: dict[str, Any], console: Console) -> None:
    """The atomization overhead tables."""
    print_mapping(out["launch_cost"], console, "launch cost (host us per launch)")
    long = out["long_kernel"]
    table = fit_table(f"long kernel {long['kernel']}: {long['blocks']} blocks, whole {long['whole_us']:.0f} us",
                      ("variant", "atoms", "blocks/atom", "atom us", "total us", "overhead"))
    for name, row in long.items():
        if isinstance(row, dict) and "overhead_ratio" in row:
            table.add_row(name, str(row["atoms"]), str(row["blocks_per_atom"]), f"{row['mean_atom_us']:.0f}",
                          f"{row['total_us']:.0f}", f"{(row['overhead_ratio'] - 1) * 100:+.2f}%")
    console.print(table)
    console.print("atom us: mean atom length; overhead: total time over one launch of the whole kernel", style="dim")
    growth = fit_table("rewritten kernels: registers and static shared memory",
                       ("kernel", "regs", "regs at.", "smem B", "smem B at."))
    for name, r in {"burn": long["resources"], **out.get("resource_growth", {})}.items():
        growth.add_row(name, str(r["regs_original"]), str(r["regs_atomized"]),
                       str(r["static_shared_original"]), str(r["static_shared_atomized"]))
    console.print(growth)
    console.print("at.: atomized; smem B: static shared memory, bytes", style="dim")


def print_colocation(out: dict[str, Any], console: Console) -> None:
    """Per-scenario latency/throughput table and lithos-vs-baseline ratios."""
    scenarios = out.get("scenarios", {})
    table = fit_table("co-location" + (" (SIMULATED)" if out.get("simulated") else ""),
                      ("scenario", "p50 ms", "p99 ms", "done", "BE", "GPU W"))
    for name, s in scenarios.items():
        hp, be = s.get("hp", {}), s.get("be", {})
        watts = s.get("energy", {}).get("measured", {}).get("mean_watts")
        table.add_row(name, num(hp.get("p50_ms")), num(hp.get("p99_ms")), str(hp.get("completed", "")),
                      num(be.get("throughput_norm")), num(watts))
    console.print(table)
    console.print("p50/p99: latency-critical request latency; done: requests completed; BE: best-effort "
                  "throughput over alone; GPU W: mean power measured (NVML)", style="dim")
    ratios = out.get("ratios")
    if ratios:
        rt = fit_table("lithos vs each baseline", ("baseline", "p99 base/lithos", "95% interval", "BE lithos/base"))
        for name, r in ratios.items():
            ci = r.get("p99_reduction_ci95")
            rt.add_row(name, num(r.get("p99_reduction")), f"{num(ci[0])}-{num(ci[1])}" if ci else "",
                       num(r.get("be_throughput_gain")))
        console.print(rt)


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


def plots(results: dict[str, Any], folder: Path) -> list[Path]:
    """Write the PNG plots of the co-location and atoms sections the results hold; returns
    their paths (the ML section's are `report_ml.ml_plots`')."""
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
