"""Read PTX modules and rewrite their kernels into atomizable ones.

The ABI of an atomized ``.entry`` (the launch code depends on it exactly): after the
user's own parameters come four more, in this order::

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
slot, ``__lithos_blockinfo`` (x, y, z, gx, gy, gz as u32), that the entry's prelude fills
and the function loads at its top.

Kernels whose blocks must run in one launch are refused with a reason (see
`entry_hazards`): cooperative-groups grid synchronization, thread-block clusters,
programmatic dependent launch, device-side launches, ``%gridid``, calls to functions whose
body is not in the module, and reads of the block index the rewriter cannot redirect.

Run as ``python -m lithos_atom.ptx IN.ptx -o OUT.ptx [--skip-unsupported]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Mapping, Sequence

from lithos_atom.errors import AtomizeError, UnsupportedKernelError

ATOM_PARAMS: tuple[tuple[str, str], ...] = (
    ("__lithos_atom_base", ".u64"),
    ("__lithos_grid_x", ".u32"),
    ("__lithos_grid_y", ".u32"),
    ("__lithos_grid_z", ".u32"),
)
"""(name, type) of the parameters appended to every atomized entry, in order."""

BLOCKINFO = "__lithos_blockinfo"
"""Module-scope ``.shared`` slot through which device functions see the virtual index."""

_PREFIX = "__lithos_"

# The six values the rewriter provides, in the order of the shared slot, and the register
# each one lives in. '%__lithos_...' cannot clash with names compilers generate.
_VALUES = ("%ctaid.x", "%ctaid.y", "%ctaid.z", "%nctaid.x", "%nctaid.y", "%nctaid.z")
_REG = {v: "%" + _PREFIX + v[1:].replace(".", "_") for v in _VALUES}
_SLOT_OFFSET = {v: 4 * i for i, v in enumerate(_VALUES)}

_LINKAGE = frozenset({".visible", ".extern", ".weak", ".common"})
_HEADER_DIRECTIVES = frozenset({".version", ".target", ".address_size"})
_LINE_DIRECTIVES = frozenset({".file", ".loc"})  # debug directives: one line, no ';'
_MODULE_DECLARATIONS = frozenset(
    {".global", ".const", ".shared", ".local", ".tex", ".texref", ".surfref", ".samplerref", ".pragma", ".alias"}
)
_TYPES = frozenset(
    {".u8", ".u16", ".u32", ".u64", ".s8", ".s16", ".s32", ".s64", ".b8", ".b16", ".b32", ".b64", ".b128",
     ".f16", ".f16x2", ".bf16", ".bf16x2", ".f32", ".f64", ".pred", ".texref", ".samplerref", ".surfref"}
)
_STATE_SPACES = frozenset({".global", ".const", ".shared", ".local"})
# Performance directives between a kernel's parameter list and its body that do not
# change what a block computes. Anything else is either a cluster directive (refused
# with its own reason) or unknown (refused, since splitting may not be safe).
_PLAIN_FUNCTION_DIRECTIVES = frozenset(
    {".maxntid", ".reqntid", ".minnctapersm", ".maxnctapersm", ".maxnreg", ".noreturn", ".pragma",
     ".abi_preserve", ".abi_preserve_control"}
)
_CLUSTER_DIRECTIVES = frozenset({".reqnctapercluster", ".explicitcluster", ".maxclusterrank", ".blocksareclusters"})
# External functions that cannot read the block index and do not care how the grid is
# launched: printf, the device heap and assert.
_HARMLESS_EXTERNS = frozenset({"vprintf", "malloc", "free", "__assertfail"})

_CLUSTER_REGISTERS = re.compile(
    r"%(?:cluster_n?ctaid(?:\.[xyzw])?|n?clusterid(?:\.[xyzw])?|cluster_n?ctarank|is_explicit_cluster)"
)
_ENVREG = re.compile(r"%envreg\d+")
_BLOCK_INDEX = re.compile(r"%(n?ctaid)(\.\w+)?")
_SPECIAL = re.compile(
    r"%(?:tid|ntid|ctaid|nctaid|cluster_ctaid|cluster_nctaid|clusterid|nclusterid)(?:\.\w+)?"
    r"|%(?:laneid|warpid|nwarpid|smid|nsmid|gridid|cluster_ctarank|cluster_nctarank|is_explicit_cluster"
    r"|lanemask_(?:eq|le|lt|ge|gt)|clock|clock_hi|clock64|globaltimer|globaltimer_lo|globaltimer_hi"
    r"|total_smem_size|aggr_smem_size|dynamic_smem_size|current_graph_exec|envreg\d+|pm\d+|pm\d+_64"
    r"|reserved_smem_offset_\w+)"
)

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<string>"(?:[^"\\\n]|\\.)*")
    | (?P<word>[A-Za-z_$%.][\w$.]*(?:::[\w$.]+)*)   # names, directives, opcodes, registers
    | (?P<number>\d[\w.]*)                          # 64, 9.5, 0f3F800000, 0xFF
    | (?P<punct>[(){}\[\];,:=<>+\-*/!@|&^~?])
    | (?P<bad>.)
    """,
    re.X | re.S,
)
_COMMENT_OR_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*(?:.*?\*/|.*)', re.S)


# ---- data model ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PtxParam:
    """One parameter of an entry or function.

    Attributes
    ----------
    name : str
    type : str
        For example ``".u64"`` or ``".b8"`` (struct parameters are ``.b8`` arrays).
    align : int or None
        The ``.align`` value, when given.
    array_len : int or None
        Element count of an array parameter such as ``name[16]``.
    """

    name: str
    type: str
    align: int | None = None
    array_len: int | None = None


