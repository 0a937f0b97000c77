"""The PTX lexer: comments blanked out (offsets kept), then tokens with their lines."""

from __future__ import annotations

import dataclasses
import re

from lithos_atom.errors import AtomizeError

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


@dataclasses.dataclass(frozen=True)
class Token:
    """One token: its kind (``word``, ``number``, ``string`` or ``punct``), text, offsets and line.

    Attributes
    ----------
    kind : str
    text : str
    start, end : int
        Offsets in the module's text.
    line : int
        1-based line.
    """

    kind: str
    text: str
    start: int
    end: int
    line: int


def mask(text: str) -> str:
    """``text`` with every comment replaced by spaces (newlines kept), so offsets match.

    Parameters
    ----------
    text : str
        A PTX module.

    Returns
    -------
    str

    Raises
    ------
    AtomizeError
        For a ``/*`` comment that is never closed.
    """

    def blank(m: re.Match[str]) -> str:
        s = m.group()
        if s.startswith('"'):
            return s
        if s.startswith("/*") and not (len(s) >= 4 and s.endswith("*/")):
            raise AtomizeError("unterminated /* comment", line=text.count("\n", 0, m.start()) + 1)
        return re.sub(r"[^\n]", " ", s)

    return _COMMENT_OR_STRING.sub(blank, text)


def tokenize(masked: str) -> list[Token]:
    """The tokens of a masked module (see `mask`), whitespace dropped.

    Parameters
    ----------
    masked : str

    Returns
    -------
    list of Token

    Raises
    ------
    AtomizeError
        For an unterminated string or a character that PTX does not use, with its line.
    """
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
        toks.append(Token(kind, m.group(), m.start(), m.end(), line))
    return toks
