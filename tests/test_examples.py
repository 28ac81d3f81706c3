"""Every example runs, as a user would run it; the coding agent really fixes the bug."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agentrt import run
from agentrt.report import load_trace_file
from agentrt.trajectory import read_trajectory

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


def example(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=EXAMPLES.parent,
    )


def package_tests(workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )


@pytest.mark.parametrize("substrate", ["fixed", "wse3"])
def test_the_coding_agent_fixes_the_bundled_package(substrate: str, tmp_path: Path) -> None:
    coding = load("coding_agent")
    workdir = coding.copy_project(tmp_path)
    assert "2 failed" in package_tests(workdir).stdout  # the bug is real
    options: dict[str, Any] = {"model": "llama-3.1-8b"} if substrate == "wse3" else {}
    sub = coding.make_substrate(substrate, seed=1, **options)
    result = run(lambda: coding.run_coding_agent(sub, virtual=False, workdir=workdir, seed=1))
    assert result.status == "succeeded", result.error
    first, second = result.step("run-tests"), result.step("re-test")
    assert first.tool_ok is False
    assert "test_trailing_separator_keeps_an_empty_last_field" in (first.tool_output or "")
    assert second.tool_ok is True
    assert "docs/format.md" in (result.step("search-docs").tool_output or "")
    # Checked independently of the agent: the copy's tests now pass; the original is untouched.
    assert "4 passed" in package_tests(workdir).stdout
    assert "fields.pop()" in (coding.PROJECT / "tinycsv" / "__init__.py").read_text()


def test_the_coding_agent_in_virtual_time_uses_the_twins() -> None:
    proc = example("examples/coding_agent.py", "--virtual", "--substrate", "h100")
    assert proc.returncode == 0, proc.stderr
    assert "critical path: plan → run-tests → search-docs → patch → re-test → answer" in proc.stdout


def test_research_agent_shows_the_critical_path() -> None:
    proc = example("examples/research_agent.py", "--virtual")
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"critical path ([\d.]+) s vs sum of step latencies ([\d.]+) s", proc.stdout)
    assert found is not None, proc.stdout
    critical, total = float(found.group(1)), float(found.group(2))
    assert critical < 0.9 * total  # the three searches overlapped


def test_compare_substrates_writes_traces(tmp_path: Path) -> None:
    trace = tmp_path / "t.json"
    proc = example("examples/compare_substrates.py", "--trials", "5", "--trace", str(trace))
    assert proc.returncode == 0, proc.stderr
    assert "wse3 is" in proc.stdout
    assert "faster end to end" in proc.stdout
    assert trace.stat().st_size > 1000


def test_embed_example_is_short_and_runs() -> None:
    assert len((EXAMPLES / "embed.py").read_text().splitlines()) <= 30
    proc = example("examples/embed.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("succeeded")
    assert "sunny in Lisbon" in proc.stdout


def test_the_demo_in_virtual_time(tmp_path: Path) -> None:
    trace = tmp_path / "demo.json"
    proc = subprocess.run(
        [sys.executable, "-m", "agentrt", "demo", "--virtual", "--trace", f"jaeger-json:{trace}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ran the same agent" in proc.stdout
    assert proc.stdout.count("tests: 4 passed") == 2
    # One trace file per substrate, each holding only its own run.
    for name in ("wse3", "h100"):
        own = tmp_path / f"demo-{name}.json"
        assert f"trace ({name}): {own}" in proc.stdout
        [report] = load_trace_file(own)
        assert report.agent == f"coding-agent@{name}"
        assert report.substrates == (name,)
    assert not trace.exists()


#: Example plans that fail today because of a bug another change fixes (issue 12, item 1).
BROKEN_PLANS: dict[str, str] = {}


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(
            p.name,
            marks=[pytest.mark.xfail(reason=BROKEN_PLANS[p.name], strict=False)]
            if p.name in BROKEN_PLANS
            else [],
        )
        for p in sorted((EXAMPLES / "plans").glob("*.yaml"))
    ],
)
def test_every_example_plan_runs_in_virtual_time(plan: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agentrt", "run", f"examples/plans/{plan}", "-s", "wse3",
         "--virtual", "--json"],
        capture_output=True, text=True, timeout=120, check=False, cwd=EXAMPLES.parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '"status": "succeeded"' in proc.stdout


def test_every_file_under_examples_is_exercised() -> None:
    source = Path(__file__).read_text()
    for path in sorted(EXAMPLES.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts or path.name.startswith("."):
            continue
        relative = path.relative_to(EXAMPLES)
        if relative.parts[0] == "plans":
            continue  # test_every_example_plan_runs_in_virtual_time globs them
        if relative.parts[0] == "projects":
            # The coding agent copies the whole project and runs its tests, before and after.
            assert relative.parts[1] == "tinycsv", relative
            assert load("coding_agent").PROJECT == EXAMPLES / "projects" / "tinycsv"
            continue
        assert f'"{path.stem}"' in source or f"examples/{relative}" in source, (
            f"examples/{relative} is run by no test in {Path(__file__).name}"
        )


@pytest.mark.parametrize(
    "way", [(), ("--serve",), ("--framework", "pydantic-ai")], ids=["scripted", "serve", "peer"]
)
def test_the_tool_agent_fixes_the_package_every_way(way: tuple[str, ...], tmp_path: Path) -> None:
    """The model chooses the tools; in process, over HTTP and through PydanticAI alike."""
    record = tmp_path / "run.jsonl"
    proc = example("examples/tool_agent.py", *way, "--record", str(record))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "the tests pass" in proc.stdout
    if way:
        assert "package fixed: True" in proc.stdout
    # the recorded trajectory replays on the emulated engines
    recorded = read_trajectory(record)
    assert [t.tool_calls[0].name for t in recorded.turns if t.tool_calls] == [
        "read_file", "search", "write_file", "run_tests",
    ]  # fmt: skip
    replay = example("-m", "agentrt", "replay", str(record), "--substrates", "wse3,h100", "--json")
    assert replay.returncode == 0, replay.stderr
    times = json.loads(replay.stdout)["substrates"]
    assert times["wse3"]["model_s"] < times["h100"]["model_s"]


def test_the_fleet_examples_load_and_the_small_ones_run() -> None:
    """examples/fleets: every fleet spec validates and builds; the small ones run, the gate passes.

    examples/fleets/spike.yaml (10 simulated minutes, ~15 s wall) is only built here: running
    it is the integrator's benchmark.
    """
    from substrates.fleet.fleetbuild import build_fleet, run_fleet_spec
    from substrates.fleet.fleetspec import load_fleet_spec

    for name in ("examples/fleets/spike.yaml", "examples/fleets/canary.yaml",
                 "examples/fleets/autoscale-h100.yaml"):  # fmt: skip
        fleet = build_fleet(load_fleet_spec(EXAMPLES.parent / name))
        assert fleet.pools, name
    for name in ("examples/fleets/canary.yaml", "examples/fleets/autoscale-h100.yaml"):
        report = run_fleet_spec(load_fleet_spec(EXAMPLES.parent / name))
        assert report.lost == 0, name
    gate = subprocess.run(
        [sys.executable, "-m", "agentrt", "check", "examples/fleets/check-small.yaml"],
        capture_output=True, text=True, timeout=120, check=False, cwd=EXAMPLES.parent,
    )  # fmt: skip
    assert gate.returncode == 0, gate.stdout + gate.stderr


def test_power_budget_prices_750_mw_per_substrate() -> None:
    proc = example("examples/power_budget.py", "--slo", "p95(e2e) <= 15s")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("750 MW" in line for line in lines)
    for name in ("wse3", "h100", "b200"):
        row = next(line for line in lines if line.startswith(f"│ {name} "))
        assert "$" in row, row  # every headline substrate meets the SLO and has a price
    bad = example("examples/power_budget.py", "--slo", "p95(ttft) <= 1s")
    assert bad.returncode == 2
    assert "p95(e2e)" in bad.stderr


def test_the_example_batch_runs_in_virtual_time() -> None:
    proc = example("-m", "agentrt", "batch", "examples/batch/tasks.jsonl", "-s", "wse3",
                   "--virtual", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["status"] for r in rows] == ["succeeded"] * 4
