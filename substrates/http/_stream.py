"""Reading one streamed chat completion: SSE lines under their deadlines, into chunks and a result.

`HTTPStream` is what `OpenAIHTTPSubstrate.stream` yields once the response headers are in. It
times the first token and the gaps between tokens, maps stalls onto `SubstrateTimeout` and
malformed, truncated or cut streams onto `BadResponse`, and reads a plain JSON completion too
(a server that ignored ``stream: true``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import httpx

from agentrt.clock import Clock, current_clock
from agentrt.errors import BadResponse, SubstrateTimeout
from agentrt.redact import redact
from agentrt.substrate import (
    FinishReason,
    InferenceRequest,
    InferenceResult,
    Timing,
    TokenChunk,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from substrates.http._toolcalls import ToolCallAssembler, parse_tool_calls

if TYPE_CHECKING:
    from substrates.http.client import OpenAIHTTPSubstrate

__all__ = ["HTTPStream"]

_FINISH: Final[dict[str, FinishReason]] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


@final
class HTTPStream:
    """A `TokenStream` over one SSE response: each content delta is one chunk."""

    def __init__(
        self,
        owner: OpenAIHTTPSubstrate,
        request: InferenceRequest,
        response: httpx.Response,
        t0: float,
        deadline: float,
        attempts: int,
    ) -> None:
        self._owner = owner
        self._request = request
        self._response = response
        self._t0 = t0
        self._t_headers = current_clock().current_time()
        self._deadline = deadline
        self._attempts = attempts
        self._result: InferenceResult | None = None
        self._got_token = False

    def __aiter__(self) -> AsyncIterator[TokenChunk]:
        return self._iterate()

    def result(self) -> InferenceResult:
        """The complete result; only valid after iteration finished."""
        if self._result is None:
            raise BadResponse("the stream was not read to the end; its result is not known yet")
        return self._result

    async def _lines(self) -> AsyncIterator[tuple[str, bool]]:
        """SSE lines, each read under the first-token or total deadline; (line, got_token)."""
        owner = self._owner
        clock = current_clock()
        first_deadline = self._t0 + owner.first_token_timeout_s
        lines = self._response.aiter_lines()
        try:
            async for item in self._read(lines, clock, first_deadline):
                yield item
        finally:
            with anyio.CancelScope(shield=True):
                await lines.aclose()  # type: ignore[attr-defined]

    async def _read(
        self, lines: AsyncIterator[str], clock: Clock, first_deadline: float
    ) -> AsyncIterator[tuple[str, bool]]:
        owner = self._owner
        while True:
            now = clock.current_time()
            deadline = self._deadline if self._got_token else min(self._deadline, first_deadline)
            try:
                with anyio.fail_after(max(deadline - now, 0.0)):
                    line = await lines.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                what = "the next token" if self._got_token else "the first token"
                limit = "total_timeout_s" if deadline == self._deadline else "first_token_timeout_s"
                raise SubstrateTimeout(
                    f"{owner.name}: stream from {owner.shown_url} stalled waiting for {what} "
                    f"({limit}={deadline - self._t0:.3g} s)"
                ) from exc
            except httpx.HTTPError as exc:
                raise BadResponse(
                    redact(
                        f"{owner.name}: stream from {owner.shown_url} was cut mid-way: "
                        f"{type(exc).__name__}: {exc}"
                    )
                ) from exc
            yield line, self._got_token

    async def _iterate(self) -> AsyncIterator[TokenChunk]:
        owner = self._owner
        clock = current_clock()
        content_type = self._response.headers.get("content-type", "")
        pieces: list[str] = []
        calls = ToolCallAssembler(source=f"{owner.name}: stream from {owner.shown_url}")
        whole: tuple[ToolCall, ...] = ()
        chunks = 0
        usage: dict[str, Any] | None = None
        finish: str | None = None
        model = self._request.model or owner.model
        t_first: float | None = None
        t_last = self._t_headers
        max_gap = 0.0
        done = False
        if content_type.startswith("application/json"):  # the server ignored stream=true
            data = await self._json_body()
            choice = self._object((data.get("choices") or [{}])[0], "choice")
            message = self._object(choice.get("message") or {}, "message")
            text = str(message.get("content") or "")
            source = f"{owner.name}: response from {owner.shown_url}"
            whole = parse_tool_calls(message.get("tool_calls"), source=source)
            deltas = tuple(
                ToolCallDelta(index=i, id=c.id, name=c.name, arguments=c.arguments)
                for i, c in enumerate(whole)
            )
            t_first = t_last = clock.current_time()
            pieces.append(text)
            chunks = 1
            usage, finish, done = data.get("usage"), choice.get("finish_reason"), True
            model = str(data.get("model") or model)
            yield TokenChunk(text=text, index=0, t_s=t_first, tool_calls=deltas)
        else:
            async for line, _ in self._lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), event:/id: fields
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                event = self._parse(payload)
                model = str(event.get("model") or model)
                if isinstance(event.get("usage"), dict):
                    usage = event["usage"]
                for raw_choice in event.get("choices") or []:
                    choice = self._object(raw_choice, "choice")
                    finish = choice.get("finish_reason") or finish
                    delta = self._object(choice.get("delta") or {}, "delta")
                    content = delta.get("content")
                    raw_calls = delta.get("tool_calls")
                    if not content and not raw_calls:
                        continue
                    deltas = calls.add(raw_calls) if raw_calls else ()
                    now = clock.current_time()
                    if t_first is None:
                        t_first = now
                        self._got_token = True
                    else:
                        max_gap = max(max_gap, now - t_last)
                    t_last = now
                    text = str(content) if content else ""
                    pieces.append(text)
                    chunks += 1
                    yield TokenChunk(text=text, index=chunks - 1, t_s=now, tool_calls=deltas)
            if not done and finish is None:
                raise BadResponse(
                    f"{owner.name}: stream from {owner.shown_url} ended before its last chunk "
                    f"(no finish_reason and no [DONE] after {chunks} chunks): truncated"
                )
            whole = calls.calls()
        self._result = self._finish(pieces, whole, usage, finish, model, t_first, max_gap)

    def _object(self, value: object, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise BadResponse(redact(f"{self._owner.name}: malformed {what} {value!r:.200}"))
        return value

    async def _json_body(self) -> dict[str, Any]:
        owner = self._owner
        remaining = self._deadline - current_clock().current_time()
        try:
            with anyio.fail_after(max(remaining, 0.0)):
                raw = await self._response.aread()
        except TimeoutError as exc:
            raise SubstrateTimeout(f"{owner.name}: response body stalled") from exc
        except httpx.HTTPError as exc:
            raise BadResponse(redact(f"{owner.name}: response body was cut: {exc}")) from exc
        return self._parse(raw.decode("utf-8", "replace"))

    def _parse(self, payload: str) -> dict[str, Any]:
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise BadResponse(
                redact(
                    f"{self._owner.name}: invalid JSON from {self._owner.shown_url}: "
                    f"{payload[:200]!r}"
                )
            ) from exc
        if not isinstance(event, dict):
            raise BadResponse(
                redact(f"{self._owner.name}: expected a JSON object, got {payload[:200]!r}")
            )
        if "error" in event:
            raise BadResponse(redact(f"{self._owner.name}: error in stream: {event['error']}"))
        return event

    def _finish(
        self,
        pieces: list[str],
        tool_calls: tuple[ToolCall, ...],
        usage: dict[str, Any] | None,
        finish: str | None,
        model: str,
        t_first: float | None,
        max_gap: float,
    ) -> InferenceResult:
        t_end = current_clock().current_time()
        first = t_end if t_first is None else t_first
        network = max(0.0, self._t_headers - self._t0)
        prefill = max(0.0, first - max(self._t_headers, self._t0))
        decode = max(0.0, t_end - first)
        estimated = usage is None
        try:
            input_tokens = int(usage["prompt_tokens"]) if usage else None
            output_tokens = int(usage["completion_tokens"]) if usage else None
        except (KeyError, TypeError, ValueError) as exc:
            raise BadResponse(redact(f"{self._owner.name}: malformed usage {usage!r}")) from exc
        if input_tokens is None or output_tokens is None:
            input_tokens = self._request.estimated_prompt_tokens()
            output_tokens = len(pieces)
        reason = _FINISH.get(finish or "stop", "stop")
        if tool_calls and reason == "stop":
            reason = "tool_calls"  # servers that say "stop" after tool calls (Ollama, some vLLMs)
        if reason == "tool_calls" and not tool_calls:
            raise BadResponse(
                f"{self._owner.name}: {self._owner.shown_url} finished with {finish!r} but sent "
                "no tool_calls (is it an old server speaking the deprecated function_call?)"
            )
        timing = Timing.build(
            output_tokens=max(output_tokens, 1),
            network_s=network,
            prefill_s=prefill,
            decode_s=decode,
        )
        attributes = dict(self._owner._server)
        attributes.update(
            {
                "agentrt.http.attempts": self._attempts,
                "agentrt.http.ttfb_s": network,
                "agentrt.http.max_gap_s": max_gap,
                "agentrt.http.chunks": len(pieces),
                "agentrt.http.tool_calls": len(tool_calls),
                "agentrt.http.usage_estimated": estimated,
            }
        )
        return InferenceResult(
            text="".join(pieces),
            usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            timing=timing,
            substrate=self._owner.name,
            model=model,
            finish_reason=reason,
            attributes=attributes,
            tool_calls=tool_calls,
        )
