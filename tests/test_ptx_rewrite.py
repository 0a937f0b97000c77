"""The PTX reader and rewriter on NVRTC, Numba and hand-written PTX (CPU only).

Every rewritten module is assembled by ptxas for sm_90; the emitted prelude is also
executed by a tiny interpreter and compared with `lithos_atom.indexing.virtual_block`.
"""

from __future__ import annotations

import difflib
import functools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lithos_atom.errors import AtomizeError, UnsupportedKernelError
from lithos_atom.indexing import MAX_GRID_X, MAX_GRID_YZ, virtual_block
from lithos_atom.ptx import (
    ATOM_PARAMS,
    BLOCKINFO,
    PtxModule,
    entry_hazards,
    parse_module,
    reachable_functions,
    rewrite_module,
    set_ptx_version,
)
from tests.ptx_sources import CASE_NAMES, PtxCase, assemble, ptx_corpus  # noqa: F401 (fixture)

BLOCK_INDEX = ("%ctaid.x", "%ctaid.y", "%ctaid.z", "%nctaid.x", "%nctaid.y", "%nctaid.z")
HW_READ = re.compile(r"^\s*mov\.u32\s+%__lithos_r0,\s*%ctaid\.x;")


def function_text(ptx: str, module: PtxModule, name: str) -> str:
    """The lines of one function, header to closing brace."""
    f = module.functions[name]
    assert f.body_end_line is not None
    return "\n".join(ptx.split("\n")[f.first_line - 1:f.body_end_line])


def block_index_reads(module: PtxModule, name: str) -> dict[str, tuple[int, ...]]:
    reads = module.functions[name].special_reads
    return {k: v for k, v in reads.items() if re.fullmatch(r"%n?ctaid(\.\w+)?", k)}


# ---- the compiled corpus -----------------------------------------------------------------


@pytest.mark.parametrize("case", CASE_NAMES)
def test_corpus_parses(ptx_corpus, case):
    c: PtxCase = ptx_corpus[case]
    m = parse_module(c.ptx)
    assert m.version >= (9, 0) and m.target.startswith("sm_90") and m.address_size == 64
    assert {e.name for e in m.entries} == set(c.expect)
    for e in m.entries:
        assert e.kind == "entry" and e.body_start_line is not None and e.first_line <= e.body_start_line


@pytest.mark.parametrize("case", CASE_NAMES)
def test_corpus_rewrites_and_assembles(ptx_corpus, case):
    c: PtxCase = ptx_corpus[case]
    result = rewrite_module(c.ptx, skip_unsupported=True)
    assert result.version == parse_module(c.ptx).version
    for name, why in c.expect.items():
        info = result.entries[name]
        assert info.atomized is (why is None), info
        if why is not None:
            assert why in info.reason and info.line is not None
    assemble(c.ptx)
    assemble(result.ptx)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_no_block_index_read_remains_but_the_hardware_one(ptx_corpus, case):
    c: PtxCase = ptx_corpus[case]
    before = parse_module(c.ptx)
    result = rewrite_module(c.ptx, skip_unsupported=True)
    after = parse_module(result.ptx)
    out_lines = result.ptx.split("\n")
    atomized = [n for n, e in result.entries.items() if e.atomized]
    for name in atomized:
        reads = block_index_reads(after, name)
        assert list(reads) == ["%ctaid.x"] and len(reads["%ctaid.x"]) == 1, reads
        assert HW_READ.match(out_lines[reads["%ctaid.x"][0] - 1])
        # each of the user's own reads now reads a prelude register
        n_user = sum(len(v) for v in block_index_reads(before, name).values())
        body = function_text(result.ptx, after, name).split("end of lithos atom prelude", 1)[1]
        assert len(re.findall(r"%__lithos_n?ctaid_[xyz]\b", body)) == n_user
    reached = {f for n in atomized for f in reachable_functions(after, n)}
    for name in reached:
        assert not block_index_reads(after, name), name
    assert set(result.funcs_patched) == {f for f in reached if block_index_reads(before, f)}
    if all(why is None for why in c.expect.values()):
        # textually, without the parser: the only reads left are the preludes' hardware reads
        code = re.sub(r"//[^\n]*|/\*.*?\*/", "", result.ptx, flags=re.S)
        reads = [ln for ln in code.split("\n") if re.search(r"%n?ctaid\b", ln)]
        assert len(reads) == len(atomized) and all(HW_READ.match(ln) for ln in reads), reads


