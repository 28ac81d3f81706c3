"""Tool calls over HTTP both ways, on loopback: the official openai client and ``openai_http``
against ``agentrt serve`` serving a scripted tool-calling substrate (see conftest.py).
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import openai
import pytest

from agentrt import (
    InferenceRequest,
    InferenceResult,
    Message,
    Timing,
    TokenChunk,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)
from agentrt.errors import BadResponse
from substrates.http._reply import EventEncoder
from substrates.http.client import OpenAIHTTPSubstrate

MODEL = "scripted-model"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city"],
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "weather", "description": "Weather now.", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "clock", "parameters": {"type": "object"}}},
]
ASK = [{"role": "user", "content": "Weather in Paris and Oslo, and the time?"}]


def _script(reply: Any) -> list[Any]:
    return [
        reply(calls=[("weather", {"city": "Paris"}), ("weather", {"city": "Oslo", "unit": "C"})]),
        reply(text="Checking the time too.", calls=[("clock", {})]),
        reply(text="Paris 18 C, Oslo 9 C, at noon."),
    ]


def _weather(city: str, unit: str = "C") -> str:
    return json.dumps({"city": city, "temp": {"Paris": 18, "Oslo": 9}[city], "unit": unit})


def _run_tool(name: str, arguments: str) -> str:
    args = json.loads(arguments)
    return _weather(**args) if name == "weather" else "12:00"


async def test_non_streamed_tool_calls_in_openai_shape(serve_script: Any, reply: Any) -> None:
    with serve_script(_script(reply)) as (url, engine):
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="-") as client:
            done = await client.chat.completions.create(
                model=MODEL, messages=ASK, tools=TOOLS, tool_choice="auto"
            )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.id, c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_0_0", "function", "weather", {"city": "Paris"}),
        ("call_0_1", "function", "weather", {"city": "Oslo", "unit": "C"}),
    ]
    (request,) = engine.requests
    assert [t.to_openai() for t in request.tools] == [
        TOOLS[0],
        {"type": "function", "function": {"name": "clock", "description": "",
                                          "parameters": {"type": "object"}}},
    ]  # fmt: skip
    assert request.tool_choice == "auto"
    # The tool schemas are part of the prompt: usage counts them.
    assert done.usage is not None
    assert done.usage.prompt_tokens == request.estimated_prompt_tokens()
    without = InferenceRequest(messages=request.messages).estimated_prompt_tokens()
    assert done.usage.prompt_tokens > without + 30


async def test_streamed_tool_call_deltas_in_openai_shape(serve_script: Any, reply: Any) -> None:
    with serve_script(_script(reply)) as (url, _):
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="-") as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=ASK, tools=TOOLS, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    pieces = [(d.model_dump(exclude_none=True)) for d in deltas if d.tool_calls]
    seen: set[int] = set()
    arguments: dict[int, str] = {}
    for d in deltas:
        for piece in d.tool_calls or []:
            if piece.index not in seen:  # the first piece: index, id, type, name, arguments ""
                seen.add(piece.index)
                assert piece.id == f"call_0_{piece.index}"
                assert piece.type == "function"
                assert piece.function is not None
                assert piece.function.name == "weather"
                assert piece.function.arguments == ""
                arguments[piece.index] = ""
            else:  # later pieces: only arguments to append
                assert (piece.id, piece.type) == (None, None)
                assert piece.function is not None
                assert piece.function.name is None
                arguments[piece.index] += piece.function.arguments or ""
    assert len(pieces) == 2 * 4  # per call: the opening piece, then three argument parts
    assert {i: json.loads(a) for i, a in arguments.items()} == {
        0: {"city": "Paris"},
        1: {"city": "Oslo", "unit": "C"},
    }
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "tool_calls"
    assert set(finish[:-1]) == {None}
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_the_openai_sdks_stream_helper_assembles_the_calls(
    serve_script: Any, reply: Any
) -> None:
    """The SDK's own accumulator (events, final completion) reads serve's stream as OpenAI's."""
    with serve_script(_script(reply)) as (url, _):
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="-") as client:
            completions = client.chat.completions
            helper = getattr(completions, "stream", None) or client.beta.chat.completions.stream
            async with helper(model=MODEL, messages=ASK, tools=TOOLS) as stream:
                kinds = [event.type async for event in stream]
                final = await stream.get_final_completion()
    assert kinds.count("tool_calls.function.arguments.done") == 2
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.id, c.function.name, json.loads(c.function.arguments))
            for c in choice.message.tool_calls or []] == [
        ("call_0_0", "weather", {"city": "Paris"}),
        ("call_0_1", "weather", {"city": "Oslo", "unit": "C"}),
    ]  # fmt: skip


