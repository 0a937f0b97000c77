"""Fuzz the PTX reader and rewriter with mutants of real PTX; report outcomes and failures.

``python scripts/fuzz_ptx.py --mutants 100000 [--seed 0] [--jobs N] [--ptxas 20]``

Each mutant (`tests.ptx_mutations.mutate` of the test corpus, with CUB added) is rewritten
in a worker process under a time limit and an address-space limit; the report counts
mutants by outcome (rewritten, refused as unsupported then rewritten with
``skip_unsupported``, clean `AtomizeError`) and lists every other outcome by signature: an
unhandled exception (type, message's start, innermost frame of ``lithos_atom``), an error
that names no line, a hang (over ``--timeout``) or memory beyond ``--memory-gib``. With
``--ptxas N``, N rewritten mutants whose input ptxas accepts are checked to stay accepted.
Mutant ``i`` of seed ``s`` is reproduced with ``--seed s --first i --mutants 1 --show``.
Exits 1 when anything but the three clean outcomes occurred.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import random
import resource
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.ptx_mutations import (  # noqa: E402
    LINE_MUTATIONS,
    Hang,
    check_mutant,
    fuzz_corpus,
    mutate,
    ptxas_accepts,
    time_limit,
)

CLEAN = ("rewritten", "refused", "error")

_corpus: dict[str, str] = {}


def _signature(exc: BaseException) -> str:
    """Exception type, the first 60 characters of its message, and its innermost lithos frame."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "lithos_atom" in f.filename]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    return f"{type(exc).__name__}: {str(exc)[:60]}{where}"


def _mutant(seed: int, i: int) -> tuple[str, str]:
    rng = random.Random(f"{seed}:{i}")
    return mutate(_corpus, rng.randrange)


