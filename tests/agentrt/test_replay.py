from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

import agentrt
from agentrt.agent import Agent
from agentrt.replay import Replay, recorded_tools, replay, replay_substrates
from agentrt.substrate import (
    InferenceRequest,
    InferenceResult,
    Message,
    Timing,
    ToolCall,
    Usage,
)
from agentrt.testing import FunctionSubstrate
from agentrt.tool import ToolResult, tool_spec
from agentrt.trajectory import TrajectoryRecorder, read_trajectory

Command = Callable[..., subprocess.CompletedProcess[str]]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "trajectories" / "fix-parser.jsonl"
TASK = "The CSV parser drops the last field when a line ends with a separator. Fix it."


class SearchArgs(BaseModel):
    query: str


class Search:
    """A slow real tool: 0.4 s per call on the run's clock."""

    name = "search"
    description = "Search the repository for code."
    args_model: type[BaseModel] = SearchArgs

    async def call(self, args: SearchArgs) -> ToolResult:
        await anyio.sleep(0.4)
        return ToolResult(output=f"parser.py:12 matches {args.query!r}")

    async def aclose(self) -> None:
        pass


async def _model(request: InferenceRequest) -> InferenceResult:
    """A 'real' endpoint: two rounds of tool calls (two at once, then one), then the answer."""
    await anyio.sleep(1.15)  # what its timing says
    turn = 1 + sum(m.role == "assistant" for m in request.messages)
    queries = {1: ["split on separator", "trailing field"], 2: ["test_parser"]}.get(turn, [])
    calls = tuple(
        ToolCall(id=f"call_{turn}_{k}", name="search", arguments=json.dumps({"query": q}))
        for k, q in enumerate(queries)
    )
    text = "" if calls else "Keep the empty trailing field: parser.py line 12 uses rstrip."
    return InferenceResult(
        text=text,
        tool_calls=calls,
        finish_reason="tool_calls" if calls else "stop",
        usage=Usage(input_tokens=request.estimated_prompt_tokens(), output_tokens=30 * turn),
        timing=Timing(network_s=0.05, prefill_s=0.2, decode_s=0.9),
        substrate="endpoint",
        model="llama-3.1-70b",
    )


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """The trajectory of a run against a (non-emulated) endpoint and a real tool."""
    path = tmp_path / "run.jsonl"
    endpoint = FunctionSubstrate(_model, name="endpoint", model="llama-3.1-70b")
    agent = Agent(endpoint, tools=[Search()], recorder=TrajectoryRecorder(path, agent="fixer"))
    result = agentrt.run(agent.run, TASK, clock=agentrt.VirtualClock())
    assert result.status == "succeeded"
    return path


def _replay(path: Path, names: str = "wse3,h100") -> Replay:
    trajectory = read_trajectory(path)
    subs = replay_substrates(path, names.split(","), seed=0)
    return agentrt.run(replay, trajectory, subs, clock=agentrt.VirtualClock())


def test_a_recorded_run_holds_every_turn_and_tool_call(recorded: Path) -> None:
    trajectory = read_trajectory(recorded)
    assert trajectory.header.agent == "fixer"
    assert trajectory.header.messages[-1].content == TASK
    assert [t.name for t in trajectory.header.tools] == ["search"]
    assert [len(t.tool_calls) for t in trajectory.turns] == [2, 1, 0]
    assert [t.output_tokens for t in trajectory.turns] == [30, 60, 90]
    assert all(t.thread == 0 for t in trajectory.turns)
    assert [r.duration_s for r in trajectory.tool_results] == pytest.approx([0.4, 0.4, 0.4])
    assert trajectory.finish is not None
    assert trajectory.finish.status == "succeeded"


def test_replay_plays_the_same_turns_and_the_wafer_wins_on_model_time(recorded: Path) -> None:
    trajectory = read_trajectory(recorded)
    result = _replay(recorded)
    assert set(result.substrates) == {"wse3", "h100"}
    wafer, gpu = result.substrates["wse3"], result.substrates["h100"]
    for run in (wafer, gpu):
        assert run.status == "succeeded"
        assert [t.output_tokens for t in run.turns] == [t.output_tokens for t in trajectory.turns]
        assert [t.tool_calls for t in run.turns] == [("search", "search"), ("search",), ()]
        # Recorded tools take their recorded time; two at once take it once.
        assert [t.tool_s for t in run.turns] == pytest.approx([0.4, 0.4, 0.0])
        assert run.tool_s == pytest.approx(0.8)
        assert run.e2e_s == pytest.approx(run.model_s + run.tool_s + run.other_s)
    for w, g in zip(wafer.turns, gpu.turns, strict=True):
        assert w.model_s < g.model_s
        # The replayed prompt is the real one: it grows with the conversation.
        assert w.input_tokens == g.input_tokens
    assert wafer.turns[2].input_tokens > wafer.turns[0].input_tokens
    assert wafer.model_s < gpu.model_s
    assert result.speedup["h100"] == pytest.approx(1.0)
    assert result.speedup["wse3"] > 1.0
    assert result.trajectory["turns"] == 3
    assert result.trajectory["tool_calls"] == 3


