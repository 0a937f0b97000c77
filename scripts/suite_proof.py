"""Run numba-cuda's and CuPy's own test suites plainly and under the global opt-in, and compare.

Each suite runs twice in a fresh pytest process: plainly, then under ``lithos.set_atomizer``
with atoms of ``--atom-blocks`` blocks (scripts/suite_proof_plugin.py). The report lists
tests that pass plainly and fail under lithos (the target is none), how many launches were
really split and into how many atoms, and every kernel that ran whole with its reason.
Exit status 1 when any test passes plainly and fails under lithos.

numba-cuda's tests ship with it (``numba.cuda.tests.cudapy``); CuPy's are not installed:
``--cupy-tests`` takes the folder of its repository's ``tests/cupy_tests`` (tag v14.2.0,
kept in third_party/cupy_tests/ with CuPy's license).

Usage::

    python scripts/suite_proof.py --numba test_gufunc,test_vectorize --cupy core_tests/test_elementwise.py \
        --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CUPY_TESTS = ROOT / "third_party" / "cupy_tests" / "tests" / "cupy_tests"
#: A bounded default subset (about two minutes per suite and mode on the H100).
NUMBA_DEFAULT = "test_gufunc,test_vectorize,test_array,test_intrinsics,test_sm,test_transpose,test_random"
CUPY_DEFAULT = "core_tests/test_elementwise.py,core_tests/test_reduction.py,core_tests/test_raw.py,"\
               "core_tests/test_fusion.py,math_tests/test_sumprod.py,math_tests/test_misc.py"


def _run(name: str, targets: list[str], cwd: Path, atom_blocks: int | None, timeout: float,
         extra: list[str]) -> dict:
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    env = dict(os.environ, SUITE_PROOF_OUT=out, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "scripts"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("SUITE_PROOF_ATOM_BLOCKS", None)
    if atom_blocks is not None:
        env["SUITE_PROOF_ATOM_BLOCKS"] = str(atom_blocks)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "suite_proof_plugin", "-p", "no:cacheprovider", *extra, *targets]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        tail = proc.stdout[-1500:] + proc.stderr[-1500:]
    except subprocess.TimeoutExpired as exc:
        tail = f"timed out after {timeout:.0f} s: {exc.stdout[-800:] if exc.stdout else ''}"
    seconds = time.perf_counter() - start
    try:
        data = json.loads(Path(out).read_text() or "{}")
    except json.JSONDecodeError:
        data = {}
    Path(out).unlink(missing_ok=True)
    mode = "plain" if atom_blocks is None else f"opt-in, {atom_blocks}-block atoms"
    print(f"[{name}] {mode}: {len(data.get('outcomes', {}))} tests in {seconds:.0f} s", flush=True)
    if not data.get("outcomes"):
        print(tail)
    data["seconds"] = round(seconds, 1)
    return data


def compare(name: str, plain: dict, lithos: dict) -> dict:
    """The comparison of one suite's two runs (printed, and returned for the JSON)."""
    p, q = plain.get("outcomes", {}), lithos.get("outcomes", {})
    regressions = sorted(t for t, o in p.items() if o == "passed" and q.get(t) != "passed")
    counts = lithos.get("counts", {})
    whole = lithos.get("whole", {})
    multi = counts.get("multi_block_launches", 0)
    split_share = counts.get("split_multi_block_launches", 0) / multi if multi else None
    summary = {
        "tests": len(p), "passed_plain": sum(o == "passed" for o in p.values()),
        "passed_lithos": sum(o == "passed" for o in q.values()),
        "same_outcome": sum(q.get(t) == o for t, o in p.items()),
        "pass_plain_fail_lithos": regressions,
        "fail_plain_pass_lithos": sorted(t for t, o in q.items() if o == "passed" and p.get(t) == "failed"),
        "counts": counts, "split_share_of_multi_block_launches": split_share,
        "kernels_whole": whole, "seconds": [plain.get("seconds"), lithos.get("seconds")],
    }
    print(f"== {name}: {summary['tests']} tests, {summary['same_outcome']} same outcome; "
          f"{len(regressions)} pass plainly and fail under lithos")
    for t in regressions:
        print(f"   REGRESSION {t}")
    print(f"   launches {counts.get('launches', 0)}, split {counts.get('split_launches', 0)} into "
          f"{counts.get('atoms', 0)} atoms; multi-block launches split: "
          f"{'n/a' if split_share is None else f'{100 * split_share:.1f} %'}; kernels run whole: {len(whole)}")
    for kernel, reason in sorted(whole.items()):
        print(f"   whole {kernel[:80]}: {reason}")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numba", default=NUMBA_DEFAULT,
                    help="comma-separated modules of numba.cuda.tests.cudapy ('' skips; 'all' runs every one)")
    ap.add_argument("--cupy", default=CUPY_DEFAULT, help="comma-separated files under --cupy-tests ('' skips)")
    ap.add_argument("--cupy-tests", type=Path, default=CUPY_TESTS, help="CuPy's tests/cupy_tests folder")
    ap.add_argument("-k", dest="keyword", default=None, help="pytest -k expression for both suites")
    ap.add_argument("--atom-blocks", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.atom_blocks < 1:
        ap.error(f"--atom-blocks must be >= 1, got {args.atom_blocks}")
    cupy_files = [f for f in args.cupy.split(",") if f]
    if cupy_files and not args.cupy_tests.is_dir():
        ap.error(f"--cupy-tests {args.cupy_tests} is not a folder (CuPy's tests/cupy_tests at v14.2.0)")
    missing = [f for f in cupy_files if not (args.cupy_tests / f).is_file()]
    if missing:
        ap.error(f"not under --cupy-tests: {', '.join(missing)}")
    extra = ["-k", args.keyword] if args.keyword else []
    suites: list[tuple[str, list[str], Path]] = []
    if args.numba:
        import numba.cuda.tests.cudapy as cudapy

        folder = Path(cudapy.__file__).parent
        names = sorted(p.stem for p in folder.glob("test_*.py")) if args.numba == "all" else args.numba.split(",")
        unknown = [n for n in names if not (folder / f"{n}.py").is_file()]
        if unknown:
            ap.error(f"not in numba.cuda.tests.cudapy: {', '.join(unknown)}")
        suites.append(("numba-cuda", ["--import-mode=importlib", "--pyargs", *(f"numba.cuda.tests.cudapy.{n}" for n in names)], ROOT))
    if cupy_files:
        suites.append(("cupy", ["-W", "ignore::pytest.PytestUnknownMarkWarning", *cupy_files], args.cupy_tests))
    report = {}
    for name, targets, cwd in suites:
        plain = _run(name, targets, cwd, None, args.timeout, extra)
        lithos = _run(name, targets, cwd, args.atom_blocks, args.timeout, extra)
        report[name] = compare(name, plain, lithos)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    empty = [name for name, r in report.items() if not r["tests"] or not r["passed_lithos"] + r["passed_plain"]]
    for name in empty:
        print(f"!! {name}: no test ran (see the pytest output above)")
    return 1 if empty or any(r["pass_plain_fail_lithos"] for r in report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