async def _converse(client: openai.AsyncOpenAI, *, stream: bool) -> tuple[list[Any], str]:
    """The tool loop an application writes with the openai client."""
    messages: list[Any] = list(ASK)
    for _ in range(5):
        if stream:
            text, calls = "", {}
            events = await client.chat.completions.create(
                model=MODEL, messages=messages, tools=TOOLS, stream=True
            )
            async for chunk in events:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    for piece in choice.delta.tool_calls or []:
                        call = calls.setdefault(piece.index, {"id": piece.id, "name": "", "a": ""})
                        call["name"] += (piece.function and piece.function.name) or ""
                        call["a"] += (piece.function and piece.function.arguments) or ""
            tool_calls = [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": c["a"]}}
                for _, c in sorted(calls.items())
            ]  # fmt: skip
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tool_calls:
                message["tool_calls"] = tool_calls
        else:
            done = await client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
            message = done.choices[0].message.model_dump(exclude_none=True)
            tool_calls = message.get("tool_calls", [])
            text = done.choices[0].message.content or ""
        messages.append(message)
        if not tool_calls:
            return messages, text
        for call in tool_calls:
            output = _run_tool(call["function"]["name"], call["function"]["arguments"])
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
    raise AssertionError("the conversation did not end")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_multi_turn_tool_conversation_with_the_openai_client(
    serve_script: Any, reply: Any, stream: bool
) -> None:
    with serve_script(_script(reply)) as (url, engine):
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="-") as client:
            messages, answer = await _converse(client, stream=stream)
    assert answer == "Paris 18 C, Oslo 9 C, at noon."
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant",
                                             "tool", "assistant"]  # fmt: skip
    # What the server handed the substrate on the last turn is the whole conversation.
    last = engine.requests[-1].messages
    assert [m.role for m in last] == [m["role"] for m in messages[:-1]]
    assert last[1].content == ""
    assert [c.id for c in last[1].tool_calls] == ["call_0_0", "call_0_1"]
    assert last[1].tool_calls[1].parsed_arguments() == {"city": "Oslo", "unit": "C"}
    assert [(m.tool_call_id, json.loads(m.content)["temp"]) for m in last[2:4]] == [
        ("call_0_0", 18),
        ("call_0_1", 9),
    ]
    assert last[4].content == "Checking the time too."
    assert last[4].tool_calls == (ToolCall(id="call_1_0", name="clock", arguments="{}"),)
    assert (last[5].tool_call_id, last[5].content) == ("call_1_0", "12:00")


CONVERSATION = (
    Message(role="system", content="Be brief."),
    Message(role="user", content="Weather in Paris?", name="ana"),
    Message(
        role="assistant",
        tool_calls=(ToolCall(id="call_a", name="weather", arguments='{"city": "Paris"}'),),
    ),
    Message(role="tool", content='{"temp": 18}', tool_call_id="call_a", name="weather"),
    Message(role="assistant", content="18 C. Anything else?"),
    Message(role="user", content="And Oslo, in F?"),
)
SPECS = (
    ToolSpec(name="weather", description="Weather now.", parameters=WEATHER),
    ToolSpec(name="clock"),
)


