"""``python -m lithos_atom.ptx``: exit codes, output and messages (through a subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from lithos_atom.ptx import main, parse_module
from tests.ptx_sources import assemble, ptx_corpus  # noqa: F401 (fixture)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lithos_atom.ptx", *args], capture_output=True, text=True,
                          timeout=120)


def test_rewrites_every_entry(tmp_path: Path, ptx_corpus):
    src, out = tmp_path / "in.ptx", tmp_path / "out.ptx"
    src.write_text(ptx_corpus["multi"].ptx)
    done = run_cli(str(src), "-o", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().split("\n")
    assert sorted(ln.split(":")[0] for ln in lines) == ["first", "no_params", "second", "with_struct"]
    assert "with_struct: atomized (2 user params + 4)" in lines
    assert "no_params: atomized (0 user params + 4)" in lines
    text = out.read_text()
    assert [p.name for p in parse_module(text).functions["no_params"].params][0] == "__lithos_atom_base"
    assemble(text)


def test_unsupported_kernels_exit_2_naming_each(tmp_path: Path, ptx_corpus):
    src, out = tmp_path / "in.ptx", tmp_path / "out.ptx"
    src.write_text(ptx_corpus["cluster"].ptx)
    done = run_cli(str(src), "-o", str(out))
    assert done.returncode == 2
    assert re.search(r"cluster_swap \(line \d+\): declares \.explicitcluster", done.stderr)
    assert re.search(r"cluster_only_dims \(line \d+\): declares \.explicitcluster", done.stderr)
    assert "not_clustered" not in done.stderr and "--skip-unsupported" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_skip_unsupported_lists_them_and_exits_0(tmp_path: Path, ptx_corpus):
    src, out = tmp_path / "in.ptx", tmp_path / "out.ptx"
    src.write_text(ptx_corpus["grid_sync"].ptx)
    done = run_cli(str(src), "-o", str(out), "--skip-unsupported")
    assert done.returncode == 0, done.stderr
    assert "grid_sync: left unchanged: reads %envreg" in done.stderr
    assert "plain: atomized (1 user params + 4)" in done.stderr
    result = parse_module(out.read_text())
    assert result.functions["grid_sync"].params == parse_module(src.read_text()).functions["grid_sync"].params


def test_malformed_ptx_exits_2_with_the_line(tmp_path: Path):
    src = tmp_path / "bad.ptx"
    src.write_text(".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry k\n{\n\tret;\n}\n")
    done = run_cli(str(src), "-o", str(tmp_path / "out.ptx"))
    assert done.returncode == 2
    assert "entry 'k' line 4: entry has no parameter list" in done.stderr and "Traceback" not in done.stderr


def test_missing_input_exits_2_without_traceback(tmp_path: Path):
    missing = tmp_path / "nope.ptx"
    done = run_cli(str(missing), "-o", str(tmp_path / "out.ptx"))
    assert done.returncode == 2
    assert f"cannot read {missing}" in done.stderr and "No such file" in done.stderr
    assert "Traceback" not in done.stderr


def test_usage_errors_exit_2(tmp_path: Path):
    done = run_cli(str(tmp_path / "in.ptx"))  # no -o
    assert done.returncode == 2 and "-o" in done.stderr


def test_main_in_process(tmp_path: Path, capsys):
    src, out = tmp_path / "in.ptx", tmp_path / "out.ptx"
    src.write_text(".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry k()\n{\n\tret;\n}\n")
    assert main([str(src), "-o", str(out)]) == 0
    assert "k: atomized (0 user params + 4)" in capsys.readouterr().err
    assert main([str(src), "-o", str(tmp_path / "missing-dir" / "out.ptx")]) == 2
    assert "cannot write" in capsys.readouterr().err
