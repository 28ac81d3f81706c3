from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentrt import ConfigError, Substrate, UnknownNameError
from agentrt.registry import Registry, resolve_substrate
from agentrt.testing import FixedLatencySubstrate


def make_plugin(
    root: Path, dist: str, module: str, entries: dict[str, dict[str, str]], source: str = ""
) -> None:
    """Install a tiny third-party distribution on ``root`` (a sys.path entry)."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"  # wheel naming
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = []
    for group, names in entries.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in names.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


PLUGIN = """
from agentrt.testing import FixedLatencySubstrate, FunctionTool

def make(*, speed: float = 1.0, turbo: bool = False, seed: int | None = None):
    return FixedLatencySubstrate(latency_s=1 / speed, name="turbo" if turbo else "plugin")

def make_tool(*, seed: int | None = None):
    return FunctionTool("grep", lambda args: "found")

not_a_substrate = lambda **kw: 42
"""


def test_the_builtin_fixed_substrate_is_registered() -> None:
    sub = resolve_substrate("fixed", latency_ms=200)
    assert isinstance(sub, FixedLatencySubstrate)
    assert sub.latency_s == 0.2


def test_a_near_miss_gets_a_did_you_mean() -> None:
    hint = r"unknown substrate 'fixd' \(did you mean 'fixed'\?\)"
    with pytest.raises(UnknownNameError, match=hint):
        Registry().substrate("fixd")


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(
        UnknownNameError, match="unknown substrate 'nope'; known substrates: .*fixed"
    ):
        Registry().substrate("nope")
    with pytest.raises(LookupError):
        Registry().tool("nope")


def test_string_options_are_converted_and_checked() -> None:
    reg = Registry()
    sub = reg.substrate("fixed", latency_ms="5", output_tokens="3")
    assert isinstance(sub, FixedLatencySubstrate)
    assert (sub.latency_s, sub.output_tokens) == (0.005, 3)
    with pytest.raises(ConfigError, match="option latency_ms='abc' of substrate 'fixed'"):
        reg.substrate("fixed", latency_ms="abc")
    with pytest.raises(ConfigError, match="has no option 'model'; its options: latency_ms"):
        reg.substrate("fixed", model="x")


def test_a_third_party_plugin_registers_like_a_builtin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_plugin(
        tmp_path,
        "agentrt-turbo",
        "agentrt_turbo",
        {
            "agentrt.substrates": {
                "turbo": "agentrt_turbo:make",
                "bad": "agentrt_turbo:not_a_substrate",
                "missing": "agentrt_turbo_gone:make",
            },
            "agentrt.tools": {"grep": "agentrt_turbo:make_tool"},
        },
        PLUGIN,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    assert {"fixed", "turbo"} <= set(reg.names("agentrt.substrates"))
    sub = reg.substrate("turbo", speed="4", turbo="true")
    assert isinstance(sub, Substrate)
    assert (sub.name, sub.latency_s) == ("turbo", 0.25)  # type: ignore[attr-defined]
    assert reg.tool("grep").name == "grep"
    with pytest.raises(ConfigError, match="returned 42, not a Substrate"):
        reg.substrate("bad")
    with pytest.raises(ConfigError, match="cannot load the substrate 'missing'"):
        reg.substrate("missing")


def test_two_packages_claiming_one_name_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_plugin(tmp_path, "pkg-one", "pkg_one", {"agentrt.substrates": {"dup": "pkg_one:make"}})
    make_plugin(tmp_path, "pkg-two", "pkg_two", {"agentrt.substrates": {"dup": "pkg_two:make"}})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="two packages register the substrate 'dup'"):
        Registry().names("agentrt.substrates")
