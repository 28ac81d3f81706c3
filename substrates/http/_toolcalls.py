"""Tool calls on the client's wire: a conversation as OpenAI messages, and the calls read back.

Sending: `wire_message` writes a `Message` as OpenAI does (an assistant message's
``tool_calls`` with ``content: null`` when it has no text; a tool message's ``tool_call_id``),
`wire_tool_choice` a ``tool_choice``. Reading: `parse_tool_calls` reads a whole
``message.tool_calls``, `ToolCallAssembler` the ``delta.tool_calls`` pieces of a stream (keyed by
``index``; ``id`` and ``function.name`` in a call's first piece, ``function.arguments`` appended).
What a server gets wrong is a `BadResponse` naming the call and the field.
"""

from __future__ import annotations

import json
from typing import Any, final

from agentrt.errors import BadResponse
from agentrt.redact import redact
from agentrt.substrate import Message, ToolCall, ToolCallDelta

__all__ = ["ToolCallAssembler", "parse_tool_calls", "wire_message", "wire_tool_choice"]

_MODES = frozenset({"auto", "none", "required"})


def wire_message(message: Message) -> dict[str, Any]:
    """``message`` as a chat-completions ``messages[i]`` entry.

    Example:
        >>> from agentrt import ToolCall
        >>> wire_message(Message(role="assistant", tool_calls=(ToolCall(id="c1", name="f"),)))
        {'role': 'assistant', 'content': None, 'tool_calls': [{'id': 'c1', 'type': 'function', \
'function': {'name': 'f', 'arguments': '{}'}}]}
    """
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def wire_tool_choice(choice: str) -> str | dict[str, Any]:
    """``'auto'``, ``'none'`` and ``'required'`` as they are; a tool's name as OpenAI's object.

    Example:
        >>> wire_tool_choice("auto"), wire_tool_choice("search")
        ('auto', {'type': 'function', 'function': {'name': 'search'}})
    """
    if choice in _MODES:
        return choice
    return {"type": "function", "function": {"name": choice}}


def _arguments(value: object, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):  # some servers send the object itself: unambiguous, kept
        return json.dumps(value)
    raise BadResponse(redact(f"{where}: function.arguments must be a JSON string, got {value!r}"))


def _function(entry: dict[str, Any], where: str) -> dict[str, Any]:
    function = entry.get("function")
    if function is None:
        return {}
    if not isinstance(function, dict):
        raise BadResponse(redact(f"{where}: 'function' must be an object, got {function!r}"))
    name = function.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise BadResponse(
            redact(f"{where}: function.name must be a non-empty string, got {name!r}")
        )
    return function


def parse_tool_calls(raw: object, *, source: str) -> tuple[ToolCall, ...]:
    """The calls of a whole ``message.tool_calls`` (None or absent: none).

    Args:
        raw: the JSON value of ``tool_calls``.
        source: who sent it, for messages (``"openai_http: response from URL"``).

    Raises:
        BadResponse: not a list of ``{"id", "function": {"name", "arguments"}}`` objects.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadResponse(redact(f"{source}: tool_calls must be a list, got {raw!r:.200}"))
    calls = []
    for i, entry in enumerate(raw):
        where = f"{source}: tool call {i}"
        if not isinstance(entry, dict):
            raise BadResponse(redact(f"{where} is not an object: {entry!r:.200}"))
        function = _function(entry, where)
        call_id, name = entry.get("id"), function.get("name")
        if not isinstance(call_id, str) or not call_id:
            raise BadResponse(redact(f"{where} has no id (got {call_id!r})"))
        if name is None:
            raise BadResponse(redact(f"{where} ({call_id}) has no function.name"))
        arguments = _arguments(function.get("arguments"), where)
        calls.append(ToolCall(id=call_id, name=name, arguments=arguments or "{}"))
    return tuple(calls)


@final
class ToolCallAssembler:
    """Puts a stream's ``delta.tool_calls`` pieces together into whole `ToolCall` objects.

    Example:
        >>> calls = ToolCallAssembler(source="test")
        >>> first = {"index": 0, "id": "c1", "function": {"name": "search", "arguments": ""}}
        >>> calls.add([first])[0].name
        'search'
        >>> calls.add([{"index": 0, "function": {"arguments": '{"q": "bug"}'}}])[0].arguments
        '{"q": "bug"}'
        >>> calls.calls()
        (ToolCall(id='c1', name='search', arguments='{"q": "bug"}'),)
    """

    def __init__(self, *, source: str) -> None:
        self._source = source
        self._ids: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._arguments: dict[int, list[str]] = {}

    def add(self, raw: object) -> tuple[ToolCallDelta, ...]:
        """Take one ``delta.tool_calls`` list; return its pieces as deltas.

        Raises:
            BadResponse: a piece that is not an object, a new call without id or name, a second
                id for a call, or arguments that are not text.
        """
        if not isinstance(raw, list):
            raise BadResponse(
                redact(f"{self._source}: delta.tool_calls must be a list, got {raw!r:.200}")
            )
        deltas = []
        for j, entry in enumerate(raw):
            if not isinstance(entry, dict):
                raise BadResponse(redact(f"{self._source}: tool call piece {entry!r:.200}"))
            index = entry.get("index", j)  # a server that omits it sends one call per position
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise BadResponse(
                    redact(f"{self._source}: tool call index must be an integer >= 0: {index!r}")
                )
            deltas.append(self._piece(index, entry))
        return tuple(deltas)

    def _piece(self, index: int, entry: dict[str, Any]) -> ToolCallDelta:
        where = f"{self._source}: tool call {index}"
        function = _function(entry, where)
        call_id, name = entry.get("id"), function.get("name")
        if call_id is not None and not isinstance(call_id, str):
            raise BadResponse(redact(f"{where}: id must be a string, got {call_id!r}"))
        arguments = _arguments(function.get("arguments"), where)
        if index not in self._ids:
            if not call_id or name is None:
                missing = " and ".join(
                    what for what, v in (("id", call_id), ("function.name", name)) if not v
                )
                raise BadResponse(
                    redact(f"{where} began without its {missing} (the first piece carries both)")
                )
            self._ids[index], self._names[index] = call_id, name
            self._arguments[index] = [arguments]
            return ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments)
        if call_id and call_id != self._ids[index]:
            raise BadResponse(
                redact(
                    f"{where} has the id {self._ids[index]!r}, then {call_id!r} in a later piece"
                )
            )
        self._arguments[index].append(arguments)
        return ToolCallDelta(index=index, arguments=arguments)

    def calls(self) -> tuple[ToolCall, ...]:
        """The whole calls so far, by index."""
        return tuple(
            ToolCall(
                id=self._ids[i],
                name=self._names[i],
                arguments="".join(self._arguments[i]) or "{}",
            )
            for i in sorted(self._ids)
        )
