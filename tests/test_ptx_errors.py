"""Malformed PTX is refused with an AtomizeError naming the entry (when known) and the line."""

from __future__ import annotations

import pytest

from lithos_atom.errors import AtomizeError, UnsupportedKernelError
from lithos_atom.ptx import parse_module, rewrite_module

HEADER = ".version 8.0\n.target sm_90\n.address_size 64\n"


@pytest.mark.parametrize(
    "body, entry, line, fragment",
    [
        # line 4 is the first line after HEADER
        (".visible .entry k(.param .u64 p)\n{\n\tret;\n", "k", 5, "not closed"),
        (".visible .entry k(.param .u64 p)\n{\n\tret;\n\n.visible .entry j()\n{\n\tret;\n}\n", "k", 5, "not closed"),
        (".visible .entry k()\n{\n\tret;\n}\n}\n", None, 8, "unexpected '}'"),
        (".visible .entry k\n{\n\tret;\n}\n", "k", 4, "no parameter list"),
        ("hello world;\n", None, 4, "where a directive is expected"),
        (".visible .entry k() junk\n{\n\tret;\n}\n", "k", 4, "unexpected 'junk'"),
        (".frobnicate 3;\n", None, 4, "unknown directive '.frobnicate'"),
        ("/* never closed\n.visible .entry k()\n{\n}\n", None, 4, "unterminated /* comment"),
        (".visible .entry k(.param .u64 p\n{\n\tret;\n}\n", "k", 4, "not closed by ')'"),
        (".visible .entry k()\n{\n\tret\n}\n", "k", 7, "missing ';'"),
        (".visible .entry k()\n{\n\tcall.uni nowhere, ();\n\tret;\n}\n", "k", 6, "undeclared function 'nowhere'"),
        (".visible .entry k(.param .u64)\n{\n\tret;\n}\n", "k", 4, "cannot read parameter"),
        (".visible .entry k(.param .quad p)\n{\n\tret;\n}\n", "k", 4, "cannot read parameter"),
        (".visible .entry k(.param .b8 p[x])\n{\n\tret;\n}\n", "k", 4, "cannot read parameter"),
        (".func f()\n{\n\tret;\n}\n.func f()\n{\n\tret;\n}\n", "f", 8, "defined twice"),
        (".global .u32 x\n.visible .entry k()\n{\n\tret;\n}\n", None, 4, "not terminated by ';'"),
        (".visible .entry k()\n{\n\tmov.u32 %r1, #3;\n}\n", None, 6, "unexpected character '#'"),
        ('.global .b8 s[2] = "ab;\n', None, 4, "unterminated string"),
        (".section .debug_info\n{\n.b8 1\n", None, 4, ".section is not closed"),
        (".visible .entry k()\n{\n\tmov.b64 {%r1, %r2, %rd1;\n}\n", "k", 6, "unbalanced '{'"),
        (".alias a, b, c;\n", None, 4, "malformed .alias"),
        (".func (.param .b32 r) a();\n.alias a, b;\n", None, 5, "undeclared function 'b'"),
        (".func ;\n", None, 4, "expected the name of the .func"),
        (".visible .func k()\n{\n\tret;\n}\n.visible .entry k()\n{\n\tret;\n}\n", "k", 8, "declared both"),
    ],
)
def test_malformed_bodies(body, entry, line, fragment):
    text = HEADER + body
    with pytest.raises(AtomizeError) as info:
        parse_module(text)
    err = info.value
    assert not isinstance(err, UnsupportedKernelError)
    assert fragment in err.reason, err
    assert (err.entry, err.line) == (entry, line), str(err)
    with pytest.raises(AtomizeError):  # the rewriter reads the module the same way
        rewrite_module(text)


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        (".target sm_90\n.address_size 64\n.visible .entry k()\n{\n}\n", 3, "missing .version"),
        (".version 8.0\n.address_size 64\n.visible .entry k()\n{\n}\n", 3, "missing .target"),
        ("// only a comment\n", 1, "missing .version"),
        (".version 9\n.target sm_90\n", 1, "malformed .version"),
        (".version 8.0\n.target\n", 2, "malformed .target"),
        (".version 8.0\n.target sm_90\n.address_size 48\n", 3, "malformed .address_size"),
        (".version 8.0\n.version 8.0\n.target sm_90\n", 2, "given twice"),
    ],
)
def test_malformed_headers(text, line, fragment):
    with pytest.raises(AtomizeError) as info:
        parse_module(text)
    assert fragment in info.value.reason and info.value.line == line and info.value.entry is None


def test_address_size_is_optional():
    m = parse_module(".version 8.0\n.target sm_90\n.visible .entry k()\n{\n\tret;\n}\n")
    assert m.address_size == 32 and [e.name for e in m.entries] == ["k"]


def test_message_format():
    assert str(AtomizeError("bad", entry="_Z3fooPf", line=42)) == "entry '_Z3fooPf' line 42: bad"
    assert str(AtomizeError("bad", line=3)) == "line 3: bad"
    assert str(AtomizeError("bad", entry="k")) == "entry 'k': bad"
    assert str(AtomizeError("bad")) == "bad"
    err = UnsupportedKernelError("grid sync", entry="k", line=7, problems=(("k", 7, "grid sync"),))
    assert isinstance(err, AtomizeError) and str(err) == "entry 'k' line 7: grid sync"
    assert (err.entry, err.line, err.reason, err.problems) == ("k", 7, "grid sync", (("k", 7, "grid sync"),))
    assert UnsupportedKernelError("x").problems == ()


def test_error_names_the_line_of_the_failing_function_in_a_compiled_module():
    text = HEADER + ".visible .entry good()\n{\n\tret;\n}\n.visible .entry bad(\n{\n\tret;\n}\n"
    with pytest.raises(AtomizeError, match=r"^entry 'bad' line 8: parameter list is not closed"):
        rewrite_module(text)
