from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agentrt import ToolResult, current_clock
from tools.debug import DebugArgs, DebugLatency, DebugOutcome, DebugReport, DebugTwin

SCRIPT = {
    "tests/": [
        DebugOutcome(failing=["tests/test_calc.py::test_add"], passed=3),
        DebugOutcome(passed=4),
    ]
}


def test_twin_sleeps_its_latency_on_the_virtual_clock(vrun: Callable[..., Any]) -> None:
    twin = DebugTwin(script=SCRIPT, seed=3)

    async def main() -> list[tuple[ToolResult, float]]:
        runs = []
        for _ in range(3):
            before = current_clock().current_time()
            result = await twin.call(DebugArgs(pytest="tests/", copy_from="/nonexistent"))
            runs.append((result, current_clock().current_time() - before))
        return runs

    (first, t1), (second, t2), (third, _) = vrun(main)
    assert first.duration_s == pytest.approx(t1)
    assert second.duration_s == pytest.approx(t2)
    # A pytest run of 4 tests: around the measured start-up, jittered.
    assert 0.5 < t1 < 5.0
    assert not first.ok
    assert isinstance(first.data, dict)
    assert first.data["failing_tests"] == ["tests/test_calc.py::test_add"]
    assert "FAILED tests/test_calc.py::test_add" in first.output
    assert second.ok
    assert third.ok  # the last outcome repeats
    # Same data shape as the real tool.
    assert DebugReport.model_validate(first.data).tests is not None


def test_twin_is_reproducible_with_a_seed(vrun: Callable[..., Any]) -> None:
    async def latencies(seed: int) -> list[float | None]:
        twin = DebugTwin(seed=seed)
        return [(await twin.call(DebugArgs(code="print(1)"))).duration_s for _ in range(5)]

    assert vrun(latencies, 11) == vrun(latencies, 11)
    assert vrun(latencies, 11) != vrun(latencies, 12)


def test_twin_reports_exceptions_and_timeouts(vrun: Callable[..., Any]) -> None:
    crash = DebugOutcome(exception={"type": "KeyError", "message": "'x'", "file": "<string>"})
    hang = DebugOutcome(duration_s=100.0)
    twin = DebugTwin(
        script={"<code>": [crash]},
        default=hang,
        latency=DebugLatency(start_s=0.1, pytest_start_s=1.0, per_test_s=0.01),
    )
    crashed = vrun(twin.call, DebugArgs(code="d = {}\nd['x']\n"))
    assert crashed.data["exception"]["type"] == "KeyError"
    assert crashed.duration_s == pytest.approx(0.1)
    hung = vrun(twin.call, DebugArgs(script="serve.py", timeout_s=5))
    assert (hung.data["limit"], hung.duration_s) == ("timeout", 5.0)
    assert not hung.ok
