"""The layout the architecture draws: packages that point down, no import cycles, small modules.

``substrates/emulated`` (the model and the engine) is the bottom room of ``substrates``; ``http``
and ``fleet`` stand on it and not on each other; the kernel (``agentrt``) imports none of them
(tests/test_public_api.py). Imports inside functions count: a cycle hidden in a function is
still a cycle. Imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("substrates", "tools")
#: A module longer than this says at its top why it is one piece ("Why one module ...").
MAX_LINES = 400
_SAYS_WHY = re.compile(r"(?i)\bwhy (it is )?one (module|piece)\b|\bcohesive\b")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {
    _module_name(path): path
    for package in PACKAGES
    for path in sorted((ROOT / package).rglob("*.py"))
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> set[str]:
    """First-party modules ``name`` imports at run time (top level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from package import submodule` imports the submodule
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _is_package_edge(source: str, target: str) -> bool:
    # A module importing its own package's __init__ (or a package re-exporting its own
    # submodules) is how Python packages work, not a cycle between concerns.
    return source.startswith(target + ".") or target.startswith(source + ".")


def test_no_import_cycles() -> None:
    edges = {
        name: {t for t in targets if not _is_package_edge(name, t)}
        for name, targets in GRAPH.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("substrates.emulated", "substrates.http"),
        ("substrates.emulated", "substrates.fleet"),
        ("substrates.http", "substrates.fleet"),
        ("substrates.fleet", "substrates.http"),
        ("tools.search", "tools.debug"),
        ("tools.debug", "tools.search"),
    ],
)
def test_packages_point_down(lower: str, upper: str) -> None:
    offending = [
        (name, target)
        for name, targets in GRAPH.items()
        if name == lower or name.startswith(lower + ".")
        for target in targets
        if target == upper or target.startswith(upper + ".")
    ]
    assert not offending, f"{lower} must not import {upper}: {offending}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_small_or_say_why(name: str) -> None:
    path = MODULES[name]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert _SAYS_WHY.search(doc), (
        f"{path.relative_to(ROOT)} has {lines} lines: split it by concern, or say at its top "
        "why it is one piece (a paragraph starting 'Why one module')"
    )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_what_it_holds(name: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text(encoding="utf-8")))
    assert doc, f"{MODULES[name].relative_to(ROOT)} has no module docstring"
