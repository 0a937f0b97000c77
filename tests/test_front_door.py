"""CPU tier: ``import lithos`` is the front door.

Every name of ``lithos.__all__`` resolves and is listed in the package's docstring; the
user API of issue 21 is among them; and the README's Python snippets parse and take from
``lithos`` only names it exports, and from the library's modules only names they have.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import lithos

ROOT = Path(__file__).resolve().parent.parent

#: What a user meets first: the atomizer, its opt-in, the scheduler and process membership.
USER_API = {"atomize", "atomize_module_function", "set_atomizer", "using_atomizer", "get_atomizer", "Atomizer",
            "Scheduler", "Policy", "TenantSpec", "Priority", "open_device", "set_scheduler", "using_scheduler",
            "join", "leave", "joined", "tenant"}


def readme_snippets() -> list[ast.Module]:
    """The README's ```python blocks, parsed."""
    return [ast.parse(code) for code in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)]


def test_every_exported_name_resolves_and_is_listed_in_the_docstring():
    assert len(set(lithos.__all__)) == len(lithos.__all__)
    for name in lithos.__all__:
        assert getattr(lithos, name) is not None
        assert re.search(rf"\b{name}\b", lithos.__doc__), f"{name} is not in lithos' docstring"


def test_the_user_api_is_exported_as_the_library_defines_it():
    import lithos_atom
    import lithos_sched

    assert USER_API <= set(lithos.__all__)
    assert lithos.Scheduler is lithos_sched.Scheduler and lithos.open_device is lithos_sched.open_device
    assert lithos.atomize is lithos_atom.atomize and lithos.Atomizer is lithos_atom.Atomizer


def test_the_readme_snippets_take_only_what_the_code_has():
    taken_from_lithos: set[str] = set()
    snippets = readme_snippets()
    assert len(snippets) >= 5
    for tree in snippets:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "lithos":
                taken_from_lithos.add(node.attr)
            elif isinstance(node, ast.ImportFrom) and node.module == "lithos":
                taken_from_lithos |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module.startswith(("lithos_atom", "lithos_sched")):
                module = importlib.import_module(node.module)
                assert all(hasattr(module, alias.name) for alias in node.names), ast.unparse(node)
    taken_from_lithos.discard("ray")  # the Ray module, imported on its own
    assert taken_from_lithos >= {"atomize", "set_atomizer", "join", "Scheduler"}
    assert taken_from_lithos <= set(lithos.__all__), taken_from_lithos - set(lithos.__all__)
    if importlib.util.find_spec("ray") is not None:
        assert callable(importlib.import_module("lithos.ray").remote)
