"""The tool-calling loop: conversations, concurrent tool calls, errors sent back, limits."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from agentrt import (
    Agent,
    ConfigError,
    InferenceRequest,
    InferenceResult,
    Message,
    RetryPolicy,
    Step,
    StepDefaults,
    SubstrateUnavailable,
    ToolCall,
    ToolError,
    ToolResult,
    VirtualClock,
    run,
)
from agentrt.report import from_run
from agentrt.testing import FunctionTool, Reply, ScriptedToolSubstrate
from agentrt.tool import tool_spec

NO_JITTER = RetryPolicy(max_attempts=3, initial_backoff_s=1.0, multiplier=2.0, jitter_s=0.0)


class Query(BaseModel):
    query: str


class Path(BaseModel):
    path: str


def search_tool(latency_s: float = 0.0) -> FunctionTool:
    async def search(args: Query) -> str:
        await anyio.sleep(latency_s)
        return f"3 hits for {args.query}"

    return FunctionTool("search", search, args_model=Query, description="Search the code.")


def read_tool(latency_s: float = 1.0) -> FunctionTool:
    async def read(args: Path) -> str:
        await anyio.sleep(latency_s)
        return f"contents of {args.path}"

    return FunctionTool("read", read, args_model=Path, description="Read a file.")


def vrun_conversation(agent: Agent, task: Any, **kw: Any) -> Any:
    return run(functools.partial(agent.run, task, **kw), clock=VirtualClock())


def cancel_after(agent: Agent, task: str, seconds: float) -> Any:
    """Run ``task`` and cancel it from outside after ``seconds``; no task may be left running."""

    async def main() -> Any:
        before = {t.id for t in anyio.get_running_tasks()}
        prepared = agent.prepare(task)
        with anyio.move_on_after(seconds):
            await prepared.execute()
        await anyio.lowlevel.checkpoint()
        assert {t.id for t in anyio.get_running_tasks()} <= before
        return prepared.result()

    return run(main, clock=VirtualClock())


def test_the_model_calls_a_tool_sees_its_result_and_answers() -> None:
    model = ScriptedToolSubstrate(
        [("search", {"query": "parser bug"}), "The bug is in parse()."], latency_s=0.5
    )
    search = search_tool(0.25)
    result = vrun_conversation(Agent(model, tools=[search]), "Find the parser bug.")
    assert result.status == "succeeded", result.error
    assert result.output == "The bug is in parse()."
    assert [(s.id, s.kind) for s in result.steps] == [
        ("chat-1", "chat"),
        ("tool-1-1", "tool"),
        ("chat-2", "chat"),
    ]
    chat, tool, answer = result.steps
    assert chat.tool_calls == (
        ToolCall(id="call_1_1", name="search", arguments='{"query":"parser bug"}'),
    )
    assert (tool.tool, tool.tool_call_id, tool.tool_output) == (
        "search",
        "call_1_1",
        "3 hits for parser bug",
    )
    assert tool.waits_for == ("chat-1",)
    assert answer.waits_for == ("tool-1-1",)
    assert result.e2e_s == pytest.approx(1.25)
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    assert result.messages[2] == Message(
        role="tool", content="3 hits for parser bug", tool_call_id="call_1_1", name="search"
    )
    # Every request offers the tools and carries the whole conversation so far.
    first, second = model.calls
    assert first.tools == second.tools == (tool_spec(search),)
    assert first.messages == result.messages[:1]
    assert second.messages == result.messages[:3]
    assert (second.step_id, second.step_kind, second.run_id) == ("chat-2", "chat", result.run_id)


def test_a_text_task_or_a_conversation_and_continuing_one() -> None:
    model = ScriptedToolSubstrate(["Hello."])
    agent = Agent(model)
    first = vrun_conversation(
        agent, [Message(role="system", content="Be brief."), Message(role="user", content="Hi")]
    )
    assert first.output == "Hello."
    follow_up = [*first.messages, Message(role="user", content="And again?")]
    second = vrun_conversation(agent, follow_up)
    assert second.messages[:4] == tuple(follow_up)
    assert [m.role for m in second.messages] == ["system", "user", "assistant", "user", "assistant"]


def test_a_model_that_ignores_tools_answers_in_one_turn() -> None:
    result = vrun_conversation(
        Agent(ScriptedToolSubstrate(["No tools needed."]), tools=[search_tool()]), "Hi"
    )
    assert result.status == "succeeded"
    assert [s.kind for s in result.steps] == ["chat"]


def test_several_tool_calls_of_a_turn_run_concurrently_and_answer_in_call_order() -> None:
    calls = [("read", {"path": p}) for p in ("a.py", "b.py", "c.py")]
    model = ScriptedToolSubstrate([calls, "read them"])
    result = vrun_conversation(Agent(model, tools=[read_tool(1.0)]), "Read all.")
    assert result.status == "succeeded"
    assert result.e2e_s == pytest.approx(1.0)  # three 1 s reads side by side
    tools = [s for s in result.steps if s.kind == "tool"]
    assert [(s.start_s, s.end_s) for s in tools] == [(0.0, 1.0)] * 3
    assert [m.content for m in result.messages if m.role == "tool"] == [
        "contents of a.py",
        "contents of b.py",
        "contents of c.py",
    ]
    assert result.step("chat-2").waits_for == ("tool-1-1", "tool-1-2", "tool-1-3")
    attribution = from_run(result)
    assert sum(attribution.categories.values()) == pytest.approx(result.e2e_s)


def test_concurrent_tool_calls_are_bounded_by_max_concurrent_tools() -> None:
    calls = [("read", {"path": p}) for p in ("a", "b", "c")]
    agent = Agent(
        ScriptedToolSubstrate([calls, "ok"]), tools=[read_tool(1.0)], max_concurrent_tools=2
    )
    result = vrun_conversation(agent, "Read all.")
    assert result.e2e_s == pytest.approx(2.0)
    ends = sorted(s.end_s for s in result.steps if s.kind == "tool")
    assert ends == [1.0, 1.0, 2.0]
    assert sum(from_run(result).categories.values()) == pytest.approx(2.0)


def test_bad_calls_go_back_to_the_model_as_tool_messages() -> None:
    async def broken(args: Query) -> str:
        raise ToolError("the index is missing; run `agentrt index` first")

    async def crashing(args: Query) -> str:
        raise ZeroDivisionError("division by zero")

    tools = [
        search_tool(),
        FunctionTool("broken", broken, args_model=Query),
        FunctionTool("crashing", crashing, args_model=Query),
        FunctionTool("tests", lambda args: ToolResult(output="2 failed", ok=False)),
    ]
    model = ScriptedToolSubstrate(
        [
            [("search", '{"query": '), ("search", {"q": "x"}), ("serch", {"query": "x"})],
            [("broken", {"query": "x"}), ("crashing", {"query": "x"}), ("tests", {})],
            ("search", {"query": "parser"}),
            "Done despite the errors.",
        ]
    )
    agent = Agent(model, tools=tools, max_tool_failures=10)
    result = vrun_conversation(agent, "Go.")
    assert result.status == "succeeded", result.error
    replies = [m.content for m in result.messages if m.role == "tool"]
    assert replies[0].startswith("error: the arguments of search are not valid JSON")
    assert replies[1].startswith("error: invalid arguments for search: query: Field required")
    assert replies[2] == (
        "error: there is no tool named 'serch' (did you mean 'search'?); the tools are: broken, "
        "crashing, search, tests"
    )
    assert replies[3] == (
        "error: broken failed: ToolError: the index is missing; run `agentrt index` first"
    )
    assert replies[4] == "error: crashing failed: ZeroDivisionError: division by zero"
    assert replies[5] == "2 failed"  # a result that says the tests failed: the model reads it
    statuses = [(s.status, s.tool_ok) for s in result.steps if s.kind == "tool"]
    assert statuses == [("failed", False)] * 5 + [("succeeded", False), ("succeeded", True)]
    assert result.steps[1].error is not None
    assert "not valid JSON" in result.steps[1].error


def test_consecutive_tool_failures_end_the_run_at_the_cap() -> None:
    model = ScriptedToolSubstrate([("search", {"q": "wrong field"})])
    result = vrun_conversation(Agent(model, tools=[search_tool()]), "Go.")
    assert result.status == "failed"
    assert result.error is not None
    assert "3 tool calls in a row failed" in result.error
    assert "max_tool_failures=3" in result.error
    assert result.failed_step == "tool-3-1"
    assert [s.id for s in result.steps][-2:] == ["chat-3", "tool-3-1"]


def test_a_success_resets_the_failure_count() -> None:
    bad, good = ("search", {"q": 1}), ("search", {"query": "x"})
    model = ScriptedToolSubstrate([bad, bad, good, bad, bad, "ok"])
    result = vrun_conversation(Agent(model, tools=[search_tool()]), "Go.")
    assert result.status == "succeeded", result.error


def test_max_turns_fails_the_run_naming_it_and_keeps_the_steps() -> None:
    model = ScriptedToolSubstrate([("search", {"query": "again"})])  # never answers
    result = vrun_conversation(Agent(model, tools=[search_tool()]), "Go.", max_turns=4)
    assert result.status == "failed"
    assert result.error is not None
    assert "max_turns=4" in result.error
    assert result.failed_step == "chat-4"
    assert [s.kind for s in result.steps] == ["chat", "tool"] * 4
    assert all(s.status == "succeeded" for s in result.steps)
    assert result.output == ""
    assert len(result.messages) == 1 + 2 * 4


def test_the_defaults_allow_a_50_tool_call_loop() -> None:
    model = ScriptedToolSubstrate([*[("search", {"query": f"q{i}"}) for i in range(50)], "done"])
    result = vrun_conversation(Agent(model, tools=[search_tool()]), "Go.")
    assert result.status == "succeeded", result.error
    assert len([s for s in result.steps if s.kind == "tool"]) == 50


def test_a_policy_may_run_a_50_tool_call_loop_by_default() -> None:
    from agentrt import RunState

    class FiftyCalls:
        name = "fifty"

        async def next_steps(self, state: RunState) -> list[Step]:
            n = state.steps_run
            if n == 50:
                return [Step(id="answer", kind="answer")]
            return [Step(id=f"s{n}", kind="search", tool="search", args={"query": "x"})]

    agent = Agent(ScriptedToolSubstrate(["ok"]), tools=[search_tool()])
    result = run(agent.run, FiftyCalls(), clock=VirtualClock())
    assert result.status == "succeeded", result.error
    assert len(result.steps) == 51


def test_model_calls_retry_transient_errors() -> None:
    answer = ScriptedToolSubstrate(["fine"])
    failures = [SubstrateUnavailable("warming up")]

    class Flaky:
        name = "flaky"

        async def infer(self, request: InferenceRequest) -> InferenceResult:
            await anyio.sleep(0.5)
            if failures:
                raise failures.pop()
            return await answer.infer(request)

        async def aclose(self) -> None: ...

    agent = Agent(Flaky(), defaults=StepDefaults(retry=NO_JITTER))
    result = vrun_conversation(agent, "Hi")
    assert result.status == "succeeded"
    chat = result.step("chat-1")
    assert chat.attempts == 2
    assert chat.retry_s == pytest.approx(1.5)  # the failed call and 1 s of back-off
    assert sum(from_run(result).categories.values()) == pytest.approx(result.e2e_s)


def test_a_model_call_that_fails_for_good_fails_the_run() -> None:
    model = ScriptedToolSubstrate([SubstrateUnavailable("down")])
    agent = Agent(model, defaults=StepDefaults(retry=RetryPolicy(max_attempts=2, jitter_s=0)))
    result = vrun_conversation(agent, "Hi")
    assert result.status == "failed"
    assert result.failed_step == "chat-1"
    assert result.error == ("step 'chat-1' failed after 2 attempts: SubstrateUnavailable: down")


def test_a_hanging_tool_times_out_and_the_model_hears_it() -> None:
    async def hang(args: Query) -> str:
        await anyio.sleep_forever()
        return ""

    model = ScriptedToolSubstrate([("hang", {"query": "x"}), "gave up on it"])
    agent = Agent(
        model,
        tools=[FunctionTool("hang", hang, args_model=Query)],
        defaults=StepDefaults(timeout_s=5, retry=RetryPolicy(max_attempts=1)),
    )
    result = vrun_conversation(agent, "Go.")
    assert result.status == "succeeded"
    assert result.output == "gave up on it"
    assert result.e2e_s == pytest.approx(5.0)
    assert result.messages[2].content == (
        "error: hang failed: StepTimeout: it did not finish within its timeout of 5.0 s"
    )


def test_cancelling_a_run_cancels_its_tool_calls_and_keeps_the_record() -> None:
    calls = [("read", {"path": p}) for p in ("a", "b")]
    agent = Agent(ScriptedToolSubstrate([calls, "ok"], latency_s=1.0), tools=[read_tool(10.0)])

    result = cancel_after(agent, "Read.", 3.0)
    assert result.status == "cancelled"
    assert [(s.id, s.status) for s in result.steps] == [
        ("chat-1", "succeeded"),
        ("tool-1-1", "cancelled"),
        ("tool-1-2", "cancelled"),
    ]
    assert result.e2e_s == pytest.approx(3.0)


def test_logs_carry_run_and_step_ids() -> None:
    model = ScriptedToolSubstrate([("search", {"query": "x"}), "ok"])
    with capture_logs(processors=[merge_contextvars]) as logs:
        result = vrun_conversation(Agent(model, tools=[search_tool()]), "Go.")
    events = [(e["event"], e.get("step_id")) for e in logs]
    assert events == [
        ("run_started", None),
        ("step_started", "chat-1"),
        ("step_finished", "chat-1"),
        ("step_started", "tool-1-1"),
        ("step_finished", "tool-1-1"),
        ("step_started", "chat-2"),
        ("step_finished", "chat-2"),
        ("run_finished", None),
    ]
    assert all(e["run_id"] == result.run_id for e in logs)
    started = next(e for e in logs if e.get("step_id") == "tool-1-1")
    assert (started["tool"], started["tool_call_id"], started["kind"]) == (
        "search",
        "call_1_1",
        "tool",
    )


def test_a_recorder_hears_every_turn() -> None:
    heard: list[tuple[Any, ...]] = []

    class Recorder:
        def model_turn(self, request: InferenceRequest, result: InferenceResult) -> None:
            heard.append(("model", len(request.messages), result.finish_reason))

        def tool_result(self, call: ToolCall, result: ToolResult, duration_s: float) -> None:
            heard.append(("tool", call.id, result.ok, duration_s))

        def finish(self, run_id: str, status: str, e2e_s: float) -> None:
            heard.append(("finish", status, e2e_s))

    model = ScriptedToolSubstrate([[("search", {"query": "x"}), ("nope", {})], "ok"])
    agent = Agent(model, tools=[search_tool(0.5)], recorder=Recorder())
    vrun_conversation(agent, "Go.")
    assert heard == [
        ("model", 1, "tool_calls"),
        ("tool", "call_1_2", False, 0.0),  # as they finish: the unknown tool at once
        ("tool", "call_1_1", True, 0.5),
        ("model", 4, "stop"),
        ("finish", "succeeded", 0.5),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_turns": 0}, "max_turns must be at least 1, got 0"),
        ({"max_steps": 5}, "max_steps bounds a policy; a conversation is bounded by max_turns"),
    ],
)
def test_bad_limits_are_one_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Agent(ScriptedToolSubstrate(["x"])).prepare("Hi", **kwargs)


def test_an_empty_conversation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="non-empty sequence of Message"):
        Agent(ScriptedToolSubstrate(["x"])).prepare([])
    with pytest.raises(ConfigError, match="max_tool_failures must be at least 1"):
        Agent(ScriptedToolSubstrate(["x"]), max_tool_failures=0)


def test_the_scripted_substrate_streams_tool_call_deltas(vrun: Callable[..., Any]) -> None:
    model = ScriptedToolSubstrate(
        [Reply("Looking.", ("search", {"query": "a long query text"}))], latency_s=0.1
    )
    request = InferenceRequest.from_prompt("Go.", run_id="r")

    async def main() -> tuple[str, dict[int, list[Any]], InferenceResult]:
        text, deltas = "", {}
        async with model.stream(request) as stream:
            async for chunk in stream:
                text += chunk.text
                for d in chunk.tool_calls:
                    deltas.setdefault(d.index, []).append(d)
            return text, deltas, stream.result()

    text, deltas, result = vrun(main)
    assert text == "Looking." == result.text
    (call,) = result.tool_calls
    pieces = deltas[0]
    assert (pieces[0].id, pieces[0].name) == (call.id, "search")
    assert "".join(d.arguments for d in pieces) == call.arguments
    assert len(pieces) > 2
    assert result.finish_reason == "tool_calls"


class HangsOnce:
    """A model whose n-th calls (1-based) hang; the others answer from a script."""

    name = "hangs-once"

    def __init__(self, script: list[Any], hang_on: set[int]) -> None:
        self.script = ScriptedToolSubstrate(script)
        self.hang_on = hang_on
        self.n = 0

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        self.n += 1
        if self.n in self.hang_on:
            await anyio.sleep_forever()
        return await self.script.infer(request)

    async def aclose(self) -> None: ...


def test_a_model_call_that_times_out_is_retried_and_the_turn_goes_on() -> None:
    # Call 2 (turn 2) hangs: retried after its timeout, then the loop goes on to its tools.
    model = HangsOnce([("search", {"query": "a"}), ("search", {"query": "b"}), "done"], {2})
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=1.0, jitter_s=0.0)
    agent = Agent(model, tools=[search_tool(0.5)], defaults=StepDefaults(timeout_s=5, retry=policy))
    result = vrun_conversation(agent, "Go.")
    assert result.status == "succeeded", result.error
    assert [(s.id, s.status, s.attempts) for s in result.steps] == [
        ("chat-1", "succeeded", 1),
        ("tool-1-1", "succeeded", 1),
        ("chat-2", "succeeded", 2),
        ("tool-2-1", "succeeded", 1),
        ("chat-3", "succeeded", 1),
    ]
    assert result.step("chat-2").retry_s == pytest.approx(6.0)  # the 5 s timeout and 1 s back-off
    assert result.e2e_s == pytest.approx(0.5 + 6.0 + 0.5)
    assert [m.role for m in result.messages] == ["user", *["assistant", "tool"] * 2, "assistant"]
    assert sum(from_run(result).categories.values()) == pytest.approx(result.e2e_s)


def test_a_model_call_out_of_attempts_after_timeouts_fails_the_run() -> None:
    model = HangsOnce(["never"], {1, 2})
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=1.0, jitter_s=0.0)
    agent = Agent(model, defaults=StepDefaults(timeout_s=5, retry=policy))
    result = vrun_conversation(agent, "Go.")
    assert result.status == "failed"
    assert result.error == (
        "step 'chat-1' failed after 2 attempts: StepTimeout: attempt 2 of model call 'chat-1' "
        "exceeded its timeout of 5.0 s"
    )
    assert result.e2e_s == pytest.approx(11.0)


def test_a_tool_timeout_mid_run_is_a_tool_message_and_the_loop_goes_on() -> None:
    slow_once = [30.0]

    async def search(args: Query) -> str:
        await anyio.sleep(slow_once.pop() if slow_once and args.query == "b" else 0.5)
        return f"hits for {args.query}"

    script = [("search", {"query": "a"}), ("search", {"query": "b"}), ("search", {"query": "c"})]
    model = ScriptedToolSubstrate([*script, "done"])
    agent = Agent(
        model,
        tools=[FunctionTool("search", search, args_model=Query)],
        defaults=StepDefaults(timeout_s=5, retry=RetryPolicy(max_attempts=1)),
    )
    result = vrun_conversation(agent, "Go.")
    assert result.status == "succeeded", result.error
    tools = [(s.id, s.status) for s in result.steps if s.kind == "tool"]
    assert tools == [("tool-1-1", "succeeded"), ("tool-2-1", "failed"), ("tool-3-1", "succeeded")]
    assert [m.content for m in result.messages if m.role == "tool"] == [
        "hits for a",
        "error: search failed: StepTimeout: it did not finish within its timeout of 5.0 s",
        "hits for c",
    ]
    assert result.e2e_s == pytest.approx(0.5 + 5.0 + 0.5)


def test_cancelling_a_single_tool_call_leaves_nothing_running() -> None:
    agent = Agent(
        ScriptedToolSubstrate([("read", {"path": "a"}), "ok"], latency_s=1.0),
        tools=[read_tool(10.0)],
    )

    result = cancel_after(agent, "Read.", 2.0)
    assert result.status == "cancelled"
    assert [(s.id, s.status) for s in result.steps] == [
        ("chat-1", "succeeded"),
        ("tool-1-1", "cancelled"),
    ]
    assert result.step("tool-1-1").end_s == pytest.approx(2.0)


def test_the_run_deadline_stops_a_loop() -> None:
    model = ScriptedToolSubstrate([("search", {"query": "x"})], latency_s=1.0)
    agent = Agent(model, tools=[search_tool()])
    result = vrun_conversation(agent, "Go.", deadline_s=3.5)
    assert result.status == "failed"
    assert result.error == "run deadline of 3.5 s exceeded"
    assert result.steps[-1].status == "cancelled"


def test_a_tool_a_model_cannot_call_is_refused_before_the_run() -> None:
    agent = Agent(ScriptedToolSubstrate(["x"]), tools=[FunctionTool("my tool", lambda a: "")])
    with pytest.raises(ConfigError, match=r"cannot offer the tools my tool to a model"):
        agent.prepare("Hi")
