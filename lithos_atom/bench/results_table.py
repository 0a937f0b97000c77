"""The README's results table, generated from committed results.

``python -m lithos_atom.bench.results_table [--readme README.md] RESULTS...`` turns result
files (the JSON of ``python -m lithos_atom.bench --json`` and of the right-sizing report)
into one Markdown table, a row per section (per pair for the ML section), every figure
read from the files. With ``--readme`` it rewrites the README between `BEGIN` and `END`
and records the files named in `BEGIN`'s line; without RESULTS it takes those recorded
there. The newest run of each section under the results folder is always added (a run
that went badly included), so a newer run committed without rerunning this is caught by
the CPU test that compares the README with this module's output.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

#: The results folder, relative to the repository root (the command's working folder).
RESULTS = Path("bench/results")
#: The sections a bench JSON may hold, and the right-sizing report's.
SECTIONS: tuple[str, ...] = ("atoms", "partitions", "colocation", "ml", "rightsizing")
#: The names of result files: the bench's JSON and the right-sizing report's (diagnostics
#: have shapes of their own and are read in their NOTES).
RESULT_FILES: tuple[str, ...] = ("bench*.json", "rightsizing.json")
BEGIN = "<!-- results-table (python -m lithos_atom.bench.results_table --readme README.md): {files} -->"
END = "<!-- /results-table -->"
_BEGIN_RE = re.compile(r"<!-- results-table \(.*?\):\s*(?P<files>.*?)\s*-->")
_RUN_RE = re.compile(r"(?P<device>h\d00)-(?P<date>\d{4}-\d{2}-\d{2})(?:-run(?P<run>\d+))?")

HEADER = ("| run | section | figures (every one read from the run's JSON) |\n"
          "|---|---|---|")


def run_key(path: Path) -> tuple[str, int, str]:
    """Orders result files by their run folder: date, then run number (0 without one)."""
    folder = _run_folder(path)
    m = _RUN_RE.match(folder)
    if not m:
        return ("", 0, str(path))
    return (m["date"], int(m["run"] or 0), str(path))


def _run_folder(path: Path) -> str:
    parts = path.parts
    for i, part in enumerate(parts[:-1]):
        if part == "results" and i and parts[i - 1] == "bench":
            return parts[i + 1]
    return path.parent.name


def sections_of(data: dict[str, Any]) -> dict[str, Any]:
    """The sections of one result file's JSON (a right-sizing report is one section)."""
    if "sections" in data:
        return {k: v for k, v in data["sections"].items() if isinstance(v, dict) and "skipped" not in v}
    if "suite" in data.get("summary", {}):
        return {"rightsizing": data}
    return {}


def newest(results: Path = RESULTS) -> list[Path]:
    """For each of `SECTIONS`, the file of the newest run under ``results`` that holds it
    measured on a GPU (the simulated device's runs are not results)."""
    found: dict[str, Path] = {}
    files = [p for pattern in RESULT_FILES for p in results.rglob(pattern)]
    for path in sorted(files, key=run_key):
        data = _load(path)
        if data is None or data.get("simulated"):
            continue
        for section in sections_of(data):
            found[section] = path
    return list(dict.fromkeys(found[s] for s in SECTIONS if s in found))


def select(paths: Sequence[Path], results: Path = RESULTS) -> list[Path]:
    """``paths`` and `newest`, each once, oldest run first."""
    return sorted(dict.fromkeys([*paths, *newest(results)]), key=run_key)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _f(v: float | None, digits: int = 3) -> str:
    """Three significant digits; whole numbers from 1000 up."""
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _inv(v: float | None) -> float | None:
    return 1.0 / v if v else None


def _atoms(a: dict[str, Any]) -> list[tuple[str, str]]:
    cost, long = a["launch_cost"], a["long_kernel"]
    text = f"launch {cost['plain_launch_us']:.2f} us plain, {cost['atom_launch_us']:.2f} us one atom"
    atoms = long.get("atom_us_250")
    if atoms:
        text += (f"; one {long['whole_us'] / 1000:.0f} ms kernel as {atoms['atoms']} atoms of ~"
                 f"{atoms['mean_atom_us']:.0f} us: {(atoms['overhead_ratio'] - 1) * 100:+.1f} %")
    return [("atoms", text)]