@pytest.mark.parametrize("case", CASE_NAMES)
def test_abi_params_appended_in_order(ptx_corpus, case):
    c: PtxCase = ptx_corpus[case]
    before = parse_module(c.ptx)
    result = rewrite_module(c.ptx, skip_unsupported=True)
    after = parse_module(result.ptx)
    for name, info in result.entries.items():
        old, new = before.functions[name].params, after.functions[name].params
        assert info.num_user_params == len(old)
        if info.atomized:
            assert new[:len(old)] == old
            assert [(p.name, p.type) for p in new[len(old):]] == list(ATOM_PARAMS)
        else:
            assert new == old


@pytest.mark.parametrize("case", CASE_NAMES)
def test_skip_unsupported_leaves_refused_entries_byte_identical(ptx_corpus, case):
    c: PtxCase = ptx_corpus[case]
    result = rewrite_module(c.ptx, skip_unsupported=True)
    before, after = parse_module(c.ptx), parse_module(result.ptx)
    refused = [n for n, e in result.entries.items() if not e.atomized]
    atomized_reach = {f for n, e in result.entries.items() if e.atomized for f in reachable_functions(before, n)}
    untouched = set(refused) | {f for n in refused for f in reachable_functions(before, n)} - atomized_reach
    for name in untouched:
        if before.functions[name].has_body:
            assert function_text(result.ptx, after, name) == function_text(c.ptx, before, name)
    if not result.funcs_patched:
        assert BLOCKINFO not in result.ptx


@pytest.mark.parametrize("case", ["grid_sync", "cluster", "shared_func"])
def test_unsupported_kernels_are_refused_with_their_reason(ptx_corpus, case):
    c: PtxCase = ptx_corpus[case]
    with pytest.raises(UnsupportedKernelError) as info:
        rewrite_module(c.ptx)
    err = info.value
    refused = {name: reason for name, _, reason in err.problems}
    expected = {n: why for n, why in c.expect.items() if why is not None and why != "shares device function"}
    assert set(refused) == set(expected)
    for name, why in expected.items():
        assert why in refused[name]
        assert name in str(err)
    for name, line, _ in err.problems:
        assert line is not None and parse_module(c.ptx).functions[name].first_line <= line


def test_grid_sync_is_refused_for_reading_envreg(ptx_corpus):
    c = ptx_corpus["grid_sync"]
    m = parse_module(c.ptx)
    (first, *_) = entry_hazards(m, "grid_sync")
    assert first.reason.startswith("reads %envreg") and "grid synchronization" in first.reason
    assert "%envreg" in c.ptx.split("\n")[first.line - 1]
    with pytest.raises(UnsupportedKernelError, match="entry 'grid_sync' line [0-9]+: .*%envreg"):
        rewrite_module(c.ptx)


def test_cluster_kernels_are_refused_for_every_cluster_construct(ptx_corpus):
    m = parse_module(ptx_corpus["cluster"].ptx)
    reasons = " ".join(h.reason for h in entry_hazards(m, "cluster_swap"))
    for construct in (".reqnctapercluster", ".explicitcluster", "barrier.cluster", "%cluster_ctarank", "mapa",
                      "::cluster"):
        assert construct in reasons
    assert [h.reason.split(":")[0] for h in entry_hazards(m, "cluster_only_dims")] == [
        "declares .explicitcluster", "declares .reqnctapercluster"]
    assert entry_hazards(m, "not_clustered") == ()


def test_device_functions_read_the_shared_slot(ptx_corpus):
    c = ptx_corpus["device_funcs"]
    result = rewrite_module(c.ptx)
    after = parse_module(result.ptx)
    assert result.funcs_patched == ("_Z9block_tagi",)
    assert result.ptx.count(f".shared .align 4 .b8 {BLOCKINFO}[24];") == 1
    func = function_text(result.ptx, after, "_Z9block_tagi")
    for v, offset in (("ctaid_x", 0), ("ctaid_y", 4), ("ctaid_z", 8), ("nctaid_x", 12), ("nctaid_z", 20)):
        assert f"ld.shared.u32 %__lithos_{v}, [{BLOCKINFO}+{offset}];" in func
    assert "nctaid_y" not in func  # only what the function reads is loaded
    # the entry that reaches it fills the slot; the one that does not, does not
    assert function_text(result.ptx, after, "uses_funcs").count(f"st.shared.u32 [{BLOCKINFO}+") == 6
    assert BLOCKINFO not in function_text(result.ptx, after, "no_block_index")


