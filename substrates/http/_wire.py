"""The OpenAI chat completion wire format as ``agentrt serve`` reads it, and its error bodies.

The request models (`ChatCompletionRequest`: messages with their tool calls and tool answers,
tools, tool choice, stream options), the checks OpenAI makes on them (`request_problem`), and the
JSON helpers of what goes back: completion usage, SSE events, and OpenAI's error body
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from starlette.responses import JSONResponse

from agentrt.substrate import InferenceRequest, InferenceResult, Message, ToolCall, ToolSpec

__all__ = [
    "ChatCompletionRequest",
    "dumps",
    "error_response",
    "json_str",
    "read_chat",
    "request_problem",
    "sse",
    "usage",
]

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
          "tool": "tool"}  # fmt: skip


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class _Function(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arguments: str


class _WireToolCall(BaseModel):
    """``messages[i].tool_calls[j]``: ``{"id", "type": "function", "function": {...}}``."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: _Function


class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None
    tool_calls: list[_WireToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined; None is empty)."""
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class _FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    description: str | None = None
    parameters: dict[str, JsonValue] | None = None


class _WireTool(BaseModel):
    """``tools[i]``: ``{"type": "function", "function": {name, description, parameters}}``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: _FunctionSpec


class _ChosenFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str


class _NamedToolChoice(BaseModel):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: call this tool."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: _ChosenFunction


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of an OpenAI chat completion request that the server reads; others are ignored.

    Example:
        >>> ChatCompletionRequest.model_validate(
        ...     {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        ... ).output_tokens()
        5
    """

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[_ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    tools: list[_WireTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | _NamedToolChoice | None = None
    # The deprecated function-calling fields: read only to refuse them with a clear 400.
    functions: list[JsonValue] | None = None
    function_call: JsonValue = None

    def output_tokens(self, default: int = 256) -> int:
        """The most tokens to generate: ``max_completion_tokens``, ``max_tokens`` or default."""
        return self.max_completion_tokens or self.max_tokens or default

    def to_inference(self, request_id: str, *, default_max_tokens: int) -> InferenceRequest:
        """The agentrt request for this chat request."""
        messages = []
        for m in self.messages:
            calls = tuple(
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                for c in m.tool_calls or ()
            )
            messages.append(
                Message(
                    role=_ROLES[m.role],  # type: ignore[arg-type]
                    content=m.text(),
                    tool_calls=calls,
                    tool_call_id=m.tool_call_id if m.role == "tool" else None,
                    name=m.name,
                )
            )
        tools = tuple(
            ToolSpec(
                name=t.function.name,
                description=t.function.description or "",
                parameters=t.function.parameters or {"type": "object", "properties": {}},
            )
            for t in self.tools or ()
        )
        choice = self.tool_choice
        return InferenceRequest(
            messages=tuple(messages),
            max_output_tokens=self.output_tokens(default_max_tokens),
            temperature=self.temperature,
            seed=self.seed,
            step_id=request_id,
            tools=tools,
            tool_choice=choice.function.name if isinstance(choice, _NamedToolChoice) else choice,
        )


#: OpenAI's rule for function names (agentrt.ToolSpec checks the same).
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def read_chat(body: bytes) -> ChatCompletionRequest | JSONResponse:
    """The request in ``body``, or the 400 answer naming what is wrong with it."""
    try:
        chat = ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return error_response(400, f"invalid JSON body: {first['msg']}", code="invalid_json")
        param = ".".join(str(p) for p in first["loc"]) or None
        message = f"{param}: {first['msg']}" if param else f"the body: {first['msg']}"
        return error_response(400, message, param=param, code="invalid_value")
    problem = request_problem(chat)
    if problem is not None:
        return error_response(400, problem[1], param=problem[0], code="invalid_value")
    return chat


def request_problem(chat: ChatCompletionRequest) -> tuple[str, str] | None:
    """The first thing OpenAI would refuse in ``chat``'s tools and tool calls: (param, message).

    Each message names the field and says what to send instead. None if all is well.
    """
    if chat.functions is not None or chat.function_call is not None:
        param = "functions" if chat.functions is not None else "function_call"
        return param, (
            f"{param} is the deprecated function-calling API; send tools "
            '([{"type": "function", "function": {...}}]) and tool_choice instead'
        )
    return _tools_problem(chat) or _messages_problem(chat)


def _tools_problem(chat: ChatCompletionRequest) -> tuple[str, str] | None:
    names: list[str] = []
    for i, tool in enumerate(chat.tools or ()):
        name = tool.function.name
        if not _TOOL_NAME.match(name):
            return f"tools.{i}.function.name", (
                f"{name!r} is not a valid function name: use 1-64 letters, digits, '_' or '-'"
            )
        if name in names:
            return f"tools.{i}.function.name", f"the function {name!r} is offered twice"
        parameters = tool.function.parameters
        if parameters is not None and parameters.get("type", "object") != "object":
            return f"tools.{i}.function.parameters", (
                f"the parameters of {name!r} must be a JSON schema of type 'object'"
            )
        names.append(name)
    choice = chat.tool_choice
    if choice == "required" and not names:
        return "tool_choice", "tool_choice 'required' needs tools: send at least one in tools"
    if isinstance(choice, _NamedToolChoice) and choice.function.name not in names:
        offered = ", ".join(names) or "none"
        return "tool_choice", (
            f"tool_choice names the function {choice.function.name!r}, which is not in tools "
            f"(offered: {offered})"
        )
    return None


def _messages_problem(chat: ChatCompletionRequest) -> tuple[str, str] | None:
    asked: set[str] = set()
    for i, m in enumerate(chat.messages):
        if m.tool_calls and m.role != "assistant":
            return f"messages.{i}.tool_calls", (
                f"only assistant messages carry tool_calls, not {m.role!r} ones"
            )
        for j, call in enumerate(m.tool_calls or ()):
            if not _TOOL_NAME.match(call.function.name):
                return f"messages.{i}.tool_calls.{j}.function.name", (
                    f"{call.function.name!r} is not a valid function name"
                )
            asked.add(call.id)
        if m.role != "tool":
            continue
        if not m.tool_call_id:
            return f"messages.{i}.tool_call_id", (
                "a tool message needs tool_call_id: the id of the assistant's tool call it answers"
            )
        if m.tool_call_id not in asked:
            return f"messages.{i}.tool_call_id", (
                f"messages with role 'tool' must answer a preceding assistant message's "
                f"tool_calls; no call has the id {m.tool_call_id!r}"
            )
    return None


def error_response(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An OpenAI error body answered with ``status``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


#: ``json.dumps`` of one string (the C encoder, without building an encoder per call).
json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


def dumps(data: object) -> bytes:
    """Compact JSON, as bytes."""
    return json.dumps(data, separators=(",", ":")).encode()


def sse(data: dict[str, Any]) -> bytes:
    """One SSE ``data:`` event carrying ``data`` as JSON."""
    return b"data: " + dumps(data) + b"\n\n"


def usage(result: InferenceResult) -> dict[str, int]:
    """The ``usage`` object of a completion for ``result``."""
    u = result.usage
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
    }
