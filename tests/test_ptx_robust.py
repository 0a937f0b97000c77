"""Inputs that once escaped the PTX reader as crashes or misleading errors (CPU only).

Each of the fuzzer's three crash signatures (an ``IndexError`` on a guard without an
instruction, ``int()`` on a digit that is not ASCII in an alignment or an array length)
is refused here with an `AtomizeError` naming the line, in the library and at the command
line; a byte-order mark and CR line ends are read; a missing ``;`` is named at its line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lithos_atom.errors import AtomizeError
from lithos_atom.ptx import main, parse_module, rewrite_module
from tests.ptx_sources import assemble

HEADER = ".version 8.0\n.target sm_90\n.address_size 64\n"

KERNEL = HEADER + """.visible .entry k(.param .u64 p, .param .align 8 .b8 s[16])
{
	.reg .pred %p<2>;
	.reg .b32 %r<3>;
	mov.u32 %r1, %ctaid.x;
	setp.eq.u32 %p1, %r1, 0;
	@%p1 bra $L__done;
	mov.u32 %r2, %nctaid.y;
$L__done:
	ret;
}
"""
"""A small valid kernel; line 4 is its header, line 9 the 'mov' after the 'setp'."""


def replace_line(text: str, line: int, new: str) -> str:
    lines = text.split("\n")
    lines[line - 1] = new
    return "\n".join(lines)


# The three crash signatures of the fuzz run, as (PTX, line, message fragment).
SIGNATURES = {
    "guard without instruction": (replace_line(KERNEL, 9, "\t@p::cluster;"), 9,
                                  "expected an instruction after the guard '@p::cluster', found nothing"),
    "superscript alignment": (KERNEL.replace(".align 8 ", ".align 8\u00b9 "), 4, "unexpected character '\u00b9'"),
    "circled array length": (KERNEL.replace("s[16]", "s[16\u2460]"), 4, "unexpected character '\u2460'"),
}


@pytest.mark.parametrize("case", SIGNATURES)
def test_fuzzer_crash_signatures_are_refused_naming_the_line(case):
    ptx, line, fragment = SIGNATURES[case]
    for read in (parse_module, rewrite_module):
        with pytest.raises(AtomizeError) as info:
            read(ptx)
        assert info.value.line == line and fragment in info.value.reason, str(info.value)


@pytest.mark.parametrize("case", SIGNATURES)
def test_the_command_line_refuses_them_in_one_line(case, tmp_path: Path, capsys):
    ptx, line, fragment = SIGNATURES[case]
    src, out = tmp_path / "in.ptx", tmp_path / "out.ptx"
    src.write_text(ptx, encoding="utf-8")
    assert main([str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"line {line}: " in err and fragment in err and not out.exists()


def test_the_command_line_prints_no_traceback(tmp_path: Path):
    src = tmp_path / "in.ptx"
    src.write_text(SIGNATURES["guard without instruction"][0], encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "lithos_atom.ptx", str(src), "-o", str(tmp_path / "out.ptx")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "line 9: expected an instruction after the guard" in done.stderr


@pytest.mark.parametrize("body, line, fragment", [
    ("\t@%p1;", 9, "expected an instruction after the guard '@%p1', found nothing"),
    ("\t@!%p1 ;", 9, "expected an instruction after the guard '@!%p1', found nothing"),
    ("\t@;", 9, "guard '@' without a predicate"),
    ("\t@!;", 9, "guard '@' without a predicate"),
    ("\t3;", 9, "expected an instruction, found '3'"),
    ("\t@%p1 @%p1 ret;", 9, "expected an instruction after the guard '@%p1', found '@'"),
    ("\tmov.u32 %r2, %r1\n\tadd.u32 %r2, %r2, 1;", 9, "missing ';' at the end of the line (the next line starts "
                                                       "with 'add.u32')"),
    ("\tmov.u32 %r2, %r1\n\t@%p1 bra $L__done;", 9, "missing ';' at the end of the line"),
    ("\tmov.u32 %r2, %r1\n$L__other:", 9, "missing ';' at the end of the line"),
    ("\tmov.u32 %r2, %r1 // comment\n\tret;", 9, "missing ';' at the end of the line"),
    ("\tret\n\tmov.u32 %r2, %r1;", 9, "missing ';' at the end of the line (the next line starts with 'mov.u32')"),
    ("\tret\n$L__other:", 9, "missing ';' at the end of the line"),
    ("\tbar.sync\n\tmov.u32 %r2, %r1;", 9, "missing ';' at the end of the line"),
    ("\tmov.u32 %r2, %r1,\n\t@%p1 ret;", 9, "missing ';' at the end of the line"),
    ("\tmov.u32 %r2, \u0663;", 9, "unexpected character '\u0663'"),
    ("\tmov.u32 %r2,\u00a0%r1;", 9, "unexpected character '\\xa0'"),
])
def test_malformed_instructions_are_refused_at_their_line(body, line, fragment):
    with pytest.raises(AtomizeError) as info:
        rewrite_module(replace_line(KERNEL, 9, body))
    assert info.value.line == line and fragment in info.value.reason, str(info.value)


def test_statements_that_span_lines_are_read_as_one():
    # operands after a comma, a bracket or the opcode continue the statement
    body = ("\tmov.u32\n\t%r2,\n\t%r1;\n\tadd.u32 %r2, %r2,\n\t1;\n\t@%p1\n\tbra\n\t$L__done;\n"
            "\tcvt.u64.u32 %rd1, %r1;\n\tst.global.u32 [%rd1\n\t+4], %r2;")
    ptx = replace_line(KERNEL, 9, body).replace(".reg .b32 %r<3>;", ".reg .b32 %r<3>; .reg .b64 %rd<2>;")
    result = rewrite_module(ptx)
    assert result.entries["k"].atomized
    assemble(result.ptx)


def test_a_byte_order_mark_is_dropped():
    result = rewrite_module("\ufeff" + KERNEL)
    assert result.ptx == rewrite_module(KERNEL).ptx and not result.ptx.startswith("\ufeff")
    assert parse_module("\ufeff" + KERNEL).functions["k"].first_line == 4


def test_cr_line_ends_are_read_as_lines():
    cr = KERNEL.replace("\n", "\r")
    assert rewrite_module(cr).ptx == rewrite_module(KERNEL).ptx
    assert parse_module(cr).functions["k"].body_start_line == 5
    with pytest.raises(AtomizeError, match=r"^entry 'k' line 9: expected an instruction"):
        rewrite_module(replace_line(KERNEL, 9, "\t@%p1;").replace("\n", "\r"))
    crlf = rewrite_module(KERNEL.replace("\n", "\r\n")).ptx
    assert "\r\n" in crlf and crlf.replace("\r\n", "\n") == rewrite_module(KERNEL).ptx.replace("\r\n", "\n")


def test_strings_and_comments_hide_what_they_hold():
    decls = ('.global .align 1 .b8 s1[9] = "// { /* @";\n'
             '.global .align 1 .b8 s2[5] = "a\\"b;";\n'
             "// a comment with a \" quote and __lithos_ in it\n"
             "/* a block comment with \" and ' */\n")
    ptx = HEADER + decls + KERNEL[len(HEADER):]
    m = parse_module(ptx)
    assert m.functions["k"].first_line == 8 and m.functions["k"].special_reads["%ctaid.x"] == (12,)
    assert rewrite_module(ptx).entries["k"].atomized


def test_a_backslash_newline_in_a_string_counts_as_a_line():
    ptx = HEADER + '.global .align 1 .b8 s[4] = "a\\\nb";\n' + KERNEL[len(HEADER):]
    assert parse_module(ptx).functions["k"].first_line == 6
    with pytest.raises(AtomizeError, match="line 10: expected an instruction"):
        parse_module(replace_line(ptx, 10, "\t@%p1;"))


LONG = {
    "string": (HEADER + '.global .b8 s[1] = "' + "y" * 100_000, "unterminated string"),
    "comment": (HEADER + "/*" + "z" * 100_000, "unterminated /* comment"),
    "directive": (HEADER + "." + "w" * 100_000 + ";", "unknown directive '.www"),
    "callee": (replace_line(KERNEL, 9, "\tcall.uni " + "f" * 100_000 + ", ();"), "call to undeclared function 'fff"),
    "entry": (replace_line(KERNEL, 9, "\t@%p1;").replace(".entry k(", ".entry " + "k" * 100_000 + "("), "entry 'kkk"),
}


@pytest.mark.parametrize("case", LONG)
def test_errors_stay_one_short_line_however_long_the_token(case):
    ptx, fragment = LONG[case]
    with pytest.raises(AtomizeError) as info:
        rewrite_module(ptx)
    message = str(info.value)
    assert fragment in message and "\n" not in message and len(message) < 600, message[:1000]
    assert info.value.line is not None
