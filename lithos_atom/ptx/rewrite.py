"""The rewriter: every splittable entry of a module becomes an atomizable one.

The ABI of an atomized ``.entry`` (the launch code depends on it exactly): after the
user's own parameters come four more, `ATOM_PARAMS`, in this order::

    .param .u64 __lithos_atom_base   // first linear block index of this atom
    .param .u32 __lithos_grid_x      // the original grid
    .param .u32 __lithos_grid_y
    .param .u32 __lithos_grid_z

An atom is launched as a 1-D grid ``(count, 1, 1)`` with the user's block and dynamic
shared memory. A prelude at the top of the entry computes ``linear = base + %ctaid.x``
(the hardware index) and ``t = linear / gx``, ``x = linear % gx`` in u64 arithmetic, then
``y = t % gy``, ``z = t / gy`` in u32 (exact: ``t < gy * gz < 2**32``), exactly as
`lithos_atom.indexing.virtual_block` does; every read of ``%ctaid.{x,y,z}`` becomes a
read of that virtual index and every read of ``%nctaid.{x,y,z}`` a read of the original
grid. Device functions (``.func``) cannot see kernel parameters: when one that
an atomized entry reaches reads these registers, the module gets a 24-byte ``.shared``
slot, `BLOCKINFO` (x, y, z, gx, gy, gz as u32), that the entry's prelude fills
and the function loads at its top. Kernels that cannot be split are refused with the
reason `lithos_atom.ptx.hazards.entry_hazards` gives.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping, Sequence

from lithos_atom.errors import AtomizeError, UnsupportedKernelError
from lithos_atom.ptx.hazards import CallGraph, describe
from lithos_atom.ptx.lexer import mask, normalize, quote
from lithos_atom.ptx.model import (
    ATOM_PARAMS,
    BLOCKINFO,
    RESERVED_PREFIX,
    SLOT_OFFSET,
    VIRTUAL_REG,
    VIRTUAL_VALUES,
    EntryRewrite,
    Hazard,
    PtxModule,
    RewriteResult,
)
from lithos_atom.ptx.parser import parse_module


def _entry_prelude(store_slot: bool) -> str:
    r = VIRTUAL_REG
    d = [f"%{RESERVED_PREFIX}rd{i}" for i in range(9)]
    w = [f"%{RESERVED_PREFIX}r{i}" for i in range(7)]
    wide, done = f"${RESERVED_PREFIX}wide", f"${RESERVED_PREFIX}done"
    lines = [
        "// lithos atom prelude: this launch runs blocks [base, base + count) of the original grid;",
        "// lithos: recover each block's original 3-D index (x fastest) and the original grid size.",
        f".reg .b32 {r['%ctaid.x']}, {r['%ctaid.y']}, {r['%ctaid.z']};",
        f".reg .b32 {r['%nctaid.x']}, {r['%nctaid.y']}, {r['%nctaid.z']};",
        f".reg .b32 %{RESERVED_PREFIX}r<7>;",
        f".reg .b64 %{RESERVED_PREFIX}rd<9>;",
        f".reg .pred %{RESERVED_PREFIX}p0;",
        f"ld.param.u64 {d[0]}, [{ATOM_PARAMS[0][0]}];",
        f"ld.param.u32 {r['%nctaid.x']}, [{ATOM_PARAMS[1][0]}];",
        f"ld.param.u32 {r['%nctaid.y']}, [{ATOM_PARAMS[2][0]}];",
        f"ld.param.u32 {r['%nctaid.z']}, [{ATOM_PARAMS[3][0]}];",
        f"mov.u32 {w[0]}, %ctaid.x;",
        # Grids of fewer than 2**32 blocks (all but the largest) take 32-bit division, several
        # times cheaper than the 64-bit routine; the branch is uniform across the launch.
        f"mul.wide.u32 {d[7]}, {r['%nctaid.x']}, {r['%nctaid.y']};",
        f"cvt.u64.u32 {d[8]}, {r['%nctaid.z']};",
        f"mul.lo.u64 {d[7]}, {d[7]}, {d[8]};  // blocks in the grid",
        f"setp.gt.u64 %{RESERVED_PREFIX}p0, {d[7]}, 4294967295;",
        f"@%{RESERVED_PREFIX}p0 bra {wide};",
        f"cvt.u32.u64 {w[3]}, {d[0]};",
        f"add.u32 {w[3]}, {w[3]}, {w[0]};  // linear, < 2**32",
        f"div.u32 {w[4]}, {w[3]}, {r['%nctaid.x']};  // t = linear / gx",
        f"mul.lo.u32 {w[5]}, {w[4]}, {r['%nctaid.x']};",
        f"sub.u32 {r['%ctaid.x']}, {w[3]}, {w[5]};  // linear % gx",
        f"div.u32 {r['%ctaid.z']}, {w[4]}, {r['%nctaid.y']};  // t / gy",
        f"mul.lo.u32 {w[6]}, {r['%ctaid.z']}, {r['%nctaid.y']};",
        f"sub.u32 {r['%ctaid.y']}, {w[4]}, {w[6]};  // t % gy",
        f"bra.uni {done};",
        f"{wide}:",
        f"cvt.u64.u32 {d[1]}, {w[0]};",
        f"add.u64 {d[2]}, {d[0]}, {d[1]};  // linear",
        f"cvt.u64.u32 {d[3]}, {r['%nctaid.x']};",
        f"div.u64 {d[4]}, {d[2]}, {d[3]};  // t = linear / gx",
        f"mul.lo.u64 {d[5]}, {d[4]}, {d[3]};",
        f"sub.u64 {d[6]}, {d[2]}, {d[5]};  // linear % gx",
        f"cvt.u32.u64 {r['%ctaid.x']}, {d[6]};",
        # t < gy * gz <= 65535**2 < 2**32, so the rest is exact in 32 bits (and much cheaper).
        f"cvt.u32.u64 {w[1]}, {d[4]};",
        f"div.u32 {r['%ctaid.z']}, {w[1]}, {r['%nctaid.y']};  // t / gy",
        f"mul.lo.u32 {w[2]}, {r['%ctaid.z']}, {r['%nctaid.y']};",
        f"sub.u32 {r['%ctaid.y']}, {w[1]}, {w[2]};  // t % gy",
        f"{done}:",
    ]
    if store_slot:
        # Every thread stores the same six values before it runs anything else, so no
        # barrier is needed: a thread reads the slot only after its own stores, and any
        # sibling store it may observe wrote the identical value.
        lines.append("// lithos: for device functions; all threads store identical values before any use")
        lines += [f"st.shared.u32 [{BLOCKINFO}+{SLOT_OFFSET[v]}], {VIRTUAL_REG[v]};" for v in VIRTUAL_VALUES]
    lines.append("// end of lithos atom prelude")
    return "".join(f"\n\t{ln}" for ln in lines)


def _func_prelude(values: Sequence[str]) -> str:
    lines = ["// lithos: the virtual block index and original grid, stored by the entry's prelude"]
    for v in values:
        lines.append(f".reg .b32 {VIRTUAL_REG[v]};")
        lines.append(f"ld.shared.u32 {VIRTUAL_REG[v]}, [{BLOCKINFO}+{SLOT_OFFSET[v]}];")
    return "".join(f"\n\t{ln}" for ln in lines)


def _refuse(refused: Mapping[str, Hazard]) -> UnsupportedKernelError:
    problems = tuple((name, h.line, describe(h, name)) for name, h in refused.items())
    if len(problems) == 1:
        name, line, text = problems[0]
        return UnsupportedKernelError(f"cannot be split into atoms: {text}", entry=name, line=line,
                                      problems=problems)
    listing = "; ".join(f"entry {quote(name)} line {line}: {text}" for name, line, text in problems)
    return UnsupportedKernelError(f"{len(problems)} kernels cannot be split into atoms: {listing}",
                                  problems=problems)


def rewrite_module(text: str, *, skip_unsupported: bool = False) -> RewriteResult:
    """Rewrite every entry of a PTX module into an atomizable one (see the module's ABI).

    A device function that reads the block index and is reachable both from an entry
    that is atomized and from one that is not would read a shared slot that the latter
    never fills. Such modules are refused as a whole unless ``skip_unsupported``; with
    it, the function stays unpatched and every entry reaching it is left unchanged too
    (to a fixed point), so nothing ever reads an unset slot. Functions no atomized entry
    reaches are left as they are (a ``.visible`` one that is patched must not be called from
    entries of other modules: lithos links each rewritten module on its own).

    Parameters
    ----------
    text : str
        The PTX module. A leading byte-order mark is dropped and CR line ends become LF
        (see `lithos_atom.ptx.lexer.normalize`); the rest is kept byte for byte.
    skip_unsupported : bool
        Leave entries that cannot be split byte-identical (and listed with their reason)
        instead of raising.

    Returns
    -------
    RewriteResult

    Raises
    ------
    UnsupportedKernelError
        If an entry cannot be split and ``skip_unsupported`` is False; ``problems`` lists
        every such entry with its line and reason.
    AtomizeError
        For malformed PTX, or PTX that already holds lithos names (rewritten twice).
    """
    text = normalize(text)
    if (k := mask(text).find(RESERVED_PREFIX)) >= 0:
        raise AtomizeError(f"the PTX already uses the reserved prefix {RESERVED_PREFIX!r} (was it rewritten twice?)",
                           line=text.count("\n", 0, k) + 1)
    module = parse_module(text)
    entries = module.entries
    graph = CallGraph(module)
    reach: dict[str, set[str]] = {}
    refused: dict[str, Hazard] = {}  # entry -> the first thing that prevents splitting it
    for e in entries:
        reached_in_order = graph.reachable(e.name)
        reach[e.name] = set(reached_in_order)
        if (first := graph.first_hazard(e.name, reached_in_order)) is not None:
            refused[e.name] = first
    if refused and not skip_unsupported:
        raise _refuse(refused)
    patchable = {f.name for f in module.functions.values() if f.kind == "func" and f.anchors and f.anchors.sites}
    _refuse_sharers(module, reach, patchable, refused)
    atomized = [e for e in entries if e.name not in refused]
    reached = set().union(*(reach[e.name] for e in atomized))
    patched = tuple(n for n in module.functions if n in reached and n in patchable)
    patched_set = set(patched)

    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in the input text
    for name in patched:
        a = module.functions[name].anchors
        assert a is not None and a.body_open is not None
        read = [v for v in VIRTUAL_VALUES if any(site.value == v for site in a.sites)]
        edits.append((a.body_open, a.body_open, _func_prelude(read)))
        edits += [(s.start, s.end, VIRTUAL_REG[s.value]) for s in a.sites]
    for e in atomized:
        a = e.anchors
        assert a is not None and a.body_open is not None and a.params_open is not None
        decls = [f"\t.param {ptype} {pname}" for pname, ptype in ATOM_PARAMS]
        if a.last_param_end is None:
            edits.append((a.params_open, a.params_open, "\n" + ",\n".join(decls) + "\n"))
        else:
            edits.append((a.last_param_end, a.last_param_end, ",\n" + ",\n".join(decls)))
        edits.append((a.body_open, a.body_open, _entry_prelude(not reach[e.name].isdisjoint(patched_set))))
        edits += [(s.start, s.end, VIRTUAL_REG[s.value]) for s in a.sites]
    if patched:
        edits.append((module.header_end, module.header_end,
                       "\n\n// lithos: the virtual block index and original grid, for device functions\n"
                       f".shared .align 4 .b8 {BLOCKINFO}[24];"))
    pieces, pos = [], 0
    for start, end, new in sorted(edits, key=lambda x: x[0]):
        pieces += [text[pos:start], new]
        pos = end
    out = "".join(pieces) + text[pos:]
    results = {}
    for e in entries:
        h = refused.get(e.name)
        reason = None if h is None else f"{describe(h, e.name)} (line {h.line})"
        results[e.name] = EntryRewrite(e.name, h is None, reason, len(e.params), None if h is None else h.line)
    return RewriteResult(out, results, patched, module.version)


def _refuse_sharers(module: PtxModule, reach: Mapping[str, set[str]], patchable: set[str],
                    refused: dict[str, Hazard]) -> None:
    """Add to ``refused`` every entry that reaches a patchable function a refused entry reaches.

    Refused entries are taken in turn (the newly refused after the others), each claiming
    the patchable functions it reaches; every entry reaching a claimed function is refused,
    naming the function and the entry that claimed it, and takes its turn later. Each
    function and each refused entry is handled once, so the time is linear in the size of
    ``reach``.
    """
    reached_by: dict[str, list[str]] = {}  # patchable function -> entries reaching it, in module order
    for e in module.entries:
        for f in reach[e.name] & patchable:
            reached_by.setdefault(f, []).append(e.name)
    cause = {name: name for name in refused}  # refused entry -> the entry refused for its own hazard
    claimed: set[str] = set()
    turns = deque(refused)
    while turns:
        other = turns.popleft()
        for f in sorted((reach[other] & patchable) - claimed):
            claimed.add(f)
            for e in reached_by[f]:
                if e in refused:
                    continue
                root = cause[other]
                why = describe(refused[root], root)
                because = why if root == other else f"it shares one with entry {quote(root)}, which {why}"
                refused[e] = Hazard(module.functions[f].first_line, e, (
                    f"shares device function {quote(f)}, which reads the block index, with entry {quote(other)}, "
                    f"which cannot be split ({because})"))
                cause[e] = root
                turns.append(e)


def set_ptx_version(text: str, version: tuple[int, int]) -> str:
    """Return ``text`` with its ``.version`` directive set to ``version``.

    Used when the driver JITs only older PTX; the caller must know that the module uses no
    feature newer than ``version``.

    Parameters
    ----------
    text : str
        A PTX module.
    version : tuple of int
        (major, minor), e.g. ``(9, 0)``.

    Returns
    -------
    str
        ``text`` after `lithos_atom.ptx.lexer.normalize`, with the new version.

    Raises
    ------
    ValueError
        If ``version`` is not two non-negative ints.
    AtomizeError
        If the module has no ``.version`` directive.
    """
    if (len(version) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in version)):
        raise ValueError(f"version must be (major, minor) non-negative ints, got {version!r}")
    text = normalize(text)
    m = re.search(r"(?m)^[ \t]*\.version[ \t]+(\d+\.\d+)", mask(text), re.ASCII)
    if m is None:
        raise AtomizeError("missing .version directive", line=1)
    return text[:m.start(1)] + f"{version[0]}.{version[1]}" + text[m.end(1):]