@dataclasses.dataclass(frozen=True)
class PtxDirective:
    """A directive between a function's parameter list and its body (``.maxntid 256, 1, 1``).

    Attributes
    ----------
    name : str
        With its dot, e.g. ``".maxntid"``.
    args : tuple of str
        The arguments as written (numbers or strings), without commas.
    line : int
        1-based line.
    """

    name: str
    args: tuple[str, ...]
    line: int


@dataclasses.dataclass(frozen=True)
class Hazard:
    """Something in a function that makes its kernel unsafe to split into atoms.

    Attributes
    ----------
    line : int
        1-based line in the input PTX.
    function : str
        The entry or function in which it occurs.
    reason : str
        What it is and why it prevents splitting.
    """

    line: int
    function: str
    reason: str


@dataclasses.dataclass(frozen=True)
class _Site:
    """A read of ``%ctaid.*``/``%nctaid.*`` to be replaced: text offsets and the register."""

    start: int
    end: int
    value: str


@dataclasses.dataclass(frozen=True)
class _Anchors:
    """Text offsets the rewriter edits at."""

    params_open: int | None  # offset just after '('
    last_param_end: int | None  # offset just after the last parameter
    body_open: int | None  # offset just after '{'
    sites: tuple[_Site, ...]


@dataclasses.dataclass(frozen=True)
class PtxFunction:
    """One ``.entry`` or ``.func`` (with the body merged in when a prototype came first).

    Attributes
    ----------
    name : str
    kind : str
        ``"entry"`` or ``"func"``.
    params : tuple of PtxParam
        Input parameters (for a ``.func``, not its return parameters).
    first_line : int
        1-based line where the header starts (its linkage or ``.entry``/``.func``).
    body_start_line, body_end_line : int or None
        1-based lines of the body's ``{`` and ``}``; None for a declaration without body.
    special_reads : mapping of str to tuple of int
        Special register as written (``"%ctaid.x"``, ``"%envreg2"``, ``"%ctaid"``) to the
        1-based lines that read it.
    calls : tuple of str
        Functions called directly, as written, in order of first call.
    linkage : tuple of str
        ``.visible``, ``.weak``, ``.extern``, ``.common`` as written.
    return_params : tuple of PtxParam
        A ``.func``'s return parameters.
    directives : tuple of PtxDirective
        Directives between the parameter list and the body.
    indirect_call_lines : tuple of int
        Lines of calls through a register.
    hazards : tuple of Hazard
        What in this function alone prevents splitting its kernel.
    """

    name: str
    kind: str
    params: tuple[PtxParam, ...]
    first_line: int
    body_start_line: int | None
    body_end_line: int | None
    special_reads: Mapping[str, tuple[int, ...]] = dataclasses.field(hash=False)
    calls: tuple[str, ...]
    linkage: tuple[str, ...] = ()
    return_params: tuple[PtxParam, ...] = ()
    directives: tuple[PtxDirective, ...] = ()
    indirect_call_lines: tuple[int, ...] = ()
    hazards: tuple[Hazard, ...] = ()
    anchors: _Anchors | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def has_body(self) -> bool:
        """Whether the module defines this function (not only declares it)."""
        return self.body_start_line is not None


@dataclasses.dataclass(frozen=True)
class PtxModule:
    """A parsed PTX module.

    Attributes
    ----------
    version : tuple of int
        ``.version`` as (major, minor).
    target : str
        ``.target`` as written, e.g. ``"sm_90"`` or ``"sm_90, debug"``.
    address_size : int
        ``.address_size`` (PTX's default, 32, when absent).
    functions : dict of str to PtxFunction
        Every entry and function, in order of first appearance.
    aliases : dict of str to str
        ``.alias`` names to the function they stand for.
    address_taken : frozenset of str
        Functions whose name is used other than as a direct call target (so an indirect
        call may reach them).
    """

    version: tuple[int, int]
    target: str
    address_size: int
    functions: dict[str, PtxFunction] = dataclasses.field(hash=False)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
    address_taken: frozenset[str] = frozenset()
    header_end: int = dataclasses.field(default=0, repr=False, compare=False)  # offset after the header

    @property
    def entries(self) -> tuple[PtxFunction, ...]:
        """The ``.entry`` functions that have a body, in module order."""
        return tuple(f for f in self.functions.values() if f.kind == "entry" and f.has_body)


@dataclasses.dataclass(frozen=True)
class EntryRewrite:
    """What the rewriter did with one entry.

    Attributes
    ----------
    name : str
    atomized : bool
        Whether the entry was rewritten (it then takes the four ABI parameters).
    reason : str or None
        Why it was left unchanged, with the PTX line, when it was.
    num_user_params : int
        Parameters of the original entry (the ABI parameters follow them).
    line : int or None
        1-based input line of what prevented atomizing it.
    """

    name: str
    atomized: bool
    reason: str | None
    num_user_params: int
    line: int | None = None


@dataclasses.dataclass(frozen=True)
class RewriteResult:
    """A rewritten module.

    Attributes
    ----------
    ptx : str
        The rewritten PTX.
    entries : dict of str to EntryRewrite
        Every entry with a body, in module order.
    funcs_patched : tuple of str
        Device functions that now read the block index from the shared slot.
    version : tuple of int
        The module's ``.version``.
    """

    ptx: str
    entries: dict[str, EntryRewrite]
    funcs_patched: tuple[str, ...]
    version: tuple[int, int]


