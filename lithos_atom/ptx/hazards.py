"""The hazard analysis: what in a kernel prevents splitting its grid into atoms.

`analyze_function` reads one function's statements for calls, special-register reads and
hazards; `entry_hazards` collects them over everything an entry reaches
(`reachable_functions`), and `CallGraph` answers both for every entry of a module. The
rules assume what CUDA promises: blocks of one launch are independent unless the kernel
synchronizes the grid, uses clusters or launches work itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from lithos_atom.errors import AtomizeError
from lithos_atom.ptx.lexer import Token, quote, shorten
from lithos_atom.ptx.model import VIRTUAL_REG, Anchors, Hazard, PtxDirective, PtxFunction, PtxModule, RawFunction, Site

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


def _opcode(stmt: tuple[Token, ...]) -> tuple[int, str]:
    """Index and text of a statement's opcode (after an ``@p`` / ``@!p`` guard)."""
    k = 0
    if stmt and stmt[0].text == "@":
        k = 1
        if k < len(stmt) and stmt[k].text == "!":
            k += 1
        k += 1
    return (k, stmt[k].text) if k < len(stmt) else (len(stmt), "")


def _call_target(stmt: tuple[Token, ...], k: int) -> Token | None:
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


def _block_index_hazard(tok: Token, opcode: str) -> str | None:
    """Why a read of ``%ctaid``/``%nctaid`` cannot be redirected, or None if it can."""
    if tok.text not in VIRTUAL_REG:
        return (f"reads {shorten(tok.text)} (only the scalar .x/.y/.z forms can be redirected to the virtual "
                "block index)")
    if opcode.rsplit(".", 1)[-1] not in ("u32", "s32", "b32"):
        return (f"reads {shorten(tok.text)} with '{shorten(opcode)}' (only 32-bit integer reads can be redirected "
                "to the virtual block index)")
    return None


def _register_hazard(reg: str) -> str | None:
    if _ENVREG.fullmatch(reg):
        return (f"reads {shorten(reg)}, a driver-provided launch register: cooperative-groups grid synchronization "
                "(this_grid().sync()) keeps its workspace there and needs every block of the grid resident "
                "at once")
    if _CLUSTER_REGISTERS.fullmatch(reg):
        return f"reads {shorten(reg)}: thread-block clusters cannot be split into atoms"
    if reg == "%gridid":
        return "reads %gridid, which differs between atoms (each atom is a separate launch)"
    if reg == "%current_graph_exec":
        return "reads %current_graph_exec (device-side graph launch assumes one launch of the grid)"
    return None


def _is_op(opcode: str, *names: str) -> bool:
    """Whether ``opcode`` is one of ``names``, with or without further ``.modifiers``."""
    return any(opcode == n or opcode.startswith(n + ".") for n in names)


def _opcode_hazard(opcode: str, stmt: tuple[Token, ...]) -> str | None:
    if _is_op(opcode, "griddepcontrol"):
        return f"uses {shorten(opcode)} (programmatic dependent launch orders whole grids, not atoms)"
    if _is_op(opcode, "barrier.cluster", "mapa", "getctarank"):
        return f"uses {shorten(opcode)}: thread-block clusters cannot be split into atoms"
    for t in stmt:
        if "::cluster" in t.text:
            return (f"uses {shorten(t.text)} (cluster state space or scope): thread-block clusters cannot be split "
                    "into atoms")
    return None


def _extern_hazard(callee: str) -> str | None:
    if callee in _HARMLESS_EXTERNS:
        return None
    if callee.startswith("cudaCG"):
        return (f"calls {shorten(callee)}: cooperative-groups grid synchronization needs every block of the grid "
                "resident at once")
    if callee.startswith("cuda"):
        return (f"calls the device runtime ({shorten(callee)}): device-side launches and their completion rules "
                "assume the grid is launched once")
    return (f"calls external function {quote(callee)}, whose body is not in this module (its reads of the block "
            "index could not be redirected)")


def _directive_hazard(d: PtxDirective) -> str | None:
    if d.name in _CLUSTER_DIRECTIVES:
        return f"declares {shorten(d.name)}: thread-block clusters cannot be split into atoms"
    if d.name not in _PLAIN_FUNCTION_DIRECTIVES:
        return f"has unknown directive {shorten(d.name)}; cannot tell whether splitting the grid is safe"
    return None


