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

Needs the ``serve`` extra (``pip install agentrt[serve]``).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentrt.errors import AgentrtError
from agentrt.substrate import (
    InferenceRequest,
    InferenceResult,
    Message,
    StreamingSubstrate,
)
from agentrt.telemetry import semconv as sc

if TYPE_CHECKING:
    import uvicorn

__all__ = [
    "ChatCompletionRequest",
    "ConnectionLimits",
    "create_app",
    "default_max_connections",
    "serve_in_thread",
]

_SCOPE = "agentrt.serve"
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


def _error(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


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
        return _error(
            408,
            f"the request body did not arrive within {self.body_timeout_s:g} s",
            code="request_timeout",
            headers={"Connection": "close"},
        )

    def _too_large(self) -> Response:
        return _error(
            413,
            f"request body exceeds {self.max_body_bytes} bytes",
            code="request_too_large",
        )

    async def chat(self, request: Request) -> Response:
        body = await self._read_body(request)
        if isinstance(body, Response):
            return body
        try:
            chat = ChatCompletionRequest.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == "json_invalid":
                return _error(400, f"invalid JSON body: {first['msg']}", code="invalid_json")
            param = ".".join(str(p) for p in first["loc"]) or None
            return _error(400, f"{param}: {first['msg']}", param=param, code="invalid_value")
        if chat.model != self.model:
            return _error(
                404,
                f"the model {chat.model!r} does not exist; this server serves {self.model!r}",
                param="model",
                code="model_not_found",
            )
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        infer = chat.to_inference(request_id, default_max_tokens=self.default_max_tokens)
        if self.context is not None:
            # Checked before any work (and before the headers of a stream are sent), in vLLM's
            # words: a request that cannot fit gets 400 at once, never a gigantic generation.
            prompt = max(1, infer.estimated_prompt_tokens())
            output = infer.max_output_tokens
            if chat.max_completion_tokens is None and chat.max_tokens is None:
                output = min(output, max(1, self.context - prompt))  # the default fits if it can
                infer = infer.model_copy(update={"max_output_tokens": output})
            if prompt + output > self.context:
                return _error(
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
                return _error(
                    400,
                    f"This deployment's KV cache holds {self.kv_capacity} tokens per request. "
                    f"However, you requested {prompt + output} tokens ({prompt} in the messages, "
                    f"{output} in the completion). Please reduce the length of the messages or "
                    "completion, or serve a deployment with more memory.",
                    param="messages",
                    code="kv_capacity_exceeded",
                )
        if self.active >= self.max_concurrency:
            return _error(
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
            return _error(500, f"{type(exc).__name__}: {exc}", kind="server_error")
        except BaseException as exc:
            _end(span, None, exc)
            raise
        finally:
            release()
        _end(span, result, None)
        return JSONResponse(self._completion(result, request_id))

    async def _events(
        self,
        infer: InferenceRequest,
        request_id: str,
        include_usage: bool,
        span: trace.Span,
        release: Callable[[], None],
    ) -> AsyncIterator[bytes]:
        created = int(time.time())
        head = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                "model": self.model}  # fmt: skip
        # Every content chunk but the first differs only in its text: frame it once, encode
        # only the text per token (the same bytes as encoding the whole chunk).
        opened = _dumps(head)[:-1]
        before = b"data: " + opened + b',"choices":[{"index":0,"delta":{"content":'
        after = b'},"finish_reason":null}]}\n\n'
        result: InferenceResult | None = None
        error: BaseException | None = None
        try:
            async with self.engine.stream(infer) as chunks:
                first = True
                async for chunk in chunks:
                    if first:
                        first = False
                        delta = {"role": "assistant", "content": chunk.text}
                        choice = {"index": 0, "delta": delta, "finish_reason": None}
                        yield _sse({**head, "choices": [choice]})
                    else:
                        yield before + _json_str(chunk.text).encode() + after
            result = chunks.result()
            last = {"index": 0, "delta": {}, "finish_reason": result.finish_reason}
            yield _sse({**head, "choices": [last]})
            if include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(result)})
            yield b"data: [DONE]\n\n"
        except AgentrtError as exc:
            error = exc
            # Headers are gone already: report in-band, as OpenAI-compatible servers do.
            body = {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error",
                              "param": None, "code": None}}  # fmt: skip
            yield _sse(body)
        except BaseException as exc:  # cancelled (client went away): record, propagate
            error = exc
            raise
        finally:
            release()
            _end(span, result, error)

    def _completion(self, result: InferenceResult, request_id: str) -> dict[str, Any]:
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": _usage(result),
        }