# ---- lexing ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    start: int
    end: int
    line: int


def _mask(text: str) -> str:
    """``text`` with every comment replaced by spaces (newlines kept), so offsets match."""

    def blank(m: re.Match[str]) -> str:
        s = m.group()
        if s.startswith('"'):
            return s
        if s.startswith("/*") and not (len(s) >= 4 and s.endswith("*/")):
            raise AtomizeError("unterminated /* comment", line=text.count("\n", 0, m.start()) + 1)
        return re.sub(r"[^\n]", " ", s)

    return _COMMENT_OR_STRING.sub(blank, text)


def _tokenize(masked: str) -> list[_Tok]:
    toks, line = [], 1
    for m in _TOKEN.finditer(masked):
        kind = m.lastgroup
        assert kind is not None
        if kind == "space":
            line += m.group().count("\n")
            continue
        if kind == "bad":
            what = "unterminated string" if m.group() == '"' else f"unexpected character {m.group()!r}"
            raise AtomizeError(what, line=line)
        toks.append(_Tok(kind, m.group(), m.start(), m.end(), line))
    return toks


# ---- parsing ---------------------------------------------------------------------------


@dataclasses.dataclass
class _RawFunction:
    """A function as parsed, before the module-wide analysis."""

    name: str
    kind: str
    linkage: tuple[str, ...]
    first_line: int
    return_params: tuple[PtxParam, ...]
    params: tuple[PtxParam, ...]
    params_open: int | None
    last_param_end: int | None
    directives: tuple[PtxDirective, ...]
    body: tuple[_Tok, _Tok] | None  # the '{' and '}' tokens
    statements: tuple[tuple[_Tok, ...], ...]


class _Parser:
    def __init__(self, text: str):
        self.toks = _tokenize(_mask(text))
        self.i = 0
        self.last_line = max(1, text.count("\n") + (not text.endswith("\n")))

    # -- token helpers

    def peek(self, k: int = 0) -> _Tok | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def at(self, text: str) -> bool:
        t = self.peek()
        return t is not None and t.text == text

    def next(self, what: str, entry: str | None = None) -> _Tok:
        t = self.peek()
        if t is None:
            line = self.toks[-1].line if self.toks else self.last_line
            raise AtomizeError(f"unexpected end of module: expected {what}", entry=entry, line=line)
        self.i += 1
        return t

    def expect(self, text: str, what: str, entry: str | None = None) -> _Tok:
        t = self.next(what, entry)
        if t.text != text:
            raise AtomizeError(f"expected {what}, found {t.text!r}", entry=entry, line=t.line)
        return t

    # -- module

    def module(self) -> tuple[dict, list[_RawFunction], dict[str, str], set[str]]:
        header: dict = {}
        functions: list[_RawFunction] = []
        aliases: dict[str, tuple[str, int]] = {}  # alias -> (target, line)
        module_names: set[str] = set()  # words used in module-scope declarations
        while (t := self.peek()) is not None:
            if t.kind != "word" or not t.text.startswith("."):
                raise AtomizeError(f"unexpected {t.text!r} where a directive is expected", line=t.line)
            if t.text in _HEADER_DIRECTIVES:
                self.header_directive(header)
                continue
            self.require_header(header, t.line)
            if t.text in _LINE_DIRECTIVES:
                self.rest_of_line()
            elif t.text == ".section":
                self.section()
            elif self.is_function_header():
                functions.append(self.function())
            elif t.text in _MODULE_DECLARATIONS or t.text in _LINKAGE:
                stmt = self.declaration()
                if t.text == ".alias":
                    words = [x.text for x in stmt if x.kind == "word"]
                    if len(words) != 3:
                        raise AtomizeError("malformed .alias (expected '.alias name, target;')", line=t.line)
                    aliases[words[1]] = (words[2], t.line)
                else:
                    module_names.update(x.text for x in stmt if x.kind == "word")
            else:
                raise AtomizeError(f"unknown directive {t.text!r} at module scope", line=t.line)
        self.require_header(header, self.last_line)
        declared = {f.name for f in functions}
        for alias, (target, line) in aliases.items():
            if target not in declared:
                raise AtomizeError(f".alias {alias} names undeclared function {target!r}", line=line)
        return header, functions, {a: target for a, (target, _) in aliases.items()}, module_names

    def require_header(self, header: dict, line: int) -> None:
        for d in (".version", ".target"):
            if d not in header:
                raise AtomizeError(f"missing {d} directive before this line", line=line)

    def rest_of_line(self) -> list[_Tok]:
        first = self.next("a directive")
        out = [first]
        while (t := self.peek()) is not None and t.line == first.line:
            out.append(self.next("an argument"))
        return out

    def header_directive(self, header: dict) -> None:
        toks = self.rest_of_line()
        d, args = toks[0], toks[1:]
        if d.text in header:
            raise AtomizeError(f"{d.text} given twice", line=d.line)
        if d.text == ".version":
            m = re.fullmatch(r"(\d+)\.(\d+)", args[0].text) if len(args) == 1 else None
            if m is None:
                raise AtomizeError("malformed .version (expected '.version MAJOR.MINOR')", line=d.line)
            header[".version"] = ((int(m[1]), int(m[2])), d)
        elif d.text == ".target":
            words = [a.text for a in args if a.text != ","]
            if not words or not all(a.kind == "word" for a in args if a.text != ","):
                raise AtomizeError("malformed .target (expected '.target sm_XX[, ...]')", line=d.line)
            header[".target"] = (", ".join(words), args[-1])
        else:
            if len(args) != 1 or args[0].text not in ("32", "64"):
                raise AtomizeError("malformed .address_size (expected 32 or 64)", line=d.line)
            header[".address_size"] = (int(args[0].text), args[0])

    def section(self) -> None:
        start = self.next(".section")
        while (t := self.peek()) is not None and t.text != "{":
            if t.line != start.line:
                raise AtomizeError("expected '{' after .section", line=t.line)
            self.i += 1
        self.expect("{", "'{' after .section")
        depth = 1
        while depth:
            t = self.peek()
            if t is None:
                raise AtomizeError(".section is not closed by '}'", line=start.line)
            self.i += 1
            depth += {"{": 1, "}": -1}.get(t.text, 0)

    def is_function_header(self) -> bool:
        k = 0
        while (t := self.peek(k)) is not None and t.text in _LINKAGE:
            k += 1
        t = self.peek(k)
        return t is not None and t.text in (".entry", ".func")

    def declaration(self) -> list[_Tok]:
        """A module-scope declaration up to its ';' (initializers may hold braces)."""
        first = self.peek()
        assert first is not None
        out, depth = [], 0
        while True:
            t = self.peek()
            if t is None:
                raise AtomizeError("declaration is not terminated by ';'", line=first.line)
            if depth == 0 and t is not first and t.text in (".entry", ".func"):
                raise AtomizeError("declaration is not terminated by ';'", line=first.line)
            self.i += 1
            if t.text == ";" and depth == 0:
                return out
            depth += {"{": 1, "}": -1}.get(t.text, 0)
            out.append(t)

    # -- functions

    def function(self) -> _RawFunction:
        first = self.peek()
        assert first is not None
        linkage = []
        while (t := self.peek()) is not None and t.text in _LINKAGE:
            linkage.append(self.next("linkage").text)
        kind = self.next(".entry or .func").text[1:]
        return_params: tuple[PtxParam, ...] = ()
        if kind == "func" and self.at("("):
            return_params, _, _ = self.param_list(None)
        name_tok = self.next(f"the name of the .{kind}")
        if name_tok.kind != "word" or name_tok.text[0] in ".%":
            raise AtomizeError(f"expected the name of the .{kind}, found {name_tok.text!r}", line=name_tok.line)
        name = name_tok.text
        params: tuple[PtxParam, ...] = ()
        params_open = last_param_end = None
        if self.at("("):
            params, params_open, last_param_end = self.param_list(name)
        elif kind == "entry":
            raise AtomizeError("entry has no parameter list", entry=name, line=name_tok.line)
        directives = self.function_directives(name)
        t = self.next("'{' or ';' after the function header", name)
        if t.text == ";":
            body, statements = None, ()
        elif t.text == "{":
            close, statements = self.body(name, t)
            body = (t, close)
        else:
            raise AtomizeError(f"expected '{{' or ';' after the function header, found {t.text!r}",
                               entry=name, line=t.line)
        return _RawFunction(name, kind, tuple(linkage), first.line, return_params, params, params_open,
                            last_param_end, directives, body, statements)

    def param_list(self, name: str | None) -> tuple[tuple[PtxParam, ...], int, int | None]:
        """Parse ``( ... )``; return the params, the offset after '(' and after the last param."""
        open_tok = self.expect("(", "'('", name)
        groups: list[list[_Tok]] = [[]]
        depth = 0
        while True:
            t = self.peek()
            if t is None or t.text in ("{", ";", ".entry", ".func"):
                raise AtomizeError("parameter list is not closed by ')'", entry=name, line=open_tok.line)
            self.i += 1
            if t.text == ")" and depth == 0:
                break
            if t.text == "," and depth == 0:
                groups.append([])
                continue
            depth += {"[": 1, "]": -1, "(": 1, ")": -1}.get(t.text, 0)
            groups[-1].append(t)
        if groups == [[]]:
            return (), open_tok.end, None
        params = tuple(self.param(g, name, open_tok.line) for g in groups)
        return params, open_tok.end, groups[-1][-1].end

    def param(self, toks: list[_Tok], name: str | None, line: int) -> PtxParam:
        """One parameter: ``.param``/``.reg``, attributes in any order, then ``name`` or ``name[N]``."""

        def bad(why: str) -> AtomizeError:
            text = " ".join(t.text for t in toks) or "(empty)"
            return AtomizeError(f"cannot read parameter {text!r}: {why}", entry=name,
                                line=toks[0].line if toks else line)

        if not toks or toks[0].text not in (".param", ".reg"):
            raise bad("expected .param or .reg")
        align = ptype = pname = array_len = None
        k = 1
        while k < len(toks):
            t = toks[k]
            if t.text == ".align":
                if k + 1 >= len(toks) or not toks[k + 1].text.isdigit():
                    raise bad(".align needs a number")
                align = int(toks[k + 1].text)
                k += 2
                continue
            if t.text == ".ptr" or t.text in _STATE_SPACES:
                pass
            elif t.text in _TYPES and ptype is None:
                ptype = t.text
            elif t.kind == "word" and not t.text.startswith(".") and pname is None:
                pname = t.text
            elif t.text == "[" and pname is not None:
                if k + 3 != len(toks) or not toks[k + 1].text.isdigit() or toks[k + 2].text != "]":
                    raise bad("expected name[N]")
                array_len = int(toks[k + 1].text)
                break
            else:
                raise bad(f"unexpected {t.text!r}")
            k += 1
        if ptype is None or pname is None:
            raise bad("missing type or name")
        return PtxParam(pname, ptype, align, array_len)

    def function_directives(self, name: str) -> tuple[PtxDirective, ...]:
        out = []
        while (t := self.peek()) is not None and t.text not in ("{", ";"):
            if t.kind != "word" or not t.text.startswith(".") or t.text in _LINKAGE or t.text in (".entry", ".func"):
                raise AtomizeError(f"unexpected {t.text!r} between the parameter list and the body",
                                   entry=name, line=t.line)
            self.i += 1
            args = []
            while (a := self.peek()) is not None and (a.kind in ("number", "string") or a.text == ","):
                self.i += 1
                if a.text != ",":
                    args.append(a.text)
            if t.text == ".pragma":
                self.expect(";", "';' after .pragma", name)
            out.append(PtxDirective(t.text, tuple(args), t.line))
        return tuple(out)

    def body(self, name: str, open_tok: _Tok) -> tuple[_Tok, tuple[tuple[_Tok, ...], ...]]:
        """Statements of a body up to its matching '}' (nested scopes are flattened)."""
        statements: list[tuple[_Tok, ...]] = []
        cur: list[_Tok] = []
        depth, vector = 1, 0  # scope depth; '{...}' vector operands inside a statement
        while True:
            t = self.peek()
            if t is None:
                raise AtomizeError("body is not closed (unbalanced braces)", entry=name, line=open_tok.line)
            if not cur:
                if t.text == "{":
                    depth += 1
                    self.i += 1
                    continue
                if t.text == "}":
                    depth -= 1
                    self.i += 1
                    if depth == 0:
                        return t, tuple(statements)
                    continue
                if t.text in _LINE_DIRECTIVES:
                    self.rest_of_line()
                    continue
                nxt = self.peek(1)
                if t.kind == "word" and nxt is not None and nxt.text == ":":
                    self.i += 2  # a label
                    continue
                if t.text in (".entry", ".func") or (t.text in _LINKAGE and self.is_function_header()):
                    raise AtomizeError("body is not closed before the next function (unbalanced braces)",
                                       entry=name, line=open_tok.line)
            self.i += 1
            if t.text == "{":
                vector += 1
            elif t.text == "}":
                if vector == 0:
                    raise AtomizeError("missing ';' before '}'", entry=name, line=t.line)
                vector -= 1
            elif t.text == ";":
                if vector:
                    raise AtomizeError("unbalanced '{' in a statement", entry=name, line=t.line)
                statements.append(tuple(cur))
                cur = []
                continue
            cur.append(t)


# ---- analysis --------------------------------------------------------------------------


def _opcode(stmt: tuple[_Tok, ...]) -> tuple[int, str]:
    """Index and text of a statement's opcode (after an ``@p`` / ``@!p`` guard)."""
    k = 0
    if stmt and stmt[0].text == "@":
        k = 1
        if k < len(stmt) and stmt[k].text == "!":
            k += 1
        k += 1
    return (k, stmt[k].text) if k < len(stmt) else (len(stmt), "")


def _call_target(stmt: tuple[_Tok, ...], k: int) -> _Tok | None:
    """The target of ``call[.uni] [(ret),] target, ...`` whose opcode is at index ``k``."""
    j = k + 1
    if j < len(stmt) and stmt[j].text == "(":
        depth = 0
        while j < len(stmt):
            depth += {"(": 1, ")": -1}.get(stmt[j].text, 0)
            j += 1
            if depth == 0:
                break
        if j < len(stmt) and stmt[j].text == ",":
            j += 1
    return stmt[j] if j < len(stmt) and stmt[j].kind == "word" else None


def _block_index_hazard(tok: _Tok, opcode: str) -> str | None:
    """Why a read of ``%ctaid``/``%nctaid`` cannot be redirected, or None if it can."""
    if tok.text not in _REG:
        return (f"reads {tok.text} (only the scalar .x/.y/.z forms can be redirected to the virtual "
                "block index)")
    if opcode.rsplit(".", 1)[-1] not in ("u32", "s32", "b32"):
        return (f"reads {tok.text} with '{opcode}' (only 32-bit integer reads can be redirected to the "
                "virtual block index)")
    return None


def _register_hazard(reg: str) -> str | None:
    if _ENVREG.fullmatch(reg):
        return (f"reads {reg}, a driver-provided launch register: cooperative-groups grid synchronization "
                "(this_grid().sync()) keeps its workspace there and needs every block of the grid resident "
                "at once")
    if _CLUSTER_REGISTERS.fullmatch(reg):
        return f"reads {reg}: thread-block clusters cannot be split into atoms"
    if reg == "%gridid":
        return "reads %gridid, which differs between atoms (each atom is a separate launch)"
    if reg == "%current_graph_exec":
        return "reads %current_graph_exec (device-side graph launch assumes one launch of the grid)"
    return None


def _is_op(opcode: str, *names: str) -> bool:
    """Whether ``opcode`` is one of ``names``, with or without further ``.modifiers``."""
    return any(opcode == n or opcode.startswith(n + ".") for n in names)


def _opcode_hazard(opcode: str, stmt: tuple[_Tok, ...]) -> str | None:
    if _is_op(opcode, "griddepcontrol"):
        return f"uses {opcode} (programmatic dependent launch orders whole grids, not atoms)"
    if _is_op(opcode, "barrier.cluster", "mapa", "getctarank"):
        return f"uses {opcode}: thread-block clusters cannot be split into atoms"
    for t in stmt:
        if "::cluster" in t.text:
            return f"uses {t.text} (cluster state space or scope): thread-block clusters cannot be split into atoms"
    return None


def _extern_hazard(callee: str) -> str | None:
    if callee in _HARMLESS_EXTERNS:
        return None
    if callee.startswith("cudaCG"):
        return (f"calls {callee}: cooperative-groups grid synchronization needs every block of the grid "
                "resident at once")
    if callee.startswith("cuda"):
        return (f"calls the device runtime ({callee}): device-side launches and their completion rules "
                "assume the grid is launched once")
    return (f"calls external function {callee!r}, whose body is not in this module (its reads of the block "
            "index could not be redirected)")


def _directive_hazard(d: PtxDirective) -> str | None:
    if d.name in _CLUSTER_DIRECTIVES:
        return f"declares {d.name}: thread-block clusters cannot be split into atoms"
    if d.name not in _PLAIN_FUNCTION_DIRECTIVES:
        return f"has unknown directive {d.name}; cannot tell whether splitting the grid is safe"
    return None


def _analyze(raw: _RawFunction, names: Mapping[str, _RawFunction], aliases: Mapping[str, str],
             address_taken: set[str]) -> PtxFunction:
    """Build a `PtxFunction`; adds names used other than as call targets to ``address_taken``."""
    reads: dict[str, list[int]] = {}
    sites: list[_Site] = []
    calls: list[str] = []
    indirect: list[int] = []
    hazards = [Hazard(d.line, raw.name, why) for d in raw.directives if raw.kind == "entry"
               and (why := _directive_hazard(d))]
    for stmt in raw.statements:
        k, opcode = _opcode(stmt)
        why = _opcode_hazard(opcode, stmt)
        if why:
            hazards.append(Hazard(stmt[k].line, raw.name, why))
        target = _call_target(stmt, k) if _is_op(opcode, "call") else None
        if target is not None:
            if target.text.startswith("%"):
                indirect.append(target.line)
            else:
                callee = aliases.get(target.text, target.text)
                if callee not in names:
                    raise AtomizeError(f"call to undeclared function {target.text!r}", entry=raw.name,
                                       line=target.line)
                if names[callee].body is None and (why := _extern_hazard(callee)):
                    hazards.append(Hazard(target.line, raw.name, why))
                calls.append(target.text)
        for t in stmt:
            if t.kind != "word":
                continue
            if t is not target and t.text in names:
                address_taken.add(t.text)
            if not t.text.startswith("%") or not _SPECIAL.fullmatch(t.text):
                continue
            reads.setdefault(t.text, []).append(t.line)
            if _BLOCK_INDEX.fullmatch(t.text):
                why = _block_index_hazard(t, opcode)
                if why is None:
                    sites.append(_Site(t.start, t.end, t.text))
            else:
                why = _register_hazard(t.text)
            if why:
                hazards.append(Hazard(t.line, raw.name, why))
    body = raw.body
    return PtxFunction(
        name=raw.name, kind=raw.kind, params=raw.params, first_line=raw.first_line,
        body_start_line=body[0].line if body else None, body_end_line=body[1].line if body else None,
        special_reads={k2: tuple(v) for k2, v in reads.items()}, calls=tuple(dict.fromkeys(calls)),
        linkage=raw.linkage, return_params=raw.return_params, directives=raw.directives,
        indirect_call_lines=tuple(indirect), hazards=tuple(hazards),
        anchors=_Anchors(raw.params_open, raw.last_param_end, body[0].end if body else None, tuple(sites)),
    )


def parse_module(text: str) -> PtxModule:
    """Read a PTX module: header, functions, calls, special-register reads and hazards.

    Parameters
    ----------
    text : str
        PTX as NVRTC, NVVM (Numba) or a person writes it.

    Returns
    -------
    PtxModule

    Raises
    ------
    AtomizeError
        For malformed PTX (unbalanced braces, missing ``.version``/``.target``, an entry
        without a parameter list, text where a directive is expected, ...), naming the
        function when known and the 1-based line.
    """
    parser = _Parser(text)
    header, raws, aliases, module_names = parser.module()
    by_name: dict[str, _RawFunction] = {}
    for r in raws:
        old = by_name.get(r.name)
        if old is not None and old.kind != r.kind:
            raise AtomizeError(f"{r.name!r} is declared both as .{old.kind} and .{r.kind}", entry=r.name,
                               line=r.first_line)
        if old is not None and old.body is not None and r.body is not None:
            raise AtomizeError(f"function {r.name!r} is defined twice", entry=r.name, line=r.first_line)
        if old is None or r.body is not None:
            by_name[r.name] = r
    address_taken = {n for n in module_names if n in by_name}
    functions = {n: _analyze(r, by_name, aliases, address_taken) for n, r in by_name.items()}
    version, _ = header[".version"]
    target, target_tok = header[".target"]
    address_size, size_tok = header.get(".address_size", (32, None))
    header_end = max(target_tok.end, size_tok.end if size_tok is not None else 0)
    return PtxModule(version, target, address_size, functions, dict(aliases),
                     frozenset(aliases.get(n, n) for n in address_taken), header_end)


