"""An agent written for another framework (PydanticAI's OpenAI model) runs unchanged against
``agentrt serve``: its one function tool is called when the served model asks, and the final
answer arrives. Loopback only: the agent's openai client talks to the served port and nothing
else, and PydanticAI traces nothing unless ``Agent.instrument_all()`` is called (it is not).
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

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
