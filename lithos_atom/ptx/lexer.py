"""The PTX lexer: byte-order mark and CR line ends normalized, comments and string contents
blanked out (offsets kept), then tokens with their lines.
"""

from __future__ import annotations

import dataclasses
import re

from lithos_atom.errors import AtomizeError

_TOKEN = re.compile(
    r"""
    \s*                                              # whitespace before the token, skipped
    (?:
      (?P<string>"[^"]*")                           # contents blanked by mask: no '"' inside
    | (?P<word>[A-Za-z_$%.][\w$.]*(?:::[\w$.]+)*)   # names, directives, opcodes, registers
    | (?P<number>\d[\w.]*)                          # 64, 9.5, 0f3F800000, 0xFF
    | (?P<punct>[(){}\[\];,:=<>+\-*/!@|&^~?])
    | (?P<bad>\S)
    )
    """,
    re.X | re.ASCII,  # PTX names and numbers are ASCII: '²' or '①' is no digit
)
_COMMENT_OR_STRING_START = re.compile(r'"|//|/\*')
_STRING_STOP = re.compile(r'["\\\n]')
_SHOWN = 200  # characters of a name or token quoted in an error message
_ASCII_SPACE = " \t\n\r\f\v"  # what '\s' matches under re.ASCII


@dataclasses.dataclass(frozen=True, slots=True)
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


def normalize(text: str) -> str:
    """``text`` without a leading byte-order mark, and with LF line ends if it ends lines with CR alone.

    Editors on Windows may save UTF-8 with a byte-order mark, and old Mac tools end lines
    with CR; ptxas rejects both, so the reader and the rewriter work on this form, and a
    rewritten module is one ptxas reads.

    Parameters
    ----------
    text : str

    Returns
    -------
    str
    """
    text = text.removeprefix("\ufeff")
    if "\r" in text and "\n" not in text:
        text = text.replace("\r", "\n")
    return text


def shorten(text: str) -> str:
    """``text``, cut to its first characters and ``...`` when it is too long for a message."""
    return text if len(text) <= _SHOWN else text[:_SHOWN - 3] + "..."


def quote(text: str) -> str:
    """``repr(shorten(text))``: a name or token as an error message quotes it."""
    return repr(shorten(text))


def _blank(s: str) -> str:
    """``s`` with everything but newlines replaced by spaces."""
    return "\n".join(" " * len(part) for part in s.split("\n"))


def mask(text: str) -> str:
    """``text`` with comments and the contents of strings blanked out (newlines and offsets kept).

    A string keeps its quotes; inside it, everything but newlines becomes a space, so no
    name, brace or comment is read from it. Scanning is linear in the text's length.

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
        For a ``/*`` comment or a string that is never closed.
    """
    out, pos = [], 0
    while (m := _COMMENT_OR_STRING_START.search(text, pos)) is not None:
        start = m.start()
        out.append(text[pos:start])
        if m.group() == "//":
            end = text.find("\n", start)
            end = len(text) if end < 0 else end
        elif m.group() == "/*":
            close = text.find("*/", start + 2)
            if close < 0:
                raise AtomizeError("unterminated /* comment", line=text.count("\n", 0, start) + 1)
            end = close + 2
        else:
            end = _string_end(text, start)
            out.append('"' + _blank(text[start + 1:end - 1]) + '"')
            pos = end
            continue
        out.append(_blank(text[start:end]))
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _string_end(text: str, start: int) -> int:
    """Offset just after the closing quote of the string that opens at ``start``."""
    pos = start + 1
    while (m := _STRING_STOP.search(text, pos)) is not None and m.group() == "\\":
        pos = m.end() + 1  # an escaped character, a newline included
    if m is None or m.group() == "\n":
        raise AtomizeError("unterminated string", line=text.count("\n", 0, start) + 1)
    return m.end()


def tokenize(text: str) -> list[Token]:
    """The tokens of a module, comments and whitespace dropped (see `mask`).

    Parameters
    ----------
    text : str
        A PTX module (after `normalize`).

    Returns
    -------
    list of Token
        A string's token holds its text as written.

    Raises
    ------
    AtomizeError
        For an unterminated comment or string, or a character that PTX does not use, with
        its line.
    """
    masked = mask(text)
    toks: list[Token] = []
    line, pos = 1, 0
    # Without trailing whitespace, every search ends in a token: '\s*' never backtracks.
    for m in _TOKEN.finditer(masked.rstrip(_ASCII_SPACE)):
        kind = m.lastgroup
        assert kind is not None
        start, end = m.span(kind)
        line += masked.count("\n", pos, start)
        pos = start
        if kind == "bad":
            raise AtomizeError(f"unexpected character {masked[start]!r}", line=line)
        toks.append(Token(kind, text[start:end] if kind == "string" else masked[start:end], start, end, line))
    return toks
