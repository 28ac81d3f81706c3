from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrt.errors import ConfigError
from agentrt.substrate import (
    InferenceRequest,
    InferenceResult,
    Message,
    Timing,
    ToolCall,
    ToolSpec,
    Usage,
)
from agentrt.tool import ToolResult
from agentrt.trajectory import (
    FinishRecord,
    Recorder,
    ToolRecord,
    Trajectory,
    TrajectoryHeader,
    TrajectoryRecorder,
    TurnRecord,
    read_trajectory,
    write_trajectory,
)

SEARCH = ToolSpec(
    name="search",
    description="Search the repository.",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}},
)
TASK = (Message(role="system", content="You fix bugs."), Message(role="user", content="Fix it."))


def _result(text: str = "", calls: tuple[ToolCall, ...] = (), out: int = 5) -> InferenceResult:
    return InferenceResult(
        text=text,
        tool_calls=calls,
        finish_reason="tool_calls" if calls else "stop",
        usage=Usage(input_tokens=100, output_tokens=out),
        timing=Timing(prefill_s=0.02, decode_s=0.3),
        substrate="real",
        model="m",
    )


def _sample() -> Trajectory:
    call = ToolCall(id="c1", name="search", arguments='{"query": "parser"}')
    return Trajectory(
        header=TrajectoryHeader(agent="fixer", model="m", tools=(SEARCH,), messages=TASK),
        records=(
            TurnRecord(index=1, tool_calls=(call,), finish_reason="tool_calls", output_tokens=9),
            ToolRecord(thread=0, tool_call_id="c1", name="search", output="3 hits", duration_s=0.2),
            TurnRecord(index=2, text="Fixed: the parser keeps the empty field.", output_tokens=11),
        ),
        finish=FinishRecord(run_id="r1", status="succeeded", e2e_s=1.5),
    )


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    original = _sample()
    write_trajectory(original, path)
    lines = path.read_text().splitlines()
    kinds = [json.loads(line)["type"] for line in lines]
    assert kinds == ["header", "turn", "tool", "turn", "finish"]
    assert read_trajectory(path) == original
    counts = original.counts()
    assert counts["turns"] == 2
    assert counts["tool_calls"] == 1
    assert counts["tool_results"] == 1
    assert counts["output_tokens"] == 20


def _recorded_conversation(recorder: Recorder) -> None:
    """The calls an agent makes for: model asks two tools, both answer, model concludes."""
    calls = (
        ToolCall(id="c1", name="search", arguments='{"query": "a"}'),
        ToolCall(id="c2", name="search", arguments='{"query": "b"}'),
    )
    first = InferenceRequest(messages=TASK, tools=(SEARCH,), step_id="turn-1")
    recorder.model_turn(first, _result(calls=calls, out=20))
    recorder.tool_result(calls[1], ToolResult(output="b hits"), 0.25)
    recorder.tool_result(calls[0], ToolResult(output="no such file", ok=False), 0.5)
    history = (
        *TASK,
        Message(role="assistant", tool_calls=calls),
        Message(role="tool", content="no such file", tool_call_id="c1"),
        Message(role="tool", content="b hits", tool_call_id="c2"),
    )
    second = InferenceRequest(messages=history, tools=(SEARCH,), step_id="turn-2")
    recorder.model_turn(second, _result(text="done", out=2))
    recorder.finish("run-7", "succeeded", 1.25)


