"""Mutations of real PTX for fuzzing the reader and rewriter, and the property they must keep.

Shared by the CPU tier's fuzz test (`tests.test_ptx_fuzz`, hypothesis drives the choices)
and the long run (``scripts/fuzz_ptx.py``, a seeded `random.Random` does). Every mutation
takes the module's text and ``pick(n)``, which returns an int in ``[0, n)``; it never looks
at anything else, so a mutant is reproduced by replaying the picks.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping

from lithos_atom.errors import AtomizeError, UnsupportedKernelError
from lithos_atom.ptx import rewrite_module

Pick = Callable[[int], int]
"""``pick(n)``: a choice in ``[0, n)``."""

# ---- the corpus ------------------------------------------------------------------------

EXTRA_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    # name: (CUDA C++, NVRTC options); cheap to compile (~0.1 s each)
    "atomics": (r'''
extern "C" __global__ void atomics(int* x, float* f) {
    atomicAdd(x, 1); atomicMax(x + 1, (int)blockIdx.x); atomicAdd(f, 1.0f); atomicCAS(x + 2, 0, 1);
}''', ()),
    "shuffles": (r'''
extern "C" __global__ void warp_sum(const float* x, float* out, unsigned* votes) {
    float v = x[blockIdx.x * blockDim.x + threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    unsigned b = __ballot_sync(__activemask(), v > 0.0f);
    if ((threadIdx.x & 31) == 0) { out[blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32] = v; votes[blockIdx.x] = b; }
}''', ()),
    "printf_malloc": (r'''
extern "C" __global__ void noisy(int* x) {
    int* p = (int*)malloc(16);
    if (p) { p[0] = blockIdx.x; x[blockIdx.x] = p[0]; free(p); }
    if (x == nullptr) __trap();
    if (threadIdx.x == 0) printf("block %d of %d\n", blockIdx.x, gridDim.x);
}''', ()),
    "recursion": (r'''
__device__ __noinline__ int fib(int n) { return n < 2 ? n + (int)blockIdx.x : fib(n - 1) + fib(n - 2); }
extern "C" __global__ void rec(int* x) { x[blockIdx.x] = fib(threadIdx.x & 7); }''', ("-lineinfo",)),
    "function_pointers": (r'''
__device__ __noinline__ int f(int a) { return a + blockIdx.x; }
__device__ __noinline__ int g(int a) { return a * gridDim.y; }
__device__ int (*table[2])(int) = {f, g};
extern "C" __global__ void dispatch(int* x) { x[blockIdx.x] = table[blockIdx.x & 1](threadIdx.x); }''', ()),
    "mma": (r'''
#include <mma.h>
using namespace nvcuda;
extern "C" __global__ void mma16(const half* a, const half* b, float* c) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 0.0f);
    wmma::load_matrix_sync(fa, a + blockIdx.x * 256, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(c + blockIdx.x * 256, fc, 16, wmma::mem_row_major);
}''', ()),
    "async_copy": (r'''
#include <cuda_pipeline.h>
extern "C" __global__ void staged(const float* in, float* out) {
    __shared__ float s[128];
    __pipeline_memcpy_async(&s[threadIdx.x], &in[blockIdx.x * 128 + threadIdx.x], sizeof(float));
    __pipeline_commit();
    __pipeline_wait_prior(0);
    __syncthreads();
    out[blockIdx.x * 128 + threadIdx.x] = s[127 - threadIdx.x];
}''', ()),
    "rdc_extern": (r'''
extern __device__ int ext(int);
extern "C" __global__ void calls_ext(int* x) { x[blockIdx.x] = ext(threadIdx.x); }''', ("-rdc=true",)),
    "sm_90a": (r'''
extern "C" __global__ void arch_specific(int* x) { x[blockIdx.x * blockDim.x + threadIdx.x] = gridDim.x; }''',
               ("-arch=compute_90a",)),
}

SLOW_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    # about 2 s to compile: the long run only
    "cub_reduce": (r'''
#include <cub/block/block_reduce.cuh>
extern "C" __global__ void block_sum(const float* x, float* out) {
    typedef cub::BlockReduce<float, 128> R;
    __shared__ typename R::TempStorage t;
    float v = R(t).Sum(x[blockIdx.x * 128 + threadIdx.x]);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
}''', ()),
}


@functools.lru_cache(maxsize=None)
def fuzz_corpus(slow: bool = False) -> dict[str, str]:
    """Real PTX to mutate: the rewriter tests' corpus, its hand-written modules and more.

    Parameters
    ----------
    slow : bool
        Also compile `SLOW_SOURCES` (CUB).

    Returns
    -------
    dict of str to str
        Module name to PTX.
    """
    from tests.ptx_sources import CASE_NAMES, compile_case, nvrtc_ptx
    from tests.test_ptx_rewrite import CHAIN, HANDWRITTEN

    corpus = {name: compile_case(name).ptx for name in CASE_NAMES}
    corpus.update(handwritten=HANDWRITTEN, chain=CHAIN)
    for name, (source, options) in {**EXTRA_SOURCES, **(SLOW_SOURCES if slow else {})}.items():
        corpus[name] = nvrtc_ptx(source, (), options)[0]
    return corpus


# ---- mutations -------------------------------------------------------------------------

ALPHABET = (
    "{}()[];,.:%@!\"/*\\\n\t =+-<>|$_#0123456789xyzabc"
    "\u00b2\u2460\u0663\U0001d7d9\u00bd\ufeff\r\x00\u00a0\u2028"
)
"""Characters a flip or an insertion writes: PTX punctuation, digits, letters, and characters
that look like digits or spaces but are not ASCII (``²``, ``①``, Arabic-Indic three,
mathematical bold one, ``½``), a byte-order mark, CR, NUL, no-break space, line separator."""

UNICODE_DIGITS = ("\u00b2", "\u2460", "\u0663", "\U0001d7d9", "\u00b9", "\u00bd", "\uff11")
"""``²``, ``①``, ``٣``, ``𝟙``, ``¹``, ``½``, fullwidth ``１``: each passes `str.isdigit` or
`str.isnumeric` but is no PTX digit."""

TOKENS = (
    ".entry", ".func", ".visible", ".extern", ".weak", "{", "}", "(", ")", ";", ",", "@", "@%p1", "@!%p1",
    "@p::cluster", '"', "/*", "*/", "//", ".version 9.5", ".target sm_90", ".address_size 64", ".section",
    ".alias a, b;", ".param .u64 p", ".reg .b32 %r<2>;", "%ctaid.x", "%nctaid", "%envreg1", "call.uni",
    "call", "ret;", "bra", "$L__BB0_1:", ".maxntid 1, 1, 1", ".reqnctapercluster 2", ".pragma", ".loc 1 2 3",
    ".file 1 \"a.cu\"", "__lithos_atom_base", ".global .u32 g;", ".shared", "::cluster", "[", "]", "<", ">",
)
"""PTX fragments an insertion writes."""

GUARDS = ("@%p1;", "@p::cluster;", "@!%p1;", "@;", "@!;", "@%p1 ;", "@", "@!", "@%p1 @%p2 ret;")
"""Guards without an instruction (and other broken guards)."""


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _at(lines: list[str], pick: Pick, pattern: str) -> int:
    """Index of a random line matching ``pattern``, else of a random line."""
    hits = [i for i, ln in enumerate(lines) if re.search(pattern, ln)]
    return hits[pick(len(hits))] if hits else pick(len(lines))


def delete_lines(text: str, pick: Pick) -> str:
    """Delete one to three consecutive lines."""
    lines = _lines(text)
    i = pick(len(lines))
    del lines[i:i + 1 + pick(3)]
    return "\n".join(lines)


def duplicate_line(text: str, pick: Pick) -> str:
    """Repeat one line."""
    lines = _lines(text)
    i = pick(len(lines))
    lines.insert(i, lines[i])
    return "\n".join(lines)


def swap_lines(text: str, pick: Pick) -> str:
    """Exchange two lines."""
    lines = _lines(text)
    i, j = pick(len(lines)), pick(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def truncate(text: str, pick: Pick) -> str:
    """Cut the module anywhere."""
    return text[:pick(len(text) + 1)]


def flip_char(text: str, pick: Pick) -> str:
    """Replace one character with one of `ALPHABET`."""
    i = pick(len(text)) if text else 0
    return text[:i] + ALPHABET[pick(len(ALPHABET))] + text[i + 1:]


def insert_token(text: str, pick: Pick) -> str:
    """Insert one of `TOKENS` at a random offset."""
    i = pick(len(text) + 1)
    return text[:i] + TOKENS[pick(len(TOKENS))] + text[i:]


def unicode_digit(text: str, pick: Pick) -> str:
    """Append one of `UNICODE_DIGITS` to a number (in a parameter, where one is, else anywhere)."""
    lines = _lines(text)
    i = _at(lines, pick, r"\.param.*(\[\d|\.align \d)" if pick(2) else r"\d")
    digits = [m.end() for m in re.finditer(r"\d+", lines[i])]
    if digits:
        k = digits[pick(len(digits))]
        lines[i] = lines[i][:k] + UNICODE_DIGITS[pick(len(UNICODE_DIGITS))] + lines[i][k:]
    return "\n".join(lines)


def malformed_call(text: str, pick: Pick) -> str:
    """Break a ``call``: drop a parenthesis, comma or the target, or call something else."""
    lines = _lines(text)
    i = _at(lines, pick, r"\bcall\b")
    ln = lines[i]
    how = pick(6)
    if how == 0:
        ln = ln.replace("(", "", 1)
    elif how == 1:
        ln = ln.replace(")", "", 1)
    elif how == 2:
        ln = ln.replace(",", "", 1)
    elif how == 3:
        ln = re.sub(r"(call(?:\.uni)?\s*(?:\([^)]*\)\s*,\s*)?)[\w$]+", r"\1", ln, count=1)
    elif how == 4:
        ln = re.sub(r"(call(?:\.uni)?\s*(?:\([^)]*\)\s*,\s*)?)[\w$]+", r"\1nowhere", ln, count=1)
    else:
        ln = re.sub(r"(call(?:\.uni)?\s*(?:\([^)]*\)\s*,\s*)?)[\w$]+", r"\1%rd1", ln, count=1)
    lines[i] = ln
    return "\n".join(lines)


def malformed_param(text: str, pick: Pick) -> str:
    """Break a parameter: its array length, alignment, type or name."""
    lines = _lines(text)
    i = _at(lines, pick, r"\.param")
    ln = lines[i]
    how = pick(7)
    if how == 0:
        ln = re.sub(r"\[(\d+)\]", lambda m: f"[{m[1]}{UNICODE_DIGITS[pick(len(UNICODE_DIGITS))]}]", ln, count=1)
    elif how == 1:
        ln = re.sub(r"\.align (\d+)", lambda m: f".align {UNICODE_DIGITS[pick(len(UNICODE_DIGITS))]}", ln, count=1)
    elif how == 2:
        ln = re.sub(r"\[\d+\]", ("[]", "[x]", "[-1]", "[1][2]", "[99999999999999999999999]")[pick(5)], ln, count=1)
    elif how == 3:
        ln = re.sub(r"\.[usbf](8|16|32|64)\b", "", ln, count=1)
    elif how == 4:
        ln = re.sub(r"(\.param\s+(?:\.\w+\s+)*)[\w$]+", r"\1", ln, count=1)
    elif how == 5:
        ln = ln.replace(".align", ".align .align", 1)
    else:
        ln = ln.replace(".param", ".param .param", 1)
    lines[i] = ln
    return "\n".join(lines)


def guard_without_opcode(text: str, pick: Pick) -> str:
    """Insert one of `GUARDS` as a line of a body."""
    lines = _lines(text)
    i = _at(lines, pick, r";\s*$")
    lines.insert(i + 1, "\t" + GUARDS[pick(len(GUARDS))])
    return "\n".join(lines)


def long_line(text: str, pick: Pick) -> str:
    """Insert a line of about 100,000 characters: a name, comment, string, operands or braces."""
    n = 100_000
    kind = pick(7)
    line = (
        "\tmov.u32 %r1, " + "a" * n + ";",
        "// " + "x" * n,
        '.global .b8 s[1] = "' + "y" * n + '";',
        '.global .b8 s[1] = "' + "y" * n,
        "\tadd.s32 %r1, " + ", ".join(["%r2"] * (n // 5)) + ";",
        "{" * (n // 10) + "}" * (n // 10),
        "(" * (n // 10),
    )[kind]
    lines = _lines(text)
    lines.insert(pick(len(lines) + 1), line)
    return "\n".join(lines)


def long_module(text: str, pick: Pick) -> str:
    """Repeat one line a few thousand times (adding at most about 200,000 characters)."""
    lines = _lines(text)
    i = pick(len(lines))
    lines[i:i + 1] = [lines[i]] * min(1000 + pick(4000), 200_000 // (len(lines[i]) + 1) + 1)
    return "\n".join(lines)


def line_endings(text: str, pick: Pick) -> str:
    """Prepend a byte-order mark, or end lines with CR or CR LF."""
    how = pick(3)
    if how == 0:
        return "\ufeff" + text
    return text.replace("\n", "\r" if how == 1 else "\r\n")


MUTATIONS: dict[str, Callable[[str, Pick], str]] = {
    f.__name__: f for f in (
        delete_lines, duplicate_line, swap_lines, truncate, flip_char, insert_token, unicode_digit,
        malformed_call, malformed_param, guard_without_opcode, long_line, long_module, line_endings,
    )
}
"""Every mutation by name."""

LINE_MUTATIONS = ("delete_lines", "duplicate_line", "swap_lines")
"""Mutations that often leave a module ptxas still accepts."""


def mutate(corpus: Mapping[str, str], pick: Pick, *, max_rounds: int = 3,
           names: tuple[str, ...] | None = None) -> tuple[str, str]:
    """A mutant of one module of ``corpus``: one to ``max_rounds`` random mutations.

    Parameters
    ----------
    corpus : mapping of str to str
    pick : callable
        ``pick(n)`` returns an int in ``[0, n)``.
    max_rounds : int
    names : tuple of str, optional
        Mutations to choose from (default: all of `MUTATIONS`).

    Returns
    -------
    tuple of (str, str)
        The mutant and a description (module and mutations).
    """
    modules = sorted(corpus)
    module = modules[pick(len(modules))]
    text = corpus[module]
    choices = names or tuple(MUTATIONS)
    applied = []
    for _ in range(1 + pick(max_rounds)):
        name = choices[pick(len(choices))]
        text = MUTATIONS[name](text, pick)
        applied.append(name)
    return text, f"{module}: {' + '.join(applied)}"


# ---- the property ----------------------------------------------------------------------


class Hang(BaseException):
    """Raised by `time_limit` when the code it guards runs too long (a BaseException, so no
    ``except Exception`` in the code under test can swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `Hang` in the calling (main) thread if the block runs longer than ``seconds``.

    A SIGALRM handler raises it; ``re`` checks for signals while it matches, so even a
    backtracking regex is interrupted.
    """

    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_mutant(text: str) -> tuple[str, str | None]:
    """Rewrite ``text``; return its outcome, or raise what the rewriter must never raise.

    The rewriter must give back a module, or refuse with an `AtomizeError` that names a
    line of the input (an `UnsupportedKernelError` names one per refused kernel); a
    refused module must then rewrite with ``skip_unsupported``.

    Parameters
    ----------
    text : str

    Returns
    -------
    tuple of (str, str or None)
        ``("rewritten", ptx)``, ``("refused", ptx)`` (rewritten with ``skip_unsupported``)
        or ``("error", None)``.

    Raises
    ------
    AssertionError
        If an error names no line, or a line the input does not have.
    """
    last = max(1, len(re.split(r"\r\n|\r|\n", text)))
    try:
        return "rewritten", rewrite_module(text).ptx
    except UnsupportedKernelError as exc:
        lines = [line for _, line, _ in exc.problems]
        assert exc.problems and all(line is not None and 1 <= line <= last for line in lines), str(exc)
        return "refused", rewrite_module(text, skip_unsupported=True).ptx
    except AtomizeError as exc:
        assert exc.line is not None and 1 <= exc.line <= last, f"{exc} (the module has {last} lines)"
        assert "\n" not in str(exc) and len(str(exc)) < 1000, f"not one short line: {str(exc)[:2000]!r}"
        return "error", None


def ptxas_accepts(ptx: str) -> tuple[bool, str]:
    """Whether the ``nvidia-cuda-nvcc`` wheel's ptxas assembles ``ptx`` for its ``.target``.

    Returns
    -------
    tuple of (bool, str)
        The verdict and ptxas's log.
    """
    from tests.ptx_sources import find_ptxas

    ptxas = find_ptxas((9, 5))
    assert ptxas is not None, "no ptxas (install nvidia-cuda-nvcc)"
    target = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.M)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.ptx")
        with open(src, "w", encoding="utf-8") as f:
            f.write(ptx)
        done = subprocess.run([ptxas, f"-arch={target[1] if target else 'sm_90'}", "-o", os.path.join(d, "o.cubin"),
                               src], capture_output=True, text=True, timeout=120)
    return done.returncode == 0, done.stderr
