from __future__ import annotations

from pathlib import Path

import pytest

import agentrt
from agentrt.errors import BadResponse, ConfigError
from agentrt.substrate import InferenceRequest, InferenceResult, Message, ToolCall, ToolSpec
from agentrt.trajectory import (
    ToolRecord,
    Trajectory,
    TrajectoryHeader,
    TurnRecord,
    write_trajectory,
)
from substrates.emulated import EmulatedEngine, TrajectoryContent, build_engine
from substrates.emulated.content import parse_content

TASK = (Message(role="user", content="The parser drops the last field. Fix it."),)
SEARCH = ToolSpec(
    name="search",
    description="Search the code.",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}},
)
CALLS = (
    ToolCall(id="c1", name="search", arguments='{"query": "split fields on separator"}'),
    ToolCall(id="c2", name="debug", arguments='{"command": "pytest -q tests/test_parser.py"}'),
)


def _trajectory() -> Trajectory:
    return Trajectory(
        header=TrajectoryHeader(messages=TASK, tools=(SEARCH,)),
        records=(
            TurnRecord(
                index=1,
                text="Let me look.",
                tool_calls=CALLS,
                finish_reason="tool_calls",
                output_tokens=40,
            ),
            ToolRecord(thread=0, tool_call_id="c1", name="search", output="parser.py:12"),
            ToolRecord(thread=0, tool_call_id="c2", name="debug", output="1 failed"),
            TurnRecord(index=2, text="The fix: keep the trailing empty field.", output_tokens=120),
        ),
    )


def _after_first_turn() -> tuple[Message, ...]:
    return (
        *TASK,
        Message(role="assistant", content="Let me look.", tool_calls=CALLS),
        Message(role="tool", content="parser.py:12", tool_call_id="c1"),
        Message(role="tool", content="1 failed", tool_call_id="c2"),
    )


def _engine(hardware: str = "wse3") -> EmulatedEngine:
    return build_engine(hardware, content=TrajectoryContent(_trajectory()), seed=1, jitter=0)


def _infer(engine: EmulatedEngine, request: InferenceRequest) -> InferenceResult:
    return agentrt.run(engine.infer, request, clock=agentrt.VirtualClock())


def test_engine_plays_the_recorded_turns_with_tool_calls() -> None:
    engine = _engine()
    first = _infer(engine, InferenceRequest(messages=TASK, tools=(SEARCH,)))
    assert first.finish_reason == "tool_calls"
    assert first.tool_calls == CALLS
    assert first.text == "Let me look."
    assert first.usage.output_tokens == 40
    assert first.message().tool_calls == CALLS
    second = _infer(engine, InferenceRequest(messages=_after_first_turn(), tools=(SEARCH,)))
    assert second.finish_reason == "stop"
    assert second.tool_calls == ()
    assert second.text == "The fix: keep the trailing empty field."
    assert second.usage.output_tokens == 120


def test_stream_carries_tool_call_deltas_then_the_same_result() -> None:
    engine = _engine()

    async def main() -> tuple[list[agentrt.TokenChunk], InferenceResult]:
        async with engine.stream(InferenceRequest(messages=TASK)) as stream:
            chunks = [c async for c in stream]
        return chunks, stream.result()

    chunks, result = agentrt.run(main, clock=agentrt.VirtualClock())
    assert len(chunks) == 40  # one chunk per recorded output token
    assert "".join(c.text for c in chunks) == "Let me look."
    deltas = [d for c in chunks for d in c.tool_calls]
    firsts = [d for d in deltas if d.id is not None]
    assert [(d.index, d.id, d.name, d.arguments) for d in firsts] == [
        (0, "c1", "search", ""),
        (1, "c2", "debug", ""),
    ]
    for k, call in enumerate(CALLS):  # arguments come after the id and name, and join back
        pieces = [d for d in deltas if d.index == k]
        assert pieces[0].id == call.id
        assert all(d.id is None and d.name is None for d in pieces[1:])
        assert "".join(d.arguments for d in pieces) == call.arguments
    first_call = next(i for i, c in enumerate(chunks) if c.tool_calls)
    assert all(not c.text for c in chunks[first_call:])  # text first, then the calls
    times = [c.t_s for c in chunks]
    assert times == sorted(times)
    assert result.tool_calls == CALLS
    assert result.finish_reason == "tool_calls"
    assert result.usage.output_tokens == 40
    whole = _infer(_engine(), InferenceRequest(messages=TASK))
    assert whole.timing.e2e_s == pytest.approx(result.timing.e2e_s)


