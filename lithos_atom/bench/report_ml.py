"""Tables and plots of the ML co-location study (`lithos_atom.bench.ml_rounds`).

The tables fit 80 columns: scenario names are abbreviated (`short`, with a legend under
each table) and every figure is the median across the rounds, with its bootstrap 95 %
interval where a column says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from lithos_atom.bench.report import fit_table, num, timeline_plot

#: Abbreviations of scenario names in the tables (`short`), in the order they apply.
ABBREVIATIONS: tuple[tuple[str, str], ...] = (("static_split", "static"), ("rightsized", "rs"), ("@0.", "@."))

LEGEND = ("static = static_split, rs = rightsized, @.25 = at 0.25 of the TPCs for inference; "
          "x alone = p99 over the same round's inference-alone p99; SLO % = requests within the SLO; "
          "good/s = those per second; BE = best-effort throughput over alone; sat = the service saturated "
          "(its unfinished requests reach 1 %), so its tail has no bound")


def short(name: str) -> str:
    """``name`` abbreviated for a table (see `ABBREVIATIONS`)."""
    for long, abbreviated in ABBREVIATIONS:
        name = name.replace(long, abbreviated)
    return name


def _median(fig: dict[str, Any] | None, scale: float = 1.0) -> str:
    """A figure's median across rounds; ``sat`` when a saturated round made it unbounded."""
    if not fig:
        return ""
    if fig["median"] is None:
        return "sat" if fig.get("unbounded_rounds") else ""
    return num(fig["median"] * scale)


def _interval(fig: dict[str, Any] | None) -> str:
    if not fig or fig["ci95"][0] is None:
        return ""
    lo, hi = fig["ci95"]
    return f"{num(lo)}-{num(hi) if hi is not None else 'sat'}"


def print_load(study: dict[str, Any], console: Console) -> None:
    """The study's load, rate and SLO, and how they were set."""
    load, rounds = study["load"], study["summary"]["rounds"]
    how = (f"{load['load']:.3g} of its capacity alone" if load["rate_from"] == "load"
           else f"given (--lc-rate), {load['load']:.3g} of its capacity alone")
    console.print(f"inference: {load['rate_hz']:.4g} requests/s, {how} ({load['capacity_hz']:.4g} requests/s: "
                  f"mean service {load['mean_service_ms']:.3g} ms, back to back alone); SLO {num(study['slo_ms'])} ms "
                  f"({study['slo']['from']}); {rounds} round{'s' if rounds != 1 else ''}; inference tenant on "
                  f"{study.get('lc_tpcs')} TPCs in the split scenarios")


def print_study(study: dict[str, Any], console: Console) -> None:
    """Per pair: each scenario's medians across rounds, the notes of skipped, modeled and
    failed scenarios, then each lithos scenario against each baseline and the static
    splits; then the load sweep's attainment and goodput, if the study has one."""
    sim = " (SIMULATED)" if study.get("simulated") else ""
    print_load(study, console)
    for pair, res in study["summary"]["pairs"].items():
        table = fit_table(f"inference + {pair}{sim}: medians over {study['summary']['rounds']} rounds",
                          ("scenario", "p50 ms", "p99 ms", "p99 95%", "x alone", "SLO %", "good/s", "BE"))
        notes: dict[str, list[str]] = {}
        for name, sc in res["scenarios"].items():
            if "skipped" in sc:
                notes.setdefault(f"skipped: {sc['skipped']}", []).append(name)
                continue
            for r, msg in sc.get("errors", {}).items():
                notes.setdefault(f"failed in round {r}: {msg}", []).append(name)
            if "model" in sc:
                notes.setdefault(sc["model"], []).append(name)
            hp, be = sc.get("hp", {}), sc.get("be", {})
            table.add_row(short(name), _median(hp.get("p50_ms")), _median(hp.get("p99_ms")), _interval(hp.get("p99_ms")),
                          _median(hp.get("p99_x_alone")), _median(hp.get("slo_attainment"), 100.0),
                          _median(hp.get("goodput_rps")), _median(be.get("throughput_norm")))
        console.print(table)
        console.print(LEGEND, style="dim")
        for note, names in notes.items():
            console.print(f"  {', '.join(names)}: {note}")
        for name, key, ats in (("lithos", "ratios", (("static_at_lithos_p99", ""),)),
                               ("lithos_mps", "ratios_lithos_mps",
                                (("static_at_lithos_mps_p99", " in one process"),
                                 ("process_static_at_lithos_mps_p99", " with a process per tenant"))),
                               ("lithos_mps_rightsized", "ratios_lithos_mps_rightsized",
                                (("process_static_at_lithos_mps_rightsized_p99", " with a process per tenant"),))):
            _print_against(res, name, key, ats, f"inference + {pair}{sim}", console)
    if study.get("load_sweep"):
        print_sweep([study, *study["load_sweep"]], console)


