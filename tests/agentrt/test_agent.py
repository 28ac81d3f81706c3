from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from agentrt import (
    Agent,
    BadResponse,
    ConfigError,
    InferenceRequest,
    Plan,
    PlanError,
    RateLimited,
    RetryPolicy,
    RunFailed,
    RunState,
    Step,
    StepDefaults,
    SubstrateUnavailable,
    ToolResult,
    current_clock,
)
from agentrt.testing import (
    FixedLatencySubstrate,
    FunctionSubstrate,
    FunctionTool,
    ScriptedSubstrate,
)

NO_JITTER = RetryPolicy(max_attempts=3, initial_backoff_s=1.0, multiplier=2.0, jitter_s=0.0)


def plan_of(*steps: Step, **kw: Any) -> Plan:
    return Plan(name="t", steps=steps, **kw)


def test_two_independent_steps_run_concurrently(vrun: Callable[..., Any]) -> None:
    agent = Agent(FixedLatencySubstrate(latency_s=1.0))
    result = vrun(agent.run, plan_of(Step(id="a"), Step(id="b")))
    assert result.status == "succeeded"
    assert result.e2e_s == pytest.approx(1.0)
    assert [(s.start_s, s.end_s) for s in result.steps] == [(0.0, 1.0), (0.0, 1.0)]


def test_a_diamond_ends_at_its_critical_path(vrun: Callable[..., Any]) -> None:
    latency = {"top": 1.0, "left": 2.0, "right": 5.0, "bottom": 0.5}

    async def slow(request: InferenceRequest) -> str:
        await anyio.sleep(latency[request.step_id or ""])
        return "done"

    plan = plan_of(
        Step(id="top"),
        Step(id="left", depends_on=["top"]),
        Step(id="right", depends_on=["top"]),
        Step(id="bottom", depends_on=["left", "right"]),
    )
    result = vrun(Agent(FunctionSubstrate(slow)).run, plan)
    assert result.e2e_s == pytest.approx(1.0 + 5.0 + 0.5)
    bottom = result.step("bottom")
    assert bottom.start_s == pytest.approx(6.0)  # started the moment its last dependency ended
    assert result.step("left").end_s == pytest.approx(3.0)


def test_steps_see_their_dependencies_outputs(vrun: Callable[..., Any]) -> None:
    sub = ScriptedSubstrate({"a": "alpha", "b": "beta"}, default="final")
    plan = plan_of(
        Step(id="a"),
        Step(id="b", depends_on=["a"], prompt="after {{ a }}"),
        Step(id="c", depends_on=["b"], prompt="{{ a.text }} then {{ b }}"),
    )
    result = vrun(Agent(sub).run, plan)
    prompts = {r.step_id: r.prompt_text for r in sub.calls}
    assert prompts["b"] == "after alpha"
    assert prompts["c"] == "alpha then beta"
    assert result.step("c").text == "final"


def test_tool_steps_call_the_tool_with_rendered_args(vrun: Callable[..., Any]) -> None:
    class Args(BaseModel):
        target: str

    async def run_tests(args: Args) -> ToolResult:
        await anyio.sleep(0.25)
        return ToolResult(output=f"2 failed in {args.target}", ok=False)

    tool = FunctionTool("debug", run_tests, args_model=Args)
    plan = plan_of(
        Step(id="plan", prompt="plan"),
        Step(
            id="t", kind="debug", tool="debug", depends_on=["plan"], args={"target": "{{ plan }}"}
        ),
        Step(id="fix", depends_on=["t"], prompt="fix {{ t }}"),
    )
    sub = ScriptedSubstrate({"plan": "tests/"}, default="ok", latency_s=0.1)
    result = vrun(Agent(sub, tools=[tool]).run, plan)
    step = result.step("t")
    assert step.tool_output == "2 failed in tests/"
    assert step.tool_ok is False
    assert step.tool_s == pytest.approx(0.25)
    assert step.latency_s == pytest.approx(0.35)
    assert sub.calls[-1].prompt_text == "fix 2 failed in tests/"


