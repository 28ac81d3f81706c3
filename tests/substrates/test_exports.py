"""``substrates`` re-exports its public nouns, each documented, as the docs import them."""

from __future__ import annotations

import inspect

import substrates


def test_the_package_root_exports_the_public_nouns() -> None:
    assert len(set(substrates.__all__)) == len(substrates.__all__)
    for name in ("build_engine", "EmulatedEngine", "PRESETS", "Router", "FaultInjector"):
        assert name in substrates.__all__
    for name in substrates.__all__:
        obj = getattr(substrates, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name


def test_build_engine_imports_from_the_root() -> None:
    from substrates import build_engine

    assert build_engine("wse3", model="llama-3.1-8b").name == "wse3"
