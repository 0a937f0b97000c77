"""CPU tier: the library's command lines refuse bad options, paths and ``LITHOS_*``
variables before any work, in one line on stderr with exit status 2, never a traceback.

In process (``main``), plus one subprocess per command line for the whole path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lithos.__main__ import main as lithos_main
from lithos_atom.ptx import main as ptx_main
from lithos_atom.settings import reload_settings

REPO = Path(__file__).resolve().parents[1]
PTX = ".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry k()\n{\n\tret;\n}\n"


@pytest.fixture(autouse=True)
def fresh_settings():
    yield
    reload_settings()


def one_error_line(err: str, prog: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.match(rf"{re.escape(prog)}( run)?: error: ", lines[0]), err
    assert "Traceback" not in err
    return lines[0]


def lithos_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        lithos_main(args)
    return done.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: command"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["run"], "give a program"),
    (["run", "--gpu", "x", "p.py"], "argument --gpu: invalid int value: 'x'"),
    (["run", "--gpu", "-1", "--priority", "best-effort", "--share", "0.5", __file__], "gpu must be an int >= 0"),
    (["run", "--priority", "fast", "p.py"], "argument --priority: invalid choice: 'fast'"),
    (["run", "--priority", "best-effort", "--share", "1.5", __file__], "share must be a number in (0, 1], got 1.5"),
    (["run", "--priority", "best-effort", "--share", "nan", __file__], "share must be a number in (0, 1], got nan"),
    (["run", "--priority", "best-effort", "--share", "0.5", "--tpcs", "3", __file__], "exactly one of share"),
    (["run", "--priority", "best-effort", "--tpcs", "0", __file__], "tpcs must be an int >= 1"),
    (["run", "--priority", "best-effort", "--tpcs", "2", "--memory-limit", "8 GB", __file__], "memory_limit must be"),
    (["run", "--priority", "best-effort", "--tpcs", "2", "--name", "", __file__], "name must be a non-empty string"),
    (["run", "--priority", "best-effort", "--tpcs", "2", "/nonexistent/prog.py"], "no such file"),
    (["run", "--priority", "best-effort", "--tpcs", "2", "-m", "no_such_module_here"], "no module named"),
    (["run", "--priority", "best-effort", "--tpcs", "2", "-m", "no_such_package.sub"], "cannot run module"),
])
def test_python_m_lithos_refuses_bad_options_in_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LITHOS_LEDGER_DIR", str(tmp_path))
    monkeypatch.delenv("LITHOS_JOIN", raising=False)
    code, err = lithos_cli(args, capsys)
    assert code == 2 and message in one_error_line(err, "python -m lithos")
    assert list(tmp_path.iterdir()) == []  # refused before joining: no ledger was made


@pytest.mark.parametrize("name, value, message", [
    ("LITHOS_JOIN", "priority=best-effort,share=lots", "LITHOS_JOIN: share cannot be 'lots'"),
    ("LITHOS_LEDGER_DIR", "/nonexistent/lithos", "LITHOS_LEDGER_DIR='/nonexistent/lithos' does not exist"),
    ("LITHOS_ATOM_US", "soon", "LITHOS_ATOM_US='soon' is not a number"),
])
def test_python_m_lithos_refuses_bad_variables_in_one_line(name, value, message, capsys, monkeypatch):
    monkeypatch.setenv(name, value)
    for args in (["run", "--priority", "best-effort", "--tpcs", "2", __file__], ["ledger"]):
        if name == "LITHOS_JOIN" and args == ["ledger"]:
            continue  # only `run` reads it
        code, err = lithos_cli(args, capsys)
        assert code == 2 and message in one_error_line(err, "python -m lithos")


def test_python_m_lithos_warns_about_an_unknown_variable_and_goes_on(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LITHOS_LEDGER_DIR", str(tmp_path))
    monkeypatch.setenv("LITHOS_LEDGERDIR", "/elsewhere")
    code, err = lithos_cli(["ledger"], capsys)
    assert code == 0 and err.count("\n") == 1 and "warning: lithos ignores the unknown environment variable " \
                                                    "LITHOS_LEDGERDIR" in err


def test_python_m_lithos_ledger_reports_an_unreadable_ledger_without_a_traceback(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LITHOS_LEDGER_DIR", str(tmp_path))
    (tmp_path / f"lithos-ledger-{os.getuid()}-GPU-x").write_bytes(b"not a ledger at all, but long enough" * 2)
    code, err = lithos_cli(["ledger"], capsys)
    assert code == 1 and "cannot read" in err and "is not a lithos ledger" in err and "Traceback" not in err


@pytest.mark.parametrize("case, message", [
    ("missing input", "cannot read {dir}/none.ptx: No such file or directory"),
    ("input is a folder", "cannot read {dir}: not a file"),
    ("output is a folder", "cannot write {dir}: it is a directory"),
    ("output folder missing", "cannot write {dir}/no/out.ptx: no such directory"),
    ("empty output", "the output path is empty"),
    ("bad variable", "LITHOS_HOLD_GIL='most' is not one of"),
])
def test_python_m_lithos_atom_ptx_refuses_bad_paths_and_variables_before_reading(case, message, tmp_path, capsys,
                                                                                  monkeypatch):
    src = tmp_path / "in.ptx"
    src.write_text(PTX)
    args = {"missing input": [str(tmp_path / "none.ptx"), "-o", str(tmp_path / "o.ptx")],
            "input is a folder": [str(tmp_path), "-o", str(tmp_path / "o.ptx")],
            "output is a folder": [str(src), "-o", str(tmp_path)],
            "output folder missing": [str(src), "-o", str(tmp_path / "no" / "out.ptx")],
            "empty output": [str(src), "-o", ""],
            "bad variable": [str(src), "-o", str(tmp_path / "o.ptx")]}[case]
    if case == "bad variable":
        monkeypatch.setenv("LITHOS_HOLD_GIL", "most")
    assert ptx_main(args) == 2
    line = one_error_line(capsys.readouterr().err, "python -m lithos_atom.ptx")
    assert message.format(dir=tmp_path) in line
    assert not (tmp_path / "o.ptx").exists()


def test_python_m_lithos_atom_ptx_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as done:
        ptx_main(["--skip-unsupported"])
    assert done.value.code == 2
    assert "required: input, -o/--output" in one_error_line(capsys.readouterr().err, "python -m lithos_atom.ptx")


@pytest.mark.parametrize("command", [["lithos", "run", "--priority", "best-effort", "--tpcs", "0", "p.py"],
                                     ["lithos_atom.ptx", "/nonexistent.ptx", "-o", "/tmp/x.ptx"]])
def test_each_command_line_exits_2_in_one_line_as_a_process(command):
    run = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
