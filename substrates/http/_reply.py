"""What ``agentrt serve`` answers: a whole completion's JSON, or the SSE events of a stream.

Both follow OpenAI's exact shapes. A completion that ends in tool calls has
``message.tool_calls`` (``[{"id", "type": "function", "function": {"name", "arguments"}}]``),
``content: null`` when there is no text, and ``finish_reason: "tool_calls"``. In a stream, the
first delta of each call carries its ``index``, ``id``, ``type``, ``function.name`` and
``function.arguments: ""``; later deltas of that ``index`` carry only the arguments to append.
"""

from __future__ import annotations

import uuid
from typing import Any, final

from agentrt.errors import BadResponse
from agentrt.substrate import InferenceResult, TokenChunk, ToolCall, ToolCallDelta
from substrates.http._wire import dumps, json_str, sse, usage

__all__ = ["EventEncoder", "completion"]


def _call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def completion(
    result: InferenceResult, *, request_id: str, model: str, created: int
) -> dict[str, Any]:
    """The ``chat.completion`` object for ``result``."""
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
    if result.tool_calls:
        message["content"] = result.text or None
        message["tool_calls"] = [_call_json(c) for c in result.tool_calls]
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
        "usage": usage(result),
    }


@final
class EventEncoder:
    """The SSE events of one streamed completion, chunk by chunk.

    Example:
        >>> import json
        >>> from agentrt import TokenChunk, ToolCallDelta
        >>> enc = EventEncoder(request_id="chatcmpl-1", model="m", created=0)
        >>> delta = ToolCallDelta(index=0, id="call_1", name="search", arguments='{"q": 1}')
        >>> events = enc.chunk(TokenChunk(text="", index=0, t_s=0.0, tool_calls=(delta,)))
        >>> for event in events:
        ...     print(json.loads(event[6:])["choices"][0]["delta"]["tool_calls"])
        [{'index': 0, 'id': 'call_1', 'type': 'function', 'function': {'name': 'search', \
'arguments': ''}}]
        [{'index': 0, 'function': {'arguments': '{"q": 1}'}}]
    """

    def __init__(self, *, request_id: str, model: str, created: int) -> None:
        self._head = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                      "model": model}  # fmt: skip
        # Every content chunk but the first differs only in its text: frame it once, encode
        # only the text per token (the same bytes as encoding the whole chunk).
        opened = dumps(self._head)[:-1]
        self._before = b"data: " + opened + b',"choices":[{"index":0,"delta":{"content":'
        self._after = b'},"finish_reason":null}]}\n\n'
        self._started = False
        self._calls: set[int] = set()

    def chunk(self, chunk: TokenChunk) -> list[bytes]:
        """The events for one chunk: its text (if any), then its tool-call pieces."""
        events: list[bytes] = []
        if chunk.text or not chunk.tool_calls:
            if self._started:
                events.append(self._before + json_str(chunk.text).encode() + self._after)
            else:
                events.append(self._event({"role": "assistant", "content": chunk.text}))
                self._started = True
        for delta in chunk.tool_calls:
            events.extend(self._tool_events(delta))
        return events

    def end(self, result: InferenceResult, *, include_usage: bool) -> list[bytes]:
        """Tool calls the stream did not carry, the finish chunk, usage if asked, ``[DONE]``."""
        events: list[bytes] = []
        for index, call in enumerate(result.tool_calls):
            if index not in self._calls:  # a substrate that returns calls but streams none
                whole = ToolCallDelta(index=index, id=call.id, name=call.name,
                                      arguments=call.arguments)  # fmt: skip
                events.extend(self._tool_events(whole))
        events.append(self._event({}, finish=result.finish_reason))
        if include_usage:
            events.append(sse({**self._head, "choices": [], "usage": usage(result)}))
        events.append(b"data: [DONE]\n\n")
        return events

    def _tool_events(self, delta: ToolCallDelta) -> list[bytes]:
        events: list[bytes] = []
        if delta.index not in self._calls:
            if not delta.name:
                raise BadResponse(
                    f"the substrate streamed tool call {delta.index} without a name in its "
                    "first piece (the first ToolCallDelta of a call carries id and name)"
                )
            self._calls.add(delta.index)
            first = {
                "index": delta.index,
                "id": delta.id or f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": delta.name, "arguments": ""},
            }
            opening: dict[str, Any] = {"tool_calls": [first]}
            if not self._started:
                opening = {"role": "assistant", "content": None, **opening}
                self._started = True
            events.append(self._event(opening))
        if delta.arguments:
            piece = {"index": delta.index, "function": {"arguments": delta.arguments}}
            events.append(self._event({"tool_calls": [piece]}))
        return events

    def _event(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse({**self._head, "choices": [choice]})