def test_a_step_naming_a_tool_the_agent_lacks_is_refused_before_running() -> None:
    plan = plan_of(Step(id="t", kind="search", tool="search"))
    with pytest.raises(PlanError, match="use tool\\(s\\) search that the agent does not have"):
        Agent(FixedLatencySubstrate()).prepare(plan)


def test_bad_tool_arguments_fail_the_step_clearly(vrun: Callable[..., Any]) -> None:
    class Args(BaseModel):
        target: str

    tool = FunctionTool("debug", lambda args: "x", args_model=Args)
    plan = plan_of(Step(id="t", kind="debug", tool="debug", args={"wrong": 1}))
    result = vrun(Agent(FixedLatencySubstrate(), tools=[tool]).run, plan)
    assert result.status == "failed"
    assert "invalid arguments for tool 'debug' in step 't'" in (result.error or "")
    assert result.step("t").attempts == 1  # a ToolError is not retryable


def test_per_step_timeout(vrun: Callable[..., Any]) -> None:
    agent = Agent(FixedLatencySubstrate(latency_s=10.0))
    plan = plan_of(Step(id="slow", timeout_s=2.0, retry=RetryPolicy(max_attempts=1)))
    result = vrun(agent.run, plan)
    assert result.status == "failed"
    assert result.failed_step == "slow"
    assert result.e2e_s == pytest.approx(2.0)
    assert "StepTimeout" in (result.error or "")
    assert "exceeded its timeout of 2.0 s" in (result.error or "")


def test_timeouts_are_per_attempt_and_retried(vrun: Callable[..., Any]) -> None:
    calls = 0

    async def slow_then_fast(request: InferenceRequest) -> str:
        nonlocal calls
        calls += 1
        await anyio.sleep(10 if calls == 1 else 0.5)
        return "ok"

    plan = plan_of(Step(id="s", timeout_s=2.0, retry=NO_JITTER))
    result = vrun(Agent(FunctionSubstrate(slow_then_fast)).run, plan)
    assert result.status == "succeeded"
    assert result.step("s").attempts == 2
    assert result.e2e_s == pytest.approx(2.0 + 1.0 + 0.5)  # timeout, back-off, success


def test_run_deadline_cancels_in_flight_steps(vrun: Callable[..., Any]) -> None:
    agent = Agent(FixedLatencySubstrate(latency_s=4.0))
    plan = plan_of(
        Step(id="a"),
        Step(id="b", depends_on=["a"]),
        Step(id="c", depends_on=["b"]),
        deadline_s=6.0,
    )
    result = vrun(agent.run, plan)
    assert result.status == "failed"
    assert result.error == "run deadline of 6.0 s exceeded"
    assert [s.status for s in result.steps] == ["succeeded", "cancelled", "skipped"]
    assert result.e2e_s == pytest.approx(6.0)
    assert result.step("b").end_s == pytest.approx(6.0)


def test_external_cancellation_records_and_leaves_no_task(vrun: Callable[..., Any]) -> None:
    agent = Agent(FixedLatencySubstrate(latency_s=3.0))
    plan = plan_of(Step(id="a"), Step(id="b"), Step(id="c", depends_on=["a", "b"]))

    async def main() -> tuple[Any, int, int]:
        before = len(anyio.get_running_tasks())
        prepared = agent.prepare(plan)
        with anyio.move_on_after(1.0):
            await prepared.execute()
        await anyio.lowlevel.checkpoint()
        return prepared.result(), before, len(anyio.get_running_tasks())

    result, before, after = vrun(main)
    assert after == before
    assert result.status == "cancelled"
    assert [s.status for s in result.steps] == ["cancelled", "cancelled", "skipped"]
    assert result.e2e_s == pytest.approx(1.0)
    with pytest.raises(RunFailed, match="cancelled"):
        result.raise_for_status()


