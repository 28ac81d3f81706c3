"""The OpenAI chat completion wire format as ``agentrt serve`` reads and writes it.

The request models (`ChatCompletionRequest`, its messages and stream options), and the JSON of
what goes back: completion usage, SSE events, and OpenAI's error body
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from agentrt.substrate import InferenceRequest, InferenceResult, Message

__all__ = ["ChatCompletionRequest", "dumps", "error_response", "json_str", "sse", "usage"]

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
          "tool": "tool"}  # fmt: skip


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None


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

    def output_tokens(self, default: int = 256) -> int:
        """The most tokens to generate: ``max_completion_tokens``, ``max_tokens`` or default."""
        return self.max_completion_tokens or self.max_tokens or default

    def to_inference(self, request_id: str, *, default_max_tokens: int) -> InferenceRequest:
        """The agentrt request for this chat request."""
        messages = []
        for m in self.messages:
            content = m.content
            if isinstance(content, list):
                content = "".join(p.text or "" for p in content if p.type == "text")
            messages.append(Message(role=_ROLES[m.role], content=content or ""))  # type: ignore[arg-type]
        return InferenceRequest(
            messages=tuple(messages),
            max_output_tokens=self.output_tokens(default_max_tokens),
            temperature=self.temperature,
            seed=self.seed,
            step_id=request_id,
        )


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