#: ``json.dumps`` of one string (the C encoder, without building an encoder per call).
_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _as_coroutine(function: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        function()

    return call


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _dumps(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + _dumps(data) + b"\n\n"


def _usage(result: InferenceResult) -> dict[str, int]:
    u = result.usage
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
    }


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
        >>> from substrates.emulated.presets import build_engine
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


#: Descriptors kept free for everything but client connections (the listening socket, the event
#: loop, logs and trace files, imports): an eighth of the limit, at least this many (at most
#: half of a tiny limit).
_FD_HEADROOM = 64
#: No more connections than this whatever the descriptor limit (``ulimit -n`` may be a million).
_MAX_CONNECTIONS_CAP = 65536


def default_max_connections() -> int:
    """Open connections allowed by default: the soft ``RLIMIT_NOFILE`` less headroom.

    Example:
        >>> import resource
        >>> default_max_connections() < resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        True
    """
    soft = _fd_limit()
    headroom = max(soft // 8, min(_FD_HEADROOM, soft // 2))
    return max(1, min(soft - headroom, _MAX_CONNECTIONS_CAP))


def _fd_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


@dataclass(frozen=True)
class ConnectionLimits:
    """How ``agentrt serve`` guards its connections against slow or idle clients (slowloris).

    A connection must deliver a complete request head within ``header_timeout_s`` of opening (or,
    on a kept-alive connection, of the first byte of its next request), else it is closed. An
    idle kept-alive connection closes after ``keep_alive_timeout_s``. At most ``max_connections``
    are open: a new one beyond that closes the oldest connection that has no request in progress
    (half-open or idle), or, when every connection is serving a request, is answered 503 and
    closed. Request heads are limited to ``max_head_bytes`` (h11's incomplete-event limit).

    Example:
        >>> ConnectionLimits(max_connections=100).resolved_max_connections()
        100

    Args:
        max_connections: open connections at most; default `default_max_connections`.
        header_timeout_s: seconds for a request head to arrive.
        keep_alive_timeout_s: seconds an idle kept-alive connection stays open.
        max_head_bytes: largest request head (request line and headers).
    """

    max_connections: int | None = None
    header_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 5.0
    max_head_bytes: int = 16 * 1024

    def resolved_max_connections(self) -> int:
        """``max_connections``, or the default derived from the descriptor limit."""
        return default_max_connections() if self.max_connections is None else self.max_connections


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\nretry-after: 1\r\ncontent-length: %d\r\n\r\n%s"
)


def _busy_response() -> bytes:
    body = _dumps(
        {
            "error": {
                "message": "too many open connections; retry shortly",
                "type": "server_error",
                "param": None,
                "code": "too_many_connections",
            }
        }
    )
    return _BUSY % (len(body), body)


def _guarded_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """The h11 protocol of uvicorn with a request-head timeout and a connection limit.

    uvicorn has no header-read timeout: a client that opens a connection and never finishes its
    request head holds a descriptor forever, until the process cannot accept anyone. Each
    server gets its own class, so its waiting connections are its own.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    max_connections = limits.resolved_max_connections()
    header_timeout = limits.header_timeout_s
    busy = _busy_response()
    # Connections without a request in progress, oldest first: the ones to close for room.
    waiting: dict[H11Protocol, None] = {}

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            if len(self.connections) > max_connections and not _evict_one():
                transport.write(busy)  # type: ignore[attr-defined]
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request on a kept-alive connection has begun
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the head is in: the request is the application's now

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                waiting[self] = None  # idle between requests: first to go when full

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            waiting[self] = None
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            waiting.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            waiting.pop(self, None)
            if not self.transport.is_closing():
                self.transport.close()

    def _evict_one() -> bool:
        for victim in waiting:
            del waiting[victim]
            victim._disarm()  # type: ignore[attr-defined]
            victim.transport.close()
            return True
        return False

    return GuardedH11Protocol


def _uvicorn_config(
    app: Starlette,
    *,
    host: str,
    port: int,
    limits: ConnectionLimits,
    log_level: str,
) -> uvicorn.Config:
    import uvicorn

    max_connections = limits.resolved_max_connections()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_guarded_protocol(limits),
        log_level=log_level,
        lifespan="off",
        access_log=False,
        timeout_keep_alive=max(1, round(limits.keep_alive_timeout_s)),
        h11_max_incomplete_event_size=limits.max_head_bytes,
        # asyncio accepts up to `backlog` sockets per wake-up, and a connection is counted (and
        # an idle one closed for it) a few loop iterations later: keep those in flight well
        # within the spare descriptors. The kernel's queue stays long (`_ListeningSocket`).
        backlog=max(4, min(128, (_fd_limit() - max_connections) // 8)),
        timeout_graceful_shutdown=1,
    )


@contextmanager
def serve_in_thread(
    app: Starlette,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout_s: float = 10.0,
    limits: ConnectionLimits | None = None,
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread (own event loop) and yield its base URL.

    For tests, benchmarks and notebooks: ``port=0`` picks a free port. Leaving the block stops the
    server (open streams get up to a second to finish) and joins the thread. Connections are
    guarded as by ``agentrt serve`` (``limits``, default `ConnectionLimits`).

    Example:
        >>> from substrates.emulated.presets import build_engine
        >>> with serve_in_thread(create_app(build_engine("h100", model="llama-3.1-8b"))) as url:
        ...     url.startswith("http://127.0.0.1:")
        True
    """
    import uvicorn

    config = _uvicorn_config(
        app, host=host, port=port, limits=limits or ConnectionLimits(), log_level="critical"
    )
    server = uvicorn.Server(config)
    sock = _bind(host, port)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"agentrt-serve-{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout_s)
            sock.close()
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.005)
    bound = sock.getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()


class _ListeningSocket(socket.socket):
    """A listening socket whose kernel queue is always long.

    asyncio passes one number as both the ``listen()`` queue and the connections it accepts per
    wake-up; the second must be small (see `_uvicorn_config`), the first need not be: a burst
    of clients waits in the kernel's queue, costing no descriptor, instead of being refused.
    """

    def listen(self, backlog: int = 0) -> None:  # the argument is deliberately ignored
        super().listen(_KERNEL_BACKLOG)


_KERNEL_BACKLOG = 2048


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (the first address ``host`` resolves to), listening.

    Raises:
        OSError: the address cannot be resolved (`socket.gaierror`) or bound.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = _ListeningSocket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        # Listening from here on: a client that connects as soon as "serving ... at URL" is
        # printed waits in the kernel's queue until uvicorn starts, instead of being refused.
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock
