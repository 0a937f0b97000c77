"""The PTX model: what the reader gives back, what the rewriter reports, and the atom ABI.

A `PtxModule` holds one `PtxFunction` per ``.entry``/``.func``; each records its
parameters, calls, special-register reads, hazards and the text offsets the rewriter edits
at. `RewriteResult` and `EntryRewrite` say what `rewrite_module` did. `ATOM_PARAMS` and
`BLOCKINFO` are the names an atomized module adds (see `lithos_atom.ptx.rewrite`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from lithos_atom.ptx.lexer import Token

ATOM_PARAMS: tuple[tuple[str, str], ...] = (
    ("__lithos_atom_base", ".u64"),
    ("__lithos_grid_x", ".u32"),
    ("__lithos_grid_y", ".u32"),
    ("__lithos_grid_z", ".u32"),
)
"""(name, type) of the parameters appended to every atomized entry, in order."""

BLOCKINFO = "__lithos_blockinfo"
"""Module-scope ``.shared`` slot through which device functions see the virtual index."""

RESERVED_PREFIX = "__lithos_"
"""Prefix of every name the rewriter adds; compilers never generate it."""

VIRTUAL_VALUES = ("%ctaid.x", "%ctaid.y", "%ctaid.z", "%nctaid.x", "%nctaid.y", "%nctaid.z")
"""The six values the rewriter provides, in the order of the shared slot."""

VIRTUAL_REG = {v: "%" + RESERVED_PREFIX + v[1:].replace(".", "_") for v in VIRTUAL_VALUES}
"""The register each of `VIRTUAL_VALUES` lives in after the prelude."""

SLOT_OFFSET = {v: 4 * i for i, v in enumerate(VIRTUAL_VALUES)}
"""Byte offset of each of `VIRTUAL_VALUES` in `BLOCKINFO`."""


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
class Site:
    """A read of ``%ctaid.*``/``%nctaid.*`` to be replaced: text offsets and the value read.

    Attributes
    ----------
    start, end : int
        Offsets of the register name in the module's text.
    value : str
        One of `VIRTUAL_VALUES`.
    """

    start: int
    end: int
    value: str


@dataclasses.dataclass(frozen=True)
class Anchors:
    """Text offsets the rewriter edits at.

    Attributes
    ----------
    params_open : int or None
        Just after the parameter list's ``(``.
    last_param_end : int or None
        Just after the last parameter (None without parameters).
    body_open : int or None
        Just after the body's ``{`` (None for a declaration).
    sites : tuple of Site
        Block-index reads the rewriter redirects.
    """

    params_open: int | None
    last_param_end: int | None
    body_open: int | None
    sites: tuple[Site, ...]


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
    anchors: Anchors | None = dataclasses.field(default=None, repr=False, compare=False)

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



@dataclasses.dataclass
class RawFunction:
    """A function as parsed, before the module-wide analysis (see `PtxFunction`).

    Attributes
    ----------
    name, kind, linkage, first_line, return_params, params, directives
        As in `PtxFunction`.
    params_open, last_param_end : int or None
        As in `Anchors`.
    body : tuple of Token or None
        The body's ``{`` and ``}``; None for a declaration.
    statements : tuple of tuple of Token
        The body's statements without their ``;`` (labels, scopes and debug lines dropped).
    """

    name: str
    kind: str
    linkage: tuple[str, ...]
    first_line: int
    return_params: tuple[PtxParam, ...]
    params: tuple[PtxParam, ...]
    params_open: int | None
    last_param_end: int | None
    directives: tuple[PtxDirective, ...]
    body: tuple[Token, Token] | None
    statements: tuple[tuple[Token, ...], ...]