def _init(corpus: dict[str, str], memory_gib: float) -> None:
    global _corpus
    _corpus = corpus
    with open("/proc/self/statm") as f:
        base = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = base + int(memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _run_chunk(args: tuple[int, int, int, float]) -> dict:
    """Rewrite mutants ``first .. first + count - 1``; counts, failure signatures, timings."""
    seed, first, count, timeout = args
    counts: collections.Counter[str] = collections.Counter()
    failures: dict[str, tuple[int, int, str]] = {}  # signature -> (count, first index, description)
    slowest = (0.0, -1, "")
    over_1s = 0
    for i in range(first, first + count):
        text, what = _mutant(seed, i)
        start = time.perf_counter()
        try:
            with time_limit(timeout):
                outcome, _ = check_mutant(text)
        except Hang:
            outcome = f"hang (over {timeout:g} s)"
        except MemoryError:
            outcome = "memory limit exceeded"
        except AssertionError as exc:
            outcome = f"bad error: {str(exc)[:100]}"
        except Exception as exc:  # the point of the run: every other exception is a finding
            outcome = f"unhandled {_signature(exc)}"
        elapsed = time.perf_counter() - start
        slowest = max(slowest, (elapsed, i, what))
        over_1s += elapsed > 1.0
        if outcome in CLEAN:
            counts[outcome] += 1
        else:
            counts["failure"] += 1
            n, first_i, first_what = failures.get(outcome, (0, i, what))
            failures[outcome] = (n + 1, first_i, first_what)
    return {"counts": counts, "failures": failures, "slowest": slowest, "over_1s": over_1s}


def _ptxas_sample(seed: int, wanted: int) -> tuple[int, int, list[str]]:
    """Check ``wanted`` line-mutants that rewrite and that ptxas accepts; (tried, checked, failures)."""
    rng = random.Random(f"{seed}:ptxas")
    tried = checked = 0
    failures = []
    while checked < wanted and tried < 50 * wanted:
        tried += 1
        text, what = mutate(_corpus, rng.randrange, max_rounds=1, names=LINE_MUTATIONS)
        try:
            _, out = check_mutant(text)
        except Exception as exc:
            failures.append(f"{what}: {_signature(exc)}")
            continue
        if out is None or not ptxas_accepts(text)[0]:
            continue
        checked += 1
        ok, log = ptxas_accepts(out)
        if not ok:
            failures.append(f"{what}: ptxas rejects the rewritten module: {log.strip()[:300]}")
    return tried, checked, failures


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzer; 0 when every mutant had a clean outcome."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mutants", type=int, default=10_000, help="mutants to rewrite (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mutants (default 0)")
    p.add_argument("--first", type=int, default=0, help="index of the first mutant (default 0)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: all CPUs)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds one mutant may take (default 10)")
    p.add_argument("--memory-gib", type=float, default=1.0, help="memory one worker may add (default 1 GiB)")
    p.add_argument("--ptxas", type=int, default=0, help="rewritten mutants to check with ptxas (default 0)")
    p.add_argument("--show", action="store_true", help="print each mutant's description and outcome")
    args = p.parse_args(argv)
    for name in ("mutants", "jobs", "timeout", "memory_gib"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.first < 0 or args.ptxas < 0:
        p.error("--first and --ptxas must be >= 0")

    global _corpus
    started = time.perf_counter()
    corpus = _corpus = fuzz_corpus(slow=True)
    print(f"corpus: {len(corpus)} modules, {sum(len(t) for t in corpus.values()):,} bytes "
          f"({time.perf_counter() - started:.1f} s to compile)", flush=True)
    if args.show:
        _init(corpus, args.memory_gib)
        for i in range(args.first, args.first + args.mutants):
            what = _mutant(args.seed, i)[1]
            result = _run_chunk((args.seed, i, 1, args.timeout))
            print(f"{i}: {what}: {dict(result['counts'])} {list(result['failures'])}")
        return 0

    chunk = max(1, min(500, args.mutants // (args.jobs * 8) or 1))
    work = [(args.seed, s, min(chunk, args.first + args.mutants - s), args.timeout)
            for s in range(args.first, args.first + args.mutants, chunk)]
    counts: collections.Counter[str] = collections.Counter()
    failures: dict[str, tuple[int, int, str]] = {}
    slowest = (0.0, -1, "")
    done = over_1s = 0
    with multiprocessing.get_context("fork").Pool(args.jobs, _init, (corpus, args.memory_gib)) as pool:
        for result in pool.imap_unordered(_run_chunk, work):
            counts.update(result["counts"])
            for sig, (n, i, what) in result["failures"].items():
                old = failures.get(sig, (0, i, what))
                failures[sig] = (old[0] + n, min(old[1], i), what if i <= old[1] else old[2])
            slowest = max(slowest, result["slowest"])
            over_1s += result["over_1s"]
            done += sum(result["counts"].values())
            if done % 10_000 < chunk:
                print(f"  {done:,} mutants, {counts['failure']} failures, "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
    elapsed = time.perf_counter() - started
    print(f"\n{done:,} mutants (seed {args.seed}) in {elapsed:.0f} s with {args.jobs} workers")
    for outcome in (*CLEAN, "failure"):
        print(f"  {outcome:10s} {counts[outcome]:8,d}  ({100 * counts[outcome] / max(1, done):.2f} %)")
    print(f"  slowest mutant: {slowest[0]:.2f} s (#{slowest[1]}: {slowest[2]}); {over_1s} took over 1 s")
    for sig, (n, i, what) in sorted(failures.items(), key=lambda kv: -kv[1][0]):
        print(f"  {n:6d} x {sig}\n           first: #{i} ({what})")
    bad = bool(failures)
    if args.ptxas:
        tried, checked, ptx_failures = _ptxas_sample(args.seed, args.ptxas)
        print(f"ptxas: {checked} rewritten line-mutants that ptxas accepts, checked out of {tried} tried; "
              f"{len(ptx_failures)} failures")
        for f in ptx_failures:
            print(f"  {f}")
        bad = bad or bool(ptx_failures)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
