from __future__ import annotations

import importlib.util
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from substrates.fleet.fleetbuild import run_fleet_spec
from substrates.fleet.fleetspec import load_fleet_spec

Command = Callable[..., subprocess.CompletedProcess[str]]
FLEETS = Path(__file__).resolve().parents[3] / "examples" / "fleets"


def test_load_runs_a_fleet_spec_as_json(agentrt_command: Command) -> None:
    done = agentrt_command("load", str(FLEETS / "autoscale-h100.yaml"), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["arrivals"] > 0
    assert data["lost"] == 0
    assert data["completed"] + data["failed"] + data["rejected"] == data["arrivals"]
    assert set(data["tenants"]) == {"chat"}
    assert set(data["pools"]) == {"h100"}
    ups = [e for e in data["scale_events"] if e["kind"] == "scale_up"]
    readies = [e for e in data["scale_events"] if e["kind"] == "ready"]
    assert ups
    # a cold replica serves only after its cold start: each ready comes after its scale-up
    assert readies
    assert min(e["t_s"] for e in readies) > min(e["t_s"] for e in ups)
    assert data["timeline"]


def test_load_prints_the_fleet_summary(agentrt_command: Command) -> None:
    done = agentrt_command("load", str(FLEETS / "autoscale-h100.yaml"))
    assert done.returncode == 0, done.stderr
    assert "arrivals" in done.stdout
    assert "h100" in done.stdout
    assert "0 lost" in done.stdout


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_load_plots_a_fleet(agentrt_command: Command, tmp_path: Path) -> None:
    out = tmp_path / "fleet.svg"
    done = agentrt_command("load", str(FLEETS / "autoscale-h100.yaml"), "--plot", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8").lstrip().startswith("<?xml")


def test_load_refuses_a_bad_fleet_spec_with_file_and_line(
    agentrt_command: Command, tmp_path: Path
) -> None:
    text = (FLEETS / "autoscale-h100.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "fleet.yaml"
    bad.write_text(text.replace("max: 4", "max: -1"), encoding="utf-8")
    line = next(i + 1 for i, s in enumerate(bad.read_text().splitlines()) if "max: -1" in s)
    done = agentrt_command("load", str(bad))
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert f"fleet.yaml:{line}: pools.h100.max" in message
    assert done.stderr.count("error:") == 1


def test_load_keeps_plans_and_refuses_mixed_arguments(agentrt_command: Command) -> None:
    plan = FLEETS.parent / "plans" / "research.yaml"
    done = agentrt_command("load", str(plan))
    assert done.returncode == 2
    assert "--substrate" in done.stderr
    for extra in (("-s", "wse3"), ("--model", "llama-3.1-8b"), ("--sweep",)):
        done = agentrt_command("load", str(FLEETS / "autoscale-h100.yaml"), *extra)
        assert done.returncode == 2
        assert "fleet spec" in done.stderr
    done = agentrt_command("load", str(plan), "-s", "fixed", "--virtual", "--agents", "5", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["completed"] == 5


def test_the_slower_canary_is_rolled_back() -> None:
    report = run_fleet_spec(load_fleet_spec(FLEETS / "canary.yaml"))
    kinds = [e.kind for e in report.rollout_events]
    assert kinds[0] == "start"
    assert "rollback" in kinds
    assert "promote" not in kinds
    rollback = next(e for e in report.rollout_events if e.kind == "rollback")
    assert rollback.weights["canary"] == 0
    assert report.lost == 0
    # after the rollback the stable pool serves everything
    late = [s for s in report.samples if s.t_s > rollback.t_s - report.start_s + 60]
    assert late
    assert all(s.pools["canary"]["in_flight"] == 0 for s in late)


def test_load_fleet_traces_its_decisions_as_span_events(
    agentrt_command: Command, tmp_path: Path
) -> None:
    """Every rollout (and scale) decision is a span event in the trace file, besides the report."""
    trace_file = tmp_path / "fleet.json"
    canary = str(FLEETS / "canary.yaml")
    proc = agentrt_command("load", canary, "--trace", f"jaeger-json:{trace_file}")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(trace_file.read_text())
    logs = [log for t in data["data"] for s in t["spans"] for log in s.get("logs", [])]
    fields = [{f["key"]: f["value"] for f in log["fields"]} for log in logs]
    assert {f.get("event") for f in fields} == {"agentrt.fleet.rollout"}
    assert any("rollback" in json.dumps(f) for f in fields)
    plan = agentrt_command("load", str(FLEETS.parent / "plans" / "research.yaml"), "-s", "wse3",
                           "--trace", "console")  # fmt: skip
    assert plan.returncode == 2
    assert "--trace is for fleet specs" in plan.stderr