def test_modules_without_reading_functions_get_no_shared_slot(ptx_corpus):
    for case in ("grid1d", "grid3d", "multi", "numba_3d"):
        result = rewrite_module(ptx_corpus[case].ptx)
        assert result.funcs_patched == () and BLOCKINFO not in result.ptx


def test_function_shared_with_a_refused_entry_stays_unpatched(ptx_corpus):
    c = ptx_corpus["shared_func"]
    result = rewrite_module(c.ptx, skip_unsupported=True)
    before = parse_module(c.ptx)
    assert result.funcs_patched == ()
    assert not result.entries["synced"].atomized and not result.entries["shares_with_synced"].atomized
    assert "synced" in result.entries["shares_with_synced"].reason
    assert result.entries["independent"].atomized
    after = parse_module(result.ptx)
    assert function_text(result.ptx, after, "_Z10where_am_iv") == function_text(c.ptx, before, "_Z10where_am_iv")


def test_templated_kernels_by_lowered_name(ptx_corpus):
    c = ptx_corpus["templated"]
    result = rewrite_module(c.ptx)
    for expr in ("scale<float>", "scale<double>"):
        assert result.entries[c.names[expr]].atomized


def test_debug_output_keeps_its_sections(ptx_corpus):
    c = ptx_corpus["device_funcs_debug"]
    assert ".section" in c.ptx and ".loc" in c.ptx and parse_module(c.ptx).target == "sm_90, debug"
    result = rewrite_module(c.ptx)
    assert result.ptx.count(".section") == c.ptx.count(".section")


def test_rewriting_twice_is_refused(ptx_corpus):
    once = rewrite_module(ptx_corpus["grid1d"].ptx).ptx
    with pytest.raises(AtomizeError, match="rewritten twice"):
        rewrite_module(once)


# ---- the prelude computes virtual_block ----------------------------------------------------


@functools.lru_cache(maxsize=None)
def prelude_lines(ptx: str, entry: str) -> tuple[str, ...]:
    """The instructions of an atomized entry's prelude, comments and declarations removed."""
    lines = function_text(ptx, parse_module(ptx), entry).split("\n")
    start = next(i for i, ln in enumerate(lines) if "lithos atom prelude:" in ln)
    end = next(i for i, ln in enumerate(lines) if "end of lithos atom prelude" in ln)
    code = (ln.split("//")[0].strip().rstrip(";") for ln in lines[start:end])
    return tuple(ln for ln in code if ln and not ln.startswith(".reg"))


def run_prelude(ptx: str, entry: str, base: int, hw: int, grid: tuple[int, int, int]) -> dict[str, int]:
    """Execute an atomized entry's prelude (u32/u64 arithmetic and forward branches) in Python."""
    params = dict(zip((p for p, _ in ATOM_PARAMS), (base, *grid)))
    regs: dict[str, int] = {"%ctaid.x": hw}
    shared: dict[int, int] = {}
    code = prelude_lines(ptx, entry)
    labels = {ln[:-1]: i for i, ln in enumerate(code) if ln.endswith(":")}
    pc = 0
    while pc < len(code):
        ln = code[pc]
        pc += 1
        if ln.endswith(":"):
            continue
        if ln.startswith("@"):
            pred, ln = ln.split(None, 1)
            if not regs[pred[1:]]:
                continue
        op, args = ln.split(None, 1)
        if op.startswith("bra"):
            pc = labels[args.strip()]
            continue
        a = [x.strip() for x in args.split(",")]
        bits = 64 if op.endswith("64") else 32
        mask = (1 << bits) - 1
        val = lambda x: regs[x]  # noqa: E731
        if op.startswith("ld.param"):
            regs[a[0]] = params[a[1].strip("[]")]
        elif op.startswith("st.shared"):
            shared[int(a[0].strip("[]").split("+")[1])] = regs[a[1]]
        elif op in ("mov.u32", "cvt.u64.u32", "cvt.u32.u64"):
            regs[a[0]] = val(a[1]) & mask if op != "cvt.u32.u64" else val(a[1]) & 0xFFFFFFFF
        elif op.startswith("add."):
            regs[a[0]] = (val(a[1]) + val(a[2])) & mask
        elif op.startswith("sub."):
            regs[a[0]] = (val(a[1]) - val(a[2])) & mask
        elif op.startswith("mul.lo."):
            regs[a[0]] = (val(a[1]) * val(a[2])) & mask
        elif op == "mul.wide.u32":
            regs[a[0]] = val(a[1]) * val(a[2])
        elif op == "setp.gt.u64":
            regs[a[0]] = val(a[1]) > int(a[2])
        elif op.startswith("div."):
            regs[a[0]] = val(a[1]) // val(a[2])
        else:
            raise AssertionError(f"prelude instruction the test cannot run: {ln}")
    out = {v: regs[f"%__lithos_{v[1:].replace('.', '_')}"] for v in BLOCK_INDEX}
    if shared:
        assert [shared[4 * i] for i in range(6)] == [out[v] for v in BLOCK_INDEX]
    return out


