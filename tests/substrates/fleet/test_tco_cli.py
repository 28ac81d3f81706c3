"""``agentrt tco`` as a user runs it: the table, JSON with sources, the picture, bad input."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

Command = Callable[..., subprocess.CompletedProcess[str]]

PLAN = """\
name: two-steps
steps:
  - id: a
    kind: think
    prompt: plan
    max_output_tokens: 60
  - id: b
    kind: answer
    depends_on: [a]
    prompt: answer
    max_output_tokens: 120
"""
FAST = ("--duration", "40", "--model", "llama-3.1-8b", "--substrates", "wse3,b200")


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    return path


def test_json_prices_each_substrate_with_sources(agentrt_command: Command, plan: Path) -> None:
    proc = agentrt_command("tco", str(plan), "--load", "4/s", "--slo", "p95(e2e) <= 20s",
                           *FAST, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["load_tasks_per_s"] == 4.0
    assert [s["substrate"] for s in data["substrates"]] == ["wse3", "b200"]
    for row in data["substrates"]:
        assert row["sizing"]["met"] is True
        assert row["sizing"]["measured_s"] <= 20.0
        assert row["systems"] >= 1
        tco = [row["tco_usd"][m] for m in ("12", "24", "36")]
        assert tco == sorted(tco)
        assert tco[0] >= row["capex_usd"]
        assert row["per_unit"]["usd_per_task"] > 0
        assert row["per_unit"]["j_per_token"] > 0
        assert row["racks"] >= 1
        # Every figure traces to a data entry: the system's and the facility's sources.
        assert row["sources"]
        assert any(k.startswith("system.") for k in row["sources"])
        assert any(k.startswith("facility.") for k in row["sources"])
        assert all(v for v in row["sources"].values())


def test_the_table_is_side_by_side_within_100_columns(agentrt_command: Command, plan: Path) -> None:
    proc = agentrt_command("tco", str(plan), "--load", "4/s", *FAST, "--months", "12,36")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert any("wse3" in line and "b200" in line for line in lines)
    for label in ("systems", "capex", "TCO 12 months", "TCO 36 months", "USD / task",
                  "J / output token", "tasks/s per MW", "racks", "floor m2"):  # fmt: skip
        assert any(line.startswith(f"│ {label}") for line in lines), label
    assert not any("TCO 24 months" in line for line in lines)


def test_plot_and_tokens_per_s(agentrt_command: Command, plan: Path, tmp_path: Path) -> None:
    picture = tmp_path / "cost.png"
    proc = agentrt_command("tco", str(plan), "--load", "400tok/s", *FAST, "--plot", str(picture),
                           "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert picture.read_bytes()[:4] == b"\x89PNG"
    data = json.loads(proc.stdout)
    assert 0 < data["load_tasks_per_s"] < 400  # converted through the plan's tokens per task
    by_slo: dict[str, list[tuple[float, int | None]]] = {}
    for p in data["sweep"]:
        by_slo.setdefault(p["substrate"], []).append((p["slo_s"], p["systems"]))
    for points in by_slo.values():
        needed = [n if n is not None else float("inf") for _, n in sorted(points, reverse=True)]
        assert needed == sorted(needed)  # tighter SLO: never fewer systems


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--load", "fast"), "--load 'fast' is not a positive rate"),
        (("--slo", "p95(ttft) <= 1s"), "p95(e2e) <= 10s"),
        (("--slo", "p95 e2e under 3"), "cannot read target"),
        (("--substrates", "nope"), "unknown system 'nope'"),
        (("--months", "0"), "--months '0'"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    agentrt_command: Command, plan: Path, args: tuple[str, ...], message: str
) -> None:
    proc = agentrt_command("tco", str(plan), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "message"),
    [("notes.txt", "not a plan (.yaml with steps:), a traj"), ("gone.yaml", "no such file")],
)
def test_a_file_that_is_not_a_plan_or_trajectory_exits_2(
    agentrt_command: Command, tmp_path: Path, name: str, message: str
) -> None:
    path = tmp_path / name
    if name == "notes.txt":
        path.write_text("# just notes\n")
    proc = agentrt_command("tco", str(path))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_trajectory_is_sized_by_replaying_it_per_arrival(agentrt_command: Command) -> None:
    trajectory = Path(__file__).parents[3] / "docs" / "trajectories" / "research-h100.jsonl"
    proc = agentrt_command(
        "tco", str(trajectory), "--load", "0.5/s", "--slo", "p95(e2e) <= 90s", "--duration",
        "30", "--substrates", "b200", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["kind"] == "trajectory"
    [row] = data["substrates"]
    assert row["sizing"]["met"]
    assert row["sizing"]["measurement"]["tokens_per_task"] > 0
    assert row["sizing"]["measured_s"] <= 90


def test_processes_executor_gives_the_local_answer(agentrt_command: Command, plan: Path) -> None:
    local = agentrt_command("tco", str(plan), "--load", "4/s", *FAST, "--json")
    spread = agentrt_command(
        "tco", str(plan), "--load", "4/s", *FAST, "--json", "--executor", "processes:2"
    )
    assert local.returncode == spread.returncode == 0, spread.stderr
    assert json.loads(local.stdout)["substrates"] == json.loads(spread.stdout)["substrates"]


def test_a_fleet_spec_sizes_each_pools_ceiling_and_prices_peak_and_rent(
    agentrt_command: Command,
) -> None:
    spec = Path(__file__).parents[3] / "examples" / "fleets" / "autoscale-h100.yaml"
    proc = agentrt_command("tco", str(spec), "--slo", "p95(e2e) <= 120s", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["kind"], data["met"]) == ("fleet", True)
    [pool] = data["pools"]
    assert 1 <= pool["peak_replicas"] <= pool["ceiling"]
    assert pool["systems"] >= 1
    assert pool["capex_usd"] > 0
    assert pool["rent_usd_per_month"] > 0  # h100 has a rental price: its replica-hours
    assert data["measured_s"] <= 120
    tight = agentrt_command("tco", str(spec), "--slo", "p95(e2e) <= 40s", "--json")
    assert tight.returncode == 0, tight.stderr
    missed = json.loads(tight.stdout)
    assert not missed["met"]
    assert missed["missed"] in ("autoscaler", "cap")
