from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import agentrt

ROOT = Path(__file__).resolve().parents[2]
RESEARCH = ROOT / "examples" / "plans" / "research.yaml"


def agentrt_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentrt", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_version() -> None:
    proc = agentrt_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"agentrt {agentrt.__version__}"


def test_run_json_has_the_documented_fields() -> None:
    proc = agentrt_cli(
        "run",
        str(RESEARCH),
        "--substrate",
        "fixed",
        "--latency-ms",
        "200",
        "--output-tokens",
        "20",
        "--virtual",
        "--seed",
        "3",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "succeeded"
    assert data["seed"] == 3
    # outline, then three parallel angles, then the synthesis: 3 x 200 ms on the critical path
    assert data["e2e_s"] == pytest.approx(0.6)
    assert {s["id"] for s in data["steps"]} == {
        "outline",
        "angle-latency",
        "angle-cost",
        "angle-power",
        "synthesis",
    }
    for step in data["steps"]:
        assert step["substrate"] == "fixed"
        assert step["output_tokens"] == 20
        assert step["latency_s"] == pytest.approx(0.2)
        assert set(step["timing"]) >= {
            "queue_s",
            "network_s",
            "prefill_s",
            "decode_s",
            "comm_s",
            "ttft_s",
        }
    assert "cost_usd" in data
    assert "energy_j" in data


def test_run_prints_a_table() -> None:
    proc = agentrt_cli("run", str(RESEARCH), "-s", "fixed", "--latency-ms", "50", "--virtual")
    assert proc.returncode == 0, proc.stderr
    assert "synthesis" in proc.stdout
    assert "succeeded · end-to-end 0.150 s" in proc.stdout


def test_real_time_run(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text("name: p\nsteps:\n  - id: a\n  - id: b\n    depends_on: [a]\n")
    proc = agentrt_cli("run", str(plan), "-s", "fixed", "--latency-ms", "30", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["clock"] == "real"
    assert data["e2e_s"] >= 0.06


def test_malformed_yaml_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    plan = tmp_path / "bad.yaml"
    plan.write_text("name: x\nsteps:\n  - id: a\n   kind: think\n")
    proc = agentrt_cli("run", str(plan), "--substrate", "fixed")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {plan}:4: malformed YAML")
    assert "Traceback" not in proc.stderr


def test_an_invalid_plan_names_the_step(tmp_path: Path) -> None:
    plan = tmp_path / "cycle.yaml"
    plan.write_text(
        "name: x\nsteps:\n  - id: a\n    depends_on: [b]\n  - id: b\n    depends_on: [a]\n"
    )
    proc = agentrt_cli("run", str(plan), "--substrate", "fixed")
    assert proc.returncode == 2
    assert "the steps form a cycle: " in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_substrate_lists_known_names() -> None:
    proc = agentrt_cli("run", str(RESEARCH), "--substrate", "warp-drive")
    assert proc.returncode == 2
    assert "unknown substrate 'warp-drive'; known substrates:" in proc.stderr
    assert "fixed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_option_value(tmp_path: Path) -> None:
    proc = agentrt_cli("run", str(RESEARCH), "-s", "fixed", "-o", "latency_ms=fast")
    assert proc.returncode == 2
    assert "option latency_ms='fast' of substrate 'fixed'" in proc.stderr


def test_a_failed_run_exits_1_and_says_why(tmp_path: Path) -> None:
    plan = tmp_path / "slow.yaml"
    plan.write_text(
        "name: slow\ndefaults: {timeout_s: 1, retry: {max_attempts: 2, jitter_s: 0}}\n"
        "steps:\n  - id: a\n"
    )
    proc = agentrt_cli("run", str(plan), "-s", "fixed", "--latency-ms", "5000", "--virtual")
    assert proc.returncode == 1
    assert "step 'a' failed after 2 attempts: StepTimeout" in proc.stdout


def test_json_logs_carry_run_and_step_ids(tmp_path: Path) -> None:
    proc = agentrt_cli(
        "run",
        str(RESEARCH),
        "-s",
        "fixed",
        "--virtual",
        "--json",
        "--log-format",
        "json",
        "--log-level",
        "info",
    )
    assert proc.returncode == 0
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    run_id = json.loads(proc.stdout)["run_id"]
    finished = [e for e in events if e["event"] == "step_finished"]
    assert len(finished) == 5
    assert all(
        e["run_id"] == run_id and e["step_id"] and e["substrate"] == "fixed" for e in finished
    )


def test_substrates_lists_the_registry() -> None:
    proc = agentrt_cli("substrates", "--json")
    assert proc.returncode == 0
    assert "fixed" in json.loads(proc.stdout)["substrates"]


def test_log_level_off_prints_nothing() -> None:
    proc = agentrt_cli(
        "run", str(RESEARCH), "-s", "fixed", "--virtual", "--json", "--log-level", "off"
    )
    assert proc.returncode == 0
    assert proc.stderr == ""


def test_the_plan_file_can_name_its_substrate_and_faults(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text(
        "name: p\nsubstrate: fixed\nsubstrate_options: {latency_ms: 100}\n"
        "faults: errors=0.5\n"
        "defaults: {retry: {max_attempts: 10, initial_backoff_s: 0.1, jitter_s: 0}}\n"
        "steps:\n" + "".join(f"  - id: s{i}\n" for i in range(8))
    )
    proc = agentrt_cli("run", str(plan), "--virtual", "--seed", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {s["substrate"] for s in data["steps"]} == {"fixed"}
    assert all(s["latency_s"] >= 0.1 for s in data["steps"])
    assert sum(s["attempts"] for s in data["steps"]) > 8  # injected errors were retried
    assert data["status"] == "succeeded"


def test_a_plan_without_a_substrate_needs_the_option(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text("name: p\nsteps:\n  - id: a\n")
    proc = agentrt_cli("run", str(plan))
    assert proc.returncode == 2
    assert "no substrate: pass --substrate NAME or set `substrate:` in the plan file" in proc.stderr