def reachable_functions(module: PtxModule, name: str) -> tuple[str, ...]:
    """Functions reachable by calls from ``name`` (itself excluded), in discovery order.

    An indirect call is taken to reach every function whose address is taken.

    Parameters
    ----------
    module : PtxModule
    name : str
        An entry or function of ``module``.

    Returns
    -------
    tuple of str
    """
    seen: dict[str, None] = {}
    stack = [name]
    while stack:
        fn = module.functions[stack.pop()]
        callees = [module.aliases.get(c, c) for c in fn.calls]
        if fn.indirect_call_lines:
            callees += sorted(module.address_taken)
        for c in reversed(callees):
            if c != name and c not in seen and module.functions[c].kind == "func":
                seen[c] = None
                stack.append(c)
    return tuple(seen)


def entry_hazards(module: PtxModule, entry: str) -> tuple[Hazard, ...]:
    """Everything that prevents splitting ``entry``, in it and in every function it reaches.

    What is checked (each assumes every block of the grid runs in one launch):

    - cooperative-groups grid synchronization: NVRTC 13.5 inlines ``this_grid().sync()``
      as reads of ``%envreg1``/``%envreg2`` (the grid-sync workspace) followed by an
      atomic arrive-and-spin on it; older toolchains and ``-rdc`` builds call
      ``cudaCG*`` functions of the device runtime;
    - thread-block clusters: the ``%cluster_*``, ``%clusterid``, ``%nclusterid`` and
      ``%is_explicit_cluster`` registers, ``.reqnctapercluster``, ``.explicitcluster``,
      ``.maxclusterrank`` and ``.blocksareclusters``, ``barrier.cluster``, ``mapa``,
      ``getctarank`` and any ``::cluster`` state space or scope;
    - ``%gridid`` (differs per atom), ``griddepcontrol`` (programmatic dependent launch),
      ``%current_graph_exec`` and device-runtime calls (device-side launches);
    - calls to functions without a body in the module (other than printf, malloc, free
      and assert), whose block-index reads could not be redirected;
    - reads of ``%ctaid``/``%nctaid`` other than 32-bit reads of ``.x``/``.y``/``.z``;
    - unknown directives on the entry.

    Not detectable, and not checked: hand-written inter-block waiting (a block spinning on
    a flag that a *later* block sets) deadlocks when the later block is in a later atom;
    it is already unsafe under CUDA's rules, which never promise co-residency outside
    cooperative launches.

    Parameters
    ----------
    module : PtxModule
    entry : str

    Returns
    -------
    tuple of Hazard
        Sorted by line; empty when the entry can be atomized.
    """
    names = (entry, *reachable_functions(module, entry))
    hazards = [h for n in names for h in module.functions[n].hazards]
    # A call through a register may reach any function whose address is taken, including
    # external ones (direct calls to those are hazards of the caller already).
    externs = [(n, why) for n in sorted(module.address_taken)
               if not module.functions[n].has_body and (why := _extern_hazard(n))]
    for n in names:
        for line in module.functions[n].indirect_call_lines:
            hazards += [Hazard(line, n, f"makes an indirect call, which may reach {callee!r}: {why}")
                        for callee, why in externs]
    return tuple(sorted(hazards, key=lambda h: h.line))


def _describe(h: Hazard, entry: str) -> str:
    """The hazard's reason, naming the function when it is not ``entry`` itself."""
    return h.reason if h.function == entry else f"{h.reason} (in function {h.function!r})"


# ---- rewriting -------------------------------------------------------------------------