@pytest.mark.parametrize("tool_choice", [None, "auto", "none", "required", "weather"])
@pytest.mark.parametrize("mode", ["infer", "stream"])
async def test_openai_http_round_trips_every_field_through_serve(
    serve_script: Any, reply: Any, tool_choice: str | None, mode: str
) -> None:
    script = [reply(text="Let me look.", calls=[("weather", {"city": "Oslo", "unit": "F"})])] * 3
    request = InferenceRequest(
        messages=CONVERSATION, tools=SPECS, tool_choice=tool_choice, max_output_tokens=50,
        temperature=0.2, seed=7,
    )  # fmt: skip
    with serve_script(script) as (url, engine):
        sub = OpenAIHTTPSubstrate(f"{url}/v1", MODEL, api_key="-")
        try:
            if mode == "infer":
                result = await sub.infer(request)
                deltas = []
            else:
                async with sub.stream(request) as chunks:
                    deltas = [d async for c in chunks for d in c.tool_calls]
                result = chunks.result()
        finally:
            await sub.aclose()
    (got,) = engine.requests
    assert got.messages == CONVERSATION
    assert got.tools == SPECS
    assert got.tool_choice == tool_choice
    assert (got.max_output_tokens, got.temperature, got.seed) == (50, 0.2, 7)
    assert result.text == "Let me look."
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls == (
        ToolCall(id="call_2_0", name="weather", arguments='{"city": "Oslo", "unit": "F"}'),
    )
    assert result.message().tool_calls == result.tool_calls
    assert result.attributes["agentrt.http.tool_calls"] == 1
    assert result.usage.input_tokens == request.estimated_prompt_tokens()
    if mode == "stream":
        assert (deltas[0].index, deltas[0].id, deltas[0].name) == (0, "call_2_0", "weather")
        assert all(d.id is None and d.name is None for d in deltas[1:])
        assert "".join(d.arguments for d in deltas) == result.tool_calls[0].arguments


async def test_the_answer_to_the_tool_results_round_trips_too(
    serve_script: Any, reply: Any
) -> None:
    """openai_http's result message, appended with a tool message, is the next valid request."""
    with serve_script(_script(reply)) as (url, engine):
        sub = OpenAIHTTPSubstrate(f"{url}/v1", MODEL, api_key="-")
        messages = [Message(role="user", content="Weather?")]
        try:
            for _ in range(5):
                result = await sub.infer(InferenceRequest(messages=tuple(messages), tools=SPECS))
                messages.append(result.message())
                if not result.tool_calls:
                    break
                messages += [
                    Message(role="tool", tool_call_id=c.id, content=_run_tool(c.name, c.arguments))
                    for c in result.tool_calls
                ]
        finally:
            await sub.aclose()
    assert messages[-1].content == "Paris 18 C, Oslo 9 C, at noon."
    assert engine.requests[-1].messages == tuple(messages[:-1])


# -- what the server refuses ------------------------------------------------------------------

_CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
_ASKED = [*ASK, {"role": "assistant", "content": None, "tool_calls": [_CALL]}]


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"messages": [*_ASKED, {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
         "messages.2.tool_call_id", "no call has the id 'nope'"),
        ({"messages": [*ASK, {"role": "tool", "tool_call_id": "c1", "content": "x"}]},
         "messages.1.tool_call_id", "must answer a preceding"),
        ({"messages": [*_ASKED, {"role": "tool", "content": "x"}]},
         "messages.2.tool_call_id", "needs tool_call_id"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [_CALL]}]},
         "messages.0.tool_calls", "only assistant messages"),
        ({"tool_choice": {"type": "function", "function": {"name": "search"}}},
         "tool_choice", "'search', which is not in tools (offered: weather, clock)"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools.1.function.name", "offered twice"),
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]},
         "tools.0.function.name", "not a valid function name"),
        ({"tools": [{"type": "function",
                     "function": {"name": "f", "parameters": {"type": "array"}}}]},
         "tools.0.function.parameters", "type 'object'"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0.type", "function"),
        ({"tool_choice": "sometimes"}, "tool_choice", ""),
        ({"functions": [{"name": "f"}]}, "functions", "send tools"),
        ({"function_call": "auto"}, "function_call", "send tools"),
    ],
)  # fmt: skip
async def test_bad_tool_requests_are_openai_style_400s(
    serve_script: Any, reply: Any, extra: dict[str, Any], param: str, words: str
) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, **extra}
    with serve_script(_script(reply)) as (url, engine):
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0) as client:
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(**body)
    assert not engine.requests
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"].startswith(param), error
    assert error["type"] == "invalid_request_error"
    assert words in error["message"]