@settings(max_examples=300, deadline=None)
@given(
    gx=st.integers(1, MAX_GRID_X), gy=st.integers(1, MAX_GRID_YZ), gz=st.integers(1, MAX_GRID_YZ),
    where=st.floats(0, 1, exclude_max=True), back=st.integers(0, MAX_GRID_X - 1),
)
def test_prelude_computes_virtual_block(gx, gy, gz, where, back):
    total = gx * gy * gz
    linear = min(int(where * total), total - 1)
    hw = min(back, linear)  # the atom started hw blocks before this one
    out = run_prelude(PRELUDE_PTX, "kern", linear - hw, hw, (gx, gy, gz))
    assert (out["%ctaid.x"], out["%ctaid.y"], out["%ctaid.z"]) == virtual_block(linear, (gx, gy, gz))
    assert (out["%nctaid.x"], out["%nctaid.y"], out["%nctaid.z"]) == (gx, gy, gz)


# ---- hand-written PTX: layouts and constructs the compilers emit -------------------------------

HANDWRITTEN = r"""//
// hand-written
//
.version 8.0
.target sm_90
.address_size 64

/* a block comment mentioning %ctaid.x and
   spanning lines { with an unbalanced brace */
.extern .func (.param .b32 func_retval0) vprintf(.param .b64 vprintf_param_0, .param .b64 vprintf_param_1);
.func (.param .b32 func_retval0) get_x();
.func (.param .b32 func_retval0) get_y();
.global .align 8 .u64 table[1] = {get_y};
.global .align 1 .b8 $str[3] = {104, 105, 0};

.func (.param .b32 func_retval0) get_x()
{
	.reg .b32 %r<2>;
	mov.u32 %r1, %ctaid.x; // reads the block index
	st.param.b32 [func_retval0+0], %r1;
	ret;
}
.func (.param .b32 func_retval0) get_x_alias();
.alias get_x_alias, get_x;

.func (.param .b32 func_retval0) get_y()
{
	.reg .b32 %r<3>;
	mov.u32 %r1, %ctaid.y;
	mov.u32 %r2, %nctaid.z;
	add.s32 %r1, %r1, %r2;
	st.param.b32 [func_retval0+0], %r1;
	ret;
}

.func unused_reader()
{
	.reg .b32 %r<2>;
	mov.u32 %r1, %ctaid.z;
	ret;
}

.visible .entry kern(
	.param .u64 kern_param_0,
	.param .align 8 .b8 kern_param_1[24]
	,
	.param .u32 kern_param_2)
.maxntid 128, 1, 1
.minnctapersm 1
.pragma "nounroll";
{
	.reg .pred %p<2>;
	.reg .b32 %r<10>;
	.reg .b64 %rd<7>;
	ld.param.u64 %rd1, [kern_param_0];
	ld.param.u32 %r1, [kern_param_1+8];
	mov.u32 %r2, %ctaid.x;   /* inline comment %nctaid.x */ mov.u32 %r3, %nctaid.x;
	cvt.u64.u32 %rd2, %ctaid.y;
	mul.wide.u32 %rd3, %r2, 4;
	setp.eq.u32 %p1, %r2, 0;
	@%p1 bra $L__skip;
	{ // callseq 0, 0
	.reg .b32 temp_param_reg;
	.param .b32 retval0;
	call.uni (retval0),
	get_x_alias,
	(
	);
	ld.param.b32 %r4, [retval0+0];
	}
$L__skip:
	mov.u64 %rd4, table;
	ld.global.u64 %rd5, [%rd4];
	{
	.reg .b32 temp_param_reg;
	.param .b32 retval0;
	prototype_0 : .callprototype (.param .b32 _) _ ();
	call (retval0), %rd5, (), prototype_0;
	ld.param.b32 %r5, [retval0+0];
	}
	{ .reg .b32 %inner; mov.b64 {%r6, %r7}, %rd3; }
	add.s32 %r8, %r4, %r5;
	add.s32 %r8, %r8, %r3;
	st.global.u32 [%rd1], %r8;
	st.global.u64 [%rd1+8], %rd2;
	mov.u64 %rd6, $str;
	{
	.param .b64 param0;
	st.param.b64 [param0+0], %rd6;
	.param .b64 param1;
	st.param.b64 [param1+0], %rd6;
	.param .b32 retval0;
	call.uni (retval0), vprintf, (param0, param1);
	}
	ret;
}

.visible .entry no_params()
{
	ret;
}
"""

