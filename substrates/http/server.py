"""``agentrt serve``: an emulated engine behind an OpenAI-compatible HTTP API (starlette + uvicorn).

Endpoints: ``POST /v1/chat/completions`` (streamed over SSE or not; usage in a final chunk when
``stream_options.include_usage`` is set), ``GET /v1/models`` and ``GET /health``. Every request
goes to the one engine, so concurrent requests batch and queue as they would on the hardware, and
tokens leave when the engine emits them (first at its TTFT, then its per-token gaps).

A ``traceparent`` header is honoured: the ``chat {model}`` SERVER span joins the caller's trace.
Bad JSON or a bad request answers 400 (also a prompt plus ``max_tokens`` beyond the model's
context window, as vLLM does), a body over ``max_body_bytes`` 413, and a request beyond
``max_concurrency`` 429 with Retry-After; error bodies are OpenAI's
``{"error": {"message", "type", "param", "code"}}``.

Connections are guarded (`ConnectionLimits`): a request head must arrive within a timeout, idle
keep-alive connections close after another, and the number of open connections stays below the
process's descriptor limit, the oldest idle or half-open connection making room for a new one.
The guard, uvicorn's config and the listening socket live in `substrates.http.connections`;
`ConnectionLimits`, `default_max_connections` and `serve_in_thread` are re-exported here.

Needs the ``serve`` extra (``pip install agentrt[serve]``).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentrt.errors import AgentrtError, RateLimited, SubstrateUnavailable
from agentrt.substrate import InferenceRequest, InferenceResult, StreamingSubstrate
from agentrt.telemetry import semconv as sc
from substrates.http._reply import EventEncoder, completion
from substrates.http._wire import ChatCompletionRequest, error_response, read_chat, sse
from substrates.http.connections import ConnectionLimits, default_max_connections, serve_in_thread

__all__ = [
    "ChatCompletionRequest",
    "ConnectionLimits",
    "create_app",
    "default_max_connections",
    "serve_in_thread",
]

_SCOPE = "agentrt.serve"


class _App:
    """The request handlers, sharing one engine and one concurrency counter."""

    def __init__(
        self,
        engine: StreamingSubstrate,
        *,
        model: str,
        max_body_bytes: int,
        body_timeout_s: float,
        max_concurrency: int,
        default_max_tokens: int,
        tracer_provider: trace.TracerProvider | None,
    ) -> None:
        self.engine = engine
        self.model = model
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_concurrency = max_concurrency
        self.default_max_tokens = default_max_tokens
        self.active = 0
        self.created = int(time.time())
        self.context = _positive_int(getattr(engine, "context_length_tokens", None))
        self.kv_capacity = _positive_int(getattr(engine, "kv_capacity_tokens", None))
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer(_SCOPE)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model, "active": self.active})

    async def models(self, request: Request) -> Response:
        entry = {"id": self.model, "object": "model", "created": self.created,
                 "owned_by": "agentrt"}  # fmt: skip
        return JSONResponse({"object": "list", "data": [entry]})

    async def _read_body(self, request: Request) -> bytes | Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return self._too_large()
        body = bytearray()
        # A client that sends its head and then trickles the body holds a connection and a
        # request slot: it gets until body_timeout_s, then 408 and the connection is closed.
        with anyio.move_on_after(self.body_timeout_s):
            async for piece in request.stream():
                body += piece
                if len(body) > self.max_body_bytes:
                    return self._too_large()
            return bytes(body)
        return error_response(
            408,
            f"the request body did not arrive within {self.body_timeout_s:g} s",
            code="request_timeout",
            headers={"Connection": "close"},
        )

    def _too_large(self) -> Response:
        return error_response(
            413,
            f"request body exceeds {self.max_body_bytes} bytes",
            code="request_too_large",
        )

    async def chat(self, request: Request) -> Response:
        body = await self._read_body(request)
        if isinstance(body, Response):
            return body
        chat = read_chat(body)
        if isinstance(chat, Response):
            return chat
        if chat.model != self.model:
            return error_response(
                404,
                f"the model {chat.model!r} does not exist; this server serves {self.model!r}",
                param="model",
                code="model_not_found",
            )
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        try:
            infer = chat.to_inference(request_id, default_max_tokens=self.default_max_tokens)
        except ValidationError as exc:  # a combination read_chat's checks did not foresee
            message = f"invalid request: {exc.errors()[0]['msg']}"
            return error_response(400, message, code="invalid_value")
        if self.context is not None:
            # Checked before any work (and before the headers of a stream are sent), in vLLM's
            # words: a request that cannot fit gets 400 at once, never a gigantic generation.
            prompt = max(1, infer.estimated_prompt_tokens())
            output = infer.max_output_tokens
            if chat.max_completion_tokens is None and chat.max_tokens is None:
                output = min(output, max(1, self.context - prompt))  # the default fits if it can
                infer = infer.model_copy(update={"max_output_tokens": output})
            if prompt + output > self.context:
                return error_response(
                    400,
                    f"This model's maximum context length is {self.context} tokens. However, "
                    f"you requested {prompt + output} tokens ({prompt} in the messages, {output} "
                    "in the completion). Please reduce the length of the messages or completion.",
                    param="messages",
                    code="context_length_exceeded",
                )
        if self.kv_capacity is not None:
            # Fits the model, not this deployment's KV cache: checked here too, because a
            # stream's headers are sent before the engine would refuse it.
            prompt = max(1, infer.estimated_prompt_tokens())
            output = infer.max_output_tokens
            if prompt + output > self.kv_capacity:
                return error_response(
                    400,
                    f"This deployment's KV cache holds {self.kv_capacity} tokens per request. "
                    f"However, you requested {prompt + output} tokens ({prompt} in the messages, "
                    f"{output} in the completion). Please reduce the length of the messages or "
                    "completion, or serve a deployment with more memory.",
                    param="messages",
                    code="kv_capacity_exceeded",
                )
        if self.active >= self.max_concurrency:
            return error_response(
                429,
                f"more than {self.max_concurrency} concurrent requests; retry shortly",
                kind="rate_limit_error",
                code="too_many_concurrent_requests",
                headers={"Retry-After": "1"},
            )
        self.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= 1

        parent = propagate.extract(dict(request.headers))
        span = self.tracer.start_span(
            sc.CHAT_SPAN.format(model=self.model),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                sc.OPERATION_NAME: "chat",
                sc.PROVIDER_NAME: "agentrt.serve",
                sc.REQUEST_MODEL: chat.model,
                sc.REQUEST_MAX_TOKENS: infer.max_output_tokens,
                sc.SUBSTRATE: self.engine.name,
                "http.request.method": "POST",
                "url.path": request.url.path,
            },
        )
        refuse_now = getattr(self.engine, "refuse_now", None)  # a pool shedding load
        refused = refuse_now() if chat.stream and callable(refuse_now) else None
        if isinstance(refused, AgentrtError):  # before a stream's headers go out
            return _refused(refused)
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            events = self._events(infer, request_id, include_usage, span, release)
            return StreamingResponse(
                events,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Request-Id": request_id},
                # For a stream that never started (its `finally` never runs). A coroutine, not a
                # plain function: starlette would run that in a worker thread, a hop per request.
                background=BackgroundTask(_as_coroutine(release)),
            )
        try:
            result = await self.engine.infer(infer)
        except AgentrtError as exc:
            _end(span, None, exc)
            return _refused(exc)
        except BaseException as exc:
            _end(span, None, exc)
            raise
        finally:
            release()
        _end(span, result, None)
        created = int(time.time())
        return JSONResponse(
            completion(result, request_id=request_id, model=self.model, created=created)
        )

    async def _events(
        self,
        infer: InferenceRequest,
        request_id: str,
        include_usage: bool,
        span: trace.Span,
        release: Callable[[], None],
    ) -> AsyncIterator[bytes]:
        encoder = EventEncoder(request_id=request_id, model=self.model, created=int(time.time()))
        result: InferenceResult | None = None
        error: BaseException | None = None
        try:
            async with self.engine.stream(infer) as chunks:
                async for chunk in chunks:
                    for event in encoder.chunk(chunk):
                        yield event
            result = chunks.result()
            for event in encoder.end(result, include_usage=include_usage):
                yield event
        except AgentrtError as exc:
            error = exc
            # Headers are gone already: report in-band, as OpenAI-compatible servers do.
            body = {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error",
                              "param": None, "code": None}}  # fmt: skip
            yield sse(body)
        except BaseException as exc:  # cancelled (client went away): record, propagate
            error = exc
            raise
        finally:
            release()
            _end(span, result, error)


def _as_coroutine(function: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        function()

    return call


def _refused(exc: AgentrtError) -> Response:
    """An engine's error as HTTP: shed load 429, unavailable 503 (both with Retry-After), else 500.

    A `Pool` sheds requests beyond its admission limit with `RateLimited` and refuses them
    while draining with `SubstrateUnavailable`: a client sees OpenAI's codes and when to retry.
    """
    message = f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, RateLimited | SubstrateUnavailable):
        return error_response(500, message, kind="server_error")
    after = exc.retry_after_s
    headers = {"Retry-After": str(max(1, math.ceil(after))) if after else "1"}
    if isinstance(exc, RateLimited):
        return error_response(
            429, message, kind="rate_limit_error", code="overloaded", headers=headers
        )
    return error_response(503, message, kind="server_error", code="unavailable", headers=headers)


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _end(span: trace.Span, result: InferenceResult | None, error: BaseException | None) -> None:
    if result is not None:
        span.set_attributes(
            {
                sc.RESPONSE_MODEL: result.model,
                sc.INPUT_TOKENS: result.usage.input_tokens,
                sc.OUTPUT_TOKENS: result.usage.output_tokens,
                sc.FINISH_REASONS: [result.finish_reason],
                "agentrt.timing.ttft_s": result.timing.ttft_s,
                "agentrt.timing.queue_s": result.timing.queue_s,
            }
        )
        bursts = result.attributes.get(sc.SPEC_BURSTS)
        if bursts is not None:  # speculative decoding: the stream came in bursts
            span.set_attributes(
                {
                    sc.SPEC_BURSTS: bursts,
                    sc.SPEC_TOKENS_PER_BURST: result.attributes[sc.SPEC_TOKENS_PER_BURST],
                }
            )
    if error is not None:
        span.set_attribute(sc.ERROR_TYPE, type(error).__name__)
        span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
    span.end()


def create_app(
    engine: StreamingSubstrate,
    *,
    model: str | None = None,
    max_body_bytes: int = 1 << 20,
    body_timeout_s: float = 30.0,
    max_concurrency: int = 1024,
    default_max_tokens: int = 256,
    tracer_provider: trace.TracerProvider | None = None,
) -> Starlette:
    """An ASGI app serving ``engine`` as an OpenAI-compatible API.

    Example:
        >>> from substrates.emulated import build_engine
        >>> app = create_app(build_engine("h100", model="llama-3.1-8b"))
        >>> sorted(r.path for r in app.routes)
        ['/health', '/v1/chat/completions', '/v1/models']

    Args:
        engine: a streaming substrate (any emulated engine); all requests share it.
        model: the model name clients must send; default the engine's ``model`` attribute.
        max_body_bytes: larger request bodies get 413.
        body_timeout_s: a request body not complete this many seconds after its head gets 408
            and the connection is closed (a slow-body client cannot hold a slot).
        max_concurrency: requests in flight beyond this get 429 with ``Retry-After: 1``.
        default_max_tokens: output length when a request sets no ``max_tokens``.
        tracer_provider: where SERVER spans go; default the global provider.
    """
    served = model or str(getattr(engine, "model", None) or engine.name)
    app = _App(
        engine,
        model=served,
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout_s,
        max_concurrency=max_concurrency,
        default_max_tokens=default_max_tokens,
        tracer_provider=tracer_provider,
    )
    routes = [
        Route("/v1/chat/completions", app.chat, methods=["POST"]),
        Route("/v1/models", app.models, methods=["GET"]),
        Route("/health", app.health, methods=["GET"]),
    ]
    return Starlette(routes=routes)
