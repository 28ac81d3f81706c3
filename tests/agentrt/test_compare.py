from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentrt import InferenceRequest, Plan, Step
from agentrt.compare import compare, percentile
from agentrt.testing import FixedLatencySubstrate, FunctionSubstrate

ROOT = Path(__file__).resolve().parents[2]


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_lies_between_min_and_max_and_is_monotone(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert min(values) <= p <= max(values)
    assert percentile(values, 0) == min(values)
    assert percentile(values, 100) == max(values)
    assert percentile(values, min(100.0, q + 1)) >= p


def test_compare_summarizes_trials(vrun: Callable[..., Any]) -> None:
    calls = {"n": 0}

    async def growing(request: InferenceRequest) -> str:
        calls["n"] += 1
        await anyio.sleep(0.1 * (1 + calls["n"] % 10))  # 0.1 .. 1.0 s
        return "x"

    plan = Plan(name="p", steps=[Step(id="a"), Step(id="b", depends_on=["a"])])
    seen: list[str] = []
    result = vrun(
        lambda: compare(
            plan,
            {"steady": FixedLatencySubstrate(0.2), "varied": FunctionSubstrate(growing)},
            trials=20,
            on_trial=lambda name, run: seen.append(name),
        )
    )
    assert seen == ["steady"] * 20 + ["varied"] * 20
    steady, varied = result.substrates["steady"], result.substrates["varied"]
    assert steady.e2e_p50_s == pytest.approx(0.4)
    assert steady.e2e_p99_s == pytest.approx(0.4)
    assert steady.steps == {"a": pytest.approx(0.2), "b": pytest.approx(0.2)}
    assert varied.e2e_p50_s < varied.e2e_p95_s <= varied.e2e_p99_s
    assert result.speedup["steady"] == pytest.approx(varied.e2e_p50_s / 0.4)
    assert result.speedup["varied"] == 1.0
    assert result.clock == "virtual"


def test_compare_command_on_emulated_engines() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentrt",
            "compare",
            str(ROOT / "examples/plans/research.yaml"),
            "--substrates",
            "wse3,h100",
            "--trials",
            "100",
            "--virtual",
            "--seed",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data["substrates"]) == {"wse3", "h100"}
    for summary in data["substrates"].values():
        assert summary["trials"] == 100
        assert summary["succeeded"] == 100
        assert 0 < summary["e2e_p50_s"] <= summary["e2e_p95_s"] <= summary["e2e_p99_s"]
        assert set(summary["steps"]) == {
            "outline",
            "angle-latency",
            "angle-cost",
            "angle-power",
            "synthesis",
        }
    assert data["speedup"]["h100"] == 1.0
    assert data["speedup"]["wse3"] > 3


def test_compare_command_rejects_bad_input() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentrt",
            "compare",
            str(ROOT / "examples/plans/research.yaml"),
            "--substrates",
            "wse3,nope",
            "--virtual",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown substrate 'nope'" in proc.stderr
