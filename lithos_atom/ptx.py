"""Read PTX modules and rewrite their kernels into atomizable ones.

An atomizable entry takes four more parameters after its own,
``__lithos_atom_base`` (.u64, the first linear block index of the atom) and
``__lithos_grid_{x,y,z}`` (.u32, the original grid). The atom is launched as a 1-D grid;
a prelude computes the virtual block index ``linear = base + %ctaid.x``,
``x = linear % gx``, ``y = linear / gx % gy``, ``z = linear / (gx * gy)``, and every read
of ``%ctaid.*`` / ``%nctaid.*`` becomes a read of the virtual index / original grid.
Device functions (``.func``) cannot see kernel parameters, so when one of them reads these
registers the prelude also stores the six values in a module-scope ``.shared`` slot that
the function loads.

Run as ``python -m lithos_atom.ptx IN.ptx -o OUT.ptx [--skip-unsupported]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Sequence

from lithos_atom.errors import AtomizeError, UnsupportedKernelError

ATOM_PARAMS = (
    (".u64", "__lithos_atom_base"),
    (".u32", "__lithos_grid_x"),
    (".u32", "__lithos_grid_y"),
    (".u32", "__lithos_grid_z"),
)
SLOT = "__lithos_blockinfo"

_SPECIAL = re.compile(r"%(n?ctaid)(\.[xyz])?(?![\w$])")
_CALL = re.compile(r"\bcall(?:\.uni)?\s+(?:\([^)]*\)\s*,\s*)?([A-Za-z_$%][\w$]*)")
INDIRECT = "*"  # in PtxFunction.calls: an indirect call, which may reach any function
_HEADER = re.compile(r"^\s*(?:(?:\.visible|\.weak|\.extern)\s+)*(\.entry|\.func)\b")
_NAME_AFTER_KIND = re.compile(r"(\.entry|\.func)\s*(?:\([^)]*\)\s*)?([A-Za-z_$%][\w$]*)", re.S)

# (pattern, reason) of things that assume every block of the grid is co-resident or that
# the grid is launched once; any match refuses the kernel.
_UNSUPPORTED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"%envreg\d+"), "reads %envreg (cooperative-groups grid synchronization: its blocks must be co-resident)"),
    (re.compile(r"%(?:cluster_n?ctaid|n?clusterid|cluster_n?ctarank|is_explicit_cluster)\b"),
     "reads a thread-block-cluster register (clusters cannot be split into atoms)"),
    (re.compile(r"\bbarrier\.cluster\b"), "uses barrier.cluster (thread-block clusters)"),
    (re.compile(r"\bmapa\b"), "uses mapa (distributed shared memory of a cluster)"),
    (re.compile(r"::cluster\b"), "accesses cluster-scope shared memory"),
    (re.compile(r"%gridid\b"), "reads %gridid, which differs between atoms"),
    (re.compile(r"\bgriddepcontrol\b"), "uses griddepcontrol (programmatic dependent launch)"),
)
_UNSUPPORTED_DIRECTIVES = re.compile(r"\.(reqnctapercluster|explicitcluster|maxclusterrank)\b")


@dataclasses.dataclass(frozen=True)
class PtxParam:
    """One ``.param`` of an entry or function."""

    name: str
    type: str
    align: int | None = None
    array_len: int | None = None


@dataclasses.dataclass(frozen=True)
class PtxFunction:
    """One ``.entry`` or ``.func`` with a body.

    Attributes
    ----------
    name, kind : str
        Name, and ``"entry"`` or ``"func"``.
    params : tuple of PtxParam
        Input parameters (for a ``.func``, not its return parameters).
    first_line : int
        1-based line of the header.
    params_close : tuple of (int, int)
        Line index (0-based) and column of the ``)`` closing the parameter list.
    body_start_line, body_end_line : int
        0-based line indices of the ``{`` and matching ``}`` of the body.
    directives : str
        Text between the parameter list and the body (``.maxntid`` and the like).
    special_reads : dict
        ``'%ctaid.x'`` and the like to the 1-based lines reading them.
    calls : tuple of str
        Functions called directly.
    """

    name: str
    kind: str
    params: tuple[PtxParam, ...]
    first_line: int
    params_close: tuple[int, int]
    body_start_line: int
    body_end_line: int
    directives: str
    special_reads: dict[str, tuple[int, ...]]
    calls: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PtxModule:
    """A parsed PTX module."""

    version: tuple[int, int]
    target: str
    address_size: int
    functions: dict[str, PtxFunction]
    lines: tuple[str, ...]
    header_end_line: int  # 0-based index of the last of .version/.target/.address_size


@dataclasses.dataclass(frozen=True)
class EntryRewrite:
    """What happened to one entry."""

    name: str
    atomized: bool
    reason: str | None
    num_user_params: int


@dataclasses.dataclass(frozen=True)
class RewriteResult:
    """The rewritten module and a record per entry."""

    ptx: str
    entries: dict[str, EntryRewrite]
    funcs_patched: tuple[str, ...]
    version: tuple[int, int]


def _strip_comments(text: str) -> str:
    """Blank out comments and string contents, keeping every newline and column."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                line = text.count("\n", 0, i) + 1
                raise AtomizeError("unterminated /* comment", line=line)
            chunk = text[i:j + 2]
            out.append(re.sub(r"[^\n]", " ", chunk))
            i = j + 2
        elif c == '"':
            j = text.find('"', i + 1)
            j = n - 1 if j < 0 else j
            out.append('"' + re.sub(r"[^\n]", " ", text[i + 1:j]) + '"')
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse_params(text: str, where: str, line: int) -> tuple[PtxParam, ...]:
    params = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"\.param\s+(?:\.align\s+(\d+)\s+)?(?:\.ptr\s*(?:\.\w+\s*)*)?(\.\w+)\s+"
                         r"(?:\.ptr\s*(?:\.\w+\s*)*)?([A-Za-z_$%][\w$]*)\s*(?:\[(\d*)\])?", part, re.S)
        if m is None:
            raise AtomizeError(f"cannot read parameter {part!r}", entry=where, line=line)
        align, ptype, name, arr = m.groups()
        params.append(PtxParam(name, ptype, int(align) if align else None, int(arr) if arr else None))
    return tuple(params)