def _partitions(p: dict[str, Any]) -> list[tuple[str, str]]:
    scaling = ", ".join(f"{n} TPCs {row['measured_ratio']:.2f}x (ideal {row['ideal_ratio']:.0f}x"
                        f"{', confined' if row.get('confined') else ''})"
                        for n, row in p.get("scaling", {}).items() if row.get("ideal_ratio", 1) != 1)
    launch = ""
    if "launch_us_partition_stream" in p:  # host launch cost, measured on a GPU only
        launch = (f"; launch on a partition stream {p['launch_us_partition_stream']:.2f} us vs "
                  f"{p['launch_us_ordinary_stream']:.2f} us")
    return [("partitions", f"create {p['partition_create_ms_median']:.2f} ms{launch}; compute-bound time on {scaling}")]


def _colocation(c: dict[str, Any]) -> list[tuple[str, str]]:
    sc, ratios = c["scenarios"], c.get("ratios", {})
    alone = ratios.get("lc_alone", {})
    ci = alone.get("p99_reduction_ci95")
    interval = f" ({_f(_inv(ci[1]))}-{_f(_inv(ci[0]))})" if ci else ""
    be = {n: s.get("be", {}).get("throughput_norm") for n, s in sc.items()}
    text = (f"LC p99 alone {_f(sc['lc_alone']['hp']['p99_ms'])} ms; lithos {_x(_inv(alone.get('p99_reduction')))} "
            f"alone{interval}, BE {_f(be.get('lithos'))} of alone; static split BE {_f(be.get('static_split'))}, "
            f"p99 {_f(sc.get('static_split', {}).get('hp', {}).get('p99_ms'))} ms; streams p99 "
            f"{_f(ratios.get('streams', {}).get('p99_reduction'))}x lithos'")
    return [("colocation", text)]


def _ml_run(m: dict[str, Any]) -> list[tuple[str, str]]:
    """One ML run (the single-run JSON): per pair, lithos in one process and across processes."""
    rows = []
    for pair, res in m["pairs"].items():
        sc = res["scenarios"]
        parts = [f"rate {_f(m['config'].get('lc_rate_hz'))}/s, one run; alone p99 "
                 f"{_f(sc['lc_alone']['hp'].get('p99_ms'))} ms"]
        for name, ratios, at in (("lithos", "ratios", "static_at_lithos_p99"),
                                 ("lithos_mps", "ratios_lithos_mps", "process_static_at_lithos_mps_p99")):
            hp = sc.get(name, {}).get("hp")
            if not hp:
                continue
            cmp = res.get(at) or {}
            parts.append(f"{name} {_x(_inv(res.get(ratios, {}).get('lc_alone', {}).get('p99_reduction')))} alone, "
                         f"SLO {_f(_pct(hp.get('slo_attainment')))} %, BE {_f(sc[name]['be'].get('throughput_norm'))} "
                         f"of alone, BE over the static line at its p99 {_x(cmp.get('be_throughput_gain_on_line'))}")
        rows.append((f"ml: {pair}", "; ".join(parts)))
    return rows


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def _med(fig: dict[str, Any] | None, scale: float = 1.0) -> str:
    if not fig:
        return "-"
    if fig["median"] is None:
        return "unbounded" if fig.get("unbounded_rounds") else "-"
    lo, hi = fig["ci95"]
    interval = "" if lo is None or lo == hi else f" [{_f(lo * scale)}-{_f(hi * scale) if hi is not None else 'inf'}]"
    return f"{_f(fig['median'] * scale)}{interval}"


def _ml_study(m: dict[str, Any]) -> list[tuple[str, str]]:
    """An ML study (rounds): per pair, medians over rounds with their intervals."""
    rows, n = [], m["summary"]["rounds"]
    for pair, res in m["summary"]["pairs"].items():
        sc = res["scenarios"]
        parts = [f"{n} rounds at load {_f(m['load']['load'])} ({_f(m['load']['rate_hz'])}/s), SLO "
                 f"{_f(m['slo_ms'])} ms; medians [95 % interval]: alone p99 {_med(sc['lc_alone']['hp']['p99_ms'])} ms"]
        for name, at in (("lithos", "static_at_lithos_p99"), ("lithos_mps", "process_static_at_lithos_mps_p99")):
            s = sc.get(name, {})
            if "hp" not in s:
                continue
            parts.append(f"{name} {_med(s['hp']['p99_x_alone'])}x alone, SLO {_med(s['hp']['slo_attainment'], 100)} %, "
                         f"BE {_med(s.get('be', {}).get('throughput_norm'))} of alone, "
                         f"BE over the static line at its p99 {_med((res.get(at) or {}).get('be_throughput_gain_on_line'))}x")
        worst = [f"{b} {_med(s['hp']['slo_attainment'], 100)} %" for b, s in sc.items()
                 if b in ("streams", "priorities", "mps", "processes") and "hp" in s]
        if worst:
            parts.append("SLO of " + ", ".join(worst))
        rows.append((f"ml: {pair}", "; ".join(parts)))
    return rows


