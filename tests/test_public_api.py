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


def test_all_is_sorted_and_unique() -> None:
    assert agentrt.__all__ == sorted(agentrt.__all__)
    assert len(set(agentrt.__all__)) == len(agentrt.__all__)


def test_every_exported_name_exists_and_is_documented() -> None:
    for name in agentrt.__all__:
        obj = getattr(agentrt, name)
        if name == "__version__" or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        assert inspect.getdoc(obj), f"agentrt.{name} has no docstring"


@pytest.mark.parametrize("module_name", MODULES)
def test_public_modules_declare_all_and_document_it(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no module docstring"
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module_name} has no __all__"
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
