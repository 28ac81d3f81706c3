from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from agentrt import Plan, RetryPolicy, Step, StepDefaults
from agentrt.testing import FixedLatencySubstrate, FunctionSubstrate
from substrates.fleet.faults import FaultInjector
from substrates.fleet.load import run_load
from substrates.fleet.router import Router

ROOT = Path(__file__).resolve().parents[3]
SHORT = Plan(
    name="short",
    steps=[
        Step(id="think"),
        Step(id="act", depends_on=["think"]),
        Step(id="answer", kind="answer", depends_on=["act"]),
    ],
    defaults=StepDefaults(retry=RetryPolicy(max_attempts=4, initial_backoff_s=0.2, jitter_s=0.1)),
)


def test_reliability_1000_runs_with_errors_and_an_outage(vrun: Callable[..., Any]) -> None:
    primary = FaultInjector(
        FixedLatencySubstrate(latency_s=0.2, output_tokens=8, name="primary"),
        seed=1,
        error_rate=0.1,
        outages=[(20.0, 30.0)],
    )
    backup = FaultInjector(
        FixedLatencySubstrate(latency_s=0.6, output_tokens=8, name="backup"), seed=2, error_rate=0.1
    )
    router = Router({"primary": primary, "backup": backup}, breaker_cooldown_s=5.0)
    report = vrun(partial(run_load, SHORT, router, agents=1000, arrival_rate=10.0, seed=7))

    assert (report.arrivals, report.completed, report.failed, report.lost) == (1000, 1000, 0, 0)
    data = report.to_dict()
    assert data["completed"] + data["failed"] + data["lost"] == 1000
    # The report's counts match what the substrates saw.
    assert data["calls"] == 3000 == sum(router.served.values())
    assert data["substrates"]["primary"]["calls"] == router.served["primary"]
    assert data["attempts"] == report.attempts > 3000  # some steps needed a retry
    # Faults really happened and were absorbed: by fail-over and by retries.
    assert primary.injected["outage"] > 0
    assert primary.injected["error"] > 100
    assert backup.injected["error"] > 0
    assert router.failovers > 100
    assert "open" in [s for _, s in router.breakers["primary"].transitions]
    assert router.served["backup"] > 0
    assert router.served["primary"] > 0
    assert data["faults_injected"]["outage"] == primary.injected["outage"]
    assert data["e2e_p50_s"] <= data["e2e_p95_s"] <= data["e2e_p99_s"]


def test_failed_runs_are_counted_with_their_reason(vrun: Callable[..., Any]) -> None:
    always_down = FaultInjector(FixedLatencySubstrate(latency_s=0.1), seed=0, error_rate=1.0)
    report = vrun(partial(run_load, SHORT, always_down, agents=50, arrival_rate=5.0, seed=1))
    assert (report.arrivals, report.completed, report.failed, report.lost) == (50, 0, 50, 0)
    assert dict(report.failure_reasons) == {"failed: SubstrateUnavailable": 50}


def test_runs_past_the_drain_deadline_fail_as_cancelled(vrun: Callable[..., Any]) -> None:
    slow = FixedLatencySubstrate(latency_s=100.0)
    report = vrun(
        partial(run_load, SHORT, slow, agents=10, arrival_rate=1.0, seed=1, drain_timeout_s=50.0)
    )
    assert (report.arrivals, report.completed, report.failed, report.lost) == (10, 0, 10, 0)
    assert set(report.failure_reasons) == {"cancelled: cancelled by the caller"}


def test_duration_stops_arrivals_and_goodput_uses_the_slo(vrun: Callable[..., Any]) -> None:
    sub = FixedLatencySubstrate(latency_s=1.0)
    report = vrun(
        partial(
            run_load,
            SHORT,
            sub,
            agents=10_000,
            arrival_rate=2.0,
            duration_s=30.0,
            seed=3,
            slo_s=3.5,
        )
    )
    assert 40 < report.arrivals < 80
    data = report.to_dict()
    assert data["goodput_fraction"] == 1.0
    assert data["e2e_p99_s"] == pytest.approx(3.0)


def test_seeded_load_repeats_exactly(vrun: Callable[..., Any]) -> None:
    def once() -> dict[str, Any]:
        sub = FaultInjector(FixedLatencySubstrate(latency_s=0.3), seed=5, error_rate=0.2)
        data = vrun(partial(run_load, SHORT, sub, agents=100, arrival_rate=5.0, seed=9)).to_dict()
        data.pop("wall_s")
        return data

    assert once() == once()


def test_functions_substrate_errors_do_not_lose_runs(vrun: Callable[..., Any]) -> None:
    async def boom(request: Any) -> Any:
        raise RuntimeError("bug in a substrate")

    report = vrun(
        partial(run_load, SHORT, FunctionSubstrate(boom), agents=5, arrival_rate=1.0, seed=1)
    )
    assert (report.completed, report.failed, report.lost) == (0, 5, 0)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "substrates.fleet.cli", *args],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "short.yaml"
    path.write_text(
        "name: short\nsteps:\n  - id: think\n    slo: interactive\n"
        "  - id: answer\n    kind: answer\n    depends_on: [think]\n"
    )
    return path


def test_load_command_json_fields(plan_file: Path, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "policy: slo\nroutes:\n  fast: {substrate: fixed, options: {latency_ms: 100}}\n"
        "  bulk: {substrate: fixed, options: {latency_ms: 800}}\nby_slo: {interactive: fast}\n"
    )
    proc = _cli(
        str(plan_file), "--substrate", f"route:{fleet}", "--agents", "200", "--arrival-rate",
        "20", "--virtual", "--seed", "1", "--faults", "errors=0.1", "--slo-s", "2", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in (
        "completed", "failed", "lost", "throughput_runs_per_s", "e2e_p50_s", "e2e_p95_s",
        "e2e_p99_s", "ttft_p50_s", "ttft_p99_s", "cost_usd", "energy_j", "wall_s",
    ):  # fmt: skip
        assert key in data, key
    assert data["completed"] + data["failed"] == 200
    assert data["lost"] == 0
    assert data["faults_injected"]["error"] > 0
    assert set(data["substrates"]) == {"fast", "bulk"}


def test_load_command_sweep_and_errors(plan_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "curve.png"
    proc = _cli(
        str(plan_file), "-s", "fixed", "-o", "latency_ms=50", "--agents", "30",
        "--arrival-rate", "4", "--virtual", "--seed", "1", "--sweep", "--plot", str(png),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "latency vs load on fixed" in proc.stdout
    assert png.stat().st_size > 1000
    bad = _cli(str(plan_file), "-s", "fixed", "--faults", "outage=soon", "--virtual")
    assert bad.returncode == 2
    assert "START+DURATION" in bad.stderr
