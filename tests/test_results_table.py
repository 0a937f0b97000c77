"""CPU tier: the README's results table is what `lithos_atom.bench.results_table` makes of
the committed results, the newest run of each section included, and the README's results
section types no figure of its own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lithos_atom.bench import results_table as rt

REPO = Path(__file__).resolve().parent.parent


def test_the_readme_table_is_the_generated_one_for_the_committed_results(monkeypatch):
    monkeypatch.chdir(REPO)
    readme = Path("README.md").read_text()
    files = rt.recorded(readme)
    assert files and all(p.is_file() for p in files)
    assert rt.block(files) in readme, "rerun: python -m lithos_atom.bench.results_table --readme README.md"
    shown = set(rt.select(files))
    assert set(rt.newest()) <= shown and {"atoms", "partitions", "colocation", "ml"} <= {
        s for p in shown for s in rt.sections_of(json.loads(p.read_text()))}


def test_the_results_section_types_no_figure_outside_the_generated_table():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The GPU tier and the results"):]
    outside = re.sub(r"<!-- results-table .*?<!-- /results-table -->", "", section, flags=re.S)
    figures = re.findall(r"\d+(?:\.\d+)?\s*(?:x\b|%|ms\b|us\b|TB/s|TFLOP|GB/s)", outside.replace("95 % interval", ""))
    assert figures == []  # the bootstrap intervals' 95 % is a setting, not a figure


def _run(folder: Path, name: str, sections: dict, simulated: bool = False) -> Path:
    path = folder / name / "bench-x.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"simulated": simulated, "sections": sections}))
    return path


def test_the_newest_gpu_run_of_each_section_is_always_shown(tmp_path, monkeypatch):
    src = REPO / "bench/results/h200-2026-12-04-run33-sections/bench-partitions.json"
    partitions = json.loads(src.read_text())["sections"]["partitions"]
    results = tmp_path / "bench" / "results"
    old = _run(results, "h200-2026-12-04-run9", {"partitions": partitions})
    new = _run(results, "h200-2026-12-04-run10", {"partitions": partitions})  # run 10 after run 9
    _run(results, "h200-2026-12-04-run11", {"partitions": partitions}, simulated=True)  # not a result
    assert rt.newest(results) == [new]
    assert rt.select([old], results) == [old, new]
    table = rt.render([old, new])
    assert table.count("| partitions |") == 2 and "h200-2026-12-04-run10/bench-x.json` (H200)" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{rt.BEGIN.format(files='')}\nstale\n{rt.END}\nafter\n")
    monkeypatch.setattr(rt, "RESULTS", results)
    monkeypatch.setattr(rt, "newest", lambda results=results: [new])
    assert rt.main(["--readme", str(readme), str(old)]) == 0
    text = readme.read_text()
    assert "stale" not in text and text.startswith("intro\n") and text.endswith(f"{rt.END}\nafter\n")
    assert rt.recorded(text) == [old] and text.count("| partitions |") == 2


@pytest.mark.parametrize("content, message", [("[1]", "not a JSON object"), ('{"a": 1}', "holds no bench section")])
def test_a_file_that_is_no_result_is_refused_in_one_line(tmp_path, capsys, content, message):
    bad = tmp_path / "x.json"
    bad.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        rt.main([str(bad)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_the_study_json_gets_medians_and_intervals(simulated_bench, tmp_path):
    path = tmp_path / "bench" / "results" / "h100-2026-12-08-run1" / "bench.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(simulated_bench.data))
    rows = dict(rt.rows_of(path))
    training = rows["ml: training (SIMULATED)"]
    assert "2 rounds at load 0.5" in training and "medians [95 % interval]" in training
    assert re.search(r"lithos \S+ \[\S+-\S+\]x alone, SLO", training)