async def test_external_cancellation_in_real_time() -> None:
    agent = Agent(FixedLatencySubstrate(latency_s=30.0))
    prepared = agent.prepare(plan_of(Step(id="a"), Step(id="b")))
    before = {t.id for t in anyio.get_running_tasks()}
    with anyio.fail_after(5):  # the test itself must not hang
        async with anyio.create_task_group() as tg:
            tg.start_soon(prepared.execute)
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert {t.id for t in anyio.get_running_tasks()} == before
    assert [s.status for s in prepared.result().steps] == ["cancelled", "cancelled"]


def test_retry_then_success_backs_off_on_the_clock(vrun: Callable[..., Any]) -> None:
    sub = ScriptedSubstrate(
        {"s": [SubstrateUnavailable("warming up"), SubstrateUnavailable("still"), "ok"]},
        latency_s=0.1,
    )
    with capture_logs(processors=[merge_contextvars]) as logs:
        result = vrun(Agent(sub).run, plan_of(Step(id="s", retry=NO_JITTER)))
    assert result.status == "succeeded"
    assert result.step("s").attempts == 3
    # three calls of 0.1 s, back-off 1 s then 2 s
    assert result.e2e_s == pytest.approx(0.3 + 1.0 + 2.0)
    retries = [e for e in logs if e["event"] == "step_retry"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert [e["wait_s"] for e in retries] == [1.0, 2.0]
    assert all(e["step_id"] == "s" for e in retries)


def test_retry_after_is_honoured(vrun: Callable[..., Any]) -> None:
    sub = ScriptedSubstrate({"s": [RateLimited("slow down", retry_after_s=7.0), "ok"]})
    result = vrun(Agent(sub).run, plan_of(Step(id="s", retry=NO_JITTER)))
    assert result.status == "succeeded"
    assert result.e2e_s == pytest.approx(7.0)


def test_retries_exhausted_fail_the_run_naming_step_and_cause(vrun: Callable[..., Any]) -> None:
    sub = ScriptedSubstrate({"s": SubstrateUnavailable("engine is down")}, default="ok")
    plan = plan_of(
        Step(id="first"),
        Step(id="s", depends_on=["first"], retry=NO_JITTER),
        Step(id="after", depends_on=["s"]),
    )
    result = vrun(Agent(sub).run, plan)
    assert result.status == "failed"
    assert result.failed_step == "s"
    assert result.error == (
        "step 's' failed after 3 attempts: SubstrateUnavailable: engine is down"
    )
    assert [s.status for s in result.steps] == ["succeeded", "failed", "skipped"]
    with pytest.raises(RunFailed, match="step 's' failed after 3 attempts") as info:
        result.raise_for_status()
    assert info.value.step_id == "s"


def test_non_retryable_errors_are_not_retried(vrun: Callable[..., Any]) -> None:
    sub = ScriptedSubstrate({"s": BadResponse("garbage")})
    result = vrun(Agent(sub).run, plan_of(Step(id="s", retry=NO_JITTER)))
    assert result.step("s").attempts == 1
    assert result.step("s").error == "BadResponse: garbage"


def test_programming_errors_are_not_retried(vrun: Callable[..., Any]) -> None:
    def broken(request: InferenceRequest) -> str:
        raise ZeroDivisionError("oops")

    result = vrun(Agent(FunctionSubstrate(broken)).run, plan_of(Step(id="s", retry=NO_JITTER)))
    assert result.step("s").attempts == 1
    assert result.status == "failed"


def test_an_optional_step_may_fail(vrun: Callable[..., Any]) -> None:
    sub = ScriptedSubstrate({"opt": BadResponse("nope")}, default="fine")
    plan = plan_of(
        Step(id="opt", optional=True),
        Step(id="next", depends_on=["opt"], prompt="[{{ opt }}]"),
    )
    result = vrun(Agent(sub).run, plan)
    assert result.status == "succeeded"
    assert [s.status for s in result.steps] == ["failed", "succeeded"]
    assert sub.calls[-1].prompt_text == "[]"


def test_a_failure_cancels_concurrent_siblings(vrun: Callable[..., Any]) -> None:
    async def fn(request: InferenceRequest) -> str:
        if request.step_id == "bad":
            await anyio.sleep(1)
            raise BadResponse("boom")
        await anyio.sleep(100)
        return "ok"

    plan = plan_of(Step(id="bad"), Step(id="long"))
    result = vrun(Agent(FunctionSubstrate(fn)).run, plan)
    assert result.status == "failed"
    assert result.step("long").status == "cancelled"
    assert result.e2e_s == pytest.approx(1.0)


def test_same_seed_same_jitter(vrun: Callable[..., Any]) -> None:
    def run_once(seed: int) -> float:
        sub = ScriptedSubstrate({"s": [SubstrateUnavailable("x"), SubstrateUnavailable("x"), "ok"]})
        policy = RetryPolicy(max_attempts=3, initial_backoff_s=1, jitter_s=0.5)
        return vrun(Agent(sub, seed=seed).run, plan_of(Step(id="s", retry=policy))).e2e_s

    assert run_once(1) == run_once(1)
    assert run_once(1) != run_once(2)


def test_step_events_are_logged_with_ids(vrun: Callable[..., Any]) -> None:
    agent = Agent(FixedLatencySubstrate(latency_s=0.5))
    with capture_logs(processors=[merge_contextvars]) as logs:
        result = vrun(agent.run, plan_of(Step(id="a"), Step(id="b", depends_on=["a"])))
    events = [(e["event"], e.get("step_id")) for e in logs]
    assert events == [
        ("run_started", None),
        ("step_started", "a"),
        ("step_finished", "a"),
        ("step_started", "b"),
        ("step_finished", "b"),
        ("run_finished", None),
    ]
    assert all(e["run_id"] == result.run_id for e in logs)
    finished = [e for e in logs if e["event"] == "step_finished"]
    assert finished[0]["latency_s"] == pytest.approx(0.5)
    assert finished[0]["substrate"] == "fixed"
    assert finished[0]["kind"] == "think"


def test_to_dict_has_the_documented_fields(vrun: Callable[..., Any]) -> None:
    result = vrun(
        Agent(FixedLatencySubstrate(latency_s=0.2, output_tokens=7)).run, plan_of(Step(id="a"))
    )
    data = result.to_dict()
    for key in ("run_id", "status", "e2e_s", "steps", "cost_usd", "energy_j"):
        assert key in data
    step = data["steps"][0]
    for key in (
        "id",
        "kind",
        "status",
        "substrate",
        "start_s",
        "end_s",
        "latency_s",
        "attempts",
        "input_tokens",
        "output_tokens",
        "tool_s",
        "timing",
    ):
        assert key in step
    assert set(step["timing"]) >= {
        "queue_s",
        "network_s",
        "prefill_s",
        "decode_s",
        "comm_s",
        "ttft_s",
    }
    assert step["output_tokens"] == 7
    assert step["latency_s"] == pytest.approx(0.2)


# -- policies -----------------------------------------------------------------------------------


class ThinkSearchAnswer:
    """think -> (search, search) -> answer, via a tool."""

    name = "tsa"

    async def next_steps(self, state: RunState) -> Sequence[Step]:
        done = {r.id for r in state.results}
        if not done:
            return [Step(id="think", prompt="plan")]
        if "s1" not in done:
            return [
                Step(id="s1", kind="search", tool="search", depends_on=["think"]),
                Step(id="s2", kind="search", tool="search", depends_on=["think"]),
            ]
        return [
            Step(id="answer", kind="answer", depends_on=["s1", "s2"], prompt="{{ s1 }} + {{ s2 }}")
        ]


def test_a_policy_loop_stops_at_answer(vrun: Callable[..., Any]) -> None:
    tool = FunctionTool("search", lambda args: "hit")
    agent = Agent(FixedLatencySubstrate(latency_s=1.0), tools=[tool])
    result = vrun(agent.run, ThinkSearchAnswer())
    assert result.status == "succeeded"
    assert [s.id for s in result.steps] == ["think", "s1", "s2", "answer"]
    assert result.e2e_s == pytest.approx(3.0)  # the two searches ran together


class Forever:
    name = "forever"

    async def next_steps(self, state: RunState) -> Sequence[Step]:
        return [Step(id=f"think-{state.steps_run}")]


def test_a_policy_loop_stops_at_max_steps(vrun: Callable[..., Any]) -> None:
    agent = Agent(FixedLatencySubstrate(latency_s=0.5))
    result = vrun(lambda: agent.run(Forever(), max_steps=4))
    assert result.status == "failed"
    assert len(result.steps) == 4
    assert "max_steps=4 reached" in (result.error or "")
    assert result.e2e_s == pytest.approx(2.0)


def test_a_policy_run_has_a_deadline(vrun: Callable[..., Any]) -> None:
    agent = Agent(FixedLatencySubstrate(latency_s=1.0))
    result = vrun(lambda: agent.run(Forever(), max_steps=1000, deadline_s=10.5))
    assert result.status == "failed"
    assert "deadline" in (result.error or "")
    assert result.e2e_s == pytest.approx(10.5)
    assert result.steps[-1].status == "cancelled"


def test_policy_steps_use_agent_defaults(vrun: Callable[..., Any]) -> None:
    agent = Agent(
        FixedLatencySubstrate(latency_s=5.0),
        defaults=StepDefaults(timeout_s=1.0, retry=RetryPolicy(max_attempts=1)),
    )
    result = vrun(lambda: agent.run(Forever(), max_steps=3))
    assert result.status == "failed"
    assert "timeout of 1.0 s" in (result.error or "")


def test_a_policy_proposing_a_bad_step_fails_the_run(vrun: Callable[..., Any]) -> None:
    class Bad:
        name = "bad"

        async def next_steps(self, state: RunState) -> Sequence[Step]:
            return [Step(id="x", depends_on=["ghost"])]

    result = vrun(Agent(FixedLatencySubstrate()).run, Bad())
    assert result.status == "failed"
    assert "depends on steps not finished yet" in (result.error or "")


def test_a_policy_that_raises_fails_the_run_with_its_reason(vrun: Callable[..., Any]) -> None:
    class Raises:
        name = "raises"

        async def next_steps(self, state: RunState) -> Sequence[Step]:
            raise RuntimeError("policy bug")

    result = vrun(Agent(FixedLatencySubstrate()).run, Raises())
    assert result.status == "failed"
    assert result.error == "policy 'raises' raised RuntimeError: policy bug"


def test_bad_limits_are_config_errors() -> None:
    agent = Agent(FixedLatencySubstrate())
    with pytest.raises(ConfigError, match="deadline_s must be positive"):
        agent.prepare(plan_of(Step(id="a")), deadline_s=0)
    with pytest.raises(ConfigError, match="max_steps must be at least 1"):
        agent.prepare(Forever(), max_steps=0)
    with pytest.raises(ConfigError, match="two tools are named 'x'"):
        Agent(FixedLatencySubstrate(), tools=[FunctionTool("x", str), FunctionTool("x", str)])


def test_a_run_executes_once(vrun: Callable[..., Any]) -> None:
    async def main() -> None:
        prepared = Agent(FixedLatencySubstrate()).prepare(plan_of(Step(id="a")))
        await prepared.execute()
        await prepared.execute()

    with pytest.raises(ConfigError, match="already executed"):
        vrun(main)


async def test_real_time_run_matches_the_clock() -> None:
    agent = Agent(FixedLatencySubstrate(latency_s=0.05))
    clock = current_clock()
    t0 = clock.current_time()
    result = await agent.run(plan_of(Step(id="a"), Step(id="b", depends_on=["a"])))
    assert result.clock == "real"
    assert 0.1 <= result.e2e_s <= clock.current_time() - t0