def _print_against(res: dict[str, Any], name: str, key: str, ats: tuple[tuple[str, str], ...], title: str,
                   console: Console) -> None:
    """One lithos scenario against each baseline (medians of the per-round ratios) and,
    per (key, where) of ``ats``, against the static splits at its p99 in each round."""
    ratios = res.get(key)
    if ratios:
        table = fit_table(f"{short(name)} vs each baseline: {title}",
                          ("baseline", "p99 base/it", "95%", "BE it/base", "95% "))
        for baseline, r in ratios.items():
            table.add_row(short(baseline), _median(r["p99_reduction"]), _interval(r["p99_reduction"]),
                          _median(r["be_throughput_gain"]), _interval(r["be_throughput_gain"]))
        console.print(table)
        console.print(f"it = {name}; medians over rounds of each round's ratio, 95% interval of the median; "
                      "sat: the baseline saturated, its tail has no bound", style="dim")
    for at_key, where in ats:
        at = res.get(at_key)
        if not at:
            continue
        gain, line = at["be_throughput_gain"], at["be_throughput_gain_on_line"]
        chosen = ", ".join(str(s) for s in at["static_by_round"])
        console.print(f"  {name} against the static splits{where} at its p99, by round: best split within it "
                      f"{chosen} (None: none reached it); best-effort throughput {_median(gain) or '-'}x that "
                      f"split's ({_interval(gain) or '-'}), {_median(line) or '-'}x the splits' line "
                      f"interpolated at its p99 ({_interval(line) or '-'})")


def print_sweep(studies: list[dict[str, Any]], console: Console) -> None:
    """SLO attainment and goodput of every scenario at each load of a sweep (medians)."""
    loads = [s["load"]["load"] for s in studies]
    sim = " (SIMULATED)" if studies[0].get("simulated") else ""
    for pair in studies[0]["summary"]["pairs"]:
        table = fit_table(f"load sweep, inference + {pair}{sim}: SLO % / goodput per s",
                          ("scenario", *(f"load {x:g}" for x in loads)))
        for name, sc in studies[0]["summary"]["pairs"][pair]["scenarios"].items():
            if "hp" not in sc:
                continue
            cells = []
            for s in studies:
                hp = s["summary"]["pairs"].get(pair, {}).get("scenarios", {}).get(name, {}).get("hp", {})
                cells.append(f"{_median(hp.get('slo_attainment'), 100.0)} / {_median(hp.get('goodput_rps'))}")
            table.add_row(short(name), *cells)
        console.print(table)


def median_view(study: dict[str, Any]) -> dict[str, Any]:
    """The study's pairs in one run's shape for the plots: per scenario the medians of
    ``p99_ms``, ``slo_attainment`` and ``throughput_norm``, and the latencies of every round
    pooled; the static comparisons' ``lithos_p99_ms`` medians."""
    pairs: dict[str, Any] = {}
    for pair, res in study["summary"]["pairs"].items():
        scenarios: dict[str, Any] = {}
        for name, sc in res["scenarios"].items():
            view: dict[str, Any] = {}
            if "hp" in sc:
                pooled = [v for r in study["rounds"]
                          for v in r["pairs"][pair]["scenarios"].get(name, {}).get("hp", {}).get("latencies_ms", [])]
                view["hp"] = {"p99_ms": (sc["hp"]["p99_ms"] or {}).get("median"), "latencies_ms": pooled,
                              "slo_attainment": (sc["hp"]["slo_attainment"] or {}).get("median")}
            if "be" in sc:
                view["be"] = {"throughput_norm": (sc["be"]["throughput_norm"] or {}).get("median")}
            scenarios[name] = view
        pairs[pair] = {"scenarios": scenarios}
    return pairs


def ml_plots(study: dict[str, Any], folder: Path, tag: str) -> list[Path]:
    """Latency CDFs (every round's requests pooled), throughput bars and tail-vs-throughput
    points (medians over rounds) of every ML pair, one figure each with a panel per pair,
    and the lithos timeline of each pair whose round-0 trace exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = median_view(study)
    if not pairs:
        return []
    rounds = f", {len(study['rounds'])} rounds"

    def latency_cdf(ax: Any, pair: str, res: dict[str, Any]) -> None:
        for name, sc in res["scenarios"].items():
            lat = sc.get("hp", {}).get("latencies_ms")
            if lat:
                xs = np.sort(np.asarray(lat))
                ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=name,
                        linewidth=2.2 if name.startswith("lithos") or name == "lc_alone" else 1.2)
        if study.get("slo_ms"):
            ax.axvline(study["slo_ms"], color="black", linestyle=":", label="SLO")
        ax.set_xscale("log")
        ax.set_xlabel("inference request latency (ms; requests of every round)")
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
        ax.set_title(f"inference + {pair}{tag}: medians{rounds}")

    def tradeoff(ax: Any, pair: str, res: dict[str, Any]) -> None:
        # The static splits trade the inference tail for best-effort throughput by their
        # share; lithos is worth it where it lies above and left of that line.
        points = {n: (sc["hp"]["p99_ms"], sc["be"]["throughput_norm"]) for n, sc in res["scenarios"].items()
                  if sc.get("hp", {}).get("p99_ms") and sc.get("be", {}).get("throughput_norm") is not None}
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
        ax.set_xlabel("inference p99 (ms), median over rounds")
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
    for pair in pairs:
        trace = study["rounds"][0]["pairs"][pair]["scenarios"].get("lithos", {}).get("trace_file")
        if trace and Path(trace).is_file():
            written.append(timeline_plot(Path(trace), folder / f"ml_timeline_{pair}.png", window_ms=100.0))
    return written