def test_recorder_writes_what_the_agent_reports(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    recorder = TrajectoryRecorder(path, agent="fixer")
    assert isinstance(recorder, Recorder)
    _recorded_conversation(recorder)
    trajectory = read_trajectory(path)
    header = trajectory.header
    assert (header.agent, header.model, header.substrate) == ("fixer", "m", "real")
    assert header.messages == TASK
    assert header.tools == (SEARCH,)
    turns = trajectory.turns
    assert [(t.thread, t.index) for t in turns] == [(0, 1), (0, 2)]
    assert [c.id for c in turns[0].tool_calls] == ["c1", "c2"]
    assert turns[0].finish_reason == "tool_calls"
    assert turns[0].messages == ()  # thread 0's opening is in the header
    assert (turns[0].input_tokens, turns[0].output_tokens) == (100, 20)
    assert turns[0].e2e_s == pytest.approx(0.32)
    assert turns[1].text == "done"
    tools = trajectory.tool_results
    assert [(t.tool_call_id, t.ok, t.duration_s, t.thread) for t in tools] == [
        ("c2", True, 0.25, 0),
        ("c1", False, 0.5, 0),
    ]
    assert trajectory.finish == FinishRecord(run_id="run-7", status="succeeded", e2e_s=1.25)


def test_each_line_is_flushed_as_the_run_goes(tmp_path: Path) -> None:
    path = tmp_path / "crash.jsonl"
    recorder = TrajectoryRecorder(path)
    call = ToolCall(id="c1", name="search")
    recorder.model_turn(InferenceRequest(messages=TASK), _result(calls=(call,)))
    recorder.tool_result(call, ToolResult(output="x"), 0.1)
    # No finish: the run "crashed". What is on disk is a readable prefix.
    partial = read_trajectory(path)
    assert len(partial.turns) == 1
    assert len(partial.tool_results) == 1
    assert partial.finish is None


def test_plan_calls_are_threads_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "plan.jsonl"
    recorder = TrajectoryRecorder(path, agent="plan")
    step_tool = ToolCall(id="search", name="search", arguments='{"query": "x"}')
    recorder.tool_result(step_tool, ToolResult(output="hits"), 0.3)  # a plan's tool step first
    for step in ("think", "answer", "think"):  # the third repeats the first call exactly
        request = InferenceRequest.from_prompt("Same prompt.", step_id=step)
        recorder.model_turn(request, _result(text=f"{step} reply"))
    recorder.finish("r", "succeeded", 2.0)
    trajectory = read_trajectory(path)
    assert trajectory.header.messages == ()
    assert trajectory.tool_results[0].thread is None
    turns = trajectory.turns
    assert [(t.thread, t.index, t.step_id) for t in turns] == [
        (1, 1, "think"),
        (2, 1, "answer"),
        (3, 1, "think"),
    ]
    assert all(t.messages == (Message(role="user", content="Same prompt."),) for t in turns)
    assert trajectory.opening(2)[0][0].content == "Same prompt."


def test_recorder_never_raises_into_the_run(tmp_path: Path) -> None:
    recorder = TrajectoryRecorder(tmp_path / "missing-dir" / "t.jsonl")
    recorder.model_turn(InferenceRequest(messages=TASK), _result(text="x"))
    recorder.finish("r", "succeeded", 1.0)
    assert recorder.error is not None
    assert "cannot write trajectory" in recorder.error


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (['{"type": "turn", "index": 1}'], ":1: the first record must be the header"),
        (['{"type": "header"}', "not json"], ":2: not a trajectory record"),
        (['{"type": "header"}', '{"type": "turn"}'], ":2: not a trajectory record (turn.index"),
        (['{"type": "header"}', '{"type": "nope"}'], ":2: not a trajectory record"),
        (['{"type": "header", "version": 9}'], ":1: trajectory format version 9"),
        (['{"type": "header"}', "", '{"type": "header"}'], ":3: a second header record"),
        (
            ['{"type": "header"}', '{"type": "turn", "index": 1, "finish_reason": "tool_calls"}'],
            ":2: not a trajectory record",
        ),
        (
            [
                '{"type": "header"}',
                '{"type": "finish", "run_id": "r", "status": "ok", "e2e_s": 1}',
                '{"type": "turn", "index": 1}',
            ],
            ":3: a record after the finish record",
        ),
        ([], "empty trajectory"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path: Path, lines: list[str], problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        read_trajectory(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert problem in message
    assert "\n" not in message


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read trajectory .*nope\.jsonl"):
        read_trajectory(tmp_path / "nope.jsonl")
