"""The PTX parser: the header, module-scope declarations and each function's parameters,
directives and body statements, read into `RawFunction`s and then, with
`lithos_atom.ptx.hazards.analyze_function`, into a `PtxModule`.
"""

from __future__ import annotations

import re

from lithos_atom.errors import AtomizeError
from lithos_atom.ptx.hazards import analyze_function
from lithos_atom.ptx.lexer import Token, normalize, quote, tokenize
from lithos_atom.ptx.model import PtxDirective, PtxModule, PtxParam, RawFunction

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
_OPERAND_END = frozenset({")", "]", "}"})
_NO_OPERANDS = frozenset({"ret", "exit", "trap", "brkpt"})


class _Parser:
    def __init__(self, text: str):
        self.toks = tokenize(text)
        self.i = 0
        self.last_line = max(1, text.count("\n") + (not text.endswith("\n")))

    # -- token helpers

    def peek(self, k: int = 0) -> Token | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def at(self, text: str) -> bool:
        t = self.peek()
        return t is not None and t.text == text

    def next(self, what: str, entry: str | None = None) -> Token:
        t = self.peek()
        if t is None:
            line = self.toks[-1].line if self.toks else self.last_line
            raise AtomizeError(f"unexpected end of module: expected {what}", entry=entry, line=line)
        self.i += 1
        return t

    def expect(self, text: str, what: str, entry: str | None = None) -> Token:
        t = self.next(what, entry)
        if t.text != text:
            raise AtomizeError(f"expected {what}, found {quote(t.text)}", entry=entry, line=t.line)
        return t

    # -- module

    def module(self) -> tuple[dict, list[RawFunction], dict[str, str], set[str]]:
        header: dict = {}
        functions: list[RawFunction] = []
        aliases: dict[str, tuple[str, int]] = {}  # alias -> (target, line)
        module_names: set[str] = set()  # words used in module-scope declarations
        while (t := self.peek()) is not None:
            if t.kind != "word" or not t.text.startswith("."):
                raise AtomizeError(f"unexpected {quote(t.text)} where a directive is expected", line=t.line)
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
                raise AtomizeError(f"unknown directive {quote(t.text)} at module scope", line=t.line)
        self.require_header(header, self.last_line)
        declared = {f.name for f in functions}
        for alias, (target, line) in aliases.items():
            if target not in declared:
                raise AtomizeError(f".alias {quote(alias)} names undeclared function {quote(target)}", line=line)
        return header, functions, {a: target for a, (target, _) in aliases.items()}, module_names

    def require_header(self, header: dict, line: int) -> None:
        for d in (".version", ".target"):
            if d not in header:
                raise AtomizeError(f"missing {d} directive before this line", line=line)

    def rest_of_line(self) -> list[Token]:
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

    def declaration(self) -> list[Token]:
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

    def function(self) -> RawFunction:
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
            raise AtomizeError(f"expected the name of the .{kind}, found {quote(name_tok.text)}", line=name_tok.line)
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
            raise AtomizeError(f"expected '{{' or ';' after the function header, found {quote(t.text)}",
                               entry=name, line=t.line)
        return RawFunction(name, kind, tuple(linkage), first.line, return_params, params, params_open,
                            last_param_end, directives, body, statements)

    def param_list(self, name: str | None) -> tuple[tuple[PtxParam, ...], int, int | None]:
        """Parse ``( ... )``; return the params, the offset after '(' and after the last param."""
        open_tok = self.expect("(", "'('", name)
        groups: list[list[Token]] = [[]]
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

    def param(self, toks: list[Token], name: str | None, line: int) -> PtxParam:
        """One parameter: ``.param``/``.reg``, attributes in any order, then ``name`` or ``name[N]``."""

        def bad(why: str) -> AtomizeError:
            text = " ".join(t.text for t in toks) or "(empty)"
            return AtomizeError(f"cannot read parameter {quote(text)}: {why}", entry=name,
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
                raise bad(f"unexpected {quote(t.text)}")
            k += 1
        if ptype is None or pname is None:
            raise bad("missing type or name")
        return PtxParam(pname, ptype, align, array_len)

    def function_directives(self, name: str) -> tuple[PtxDirective, ...]:
        out = []
        while (t := self.peek()) is not None and t.text not in ("{", ";"):
            if t.kind != "word" or not t.text.startswith(".") or t.text in _LINKAGE or t.text in (".entry", ".func"):
                raise AtomizeError(f"unexpected {quote(t.text)} between the parameter list and the body",
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

    def body(self, name: str, open_tok: Token) -> tuple[Token, tuple[tuple[Token, ...], ...]]:
        """Statements of a body up to its matching '}' (nested scopes are flattened)."""
        statements: list[tuple[Token, ...]] = []
        cur: list[Token] = []
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
                if cur:
                    _check_instruction(cur, name)
                statements.append(tuple(cur))
                cur = []
                continue
            if cur and _starts_next_statement(cur, t):
                raise AtomizeError(f"missing ';' at the end of the line (the next line starts with {quote(t.text)})",
                                   entry=name, line=cur[-1].line)
            cur.append(t)


def _guard_length(stmt: list[Token]) -> int:
    """Tokens of the ``@p``/``@!p`` guard that starts ``stmt`` (0 without one)."""
    if stmt[0].text != "@":
        return 0
    return 3 if len(stmt) > 1 and stmt[1].text == "!" else 2


def _check_instruction(stmt: list[Token], name: str) -> None:
    """Refuse a statement that does not start with an instruction or directive (after its guard)."""
    k = _guard_length(stmt)
    if k and (len(stmt) < k or stmt[k - 1].kind != "word"):
        raise AtomizeError("guard '@' without a predicate", entry=name, line=stmt[0].line)
    if k >= len(stmt) or stmt[k].kind != "word" or stmt[k].text[0] in "%$":
        found = "nothing" if k >= len(stmt) else quote(stmt[k].text)
        guard = f" after the guard {quote(''.join(t.text for t in stmt[:k]))}" if k else ""
        raise AtomizeError(f"expected an instruction{guard}, found {found}", entry=name, line=stmt[0].line)


def _starts_next_statement(cur: list[Token], t: Token) -> bool:
    """Whether ``t``, the next token of the instruction ``cur``, can only start another statement.

    True when ``t`` opens a later line with a guard; with a name (an opcode or a label) right
    after an operand, with no ``,`` or bracket between; or, right after the opcode, with an
    opcode (a name with a dot: call and branch targets have none) or with any name after
    one that takes no operands. The ``;`` before ``t`` is then missing. Names of registers
    and directives are never taken for a new statement.
    """
    prev = cur[-1]
    k = _guard_length(cur)
    if t.line == prev.line or cur[0].text.startswith(".") or len(cur) <= k:
        return False
    if t.text == "@":
        return True
    if t.kind != "word" or t.text[0] in "%.":
        return False
    if len(cur) == k + 1:  # the opcode alone
        return "." in t.text or prev.text.split(".")[0] in _NO_OPERANDS
    return prev.kind in ("word", "number") or prev.text in _OPERAND_END


def parse_module(text: str) -> PtxModule:
    """Read a PTX module: header, functions, calls, special-register reads and hazards.

    Parameters
    ----------
    text : str
        PTX as NVRTC, NVVM (Numba) or a person writes it (see `normalize` for a byte-order
        mark and CR line ends).

    Returns
    -------
    PtxModule
        Its offsets are into ``normalize(text)``.

    Raises
    ------
    AtomizeError
        For malformed PTX (unbalanced braces, missing ``.version``/``.target``, an entry
        without a parameter list, text where a directive is expected, ...), naming the
        function when known and the 1-based line.
    """
    parser = _Parser(normalize(text))
    header, raws, aliases, module_names = parser.module()
    by_name: dict[str, RawFunction] = {}
    for r in raws:
        old = by_name.get(r.name)
        if old is not None and old.kind != r.kind:
            raise AtomizeError(f"{quote(r.name)} is declared both as .{old.kind} and .{r.kind}", entry=r.name,
                               line=r.first_line)
        if old is not None and old.body is not None and r.body is not None:
            raise AtomizeError(f"function {quote(r.name)} is defined twice", entry=r.name, line=r.first_line)
        if old is None or r.body is not None:
            by_name[r.name] = r
    address_taken = {n for n in module_names if n in by_name}
    functions = {n: analyze_function(r, by_name, aliases, address_taken) for n, r in by_name.items()}
    version, _ = header[".version"]
    target, target_tok = header[".target"]
    address_size, size_tok = header.get(".address_size", (32, None))
    header_end = max(target_tok.end, size_tok.end if size_tok is not None else 0)
    return PtxModule(version, target, address_size, functions, dict(aliases),
                     frozenset(aliases.get(n, n) for n in address_taken), header_end)