def parse_module(text: str) -> PtxModule:
    """Read a PTX module: header directives and every function with a body.

    Raises
    ------
    AtomizeError
        For malformed PTX, naming the function (when known) and the 1-based line.
    """
    clean = _strip_comments(text)
    lines = text.split("\n")
    clines = clean.split("\n")
    version = target = address = None
    header_end = -1
    for i, ln in enumerate(clines):
        s = ln.strip()
        if m := re.match(r"\.version\s+(\d+)\.(\d+)\s*$", s):
            version, header_end = (int(m[1]), int(m[2])), i
        elif m := re.match(r"\.target\s+([\w, ]+?)\s*$", s):
            target, header_end = m[1], i
        elif m := re.match(r"\.address_size\s+(\d+)\s*$", s):
            address, header_end = int(m[1]), i
        elif _HEADER.match(ln):
            break
    if version is None:
        raise AtomizeError("missing .version directive", line=1)
    if target is None:
        raise AtomizeError("missing .target directive", line=header_end + 1)

    functions: dict[str, PtxFunction] = {}
    depth = 0
    i = 0
    while i < len(clines):
        ln = clines[i]
        if depth == 0 and _HEADER.match(ln):
            i = _parse_function(clines, i, functions)
            continue
        for ch in ln:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth < 0:
                    raise AtomizeError("unbalanced '}'", line=i + 1)
        i += 1
    if depth != 0:
        raise AtomizeError("unbalanced '{' at end of module", line=len(lines))
    return PtxModule(version, target, address or 64, functions, tuple(lines), header_end)


