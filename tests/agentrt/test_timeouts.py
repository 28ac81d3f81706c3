"""Per-attempt timeouts share one loop timer per run: exact deadlines, shields kept, no leaks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from agentrt import Agent, InferenceRequest, Plan, RetryPolicy, Step, current_clock
from agentrt._timeouts import AttemptTimeouts
from agentrt.testing import FunctionSubstrate

ONCE = RetryPolicy(max_attempts=1)


def live_timers() -> int:
    """Timers still scheduled on the running loop (asyncio keeps them in ``_scheduled``)."""
    loop = asyncio.get_running_loop()
    return sum(not handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]


def test_each_attempt_times_out_at_its_own_deadline(vrun: Callable[..., Any]) -> None:
    # A long timeout registered first, shorter ones after: the timer must re-arm earlier.
    timeouts = {"long": 9.0, "short": 2.0, "mid": 5.0, "fast": 1.0}
    latency = {"long": 20.0, "short": 20.0, "mid": 20.0, "fast": 0.5}

    async def slow(request: InferenceRequest) -> str:
        await anyio.sleep(latency[request.step_id or ""])
        return "ok"

    plan = Plan(
        name="t",
        steps=[
            Step(id=sid, timeout_s=timeout, retry=ONCE, optional=True)
            for sid, timeout in timeouts.items()
        ],
    )
    result = vrun(Agent(FunctionSubstrate(slow)).run, plan)
    ends = {s.id: s.end_s for s in result.steps}
    assert ends == pytest.approx({"long": 9.0, "short": 2.0, "mid": 5.0, "fast": 0.5})
    assert [s.status for s in result.steps] == ["failed", "failed", "failed", "succeeded"]
    assert result.e2e_s == pytest.approx(9.0)


def test_an_early_finish_does_not_cut_short_the_next_attempt(vrun: Callable[..., Any]) -> None:
    # Step a arms the timer for t=3 and ends at t=1; step b (deadline t=4) must not be cancelled
    # when that stale timer fires at t=3.
    async def work(request: InferenceRequest) -> str:
        await anyio.sleep(1.0 if request.step_id == "a" else 2.5)
        return "ok"

    plan = Plan(
        name="t",
        steps=[
            Step(id="a", timeout_s=3.0, retry=ONCE),
            Step(id="b", depends_on=["a"], timeout_s=3.0, retry=ONCE),
        ],
    )
    result = vrun(Agent(FunctionSubstrate(work)).run, plan)
    assert result.status == "succeeded"
    assert result.e2e_s == pytest.approx(3.5)


def test_a_timed_out_attempt_finishes_its_shielded_cleanup(vrun: Callable[..., Any]) -> None:
    cleaned_at: list[float] = []

    async def needs_cleanup(request: InferenceRequest) -> str:
        try:
            await anyio.sleep(60)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.25)  # e.g. a sandbox waiting for its process group to die
                cleaned_at.append(current_clock().current_time())
        return "unreachable"

    plan = Plan(name="t", steps=[Step(id="s", timeout_s=2.0, retry=ONCE)])
    result = vrun(Agent(FunctionSubstrate(needs_cleanup)).run, plan)
    assert result.status == "failed"
    assert "exceeded its timeout of 2.0 s" in (result.error or "")
    assert cleaned_at == [pytest.approx(2.25)]
    assert result.e2e_s == pytest.approx(2.25)


def test_a_finished_run_leaves_no_timer_behind(vrun: Callable[..., Any]) -> None:
    async def quick(request: InferenceRequest) -> str:
        await anyio.sleep(0.1)
        return "ok"

    async def main() -> int:
        before = live_timers()
        plan = Plan(name="t", steps=[Step(id=f"s{i}", timeout_s=30.0) for i in range(5)])
        result = await Agent(FunctionSubstrate(quick)).run(plan)
        assert result.status == "succeeded"
        return live_timers() - before

    assert vrun(main) == 0


def test_a_cancelled_run_leaves_no_timer_behind(vrun: Callable[..., Any]) -> None:
    async def hang(request: InferenceRequest) -> str:
        await anyio.sleep(1000)
        return "never"

    async def main() -> int:
        before = live_timers()
        plan = Plan(name="t", steps=[Step(id="s", timeout_s=500.0)])
        with anyio.move_on_after(1.0):
            await Agent(FunctionSubstrate(hang)).run(plan)
        return live_timers() - before

    assert vrun(main) == 0


def test_one_timer_serves_many_attempts(vrun: Callable[..., Any]) -> None:
    async def main() -> tuple[int, list[bool]]:
        timeouts = AttemptTimeouts()
        scopes = [timeouts.scope() for _ in range(100)]
        assert all(isinstance(scope, anyio.CancelScope) for scope in scopes)
        for scope in scopes:
            timeouts.add(scope, 10.0)
        armed = live_timers()
        for scope in scopes[:99]:
            timeouts.remove(scope)
        await anyio.sleep(11.0)
        cancelled = [scope.cancel_called for scope in scopes]
        timeouts.close()
        return armed, cancelled

    armed, cancelled = vrun(main)
    assert armed == 1
    assert cancelled == [False] * 99 + [True]


def test_an_infinite_timeout_arms_nothing(vrun: Callable[..., Any]) -> None:
    async def main() -> int:
        timeouts = AttemptTimeouts()
        timeouts.add(anyio.CancelScope(), float("inf"))
        armed = live_timers()
        timeouts.close()
        return armed

    assert vrun(main) == 0
