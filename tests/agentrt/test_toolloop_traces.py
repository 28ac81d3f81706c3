"""Tool loops in traces and reports, and plan steps that offer the model tools."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import BaseModel

from agentrt import (
    Agent,
    Plan,
    PlanError,
    RetryPolicy,
    RunResult,
    Step,
    StepDefaults,
    SubstrateUnavailable,
    VirtualClock,
    load_plan,
    run,
)
from agentrt.report import CATEGORIES, Attribution, from_jaeger, from_run
from agentrt.telemetry import semconv as sc
from agentrt.telemetry.jaeger import spans_to_jaeger
from agentrt.testing import FunctionTool, ScriptedToolSubstrate


class Query(BaseModel):
    query: str


def search_tool(latency_s: float) -> FunctionTool:
    async def search(args: Query) -> str:
        await anyio.sleep(latency_s)
        return f"hits for {args.query}"

    return FunctionTool("search", search, args_model=Query)


def vrun(agent: Agent, target: Any, **kw: Any) -> RunResult:
    return run(functools.partial(agent.run, target, **kw), clock=VirtualClock())


def same_attribution(spans: Sequence[ReadableSpan], report: Attribution) -> None:
    document = json.loads(json.dumps(spans_to_jaeger(spans)))
    (from_trace,) = from_jaeger(document)
    assert from_trace.critical_path == report.critical_path
    assert [(s.id, s.kind, s.status) for s in from_trace.steps] == [
        (s.id, s.kind, s.status) for s in report.steps
    ]
    assert from_trace.e2e_s == pytest.approx(report.e2e_s, abs=1e-5)
    for c in CATEGORIES:
        assert from_trace.categories[c] == pytest.approx(report.categories[c], abs=1e-4), c
    assert sum(report.categories.values()) == pytest.approx(report.e2e_s)


def test_a_tool_loop_traces_chat_and_execute_tool_spans_under_the_run(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    model = ScriptedToolSubstrate(
        [[("search", {"query": "a"}), ("search", {"query": "b"}), ("nope", {})], "done"],
        latency_s=0.5,
    )
    agent = Agent(model, tools=[search_tool(0.25)], tracer_provider=provider)
    result = vrun(agent, "Find it.")
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name.startswith("invoke_agent")]
    assert root.context is not None
    assert all(
        s.parent is not None and s.parent.span_id == root.context.span_id
        for s in spans
        if s is not root
    )
    chats = [s for s in spans if s.name.startswith("chat")]
    tools = sorted(
        (s for s in spans if s.name.startswith("execute_tool")),
        key=lambda s: str(s.attributes[sc.STEP_ID]),  # type: ignore[index]
    )
    assert [s.attributes[sc.STEP_ID] for s in chats] == ["chat-1", "chat-2"]  # type: ignore[index]
    assert chats[0].attributes[sc.FINISH_REASONS] == ("tool_calls",)  # type: ignore[index]
    assert [(s.attributes[sc.TOOL_NAME], s.attributes[sc.TOOL_CALL_ID]) for s in tools] == [  # type: ignore[index]
        ("search", "call_1_1"),
        ("search", "call_1_2"),
        ("nope", "call_1_3"),
    ]
    assert [s.attributes[sc.STEP_WAITS_FOR] for s in tools] == [("chat-1",)] * 3  # type: ignore[index]
    assert tools[2].status.status_code == StatusCode.ERROR
    assert tools[2].attributes[sc.TOOL_OK] is False  # type: ignore[index]
    assert chats[1].attributes[sc.STEP_WAITS_FOR] == ("tool-1-1", "tool-1-2", "tool-1-3")  # type: ignore[index]
    report = from_run(result)
    assert report.critical_path[0] == "chat-1"
    assert report.critical_path[-1] == "chat-2"
    assert report.categories["tool_s"] == pytest.approx(0.25)
    assert report.categories["decode_s"] == pytest.approx(1.0)
    same_attribution(spans, report)


def test_a_retried_model_call_is_one_step_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    model = ScriptedToolSubstrate([SubstrateUnavailable("warming up"), "ok"], latency_s=0.5)
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=1.0, jitter_s=0.0)
    agent = Agent(model, tracer_provider=provider, defaults=StepDefaults(retry=policy))
    result = vrun(agent, "Hi")
    assert result.status == "succeeded"
    (chat,) = [s for s in exporter.get_finished_spans() if s.name.startswith("chat")]
    assert chat.attributes[sc.STEP_ATTEMPTS] == 2  # type: ignore[index]
    assert chat.attributes[sc.STEP_RETRY_S] == pytest.approx(1.5)  # type: ignore[index]
    report = from_run(result)
    assert report.categories["retry_s"] == pytest.approx(1.5)
    same_attribution(exporter.get_finished_spans(), report)


def tools_plan() -> Plan:
    return Plan(
        name="with-tools",
        steps=[
            Step(id="look", prompt="Find the bug.", tools=["search"], max_turns=4),
            Step(id="answer", kind="answer", depends_on=["look"], prompt="Fix: {{ look }}"),
        ],
    )


def test_a_plan_step_with_tools_runs_a_small_loop_and_outputs_its_answer(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    model = ScriptedToolSubstrate(
        {
            "look": [[("search", {"query": "a"}), ("search", {"query": "b"})], "in parse()"],
            "answer": ["patched"],
        },
        latency_s=0.5,
    )
    agent = Agent(model, tools=[search_tool(0.25)], tracer_provider=provider)
    result = vrun(agent, tools_plan())
    assert result.status == "succeeded", result.error
    assert [s.id for s in result.steps] == ["look", "answer"]
    look = result.step("look")
    assert look.text == look.output == "in parse()"
    assert look.timing is not None
    assert look.timing.decode_s == pytest.approx(1.0)  # two model calls
    assert look.tool_s == pytest.approx(0.25)  # two searches side by side
    assert look.latency_s == pytest.approx(1.25)
    assert result.output == "patched"
    # The answer step saw the loop's final text; the loop's requests carried the tools.
    answer_request = model.calls[-1]
    assert answer_request.messages[0].content == "Fix: in parse()"
    assert answer_request.tools == ()
    loop_requests = [r for r in model.calls if r.step_id == "look"]
    assert [len(r.messages) for r in loop_requests] == [1, 4]
    assert all(r.tools[0].name == "search" for r in loop_requests)
    # Its model and tool calls are child spans of the step span.
    spans = exporter.get_finished_spans()
    (step,) = [s for s in spans if s.name == "step look"]
    assert step.context is not None
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == step.context.span_id
    ]
    assert sorted(s.name.split()[0] for s in children) == [
        "chat",
        "chat",
        "execute_tool",
        "execute_tool",
    ]
    calls = {s.attributes[sc.TOOL_CALL_ID] for s in children if s.name.startswith("execute_tool")}  # type: ignore[index]
    assert calls == {"call_1_1", "call_1_2"}
    same_attribution(spans, from_run(result))


def test_a_plan_step_that_never_answers_fails_naming_max_turns() -> None:
    model = ScriptedToolSubstrate({"look": [("search", {"query": "x"})], "answer": ["ok"]})
    result = vrun(Agent(model, tools=[search_tool(0.0)]), tools_plan())
    assert result.status == "failed"
    assert result.failed_step == "look"
    assert result.error is not None
    assert "ToolLoopFailed: max_turns=4 reached" in result.error


def test_the_run_max_turns_is_the_default_of_plan_steps_with_tools() -> None:
    plan = Plan(name="p", steps=[Step(id="look", tools=["search"])])
    model = ScriptedToolSubstrate({"look": [("search", {"query": "x"})]})
    result = vrun(Agent(model, tools=[search_tool(0.0)]), plan, max_turns=3)
    assert result.error is not None
    assert "max_turns=3" in result.error
    assert len([r for r in model.calls if r.step_id == "look"]) == 3


def test_a_plan_file_gives_a_step_tools(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "name: agentic\n"
        "steps:\n"
        "  - id: investigate\n"
        "    prompt: Find why the parser fails.\n"
        "    tools: [search, debug]\n"
        "    max_turns: 8\n"
        "  - id: answer\n"
        "    kind: answer\n"
        "    depends_on: investigate\n"
    )
    plan = load_plan(path)
    step = plan.step("investigate")
    assert (step.tools, step.max_turns) == (("search", "debug"), 8)
    with pytest.raises(PlanError, match="offers an unknown tool"):
        load_plan(path, tools={"search": Query}.__getitem__)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tool": "search", "tools": ["search"]}, "has both tool .* and tools"),
        ({"max_turns": 3}, "sets max_turns but offers no tools"),
        ({"tools": ["search", "search"]}, "names a tool twice"),
    ],
)
def test_bad_tool_steps_are_plan_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        Step(id="s", **fields)


def test_a_plan_naming_tools_the_agent_lacks_fails_before_running() -> None:
    with pytest.raises(PlanError, match="use tool\\(s\\) search that the agent does not have"):
        Agent(ScriptedToolSubstrate(["x"])).prepare(tools_plan())


def test_a_search_step_may_offer_its_tool_instead_of_naming_it() -> None:
    step = Step(id="s", kind="search", tools=["search"])
    assert Plan(name="p", steps=[step]).step("s").tools == ("search",)


def test_a_cancelled_tool_loop_leaves_no_span_open(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def slow(args: Query) -> str:
        await anyio.sleep(10.0)
        return "late"

    model = ScriptedToolSubstrate(
        [[("search", {"query": "a"}), ("search", {"query": "b"})], "ok"], latency_s=1.0
    )
    agent = Agent(
        model, tools=[FunctionTool("search", slow, args_model=Query)], tracer_provider=provider
    )

    async def main() -> RunResult:
        prepared = agent.prepare("Go.")
        with anyio.move_on_after(2.0):
            await prepared.execute()
        return prepared.result()

    result = run(main, clock=VirtualClock())
    assert result.status == "cancelled"
    spans = exporter.get_finished_spans()
    # Every span started was ended: the root, the model call and both tool calls.
    assert sorted(s.name for s in spans) == [
        "chat scripted-tools",
        "execute_tool search",
        "execute_tool search",
        "invoke_agent agent",
    ]
    tools = [s for s in spans if s.name.startswith("execute_tool")]
    assert all(s.status.status_code == StatusCode.ERROR for s in tools)
    assert all(s.attributes[sc.STEP_STATUS] == "cancelled" for s in tools)  # type: ignore[index]


def test_a_policy_step_may_offer_tools() -> None:
    from agentrt import RunState

    class Investigate:
        name = "investigate"

        async def next_steps(self, state: RunState) -> list[Step]:
            if state.results:
                return []
            return [Step(id="look", kind="answer", tools=["search"], prompt="Find it.")]

    model = ScriptedToolSubstrate({"look": [("search", {"query": "x"}), "found"]})
    result = vrun(Agent(model, tools=[search_tool(0.5)]), Investigate())
    assert result.status == "succeeded", result.error
    assert result.output == "found"
    assert result.step("look").tool_s == pytest.approx(0.5)