def _rightsizing(r: dict[str, Any]) -> list[tuple[str, str]]:
    suite = r["summary"]["suite"]
    return [("right-sizing", f"{suite['items']} items: {100 * suite['mean_capacity_saved']:.1f} % of TPC-time saved "
                             f"at {100 * suite['mean_measured_slowdown']:.1f} % mean measured slowdown "
                             f"(best within-slack choice {100 * suite['mean_profile_bound']:.1f} %); "
                             f"target: {suite['target']}")]


def rows_of(path: Path) -> list[tuple[str, str]]:
    """(section, figures) rows of one result file, in `SECTIONS` order."""
    data = _load(path)
    if data is None:
        raise ValueError(f"{path}: not a JSON object")
    sections = sections_of(data)
    if not sections:
        raise ValueError(f"{path}: holds no bench section and is no right-sizing report")
    tag = " (SIMULATED)" if data.get("simulated") else ""
    out = []
    for name in SECTIONS:
        sec = sections.get(name)
        if sec is None:
            continue
        if name == "ml":
            part = _ml_study(sec) if "summary" in sec and "rounds" in sec else _ml_run(sec)
        else:
            part = {"atoms": _atoms, "partitions": _partitions, "colocation": _colocation,
                    "rightsizing": _rightsizing}[name](sec)
        out += [(section + tag, text) for section, text in part]
    return out


def render(paths: Sequence[Path]) -> str:
    """The Markdown table of ``paths`` (each row: its run folder, file, section, figures)."""
    lines = [HEADER]
    for path in paths:
        run = f"`{_shown(path)}`"
        device = _device(path)
        for section, text in rows_of(path):
            lines.append(f"| {run}{device} | {section} | {text} |")
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """``path`` under the results folder (the run folder first)."""
    parts = path.parts
    for i in range(len(parts) - 1):
        if parts[i:i + 2] == ("bench", "results"):
            return "/".join(parts[i + 2:])
    return str(path)


def _device(path: Path) -> str:
    m = _RUN_RE.match(_run_folder(path))
    return f" ({m['device'].upper()})" if m else ""


def block(paths: Sequence[Path]) -> str:
    """The README's generated block: `BEGIN` naming ``paths``, the table, `END`."""
    return f"{BEGIN.format(files=' '.join(str(p) for p in paths))}\n{render(select(paths))}\n{END}"


def recorded(readme_text: str) -> list[Path]:
    """The files the README's block was generated from (as its `BEGIN` line names them)."""
    m = _BEGIN_RE.search(readme_text)
    if not m:
        raise ValueError("the README has no results-table block")
    return [Path(p) for p in m["files"].split()]


def rewrite(readme_text: str, paths: Sequence[Path]) -> str:
    """``readme_text`` with its block between `BEGIN` and `END` generated from ``paths``."""
    start = _BEGIN_RE.search(readme_text)
    end = readme_text.find(END)
    if not start or end < start.start():
        raise ValueError(f"the README has no results-table block (a line like {BEGIN!r} ... {END!r})")
    return readme_text[:start.start()] + block(paths) + readme_text[end + len(END):]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table of RESULTS, or rewrite the README's block with ``--readme``."""
    p = _Parser(prog="python -m lithos_atom.bench.results_table", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="*", type=Path, help="result JSON files (bench sections, right-sizing reports)")
    p.add_argument("--readme", type=Path, help="rewrite this README's results-table block")
    args = p.parse_args(argv)
    try:
        readme_text = args.readme.read_text() if args.readme else None
        paths = args.results or (recorded(readme_text) if readme_text is not None else [])
        for path in paths:
            if not path.is_file():
                raise ValueError(f"{path}: no such file")
            rows_of(path)  # every file is checked before anything is written
        if readme_text is None:
            print(render(select(paths)))
        else:
            args.readme.write_text(rewrite(readme_text, paths))
    except ValueError as exc:
        p.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
