from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from substrates.fleet.check import run_checks
from substrates.fleet.checkspec import CheckSpec
from substrates.fleet.specfile import parse_spec_text
from substrates.fleet.targets import Target

Command = Callable[..., subprocess.CompletedProcess[str]]
ROOT = Path(__file__).resolve().parents[3]
PLAN = ROOT / "examples" / "plans" / "research.yaml"


def _spec(tmp_path: Path, targets: list[str], **extra: object) -> Path:
    check = {
        "name": "small",
        "plan": str(PLAN),
        "substrate": "fixed",
        "options": {"latency_ms": 100},
        "agents": 20,
        "arrival_rate": 5.0,
        "slo_s": 1.0,
        "targets": targets,
        **extra,
    }
    path = tmp_path / "check.yaml"
    path.write_text(json.dumps({"checks": [check]}), encoding="utf-8")
    return path


def test_a_met_spec_exits_0_and_prints_the_table(agentrt_command: Command) -> None:
    done = agentrt_command("check", str(ROOT / "examples" / "fleets" / "check-small.yaml"))
    assert done.returncode == 0, done.stderr
    assert "p95(e2e) <= 2s" in done.stdout
    assert "FAIL" not in done.stdout
    assert "targets met" in done.stdout


def test_a_breach_exits_1_and_junit_names_it(agentrt_command: Command, tmp_path: Path) -> None:
    spec = _spec(tmp_path, ["p95(e2e) <= 1ms", "lost == 0", "cost_per_task <= $1"])
    junit = tmp_path / "slo.xml"
    done = agentrt_command("check", str(spec), "--junit", str(junit))
    assert done.returncode == 1, done.stderr
    assert "FAIL" in done.stdout
    assert "1 breached" in done.stdout
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("3", "1")
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == ["p95(e2e) <= 1ms", "lost == 0", "cost_per_task <= $1"]
    failure = cases[0].find("failure")
    assert failure is not None
    assert "measured" in (failure.get("message") or "")
    assert "1.0 ms" in (failure.get("message") or "")
    assert all(c.find("failure") is None for c in cases[1:])


def test_json_reports_every_target(agentrt_command: Command, tmp_path: Path) -> None:
    spec = _spec(tmp_path, ["p50(e2e) <= 10s", "slo_attainment >= 0.5", "throughput > 0"])
    done = agentrt_command("check", str(spec), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["passed"]
    assert data["breaches"] == 0
    rows = data["checks"][0]["targets"]
    assert [r["target"] for r in rows] == [
        "p50(e2e) <= 10s",
        "slo_attainment >= 0.5",
        "throughput > 0",
    ]
    assert all(r["passed"] and r["measured"] is not None for r in rows)


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("checks:\n  - plan: p.yaml\n    substrate: wse3\n    targets:\n      - p95(e2e) <= 8\n", 5,
         "with its unit"),
        ("checks:\n  - plan: p.yaml\n    substrate: w\n    targets: [lost == 0]\n    agents: 0\n",
         5, "agents"),
        ("checks:\n  - plan: p.yaml\n    targets: [lost == 0]\n", 2, "substrate"),
        ("checks:\n  - fleet: f.yaml\n    plan: p.yaml\n    targets: [lost == 0]\n", 2, "not both"),
        ("checks:\n  - plan: p.yaml\n    substrate: x\n    targets: [slo_attainment >= 0.9]\n", 2,
         "slo_s"),
        ("checks:\n  - plan: p.yaml\n    substrate: x\n    targets: [lost(tenant=a) == 0]\n", 2,
         "fleet"),
        ("checks:\n  - plan: p.yaml\n    substrate: x\n    target: [lost == 0]\n", 4,
         "did you mean `targets`"),
        ("checks: [\n", 2, "malformed YAML"),
        ("- 1\n", 1, "mapping"),
    ],
)  # fmt: skip
def test_bad_specs_exit_2_with_file_line(
    agentrt_command: Command, tmp_path: Path, text: str, line: int, says: str
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text, encoding="utf-8")
    done = agentrt_command("check", str(spec))
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert f"bad.yaml:{line}:" in message
    assert says in message
    assert done.stderr.count("error:") == 1


def test_missing_spec_and_unknown_substrate_exit_2(
    agentrt_command: Command, tmp_path: Path
) -> None:
    done = agentrt_command("check", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2
    assert "no such check spec" in done.stderr
    done = agentrt_command("check", str(_spec(tmp_path, ["lost == 0"], substrate="nonesuch")))
    assert done.returncode == 2
    assert "nonesuch" in done.stderr


def test_checks_are_deterministic_with_a_seed(tmp_path: Path) -> None:
    spec = _spec(tmp_path, ["p95(e2e) <= 10s", "p99(ttft) <= 10s", "cost_per_task <= $1"],
                 substrate="wse3", options={})  # fmt: skip
    first, second = run_checks(spec), run_checks(spec)
    assert [v.measured for v in first[0].verdicts] == [v.measured for v in second[0].verdicts]


def test_percentiles_are_ordered(tmp_path: Path) -> None:
    targets = [f"p{q}({x}) <= 1000s" for x in ("e2e", "ttft") for q in (50, 95, 99)]
    spec = _spec(tmp_path, targets, substrate="h100", options={}, agents=30)
    measured = [v.measured for v in run_checks(spec)[0].verdicts]
    assert all(m is not None for m in measured)
    e2e, ttft = measured[:3], measured[3:]
    assert e2e == sorted(e2e)  # type: ignore[type-var]
    assert ttft == sorted(ttft)  # type: ignore[type-var]


def test_a_fleet_check_uses_the_fleet_measure(tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text("checks:\n  - fleet: f.yaml\n    targets: [rejected(pool=a) == 0, lost == 0]\n")
    seen: list[str] = []

    def fleet(path: str, virtual: bool, seed: int | None) -> Callable[[Target], float | None]:
        seen.append(path)
        return lambda t: 1.0 if t.scope else 0.0

    [outcome] = run_checks(spec, fleet=fleet)
    assert seen == [str(tmp_path / "f.yaml")]
    assert [v.passed for v in outcome.verdicts] == [False, True]


def test_targets_parse_inside_the_schema() -> None:
    spec = parse_spec_text(
        "checks:\n  - fleet: f.yaml\n    targets: ['p99(ttft) <= 500ms']\n", CheckSpec, source="s"
    )
    assert spec.checks[0].targets[0].limit == pytest.approx(0.5)


def test_a_check_plays_a_recorded_trajectory(agentrt_command: Command, tmp_path: Path) -> None:
    record = tmp_path / "run.json"
    done = agentrt_command("run", str(PLAN), "-s", "wse3", "--virtual", "--record", str(record))
    assert done.returncode == 0, done.stderr
    spec = _spec(tmp_path, ["lost == 0", "p95(e2e) <= 60s"], substrate="wse3", options={})
    text = spec.read_text(encoding="utf-8").replace('"slo_s"', '"trajectory": "run.json", "slo_s"')
    spec.write_text(text, encoding="utf-8")
    [outcome] = run_checks(spec)
    assert outcome.passed
    record.unlink()
    done = agentrt_command("check", str(spec))
    assert done.returncode == 2
    assert "run.json" in done.stderr