# -- what openai_http makes of other servers ---------------------------------------------------


def _sse(*events: object) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def _answer(
    body: bytes, content_type: str = "text/event-stream", request: InferenceRequest | None = None
) -> Any:
    sent: list[dict[str, Any]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        sent.append(json.loads(req.content))
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    sub = OpenAIHTTPSubstrate(
        "http://test/v1", "m", api_key="-", max_retries=0, transport=httpx.MockTransport(handler)
    )
    try:
        return await sub.infer(request or InferenceRequest.from_prompt("hi")), sent
    except BadResponse as exc:
        return exc, sent
    finally:
        await sub.aclose()


async def test_a_server_that_ignores_tools_still_answers_text() -> None:
    body = _sse(_delta({"role": "assistant", "content": "Hi"}), _delta({}, "stop"))
    request = InferenceRequest(messages=CONVERSATION, tools=SPECS)
    result, sent = await _answer(body, request=request)
    assert (result.text, result.finish_reason, result.tool_calls) == ("Hi", "stop", ())
    assert [t["function"]["name"] for t in sent[0]["tools"]] == ["weather", "clock"]
    assert "tool_choice" not in sent[0]
    plain, sent = await _answer(body)
    assert "tools" not in sent[0]
    assert plain.text == "Hi"


async def test_a_non_streamed_answer_with_tool_calls_is_read() -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [_CALL]}
    body = json.dumps(
        {"model": "m", "choices": [{"message": message, "finish_reason": "tool_calls"}]}
    )
    result, _ = await _answer(body.encode(), "application/json")
    assert result.tool_calls == (ToolCall(id="c1", name="weather", arguments="{}"),)
    assert (result.finish_reason, result.text) == ("tool_calls", "")


async def test_tool_calls_ending_in_stop_are_tool_calls() -> None:
    first = {"index": 0, "id": "c9", "type": "function",
             "function": {"name": "clock", "arguments": {"tz": "UTC"}}}  # fmt: skip
    result, _ = await _answer(_sse(_delta({"tool_calls": [first]}), _delta({}, "stop")))
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls[0].parsed_arguments() == {"tz": "UTC"}


@pytest.mark.parametrize(
    ("events", "words"),
    [
        ([_delta({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ""}}]})],
         "tool call 0 began without its id"),
        ([_delta({"tool_calls": [{"index": 0, "id": "c1", "function": {"arguments": "{"}}]})],
         "began without its function.name"),
        ([_delta({"tool_calls": {"index": 0}})], "must be a list"),
        ([_delta({"tool_calls": [{"index": -1, "id": "c", "function": {"name": "f"}}]})],
         "index must be an integer"),
        ([_delta({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f",
                                                                      "arguments": 3}}]})],
         "must be a JSON string"),
        ([_delta({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f"}}]}),
          _delta({"tool_calls": [{"index": 0, "id": "b", "function": {"arguments": "{}"}}]})],
         "has the id 'a', then 'b'"),
        ([_delta({"content": "hm"}, "tool_calls")], "finished with 'tool_calls' but sent no"),
        ([_delta({"content": "hm"}, "function_call")], "deprecated function_call"),
    ],
)  # fmt: skip
async def test_malformed_tool_calls_are_a_clear_bad_response(
    events: list[object], words: str
) -> None:
    error, _ = await _answer(_sse(*events, _delta({}, "tool_calls")))
    assert isinstance(error, BadResponse), error
    assert words in str(error)
    assert str(error).startswith("openai_http: ")


async def test_a_non_streamed_tool_call_without_an_id_is_a_bad_response() -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = {"role": "assistant", "tool_calls": [call]}
    body = json.dumps({"choices": [{"message": message, "finish_reason": "tool_calls"}]})
    error, _ = await _answer(body.encode(), "application/json")
    assert isinstance(error, BadResponse)
    assert "tool call 0 has no id" in str(error)