PRELUDE_PTX = rewrite_module(HANDWRITTEN).ptx  # kern's prelude stores the shared slot too


def test_handwritten_module_is_read_exactly():
    m = parse_module(HANDWRITTEN)
    assert (m.version, m.target, m.address_size) == ((8, 0), "sm_90", 64)
    assert list(m.functions) == ["vprintf", "get_x", "get_y", "get_x_alias", "unused_reader", "kern", "no_params"]
    k = m.functions["kern"]
    assert (k.kind, k.first_line, k.body_start_line, k.body_end_line) == ("entry", 43, 51, 96)
    assert [(p.name, p.type, p.align, p.array_len) for p in k.params] == [
        ("kern_param_0", ".u64", None, None), ("kern_param_1", ".b8", 8, 24), ("kern_param_2", ".u32", None, None)]
    assert [(d.name, d.args) for d in k.directives] == [
        (".maxntid", ("128", "1", "1")), (".minnctapersm", ("1",)), (".pragma", ('"nounroll"',))]
    # comments are not reads; both statements of line 57 are
    assert dict(block_index_reads(m, "kern")) == {"%ctaid.x": (57,), "%nctaid.x": (57,), "%ctaid.y": (58,)}
    assert k.calls == ("get_x_alias", "vprintf") and k.indirect_call_lines == (78,) and k.linkage == (".visible",)
    assert m.aliases == {"get_x_alias": "get_x"} and m.address_taken == {"get_y"}
    g = m.functions["get_x"]
    assert g.return_params[0].name == "func_retval0" and g.first_line == 16 and g.body_end_line == 22
    assert not m.functions["vprintf"].has_body and m.functions["vprintf"].linkage == (".extern",)
    # a direct call through the alias, and an indirect call that may reach get_y
    assert set(reachable_functions(m, "kern")) == {"get_x", "get_y", "vprintf"}
    assert entry_hazards(m, "kern") == ()
    assert [e.name for e in m.entries] == ["kern", "no_params"]


def test_handwritten_module_rewrites_and_assembles():
    assemble(HANDWRITTEN)
    result = rewrite_module(HANDWRITTEN)
    assert result.funcs_patched == ("get_x", "get_y")
    assert result.entries["kern"].atomized and result.entries["no_params"].atomized
    assert result.entries["no_params"].num_user_params == 0
    after = parse_module(result.ptx)
    assert [p.name for p in after.functions["no_params"].params] == [n for n, _ in ATOM_PARAMS]
    unused = after.functions["unused_reader"]  # reached by no entry: left as it was
    assert block_index_reads(after, "unused_reader") == {"%ctaid.z": (unused.body_start_line + 2,)}
    assemble(result.ptx)