def _parse_function(clines: list[str], start: int, functions: dict[str, PtxFunction]) -> int:
    """Parse the function whose header starts at line ``start``; return the next line index."""
    # Gather the header up to its body '{' or a terminating ';' (a prototype).
    buf, i, col_end, end_char = [], start, None, None
    while i < len(clines):
        ln = clines[i]
        for j, ch in enumerate(ln):
            if ch in "{;":
                col_end, end_char = j, ch
                break
        if col_end is not None:
            buf.append(ln[:col_end])
            break
        buf.append(ln)
        i += 1
    header = "\n".join(buf)
    m = _NAME_AFTER_KIND.search(header)
    if m is None or col_end is None:
        raise AtomizeError("cannot read function header", line=start + 1)
    kind, name = m[1][1:], m[2]
    if end_char == ";":
        return i + 1  # declaration without a body
    rest = header[m.end():]
    pm = re.match(r"\s*\(", rest)
    if pm is None:
        if kind == "entry":
            raise AtomizeError("entry has no parameter list", entry=name, line=start + 1)
        params_text, close_off = "", None
    else:
        close = rest.find(")", pm.end())
        if close < 0:
            raise AtomizeError("unterminated parameter list", entry=name, line=start + 1)
        params_text = rest[pm.end():close]
        close_off = m.end() + close
    params = _parse_params(params_text, name, start + 1)
    directives = rest[(close_off - m.end() + 1) if close_off is not None else 0:]
    if close_off is not None:
        before = header[:close_off]
        close_line = start + before.count("\n")
        close_col = len(before) - (before.rfind("\n") + 1)
    else:
        close_line, close_col = -1, -1
    # The body: from the '{' at (i, col_end) to its matching '}'.
    depth, body_start, k, col = 0, i, i, col_end
    body_end = None
    while k < len(clines):
        ln = clines[k]
        for j in range(col, len(ln)):
            if ln[j] == "{":
                depth += 1
            elif ln[j] == "}":
                depth -= 1
                if depth == 0:
                    body_end = k
                    break
        if body_end is not None:
            break
        k += 1
        col = 0
    if body_end is None:
        raise AtomizeError("body is not closed", entry=name, line=start + 1)
    reads: dict[str, list[int]] = {}
    for ln_no in range(body_start, body_end + 1):
        for sm in _SPECIAL.finditer(clines[ln_no]):
            if sm[2] is None:
                raise AtomizeError(f"reads %{sm[1]} as a vector; only %{sm[1]}.x/.y/.z can be rewritten",
                                   entry=name, line=ln_no + 1)
            reads.setdefault(f"%{sm[1]}{sm[2]}", []).append(ln_no + 1)
    # NVRTC splits a call over several lines, so calls are found in the joined body.
    body_text = "\n".join(clines[body_start:body_end + 1])
    calls = [INDIRECT if cm[1].startswith("%") else cm[1] for cm in _CALL.finditer(body_text)]
    if name in functions:
        raise AtomizeError(f"function {name!r} is defined twice", entry=name, line=start + 1)
    functions[name] = PtxFunction(
        name=name, kind=kind, params=params, first_line=start + 1, params_close=(close_line, close_col),
        body_start_line=body_start, body_end_line=body_end, directives=directives,
        special_reads={k2: tuple(v) for k2, v in reads.items()}, calls=tuple(dict.fromkeys(calls)),
    )
    return body_end + 1


def _reachable(module: PtxModule, entry: str) -> list[str]:
    seen, stack = [], [entry]
    while stack:
        f = stack.pop()
        if f == INDIRECT:
            stack.extend(n for n, fn in module.functions.items() if fn.kind == "func")
            continue
        if f in seen or f not in module.functions:
            continue
        seen.append(f)
        stack.extend(module.functions[f].calls)
    return seen


def unsupported_reason(module: PtxModule, entry: str) -> tuple[str, int] | None:
    """Why ``entry`` cannot be split, with the 1-based line, or None if it can."""
    fn = module.functions[entry]
    if d := _UNSUPPORTED_DIRECTIVES.search(fn.directives):
        return f"declares .{d[1]} (thread-block clusters cannot be split into atoms)", fn.first_line
    clean = _strip_comments("\n".join(module.lines)).split("\n")
    for name in _reachable(module, entry):
        f = module.functions[name]
        for ln_no in range(f.body_start_line, f.body_end_line + 1):
            for pattern, reason in _UNSUPPORTED:
                if pattern.search(clean[ln_no]):
                    where = "" if name == entry else f" (in function {name!r})"
                    return reason + where, ln_no + 1
    return None