def test_the_real_prompt_length_sets_the_timing() -> None:
    short = _infer(_engine("h100"), InferenceRequest(messages=TASK))
    long_task = (Message(role="user", content=TASK[0].content + " context " * 2_000),)
    trajectory = _trajectory().model_copy(
        update={"header": TrajectoryHeader(messages=long_task, tools=(SEARCH,))}
    )
    engine = build_engine("h100", content=TrajectoryContent(trajectory), seed=1, jitter=0)
    long = _infer(engine, InferenceRequest(messages=long_task))
    assert long.usage.output_tokens == short.usage.output_tokens == 40
    assert long.usage.input_tokens > 10 * short.usage.input_tokens
    assert long.timing.prefill_s > 10 * short.timing.prefill_s
    # Tool schemas count too: the same conversation with tools offered is a longer prompt.
    with_tools = _infer(_engine("h100"), InferenceRequest(messages=TASK, tools=(SEARCH,)))
    assert with_tools.usage.input_tokens > short.usage.input_tokens


def test_the_wafer_plays_the_same_turn_faster() -> None:
    wafer = _infer(_engine("wse3"), InferenceRequest(messages=_after_first_turn()))
    gpu = _infer(_engine("h100"), InferenceRequest(messages=_after_first_turn()))
    assert wafer.text == gpu.text
    assert wafer.usage.output_tokens == gpu.usage.output_tokens == 120
    assert wafer.timing.e2e_s < gpu.timing.e2e_s


def test_a_request_beyond_the_recorded_turns_is_an_error() -> None:
    engine = _engine()
    further = (
        *_after_first_turn(),
        Message(role="assistant", content="The fix: keep the trailing empty field."),
        Message(role="user", content="And now?"),
    )
    with pytest.raises(BadResponse, match="asks for turn 3, but the recorded conversation has 2"):
        _infer(engine, InferenceRequest(messages=further))


def test_an_unknown_conversation_is_an_error_when_several_are_recorded() -> None:
    other = TurnRecord(
        thread=1, index=1, messages=(Message(role="user", content="other"),), text="x"
    )
    trajectory = _trajectory().model_copy(update={"records": (*_trajectory().records, other)})
    engine = build_engine("wse3", content=TrajectoryContent(trajectory), seed=1)
    with pytest.raises(BadResponse, match="no conversation that opens like this request"):
        _infer(engine, InferenceRequest.from_prompt("never recorded"))
    # With one recorded conversation, a different opening still plays it (e.g. a new prompt).
    assert _infer(_engine(), InferenceRequest.from_prompt("reworded")).tool_calls == CALLS


def test_plan_calls_are_found_by_step_when_the_prompt_changed() -> None:
    turns = tuple(
        TurnRecord(
            thread=k,
            index=1,
            step_id=step,
            messages=(Message(role="user", content=f"prompt of {step}"),),
            text=f"{step} answer",
            output_tokens=7,
        )
        for k, step in enumerate(("think", "answer"), start=1)
    )
    engine = build_engine(
        "wse3", content=TrajectoryContent(Trajectory(header=TrajectoryHeader(), records=turns))
    )
    by_prompt = _infer(engine, InferenceRequest.from_prompt("prompt of answer"))
    by_step = _infer(engine, InferenceRequest.from_prompt("new tool output", step_id="think"))
    assert (by_prompt.text, by_step.text) == ("answer answer", "think answer")


def test_trajectory_files_are_a_content_spec_and_an_engine_option(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_trajectory(_trajectory(), path)
    assert isinstance(parse_content(f"trajectory:{path}"), TrajectoryContent)
    for engine in (
        build_engine("h100", trajectory=str(path)),
        agentrt.registry.default_registry().substrate("wse3", trajectory=str(path)),
    ):
        assert isinstance(engine, EmulatedEngine)
        assert _infer(engine, InferenceRequest(messages=TASK)).tool_calls == CALLS
    with pytest.raises(ConfigError, match="not both"):
        build_engine("h100", trajectory=str(path), content="synthetic:x")
    with pytest.raises(ConfigError, match=r"cannot read trajectory .*missing\.jsonl"):
        build_engine("h100", trajectory=str(tmp_path / "missing.jsonl"))


def test_other_content_sources_have_no_tool_calls() -> None:
    result = _infer(build_engine("wse3", seed=1), InferenceRequest.from_prompt("x"))
    assert result.tool_calls == ()
    assert result.finish_reason in ("stop", "length")