def test_output_outside_edits_is_byte_identical():
    result = rewrite_module(HANDWRITTEN)
    before = HANDWRITTEN.split("\n")
    # undo the register renaming in the user's lines (not in the lithos declarations)
    after = [ln if ln.lstrip().startswith(".reg") else re.sub(r"%__lithos_(n?ctaid)_([xyz])", r"%\1.\2", ln)
             for ln in result.ptx.split("\n")]
    # the two header lines where the ABI parameters go in, before and after
    changed_headers = {"\t.param .u32 kern_param_2)", ".visible .entry no_params()"}
    new_headers = {"\t.param .u32 kern_param_2,", ".visible .entry no_params("}
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        assert tag in ("insert", "replace"), (tag, before[i1:i2])
        assert set(before[i1:i2]) <= changed_headers
        assert all("lithos" in ln or ln in ("", ")") or ln in new_headers for ln in after[j1:j2]), after[j1:j2]


ENTRY = """.version 8.0
.target sm_90
.address_size 64
{decls}
.visible .entry k(.param .u64 p){directive}
{{
	.reg .pred %p<2>;
	.reg .b16 %rs<2>;
	.reg .b32 %r<5>;
	.reg .b64 %rd<3>;
	{body}
	ret;
}}
"""


@pytest.mark.parametrize(
    "body, directive, decls, fragment",
    [
        ("mov.v4.u32 {%r1, %r2, %r3, %r4}, %ctaid;", "", "", "reads %ctaid (only the scalar"),
        ("mov.u16 %rs1, %ctaid.x;", "", "", "with 'mov.u16'"),
        ("mov.u64 %rd1, %gridid;", "", "", "%gridid"),
        ("griddepcontrol.wait;", "", "", "programmatic dependent launch"),
        ("griddepcontrol.launch_dependents;", "", "", "programmatic dependent launch"),
        ("mov.u32 %r1, %clusterid.x;", "", "", "%clusterid.x: thread-block clusters"),
        ("mov.u32 %r1, %cluster_nctarank;", "", "", "%cluster_nctarank"),
        ("mov.pred %p1, %is_explicit_cluster;", "", "", "%is_explicit_cluster"),
        ("mov.u32 %r1, %envreg3;", "", "", "%envreg3"),
        ("barrier.cluster.arrive;", "", "", "barrier.cluster"),
        ("mapa.u64 %rd1, %rd2, %r1;", "", "", "mapa"),
        ("ld.shared::cluster.u32 %r1, [%r2];", "", "", "::cluster"),
        ("mov.u64 %rd1, %current_graph_exec;", "", "", "%current_graph_exec"),
        ("", "\n.reqnctapercluster 2, 1, 1", "", ".reqnctapercluster"),
        ("", "\n.explicitcluster", "", ".explicitcluster"),
        ("", "\n.maxclusterrank 4", "", ".maxclusterrank"),
        ("", "\n.frobnicate 3", "", "unknown directive .frobnicate"),
        ("call.uni cudaCGSynchronize, (%rd1);", "", ".extern .func cudaCGSynchronize(.param .b64 h);",
         "cooperative-groups grid synchronization"),
        ("call.uni cudaLaunchDeviceV2, (%rd1);", "", ".extern .func cudaLaunchDeviceV2(.param .b64 h);",
         "device runtime"),
        ("call.uni mystery, ();", "", ".extern .func mystery();", "external function 'mystery'"),
        ("mov.u64 %rd1, mystery; call %rd1, (), proto;", "",
         ".extern .func mystery();\n.global .u64 fp = mystery;",
         "indirect call, which may reach 'mystery'"),
    ],
)
def test_unsafe_constructs_are_refused(body, directive, decls, fragment):
    if "proto;" in body:
        body = "proto: .callprototype _ ();\n\t" + body
    ptx = ENTRY.format(body=body, directive=directive, decls=decls)
    with pytest.raises(UnsupportedKernelError) as info:
        rewrite_module(ptx)
    err = info.value
    assert fragment in err.reason and err.entry == "k"
    assert err.problems == (("k", err.line, err.problems[0][2]),)
    offending = ptx.split("\n")[err.line - 1].strip()
    assert offending == (directive.strip() or body.split("\n")[-1].strip())
    # with skip_unsupported the module comes back byte for byte
    result = rewrite_module(ptx, skip_unsupported=True)
    assert result.ptx == ptx and not result.entries["k"].atomized and fragment in result.entries["k"].reason