def _entry_prelude(store_slot: bool) -> str:
    r = _REG
    d = [f"%{_PREFIX}rd{i}" for i in range(9)]
    w = [f"%{_PREFIX}r{i}" for i in range(7)]
    wide, done = f"${_PREFIX}wide", f"${_PREFIX}done"
    lines = [
        "// lithos atom prelude: this launch runs blocks [base, base + count) of the original grid;",
        "// lithos: recover each block's original 3-D index (x fastest) and the original grid size.",
        f".reg .b32 {r['%ctaid.x']}, {r['%ctaid.y']}, {r['%ctaid.z']};",
        f".reg .b32 {r['%nctaid.x']}, {r['%nctaid.y']}, {r['%nctaid.z']};",
        f".reg .b32 %{_PREFIX}r<7>;",
        f".reg .b64 %{_PREFIX}rd<9>;",
        f".reg .pred %{_PREFIX}p0;",
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
        f"setp.gt.u64 %{_PREFIX}p0, {d[7]}, 4294967295;",
        f"@%{_PREFIX}p0 bra {wide};",
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
        lines += [f"st.shared.u32 [{BLOCKINFO}+{_SLOT_OFFSET[v]}], {_REG[v]};" for v in _VALUES]
    lines.append("// end of lithos atom prelude")
    return "".join(f"\n\t{ln}" for ln in lines)


def _func_prelude(values: Sequence[str]) -> str:
    lines = ["// lithos: the virtual block index and original grid, stored by the entry's prelude"]
    for v in values:
        lines.append(f".reg .b32 {_REG[v]};")
        lines.append(f"ld.shared.u32 {_REG[v]}, [{BLOCKINFO}+{_SLOT_OFFSET[v]}];")
    return "".join(f"\n\t{ln}" for ln in lines)


def _refuse(refused: Mapping[str, Hazard]) -> UnsupportedKernelError:
    problems = tuple((name, h.line, _describe(h, name)) for name, h in refused.items())
    if len(problems) == 1:
        name, line, text = problems[0]
        return UnsupportedKernelError(f"cannot be split into atoms: {text}", entry=name, line=line,
                                      problems=problems)
    listing = "; ".join(f"entry {name!r} line {line}: {text}" for name, line, text in problems)
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
        The PTX module.
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
    masked = _mask(text)
    if (k := masked.find(_PREFIX)) >= 0:
        raise AtomizeError(f"the PTX already uses the reserved prefix {_PREFIX!r} (was it rewritten twice?)",
                           line=text.count("\n", 0, k) + 1)
    module = parse_module(text)
    entries = module.entries
    reach = {e.name: set(reachable_functions(module, e.name)) for e in entries}
    refused: dict[str, Hazard] = {}  # entry -> the first thing that prevents splitting it
    for e in entries:
        hazards = entry_hazards(module, e.name)
        if hazards:
            refused[e.name] = hazards[0]
    if refused and not skip_unsupported:
        raise _refuse(refused)
    patchable = {f.name for f in module.functions.values() if f.kind == "func" and f.anchors and f.anchors.sites}
    _refuse_sharers(module, reach, patchable, refused)
    atomized = [e for e in entries if e.name not in refused]
    reached = set().union(*(reach[e.name] for e in atomized))
    patched = tuple(n for n in module.functions if n in reached and n in patchable)

    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in the input text
    for name in patched:
        a = module.functions[name].anchors
        assert a is not None and a.body_open is not None
        read = [v for v in _VALUES if any(site.value == v for site in a.sites)]
        edits.append((a.body_open, a.body_open, _func_prelude(read)))
        edits += [(s.start, s.end, _REG[s.value]) for s in a.sites]
    for e in atomized:
        a = e.anchors
        assert a is not None and a.body_open is not None and a.params_open is not None
        decls = [f"\t.param {ptype} {pname}" for pname, ptype in ATOM_PARAMS]
        if a.last_param_end is None:
            edits.append((a.params_open, a.params_open, "\n" + ",\n".join(decls) + "\n"))
        else:
            edits.append((a.last_param_end, a.last_param_end, ",\n" + ",\n".join(decls)))
        edits.append((a.body_open, a.body_open, _entry_prelude(bool(reach[e.name] & set(patched)))))
        edits += [(s.start, s.end, _REG[s.value]) for s in a.sites]
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
        reason = None if h is None else f"{_describe(h, e.name)} (line {h.line})"
        results[e.name] = EntryRewrite(e.name, h is None, reason, len(e.params), None if h is None else h.line)
    return RewriteResult(out, results, patched, module.version)


def _refuse_sharers(module: PtxModule, reach: Mapping[str, set[str]], patchable: set[str],
                    refused: dict[str, Hazard]) -> None:
    """Add to ``refused`` every entry that reaches a patchable function a refused entry reaches.

    Repeats until nothing changes, since each newly refused entry may share functions
    with others in turn.
    """
    changed = True
    while changed:
        changed = False
        for e in module.entries:
            if e.name in refused:
                continue
            for other, why in list(refused.items()):
                shared = sorted(reach[e.name] & reach[other] & patchable)
                if shared:
                    f = module.functions[shared[0]]
                    refused[e.name] = Hazard(f.first_line, e.name, (
                        f"shares device function {f.name!r}, which reads the block index, with entry {other!r}, "
                        f"which cannot be split ({_describe(why, other)})"))
                    changed = True
                    break


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

    Raises
    ------
    ValueError
        If ``version`` is not two non-negative ints.
    AtomizeError
        If the module has no ``.version`` directive.
    """
    if (len(version) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in version)):
        raise ValueError(f"version must be (major, minor) non-negative ints, got {version!r}")
    m = re.search(r"(?m)^[ \t]*\.version[ \t]+(\d+\.\d+)", _mask(text))
    if m is None:
        raise AtomizeError("missing .version directive", line=1)
    return text[:m.start(1)] + f"{version[0]}.{version[1]}" + text[m.end(1):]


# ---- command line ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: rewrite every entry of a PTX file.

    ``python -m lithos_atom.ptx IN.ptx -o OUT.ptx [--skip-unsupported]``

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success; 2 when the input cannot be read or written, is malformed, or holds a
        kernel that cannot be split (without ``--skip-unsupported``).
    """
    prog = "python -m lithos_atom.ptx"
    p = argparse.ArgumentParser(prog=prog, description="Rewrite the kernels of a PTX module into atomizable ones.")
    p.add_argument("input", help="PTX file to read")
    p.add_argument("-o", "--output", required=True, help="PTX file to write")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="leave kernels that cannot be split unchanged (listed on stderr) instead of failing")
    args = p.parse_args(argv)
    try:
        with open(args.input, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{prog}: error: cannot read {args.input}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    try:
        result = rewrite_module(text, skip_unsupported=args.skip_unsupported)
    except UnsupportedKernelError as exc:
        print(f"{prog}: error: {args.input}: kernels that cannot be split into atoms "
              "(use --skip-unsupported to leave them unchanged):", file=sys.stderr)
        for name, line, reason in exc.problems:
            print(f"  {name} (line {line}): {reason}", file=sys.stderr)
        return 2
    except AtomizeError as exc:
        print(f"{prog}: error: {args.input}: {exc}", file=sys.stderr)
        return 2
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(result.ptx)
    except OSError as exc:
        print(f"{prog}: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for e in result.entries.values():
        if e.atomized:
            print(f"{e.name}: atomized ({e.num_user_params} user params + {len(ATOM_PARAMS)})", file=sys.stderr)
        else:
            print(f"{e.name}: left unchanged: {e.reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
