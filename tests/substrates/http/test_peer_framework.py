"""Agents written for other frameworks, and agentrt's own loop, against ``agentrt serve``.

A PydanticAI agent (its OpenAI model, one function tool) runs unchanged against a scripted
substrate and against an emulated wafer playing a recorded trajectory: its tool is called when the
served model asks, and the final answer arrives. agentrt's tool loop runs through ``openai_http``
against the same server. Loopback only: every client talks to the served port and nothing else,
and PydanticAI traces nothing unless ``Agent.instrument_all()`` is called (it is not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelResponse
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from agentrt import Agent as AgentrtAgent
from agentrt import Message, ToolCall
from agentrt.testing import FunctionTool
from agentrt.trajectory import Trajectory, TrajectoryHeader, TurnRecord, write_trajectory
from substrates.emulated import build_engine
from substrates.http.client import OpenAIHTTPSubstrate
from substrates.http.server import create_app, serve_in_thread

MODEL = "scripted-model"


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_stream"])
async def test_a_pydantic_ai_agent_calls_its_tool_through_serve(
    serve_script: Any, reply: Any, stream: bool
) -> None:
    script = [
        reply(calls=[("weather", {"city": "Paris"})]),
        reply(text="It is 18 C and sunny in Paris."),
    ]
    ran: list[str] = []
    with serve_script(script) as (url, engine):
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused") as client:
            model = OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=client))
            agent = Agent(model, instructions="Answer with the weather tool.")

            @agent.tool_plain
            def weather(city: str) -> str:
                """The weather in a city right now.

                Args:
                    city: the city's name.
                """
                ran.append(city)
                return f"18 C and sunny in {city}"

            if stream:
                async with agent.run_stream("What is the weather in Paris?") as run:
                    output = await run.get_output()
            else:
                output = (await agent.run("What is the weather in Paris?")).output
    assert ran == ["Paris"]
    assert output == "It is 18 C and sunny in Paris."
    first, second = engine.requests
    (spec,) = first.tools
    assert spec.name == "weather"
    assert spec.description.startswith("The weather in a city right now.")
    assert spec.parameters["required"] == ["city"]
    # The second turn carries the whole conversation: the call and the tool's answer.
    asked = next(m for m in second.messages if m.tool_calls)
    assert asked.tool_calls[0].parsed_arguments() == {"city": "Paris"}
    answer = next(m for m in second.messages if m.role == "tool")
    assert answer.tool_call_id == asked.tool_calls[0].id == "call_0_0"
    assert answer.content == "18 C and sunny in Paris"


def _weather_trajectory(path: Path) -> Path:
    """A recorded run: turn 1 asks for the weather tool, turn 2 answers with its result."""
    header = TrajectoryHeader(messages=(Message(role="user", content="Weather in Paris?"),))
    call = ToolCall(id="call_w1", name="weather", arguments='{"city": "Paris"}')
    turns = (
        TurnRecord(index=1, tool_calls=(call,), finish_reason="tool_calls", output_tokens=12),
        TurnRecord(index=2, text="It is 18 C and sunny in Paris.", output_tokens=10),
    )
    write_trajectory(Trajectory(header=header, records=turns), path)
    return path


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_stream"])
async def test_a_pydantic_ai_agent_runs_on_an_emulated_wafer_playing_a_trajectory(
    tmp_path: Path, stream: bool
) -> None:
    engine = build_engine(
        "wse3", model="llama-3.1-8b", jitter=0, stall_prob=0,
        trajectory=str(_weather_trajectory(tmp_path / "run.jsonl")),
    )  # fmt: skip
    ran: list[str] = []
    with serve_in_thread(create_app(engine)) as url:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused") as client:
            model = OpenAIChatModel("llama-3.1-8b", provider=OpenAIProvider(openai_client=client))
            agent = Agent(model, instructions="Answer with the weather tool.")

            @agent.tool_plain
            def weather(city: str) -> str:
                """The weather in a city right now."""
                ran.append(city)
                return f"18 C and sunny in {city}"

            if stream:
                async with agent.run_stream("What is the weather in Paris?") as run:
                    output = await run.get_output()
                    messages = run.all_messages()
            else:
                done = await agent.run("What is the weather in Paris?")
                output, messages = done.output, done.all_messages()
    assert ran == ["Paris"]
    assert output == "It is 18 C and sunny in Paris."
    # Token counts are the engine's: the recorded output lengths, the real prompts (tools too).
    usages = [m.usage for m in messages if isinstance(m, ModelResponse)]
    assert [u.output_tokens for u in usages] == [12, 10]
    assert all(u.input_tokens > 60 for u in usages)
    assert usages[1].input_tokens > usages[0].input_tokens  # the call and its result came along


async def test_agentrt_tool_loop_over_openai_http_against_serve(
    serve_script: Any, reply: Any
) -> None:
    """agentrt's own loop through a real endpoint: the same conversation crosses the wire."""
    script = [
        reply(
            text="Looking.", calls=[("weather", {"city": "Paris"}), ("weather", {"city": "Oslo"})]
        ),
        reply(text="Paris 18 C, Oslo 9 C."),
    ]

    class CityArgs(BaseModel):
        city: str

    def weather(args: BaseModel) -> str:
        assert isinstance(args, CityArgs)
        return {"Paris": "18 C", "Oslo": "9 C"}[args.city]

    tool = FunctionTool("weather", weather, args_model=CityArgs, description="Weather now.")
    with serve_script(script) as (url, engine):
        sub = OpenAIHTTPSubstrate(f"{url}/v1", MODEL, api_key="-")
        result = await AgentrtAgent(sub, tools=[tool]).run("Weather in Paris and Oslo?")
        await sub.aclose()
    assert result.status == "succeeded", result.error
    assert result.output == "Paris 18 C, Oslo 9 C."
    assert [a.city for a in tool.calls] == ["Paris", "Oslo"]  # type: ignore[attr-defined]
    # What the server got on the second turn is the conversation the loop holds.
    assert engine.requests[-1].messages == result.messages[:-1]
    assert [t.name for t in engine.requests[0].tools] == ["weather"]
    answers = [m for m in result.messages if m.role == "tool"]
    assert [(m.tool_call_id, m.content) for m in answers] == [
        ("call_0_0", "18 C"),
        ("call_0_1", "9 C"),
    ]