def test_the_prompt_offers_the_recorded_tool_schema(recorded: Path) -> None:
    trajectory = read_trajectory(recorded)
    tools = recorded_tools(trajectory.header.tools, trajectory.tool_results)
    assert tool_spec(tools["search"]) == tool_spec(Search())


def _json(cli: Command, *args: str) -> dict[str, object]:
    proc = cli("replay", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def test_cli_replay_json_shape(agentrt_command: Command, recorded: Path) -> None:
    data = _json(agentrt_command, str(recorded), "--substrates", "wse3,h100")
    assert set(data) >= {"trajectory", "substrates", "speedup"}
    trajectory = data["trajectory"]
    assert isinstance(trajectory, dict)
    assert (trajectory["turns"], trajectory["tool_calls"], trajectory["tool_results"]) == (3, 3, 3)
    substrates = data["substrates"]
    assert isinstance(substrates, dict)
    for name in ("wse3", "h100"):
        run = substrates[name]
        assert set(run) >= {"e2e_s", "model_s", "tool_s", "turns"}
        assert len(run["turns"]) == 3
    assert substrates["wse3"]["model_s"] < substrates["h100"]["model_s"]
    speedup = data["speedup"]
    assert isinstance(speedup, dict)
    assert speedup["wse3"] > speedup["h100"] == 1.0


def test_cli_replay_table_fits_100_columns(agentrt_command: Command, recorded: Path) -> None:
    import os

    env_columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        proc = agentrt_command("replay", str(recorded), "--substrates", "wse3,h100")
    finally:
        if env_columns is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = env_columns
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    text = proc.stdout
    for word in ("recorded", "wse3", "h100", "end-to-end", "speed-up", "search x2"):
        assert word in text


def test_rerun_tools_runs_the_registered_tools(agentrt_command: Command, tmp_path: Path) -> None:
    recorded = tmp_path / "search.jsonl"
    call = ToolCall(id="c1", name="search", arguments='{"query": "virtual clock", "k": 3}')
    lines = [
        {"type": "header", "messages": [{"role": "user", "content": "How is time virtual?"}]},
        {"type": "turn", "index": 1, "tool_calls": [call.model_dump()],
         "finish_reason": "tool_calls", "output_tokens": 20},
        {"type": "tool", "thread": 0, "tool_call_id": "c1", "name": "search",
         "arguments": call.arguments, "output": "recorded hits", "duration_s": 7.0},
        {"type": "turn", "index": 2, "text": "A VirtualClock.", "output_tokens": 8},
    ]  # fmt: skip
    recorded.write_text("".join(json.dumps(line) + "\n" for line in lines))
    played = _json(agentrt_command, str(recorded), "--substrates", "wse3")
    rerun = _json(agentrt_command, str(recorded), "--substrates", "wse3", "--rerun-tools")
    played_run = played["substrates"]["wse3"]  # type: ignore[index]
    rerun_run = rerun["substrates"]["wse3"]  # type: ignore[index]
    assert played_run["tool_s"] == pytest.approx(7.0)
    assert rerun_run["tool_s"] != pytest.approx(7.0)  # the search twin's own latency
    assert rerun_run["tool_s"] > 0
    assert rerun_run["turns"][0]["tool_calls"] == ["search"]


def test_cli_replay_errors_are_one_line_exit_2(agentrt_command: Command, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "header"}\n{"type": "turn", "index": 0}\n')
    good = tmp_path / "good.jsonl"
    good.write_text('{"type": "header"}\n{"type": "turn", "index": 1, "text": "hi"}\n')
    unregistered = tmp_path / "unregistered.jsonl"
    unregistered.write_text(
        '{"type": "header"}\n'
        '{"type": "tool", "tool_call_id": "c1", "name": "run_tests", "output": "ok"}\n'
    )
    cases = [
        ([str(tmp_path / "missing.jsonl"), "--substrates", "wse3"], "cannot read trajectory"),
        ([str(bad), "--substrates", "wse3"], f"{bad}:2:"),
        ([str(good), "--substrates", "wse3,nope"], "nope"),
        ([str(good), "--substrates", "fixed"], "cannot play a trajectory"),
        ([str(good), "--substrates", ","], "at least one"),
        ([str(good), "--substrates", "wse3"], "no opening messages"),
        ([str(unregistered), "--substrates", "wse3", "--rerun-tools"], "unknown tool 'run_tests'"),
    ]
    for args, expected in cases:
        proc = agentrt_command("replay", *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("error:")
        assert expected in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_a_plan_run_is_recorded_and_replayed(agentrt_command: Command, tmp_path: Path) -> None:
    path = tmp_path / "plan.jsonl"
    plan = str(ROOT / "examples" / "plans" / "research.yaml")
    proc = agentrt_command("run", plan, "-s", "h100", "--virtual", "--record", str(path))
    assert proc.returncode == 0, proc.stderr
    trajectory = read_trajectory(path)
    steps = [t.step_id or "" for t in trajectory.turns]
    assert sorted(steps) == sorted(
        ["outline", "angle-latency", "angle-cost", "angle-power", "synthesis"]
    )
    assert len(trajectory.threads()) == 5  # each model call of a plan is its own conversation
    data = _json(agentrt_command, str(path), "--substrates", "wse3,h100")
    runs = data["substrates"]
    assert isinstance(runs, dict)
    assert [t["output_tokens"] for t in runs["wse3"]["turns"]] == [
        t.output_tokens for t in trajectory.turns
    ]
    assert runs["wse3"]["model_s"] < runs["h100"]["model_s"]
    # The plan itself replays too, its DAG kept, on an engine that plays the trajectory.
    again = agentrt_command(
        "run", plan, "-s", "wse3", "--virtual", "--json", "-o", f"trajectory={path}"
    )
    assert again.returncode == 0, again.stderr
    texts = {s["id"]: s["text"] for s in json.loads(again.stdout)["steps"]}
    assert texts == {t.step_id: t.text for t in trajectory.turns}


def test_a_conversation_that_goes_further_fails_clearly(recorded: Path) -> None:
    trajectory = read_trajectory(recorded)
    subs = replay_substrates(recorded, ["wse3"], seed=0)
    further = [Message(role="user", content=TASK)]
    for k in range(3):  # three assistant messages already: it asks for turn 4 of 3
        further += [Message(role="assistant", content=f"a{k}"), Message(role="user", content="?")]
    agent = Agent(subs["wse3"], tools=list(recorded_tools(trajectory.header.tools, ()).values()))
    result = agentrt.run(agent.run, further, clock=agentrt.VirtualClock())
    assert result.status == "failed"
    assert "the replayed run went further than the recorded one" in (result.error or "")


def test_cli_replay_writes_a_trace_per_substrate(agentrt_command: Command, tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    proc = agentrt_command(
        "replay",
        str(EXAMPLE),
        "--substrates",
        "wse3,h100",
        "--trace",
        f"jaeger-json:{trace}",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    traces = json.loads(trace.read_text())["data"]
    assert len(traces) == 2  # one run per substrate
    for t in traces:
        names = [s["operationName"] for s in t["spans"]]
        assert names.count("chat llama-3.1-70b") == 4
        assert sum(n.startswith("execute_tool") for n in names) == 4


def test_a_run_over_http_is_recorded_and_replayed(tmp_path: Path) -> None:
    from substrates.emulated import build_engine
    from substrates.http import OpenAIHTTPSubstrate
    from substrates.http.server import create_app, serve_in_thread

    plan = agentrt.Plan(
        name="two-calls",
        steps=[
            agentrt.Step(id="plan", prompt="Plan the fix.", max_output_tokens=150),
            agentrt.Step(id="patch", depends_on=["plan"], prompt="Patch: {{ plan }}",
                         max_output_tokens=300),
        ],
    )  # fmt: skip
    path = tmp_path / "http.jsonl"
    served = build_engine("wse3", model="llama-3.1-8b", seed=1)
    with serve_in_thread(create_app(served)) as url:
        client = OpenAIHTTPSubstrate(f"{url}/v1", "llama-3.1-8b", api_key="test")
        agent = Agent(client, recorder=TrajectoryRecorder(path, agent="two-calls"))
        result = agentrt.run(agent.run, plan)  # real time, real HTTP
        agentrt.run(client.aclose)
    assert result.status == "succeeded"
    trajectory = read_trajectory(path)
    turns = trajectory.turns
    assert [t.step_id for t in turns] == ["plan", "patch"]
    assert all(t.substrate == "openai_http" for t in turns)
    assert all(t.e2e_s > 0 for t in turns)  # measured by the client
    assert [t.text for t in turns] == [s.text for s in result.steps]
    engines = replay_substrates(path, ["wse3", "h100"], seed=0, options={"model": "llama-3.1-8b"})
    replayed = agentrt.run(replay, trajectory, engines, clock=agentrt.VirtualClock())
    for run in replayed.substrates.values():
        assert [t.output_tokens for t in run.turns] == [t.output_tokens for t in turns]
    # Hundreds of tokens per turn: decode dominates, and the wafer decodes faster. (On turns of
    # a few tokens its first-token time loses to an H100's for an 8B model.)
    assert replayed.substrates["wse3"].model_s < replayed.substrates["h100"].model_s
