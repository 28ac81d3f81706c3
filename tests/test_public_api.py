from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import agentrt

MODULES = sorted(
    m.name
    for m in pkgutil.iter_modules(agentrt.__path__, "agentrt.")
    if not m.name.split(".")[-1].startswith("_")
)
#: The plug-in packages' public import paths (docs/architecture.md, "Public import paths").
PLUGIN_PATHS = [
    "substrates",
    "substrates.emulated",
    "substrates.fleet",
    "substrates.http",
    "substrates.http.server",
    "tools",
    "tools.debug",
    "tools.search",
]


def test_all_is_sorted_and_unique() -> None:
    assert agentrt.__all__ == sorted(agentrt.__all__)
    assert len(set(agentrt.__all__)) == len(agentrt.__all__)


def test_every_exported_name_exists_and_is_documented() -> None:
    for name in agentrt.__all__:
        obj = getattr(agentrt, name)
        if name == "__version__" or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        assert inspect.getdoc(obj), f"agentrt.{name} has no docstring"


def _isort_style(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions: the order ruff's RUF022 sorts by."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


@pytest.mark.parametrize("module_name", MODULES + PLUGIN_PATHS)
def test_public_modules_declare_all_and_document_it(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no module docstring"
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module_name} has no __all__"
    if module_name in PLUGIN_PATHS:
        assert list(exported) == sorted(set(exported), key=_isort_style), module_name
    for name in exported:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"


def test_the_package_root_reexports_the_public_nouns() -> None:
    # Everything a user needs for the README example is importable from the root.
    for name in ("Agent", "Plan", "Step", "Substrate", "Tool", "VirtualClock", "run", "load_plan"):
        assert name in agentrt.__all__


def test_the_kernel_imports_neither_substrates_nor_tools() -> None:
    for module_name in MODULES:
        source = inspect.getsource(importlib.import_module(module_name))
        for line in source.splitlines():
            stripped = line.strip()
            assert not stripped.startswith(
                ("import substrates", "from substrates", "import tools", "from tools")
            ), (module_name, line)
