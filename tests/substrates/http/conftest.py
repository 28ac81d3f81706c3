"""A scripted tool-calling substrate served by ``agentrt serve`` on loopback, for the tool tests.

`ScriptedToolEngine` answers turn n of a conversation (n = assistant messages already in it, as a
trajectory would) with the script's reply n: text, tool calls, or both. It streams like a model:
the text a word at a time, then each call as OpenAI-style pieces (id and name first, then the
arguments in three parts). It keeps every request it got, so tests can check what arrived.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import anyio.lowlevel
import pytest

from agentrt import (
    InferenceRequest,
    InferenceResult,
    Timing,
    TokenChunk,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from substrates.http.server import create_app, serve_in_thread

MODEL = "scripted-model"


@dataclass(frozen=True)
class Reply:
    """One scripted assistant turn: text and/or tool calls as (name, arguments object)."""

    text: str = ""
    calls: Sequence[tuple[str, dict[str, object]]] = ()


@dataclass
class ScriptedStream:
    engine: ScriptedToolEngine
    request: InferenceRequest
    _result: InferenceResult | None = None

    def __aiter__(self) -> AsyncIterator[TokenChunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[TokenChunk]:
        result = self.engine.answer(self.request)
        index = 0
        for word in result.text.split(" ") if result.text else []:
            await anyio.lowlevel.checkpoint()
            yield TokenChunk(text=word if index == 0 else f" {word}", index=index, t_s=0.0)
            index += 1
        for i, call in enumerate(result.tool_calls):
            args = call.arguments
            cut = [0, len(args) // 3, 2 * len(args) // 3, len(args)]
            pieces = [
                ToolCallDelta(index=i, id=call.id, name=call.name, arguments=args[: cut[1]]),
                ToolCallDelta(index=i, arguments=args[cut[1] : cut[2]]),
                ToolCallDelta(index=i, arguments=args[cut[2] :]),
            ]
            for piece in pieces:
                await anyio.lowlevel.checkpoint()
                yield TokenChunk(text="", index=index, t_s=0.0, tool_calls=(piece,))
                index += 1
        self._result = result

    def result(self) -> InferenceResult:
        assert self._result is not None
        return self._result


@dataclass
class ScriptedToolEngine:
    """A `StreamingSubstrate` playing a script of replies, one per assistant turn."""

    script: Sequence[Reply]
    name: str = "scripted"
    model: str = MODEL
    requests: list[InferenceRequest] = field(default_factory=list)

    def answer(self, request: InferenceRequest) -> InferenceResult:
        self.requests.append(request)
        turn = sum(m.role == "assistant" for m in request.messages)
        reply = self.script[min(turn, len(self.script) - 1)]
        calls = tuple(
            ToolCall(id=f"call_{turn}_{i}", name=name, arguments=json.dumps(args))
            for i, (name, args) in enumerate(reply.calls)
        )
        output = max(1, len(reply.text.split()) + sum(len(c.arguments) // 4 for c in calls))
        return InferenceResult(
            text=reply.text,
            usage=Usage(input_tokens=request.estimated_prompt_tokens(), output_tokens=output),
            timing=Timing(decode_s=0.001),
            substrate=self.name,
            model=self.model,
            finish_reason="tool_calls" if calls else "stop",
            tool_calls=calls,
        )

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        await anyio.lowlevel.checkpoint()
        return self.answer(request)

    @asynccontextmanager
    async def stream(self, request: InferenceRequest) -> AsyncIterator[ScriptedStream]:
        yield ScriptedStream(self, request)

    async def aclose(self) -> None:
        pass


ServeScript = Callable[[Sequence[Reply]], AbstractContextManager[tuple[str, ScriptedToolEngine]]]


@pytest.fixture
def serve_script() -> ServeScript:
    """``with serve_script([Reply(...), ...]) as (url, engine):`` serves the script on loopback."""

    @contextmanager
    def serve(script: Sequence[Reply]) -> Iterator[tuple[str, ScriptedToolEngine]]:
        engine = ScriptedToolEngine(list(script))
        with serve_in_thread(create_app(engine)) as url:
            yield url, engine

    return serve


@pytest.fixture
def reply() -> type[Reply]:
    return Reply