def set_ptx_version(text: str, version: tuple[int, int]) -> str:
    """Return ``text`` with its ``.version`` directive set to ``version``."""
    new, n = re.subn(r"(?m)^(\s*)\.version\s+\d+\.\d+", rf"\g<1>.version {version[0]}.{version[1]}", text, count=1)
    if n == 0:
        raise AtomizeError("missing .version directive", line=1)
    return new


_V = {"%ctaid.x": 0, "%ctaid.y": 1, "%ctaid.z": 2, "%nctaid.x": 3, "%nctaid.y": 4, "%nctaid.z": 5}


def _replace_specials(line: str, regs: Sequence[str]) -> str:
    return _SPECIAL.sub(lambda m: regs[_V[f"%{m[1]}{m[2]}"]], line)


def _prelude(store_slot: bool) -> list[str]:
    r = [f"%lithos_r{i}" for i in range(7)]
    d = [f"%lithos_rd{i}" for i in range(8)]
    out = [
        "\t// lithos atom prelude: virtual block index from the atom's base and the original grid",
        "\t.reg .b32 %lithos_r<7>;",
        "\t.reg .b64 %lithos_rd<8>;",
        f"\tld.param.u64 {d[0]}, [__lithos_atom_base];",
        f"\tld.param.u32 {r[3]}, [__lithos_grid_x];",
        f"\tld.param.u32 {r[4]}, [__lithos_grid_y];",
        f"\tld.param.u32 {r[5]}, [__lithos_grid_z];",
        f"\tmov.u32 {r[6]}, %ctaid.x;",
        f"\tcvt.u64.u32 {d[1]}, {r[6]};",
        f"\tadd.u64 {d[0]}, {d[0]}, {d[1]};",
        f"\tcvt.u64.u32 {d[2]}, {r[3]};",
        f"\trem.u64 {d[3]}, {d[0]}, {d[2]};",
        f"\tdiv.u64 {d[4]}, {d[0]}, {d[2]};",
        f"\tcvt.u64.u32 {d[5]}, {r[4]};",
        f"\trem.u64 {d[6]}, {d[4]}, {d[5]};",
        f"\tdiv.u64 {d[7]}, {d[4]}, {d[5]};",
        f"\tcvt.u32.u64 {r[0]}, {d[3]};",
        f"\tcvt.u32.u64 {r[1]}, {d[6]};",
        f"\tcvt.u32.u64 {r[2]}, {d[7]};",
    ]
    if store_slot:
        # Every thread stores the same six values before any use, so the slot needs no
        # barrier: a thread only ever reads what it or a sibling wrote identically.
        out += [f"\tst.shared.u32 [{SLOT}+{4 * i}], {r[i]};" for i in range(6)]
    out.append("\t// end of lithos atom prelude")
    return out


def _func_prelude() -> list[str]:
    out = ["\t// lithos: block index and grid of the atom's virtual launch", "\t.reg .b32 %lithos_f<6>;"]
    out += [f"\tld.shared.u32 %lithos_f{i}, [{SLOT}+{4 * i}];" for i in range(6)]
    return out