def test_hazard_in_a_reached_function_names_the_function():
    ptx = """.version 8.0
.target sm_90
.address_size 64
.func helper()
{
	griddepcontrol.wait;
	ret;
}
.visible .entry k()
{
	call.uni helper, ();
	ret;
}
.visible .entry fine(.param .u32 a)
{
	ret;
}
"""
    with pytest.raises(UnsupportedKernelError, match=r"entry 'k' line 6: .*griddepcontrol.*in function 'helper'"):
        rewrite_module(ptx)
    result = rewrite_module(ptx, skip_unsupported=True)
    assert not result.entries["k"].atomized and result.entries["k"].line == 6
    assert result.entries["fine"].atomized
    assemble(result.ptx)


def test_several_refused_entries_are_all_listed():
    ptx = ENTRY.format(body="mov.u64 %rd1, %gridid;", directive="", decls="") + """
.visible .entry other()
{
	griddepcontrol.wait;
	ret;
}
"""
    with pytest.raises(UnsupportedKernelError) as info:
        rewrite_module(ptx)
    err = info.value
    assert [(n, ln) for n, ln, _ in err.problems] == [("k", 11), ("other", 17)]
    assert err.entry is None and "2 kernels" in str(err) and "'k'" in str(err) and "'other'" in str(err)


def test_printf_malloc_and_assert_do_not_prevent_splitting():
    decls = "\n".join(f".extern .func {n}(.param .b64 a);" for n in ("vprintf", "malloc", "free", "__assertfail"))
    body = "\n\t".join(f"call.uni {n}, (%rd1);" for n in ("vprintf", "malloc", "free", "__assertfail"))
    result = rewrite_module(ENTRY.format(body=body, directive="", decls=decls))
    assert result.entries["k"].atomized


def test_set_ptx_version():
    text = "// .version 1.0 in a comment\n  .version 9.5\n.target sm_90\n"
    assert set_ptx_version(text, (9, 0)) == "// .version 1.0 in a comment\n  .version 9.0\n.target sm_90\n"
    assert parse_module(set_ptx_version(HANDWRITTEN, (9, 0))).version == (9, 0)
    with pytest.raises(AtomizeError, match="missing .version"):
        set_ptx_version(".target sm_90\n", (9, 0))
    with pytest.raises(ValueError, match="version"):
        set_ptx_version(text, (9,))  # type: ignore[arg-type]


CHAIN = """.version 8.0
.target sm_90
.address_size 64
.func f1()
{
	.reg .b32 %r<2>;
	mov.u32 %r1, %ctaid.x;
	ret;
}
.func f2()
{
	.reg .b32 %r<2>;
	mov.u32 %r1, %nctaid.y;
	ret;
}
.func plain()
{
	ret;
}
.visible .entry refused()
{
	griddepcontrol.wait;
	call.uni f1, ();
	call.uni plain, ();
	ret;
}
.visible .entry a()
{
	call.uni f1, ();
	call.uni f2, ();
	ret;
}
.visible .entry b()
{
	call.uni f2, ();
	call.uni plain, ();
	ret;
}
.visible .entry c()
{
	call.uni plain, ();
	ret;
}
"""


def test_sharing_a_reading_function_with_a_refused_entry_propagates():
    result = rewrite_module(CHAIN, skip_unsupported=True)
    # refused reaches f1; a shares f1, so a is refused; b shares f2 with a, so b is too.
    # c shares only 'plain', which reads nothing and is never patched: c is atomized.
    assert {n: e.atomized for n, e in result.entries.items()} == {"refused": False, "a": False, "b": False, "c": True}
    assert "'f1'" in result.entries["a"].reason and "'refused'" in result.entries["a"].reason
    assert "'f2'" in result.entries["b"].reason and "'a'" in result.entries["b"].reason
    assert result.funcs_patched == () and BLOCKINFO not in result.ptx
    before, after = parse_module(CHAIN), parse_module(result.ptx)
    for name in ("f1", "f2", "plain", "refused", "a", "b"):
        assert function_text(result.ptx, after, name) == function_text(CHAIN, before, name)
    assemble(result.ptx)
    with pytest.raises(UnsupportedKernelError) as info:  # without skipping, only the cause is listed
        rewrite_module(CHAIN)
    assert [n for n, _, _ in info.value.problems] == ["refused"]
