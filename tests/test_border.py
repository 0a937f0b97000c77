"""CPU tier: the border between the library and the benchmark code, read from the source.

Every module's imports, at module level and inside functions, are parsed with `ast`
(nothing is imported). The library (`lithos`, `lithos_sched`, and `lithos_atom` outside
`lithos_atom.bench`) imports nothing of the benchmark package, `kernels`, `scripts` or
`tests`, nor the bench's report libraries (`rich`, `matplotlib`); only the tests and the
scripts import `tests` (a long run in `scripts` uses the CPU tier's corpora), and only the
tests and the scripts import `scripts`; and no modules of the project import each other in a
circle when they run (imports under ``if TYPE_CHECKING:``, for annotations only, never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Top-level folders whose Python files are modules of the project.
PROJECT = ("lithos", "lithos_atom", "lithos_sched", "kernels", "scripts", "tests", "examples")

#: The library's packages (`lithos` is its front door), and the benchmark package inside one.
LIBRARY = ("lithos", "lithos_atom", "lithos_sched")
BENCH = "lithos_atom.bench"

#: What the library must not import: the benchmark code, the kernels it runs, the script and
#: test folders, and the libraries only the benchmark's reports need (the ``bench`` extra).
NOT_FOR_THE_LIBRARY = (BENCH, "kernels", "scripts", "tests", "rich", "matplotlib")

#: module -> [(imported module, line, whether it is for annotations only)]
Imports = dict[str, list[tuple[str, int, bool]]]


def module_files(root: Path, folders: Iterable[str]) -> dict[str, Path]:
    """Every Python file under ``folders`` of ``root`` by its dotted module name (a package
    by its own name, for its ``__init__.py``)."""
    out = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _known_prefix(name: str, known: Mapping[str, Path]) -> str | None:
    """The longest prefix of the dotted ``name`` that is a module of the project, if any."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def _typing_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes inside ``if TYPE_CHECKING:`` blocks of ``tree``."""
    out: set[int] = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None) if isinstance(node, ast.If) else None
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def imports_of(module: str, path: Path, known: Mapping[str, Path]) -> list[tuple[str, int, bool]]:
    """The modules ``module`` (at ``path``) imports anywhere in its code, with their lines
    and whether the import is for annotations only (under ``if TYPE_CHECKING:``).

    An import names the module of the project it loads (``from package import name``: the
    submodule ``package.name`` where there is one, else ``package``), or the dotted name as
    written for a module outside the project. A script imports the files beside it by their
    bare names (its folder is on ``sys.path``), so in a folder without ``__init__.py`` a
    bare name of a file there means that file.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    loose = not (path.parent / "__init__.py").exists()
    folder = module.rpartition(".")[0]

    def resolve(name: str) -> str | None:
        if loose and (beside := _known_prefix(f"{folder}.{name}", known)) is not None:
            return beside
        return _known_prefix(name, known)

    out: list[tuple[str, int, bool]] = []
    tree = ast.parse(path.read_text(), str(path))
    typing_only = _typing_only(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(resolve(alias.name) or alias.name, node.lineno, id(node) in typing_only) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out += [(resolve(f"{base}.{alias.name}") or base, node.lineno, id(node) in typing_only)
                    for alias in node.names]
    return out


def project_imports(root: Path = ROOT, folders: Iterable[str] = PROJECT) -> Imports:
    """`imports_of` every module of the project."""
    known = module_files(root, folders)
    return {module: imports_of(module, path, known) for module, path in known.items()}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def forbidden(module: str) -> tuple[str, ...]:
    """What ``module`` must not import: the library none of `NOT_FOR_THE_LIBRARY`; only the
    tests and the scripts import the tests and the scripts."""
    if any(_within(module, p) for p in LIBRARY) and not _within(module, BENCH):
        return NOT_FOR_THE_LIBRARY
    if _within(module, "tests") or _within(module, "scripts"):
        return ()
    return ("tests", "scripts")


def border_crossings(imports: Imports) -> list[str]:
    """``module:line imports name`` for every import that crosses the border (`forbidden`)."""
    return sorted({f"{module}:{line} imports {name}"
                   for module, names in imports.items()
                   for name, line, _ in names
                   if any(_within(name, bad) for bad in forbidden(module))})


def circles(imports: Imports) -> list[frozenset[str]]:
    """The sets of modules that import each other in a circle when they run (the strongly
    connected components of the graph of imports not for annotations only, with more than
    one module, or one importing itself)."""
    graph = {m: sorted({n for n, _, typing_only in names if n in imports and not typing_only})
             for m, names in imports.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(m: str) -> None:  # Tarjan's algorithm
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in graph[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = set()
            while True:
                n = stack.pop()
                on_stack.discard(n)
                component.add(n)
                if n == m:
                    break
            if len(component) > 1 or m in graph[m]:
                found.append(frozenset(component))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return found


@pytest.fixture(scope="module")
def imports() -> Imports:
    """The project's imports, parsed once for the tests of this module."""
    return project_imports()


def test_the_library_imports_no_benchmark_kernel_script_test_or_report_code(imports):
    assert border_crossings(imports) == []


def test_no_modules_import_each_other_in_a_circle(imports):
    assert [sorted(c) for c in circles(imports)] == []


def test_the_checks_see_imports_inside_functions_relative_ones_and_a_scripts_neighbours(tmp_path):
    files = {
        "lithos_sched/__init__.py": "",
        "lithos_sched/a.py": "import numpy\nfrom lithos_sched import b\n",
        "lithos_sched/b.py": "def f():\n    from . import a\n    from lithos_atom.bench.x import y\n"
                             "    import rich.table\n",
        "lithos_atom/__init__.py": "",
        "lithos_atom/bench/__init__.py": "",
        "lithos_atom/bench/x.py": "import rich\nimport kernels\nfrom tests import cases\n",
        "tests/__init__.py": "",
        "tests/cases.py": "from scripts import tool\n",
        "kernels/__init__.py": "",
        "scripts/tool.py": "import helper\n",
        "scripts/helper.py": "def g():\n    import tool\n",
        # a type-only import back does not close a circle: it never runs
        "lithos_sched/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lithos_sched import d\n",
        "lithos_sched/d.py": "from lithos_sched import c\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    imports = project_imports(tmp_path, ("lithos_sched", "lithos_atom", "kernels", "scripts", "tests"))
    assert border_crossings(imports) == ["lithos_atom.bench.x:3 imports tests.cases",
                                         "lithos_sched.b:3 imports lithos_atom.bench.x",
                                         "lithos_sched.b:4 imports rich.table"]
    assert sorted(sorted(c) for c in circles(imports)) == [["lithos_sched.a", "lithos_sched.b"],
                                                           ["scripts.helper", "scripts.tool"]]
