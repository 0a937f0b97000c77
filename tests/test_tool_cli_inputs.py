"""CPU tier: the profiling, right-sizing and kernel-timing commands check every option
before any work (one error line, exit status 2, no traceback); without a GPU they run on
the simulated device and say so, or say in one line what they need (exit status 1).

Each command runs in this process, seeing no GPU whatever the machine has. The bench's
own command is checked in `tests/test_bench_cli.py`; the library command lines in `tests/test_cli_inputs.py`; more of the profiler's options, and the
right-sizing report's run on the simulated device, in `tests/test_rightsizing.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import lithos_sched
from kernels import bench as kernels_bench
from lithos_atom.bench import profile, rightsize_bench

A_FILE = str(Path(__file__))


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command sees no GPU."""
    for module in (profile, rightsize_bench, lithos_sched):
        monkeypatch.setattr(module, "gpu_available", lambda: False)


@pytest.mark.parametrize("main, args, message", [
    (profile.main, ("--sim", "--rounds", "0"), "argument --rounds: expected a positive int, got 0"),
    (profile.main, ("--sizes", "8,0"), "argument --sizes: must be comma-separated positive ints, got '8,0'"),
    (profile.main, ("--slack", "nan"), "argument --slack: must be in [0, 10), got nan"),
    (profile.main, ("--cache", "."), "--cache must be a file, got the folder '.'"),
    (rightsize_bench.main, ("--slack", "nan"), "argument --slack: must be a finite number, got 'nan'"),
    (rightsize_bench.main, ("--max-seconds", "inf"), "argument --max-seconds: must be a finite number, got 'inf'"),
    (rightsize_bench.main, ("--energy-window", "-1"), "--energy-window must be >= 0 and --max-seconds > 0"),
    (rightsize_bench.main, ("--inference-batch", "9"), "--inference-batch must be 1-8, got [9]"),
    (rightsize_bench.main, ("--sim", "--case", "gemm_f16"), "--sim runs simulated stand-in kernels; it takes no --case"),
    (rightsize_bench.main, ("--out", A_FILE), f"--out: cannot make the folder {A_FILE!r}"),
    (kernels_bench.main, ("--reps", "0"), "argument --reps: must be an int >= 1, got '0'"),
    (kernels_bench.main, ("--seed", "-1"), "argument --seed: must be an int >= 0, got '-1'"),
    (kernels_bench.main, ("--case", "nope"), "argument --case: invalid choice: 'nope'"),
    (kernels_bench.main, ("--json", "no/such/folder/rows.json"), "--json must be a file in an existing folder"),
])
def test_a_bad_option_is_refused_in_one_line_before_any_work(main, args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert message in err.splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize("main, args, needs", [
    (profile.main, ("--case", "softmax_f32"), "--case, --all-cases and --inference-batch time kernels on a CUDA GPU"),
    (rightsize_bench.main, ("--inference-batch", "1"), "--case and --inference-batch measure kernels on a CUDA GPU"),
    (kernels_bench.main, (), "timing kernels needs a CUDA GPU, and none was found"),
])
def test_what_needs_a_gpu_says_so_in_one_line(main: Callable[[Sequence[str]], int], args, needs, capsys):
    assert main(list(args)) == 1
    out, err = capsys.readouterr()
    [line] = err.splitlines()
    assert out == "" and needs in line and ("--sim" in line or "--list" in line)


def test_the_profiler_falls_back_to_the_simulated_device(capsys):
    assert profile.main(["--sizes", "66,33", "--rounds", "1", "--launches", "1", "--no-refine", "--no-save"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("SIMULATED DEVICE: no CUDA GPU was found") and "sim:tiny_grid" in out