def analyze_function(raw: RawFunction, names: Mapping[str, RawFunction], aliases: Mapping[str, str],
                     address_taken: set[str]) -> PtxFunction:
    """Read one function's statements into a `PtxFunction`.

    Parameters
    ----------
    raw : RawFunction
    names : mapping of str to RawFunction
        Every function of the module, by name.
    aliases : mapping of str to str
        ``.alias`` names to their targets.
    address_taken : set of str
        Updated with the functions ``raw`` names other than as a direct call target.

    Returns
    -------
    PtxFunction

    Raises
    ------
    AtomizeError
        For a call to a function the module does not declare.
    """
    reads: dict[str, list[int]] = {}
    sites: list[Site] = []
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
                    raise AtomizeError(f"call to undeclared function {quote(target.text)}", entry=raw.name,
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
                    sites.append(Site(t.start, t.end, t.text))
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
        anchors=Anchors(raw.params_open, raw.last_param_end, body[0].end if body else None, tuple(sites)),
    )


class CallGraph:
    """What every entry of one module reaches and what prevents splitting it, read once per module.

    A call through a register is taken to reach every function whose address is taken.
    Each query costs time linear in what the entry reaches, however many entries ask.

    Parameters
    ----------
    module : PtxModule
    """

    def __init__(self, module: PtxModule):
        self.module = module
        self._address_taken = sorted(module.address_taken)
        # External functions an indirect call may reach, with why each prevents splitting
        # (direct calls to them are hazards of the caller already).
        self._indirect_externs = [(n, why) for n in self._address_taken
                                  if not module.functions[n].has_body and (why := _extern_hazard(n))]

    def reachable(self, name: str) -> tuple[str, ...]:
        """Functions reachable by calls from ``name`` (itself excluded), in discovery order.

        Parameters
        ----------
        name : str
            An entry or function of the module.

        Returns
        -------
        tuple of str
        """
        functions, aliases = self.module.functions, self.module.aliases
        seen: dict[str, None] = {}
        stack = [name]
        indirect_followed = False
        while stack:
            fn = functions[stack.pop()]
            callees = [aliases.get(c, c) for c in fn.calls]
            if fn.indirect_call_lines and not indirect_followed:
                callees += self._address_taken  # once: later indirect calls reach nothing new
                indirect_followed = True
            for c in reversed(callees):
                if c != name and c not in seen and functions[c].kind == "func":
                    seen[c] = None
                    stack.append(c)
        return tuple(seen)

    def hazards(self, entry: str, reach: Sequence[str]) -> list[Hazard]:
        """Every hazard of ``entry`` and of the functions it reaches, in the order found.

        Parameters
        ----------
        entry : str
        reach : sequence of str
            ``self.reachable(entry)``.

        Returns
        -------
        list of Hazard
            Unsorted: each function's own, then one per indirect call and external function
            the call may reach.
        """
        names = (entry, *reach)
        hazards = [h for n in names for h in self.module.functions[n].hazards]
        for n in names:
            for line in self.module.functions[n].indirect_call_lines:
                hazards += [_indirect_hazard(line, n, callee, why) for callee, why in self._indirect_externs]
        return hazards

    def first_hazard(self, entry: str, reach: Sequence[str]) -> Hazard | None:
        """``entry_hazards(module, entry)[0]`` (or None), without listing every hazard.

        Parameters
        ----------
        entry : str
        reach : sequence of str
            ``self.reachable(entry)``.

        Returns
        -------
        Hazard or None
        """
        names = (entry, *reach)
        first = min((h for n in names for h in self.module.functions[n].hazards), key=lambda h: h.line, default=None)
        if self._indirect_externs:
            callee, why = self._indirect_externs[0]
            for n in names:
                for line in self.module.functions[n].indirect_call_lines:
                    if first is None or line < first.line:
                        first = _indirect_hazard(line, n, callee, why)
        return first


def _indirect_hazard(line: int, function: str, callee: str, why: str) -> Hazard:
    return Hazard(line, function, f"makes an indirect call, which may reach {quote(callee)}: {why}")


def reachable_functions(module: PtxModule, name: str) -> tuple[str, ...]:
    """Functions reachable by calls from ``name`` (itself excluded), in discovery order.

    An indirect call is taken to reach every function whose address is taken. For many
    queries on one module, use one `CallGraph`.

    Parameters
    ----------
    module : PtxModule
    name : str
        An entry or function of ``module``.

    Returns
    -------
    tuple of str
    """
    return CallGraph(module).reachable(name)


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
    graph = CallGraph(module)
    return tuple(sorted(graph.hazards(entry, graph.reachable(entry)), key=lambda h: h.line))


def describe(h: Hazard, entry: str) -> str:
    """The hazard's reason, naming the function when it is not ``entry`` itself.

    Parameters
    ----------
    h : Hazard
    entry : str
        The entry that reaches ``h.function``.

    Returns
    -------
    str
    """
    return h.reason if h.function == entry else f"{h.reason} (in function {quote(h.function)})"