async def test_interleaved_pieces_of_parallel_calls_are_put_together_by_index() -> None:
    def piece(index: int, arguments: str, **first: str) -> dict[str, Any]:
        function = {"arguments": arguments, **({"name": first["name"]} if first else {})}
        return {"index": index, **({"id": first["id"]} if first else {}), "function": function}

    events = [
        _delta({"content": "Both: "}),
        _delta({"tool_calls": [piece(0, "", id="a", name="weather"),
                               piece(1, '{"ci', id="b", name="weather")]}),
        _delta({"tool_calls": [piece(0, '{"city": "Paris"}')], "content": "..."}),
        _delta({"tool_calls": [piece(1, 'ty": "Oslo"}')]}, "tool_calls"),
    ]  # fmt: skip
    sub = OpenAIHTTPSubstrate(
        "http://test/v1", "m", api_key="-",
        transport=httpx.MockTransport(lambda _: httpx.Response(200, content=_sse(*events))),
    )  # fmt: skip
    async with sub.stream(InferenceRequest.from_prompt("hi")) as chunks:
        got = [(c.text, [(d.index, d.id, d.arguments) for d in c.tool_calls]) async for c in chunks]
    await sub.aclose()
    assert got == [
        ("Both: ", []),
        ("", [(0, "a", ""), (1, "b", '{"ci')]),
        ("...", [(0, None, '{"city": "Paris"}')]),
        ("", [(1, None, 'ty": "Oslo"}')]),
    ]
    result = chunks.result()
    assert result.text == "Both: ..."
    assert [(c.id, c.parsed_arguments()) for c in result.tool_calls] == [
        ("a", {"city": "Paris"}),
        ("b", {"city": "Oslo"}),
    ]


async def test_concurrent_tool_conversations_each_get_their_own_turns(
    serve_script: Any, reply: Any
) -> None:
    answers: list[str] = []
    with serve_script(_script(reply)) as (url, engine):
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="-") as client:

            async def one(stream: bool) -> None:
                _, answer = await _converse(client, stream=stream)
                answers.append(answer)

            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(one, i % 2 == 0)
    assert answers == ["Paris 18 C, Oslo 9 C, at noon."] * 8
    turns = sorted(sum(m.role == "assistant" for m in r.messages) for r in engine.requests)
    assert turns == [0] * 8 + [1] * 8 + [2] * 8


# -- the server's SSE encoder on its own -------------------------------------------------------


def _decoded(events: list[bytes]) -> list[Any]:
    return [json.loads(e[6:]) if e != b"data: [DONE]\n\n" else "[DONE]" for e in events]


def test_calls_a_substrate_returns_but_does_not_stream_are_sent_before_the_finish() -> None:

    encoder = EventEncoder(request_id="chatcmpl-1", model="m", created=0)
    call = ToolCall(id="c1", name="clock", arguments='{"tz": "UTC"}')
    result = InferenceResult(
        text="Let me see.", usage=Usage(input_tokens=5, output_tokens=3), timing=Timing(),
        substrate="s", model="m", finish_reason="tool_calls", tool_calls=(call,),
    )  # fmt: skip
    events = encoder.chunk(TokenChunk(text="Let me see.", index=0, t_s=0.0))
    events += encoder.end(result, include_usage=True)
    decoded = _decoded(events)
    assert [e["choices"][0]["delta"] for e in decoded[:4]] == [
        {"role": "assistant", "content": "Let me see."},
        {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                         "function": {"name": "clock", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"tz": "UTC"}'}}]},
        {},
    ]  # fmt: skip
    assert decoded[3]["choices"][0]["finish_reason"] == "tool_calls"
    assert decoded[4]["usage"]["completion_tokens"] == 3
    assert decoded[5] == "[DONE]"


def test_a_streamed_call_without_a_name_is_reported_not_sent_half() -> None:

    encoder = EventEncoder(request_id="chatcmpl-1", model="m", created=0)
    nameless = ToolCallDelta(index=0, id="c1", arguments="{}")
    with pytest.raises(BadResponse, match="without a name in its first piece"):
        encoder.chunk(TokenChunk(text="", index=0, t_s=0.0, tool_calls=(nameless,)))
