"""PTX modules that grow along one dimension, for checking that rewriting stays near-linear.

Each builder returns a module ptxas accepts (except `unterminated_string`, which is
malformed on purpose) whose size grows with ``n``.
"""

from __future__ import annotations

HEADER = ".version 8.0\n.target sm_90\n.address_size 64\n"


def many_entries(n: int) -> str:
    """``n`` entries reading the block index; every other one is refused (``griddepcontrol``)."""
    parts = [HEADER]
    for i in range(n):
        wait = "\tgriddepcontrol.wait;\n" if i % 2 else ""
        parts.append(f".visible .entry k{i}(.param .u64 p)\n{{\n\t.reg .b32 %r<2>;\n{wait}"
                     "\tmov.u32 %r1, %ctaid.x;\n\tret;\n}\n")
    return "".join(parts)


def indirect_calls(n: int) -> str:
    """``n`` address-taken device functions and ``n`` entries, every one making an indirect call."""
    call = ("\t{\n\t.reg .b64 %rd<3>;\n\tmov.u64 %rd1, table;\n\tld.global.u64 %rd2, [%rd1];\n"
            "\tproto: .callprototype _ ();\n\tcall %rd2, (), proto;\n\t}\n")
    parts = [HEADER]
    parts += [f".func f{i}();\n" for i in range(n)]
    parts.append(f".global .align 8 .u64 table[{n}] = {{{', '.join(f'f{i}' for i in range(n))}}};\n")
    for i in range(n):
        parts.append(f".func f{i}()\n{{\n\t.reg .b32 %r<2>;\n\tmov.u32 %r1, %ctaid.x;\n{call}\tret;\n}}\n")
    for i in range(n):
        parts.append(f".visible .entry k{i}()\n{{\n{call}\tret;\n}}\n")
    return "".join(parts)


def shared_chain(n: int) -> str:
    """``n`` entries in a chain: entry i and i + 1 share a device function that reads the block
    index, and the last entry is refused, so refusing spreads through all of them."""
    parts = [HEADER]
    parts += [f".func f{i}()\n{{\n\t.reg .b32 %r<2>;\n\tmov.u32 %r1, %ctaid.x;\n\tret;\n}}\n" for i in range(n)]
    for i in range(n):
        wait = "\tgriddepcontrol.wait;\n" if i == n - 1 else ""
        calls = "".join(f"\tcall.uni f{j}, ();\n" for j in (i - 1, i) if j >= 0)
        parts.append(f".visible .entry k{i}()\n{{\n{wait}{calls}\tret;\n}}\n")
    return "".join(parts)


def long_body(n: int) -> str:
    """One entry of about ``n`` instructions, every one reading the block index."""
    body = "\tmov.u32 %r1, %ctaid.x;\n" * n
    return HEADER + f".visible .entry k(.param .u64 p)\n{{\n\t.reg .b32 %r<2>;\n{body}\tret;\n}}\n"


def trailing_comment(n: int) -> str:
    """A small module that ends in a comment of ``n`` characters (its lines end in CR, so it
    is one comment to the reader)."""
    kernel = ".visible .entry k()\n{\n\t.reg .b32 %r<2>;\n\tmov.u32 %r1, %ctaid.x;\n\tret;\n}\n"
    return HEADER + kernel + "// " + "x\r" * (n // 2)


def unterminated_string(n: int) -> str:
    """A module whose last line opens a string of ``n`` characters and never closes it."""
    return HEADER + '.global .align 1 .b8 s[1] = "' + "y" * n