def rewrite_module(text: str, *, skip_unsupported: bool = False) -> RewriteResult:
    """Rewrite every kernel entry of a PTX module into an atomizable one.

    Parameters
    ----------
    text : str
        The PTX module.
    skip_unsupported : bool
        Leave entries that cannot be split unchanged (and listed as not atomized) instead
        of raising.

    Returns
    -------
    RewriteResult

    Raises
    ------
    UnsupportedKernelError
        If an entry cannot be split and ``skip_unsupported`` is False; lists every such
        entry with its reason and line.
    AtomizeError
        For malformed PTX.
    """
    module = parse_module(text)
    entries = [f for f in module.functions.values() if f.kind == "entry"]
    refused: dict[str, tuple[str, int]] = {}
    for e in entries:
        why = unsupported_reason(module, e.name)
        if why is not None:
            refused[e.name] = why
    # A function reachable from an atomized and a refused entry would read the slot in
    # the refused one, where no prelude fills it: refuse those entries too.
    reach = {e.name: set(_reachable(module, e.name)) - {e.name} for e in entries}
    needs_slot = {f.name for f in module.functions.values() if f.kind == "func" and f.special_reads}
    refused_reach = set().union(*(reach[n] for n in refused)) if refused else set()
    for e in entries:
        if e.name not in refused:
            shared = reach[e.name] & refused_reach & needs_slot
            if shared:
                f = sorted(shared)[0]
                refused[e.name] = (f"shares device function {f!r}, which reads the block index, with a kernel "
                                   "that cannot be atomized", module.functions[f].first_line)
    if refused and not skip_unsupported:
        detail = "; ".join(f"{n!r} (line {ln}): {why}" for n, (why, ln) in refused.items())
        first = next(iter(refused))
        raise UnsupportedKernelError(f"cannot atomize {detail}", entry=first, line=refused[first][1])
    atomized = [e for e in entries if e.name not in refused]
    patched_funcs = sorted(set().union(*(reach[e.name] for e in atomized)) & needs_slot) if atomized else []
    use_slot = bool(patched_funcs)

    lines = list(module.lines)
    edits: dict[int, list[str]] = {}  # line index -> replacement lines
    for e in atomized:
        _edit_entry(module, lines, e, use_slot, edits)
    for name in patched_funcs:
        f = module.functions[name]
        for ln_no in range(f.body_start_line, f.body_end_line + 1):
            base = edits.get(ln_no, [lines[ln_no]])
            edits[ln_no] = [_replace_specials(x, [f"%lithos_f{i}" for i in range(6)]) for x in base]
        first = edits[f.body_start_line]
        first[-1:] = _split_after_brace(first[-1], _func_prelude())
    out: list[str] = []
    for i, ln in enumerate(lines):
        out.extend(edits.get(i, [ln]))
        if i == module.header_end_line and use_slot:
            out.append(f".shared .align 4 .b8 {SLOT}[24];")
    result_entries = {
        e.name: EntryRewrite(e.name, e.name not in refused, refused.get(e.name, (None,))[0], len(e.params))
        for e in entries
    }
    return RewriteResult("\n".join(out), result_entries, tuple(patched_funcs), module.version)


def _split_after_brace(line: str, insert: list[str]) -> list[str]:
    """Split ``line`` after its first '{' and put ``insert`` in between."""
    k = line.index("{")
    head, tail = line[:k + 1], line[k + 1:]
    return [head, *insert] + ([tail] if tail.strip() else [])


def _edit_entry(module: PtxModule, lines: list[str], e: PtxFunction, use_slot: bool, edits: dict[int, list[str]]) -> None:
    regs = [f"%lithos_r{i}" for i in range(6)]
    for ln_no in range(e.body_start_line, e.body_end_line + 1):
        edits[ln_no] = [_replace_specials(lines[ln_no], regs)]
    first = edits[e.body_start_line]
    first[-1:] = _split_after_brace(first[-1], _prelude(use_slot))
    # Append the atom parameters before the ')' closing the parameter list.
    cl, cc = e.params_close
    target = edits.get(cl, [lines[cl]])
    src = target[0]
    extra = ",\n".join(f"\t.param {t} {n}" for t, n in ATOM_PARAMS)
    sep = ",\n" if e.params else "\n"
    target[0] = src[:cc].rstrip() + sep + extra + "\n" + src[cc:]
    edits[cl] = target


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: rewrite every entry of a PTX file."""
    p = argparse.ArgumentParser(prog="python -m lithos_atom.ptx", description="Rewrite PTX kernels into atomizable ones.")
    p.add_argument("input", help="PTX file to read")
    p.add_argument("-o", "--output", required=True, help="PTX file to write")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="leave kernels that cannot be split unchanged (listed on stderr) instead of failing")
    args = p.parse_args(argv)
    try:
        with open(args.input) as f:
            text = f.read()
    except OSError as exc:
        print(f"lithos_atom.ptx: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        result = rewrite_module(text, skip_unsupported=args.skip_unsupported)
    except AtomizeError as exc:
        print(f"lithos_atom.ptx: {args.input}: {exc}", file=sys.stderr)
        return 2
    try:
        with open(args.output, "w") as f:
            f.write(result.ptx)
    except OSError as exc:
        print(f"lithos_atom.ptx: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    for e in result.entries.values():
        state = "atomized" if e.atomized else f"left unchanged: {e.reason}"
        print(f"{e.name}: {state}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
