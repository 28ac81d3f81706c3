"""``agentrt serve``: an emulated engine behind an OpenAI-compatible HTTP API (starlette + uvicorn).

Endpoints: ``POST /v1/chat/completions`` (streamed over SSE or not; usage in a final chunk when
``stream_options.include_usage`` is set), ``GET /v1/models`` and ``GET /health``. Every request
goes to the one engine, so concurrent requests batch and queue as they would on the hardware, and
tokens leave when the engine emits them (first at its TTFT, then its per-token gaps).

A ``traceparent`` header is honoured: the ``chat {model}`` SERVER span joins the caller's trace.
Bad JSON or a bad request answers 400, a body over ``max_body_bytes`` 413, and a request beyond
``max_concurrency`` 429 with Retry-After; error bodies are OpenAI's
``{"error": {"message", "type", "param", "code"}}``.

Needs the ``serve`` extra (``pip install agentrt[serve]``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import anyio
import typer
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

__all__ = ["ChatCompletionRequest", "create_app", "serve_command", "serve_in_thread"]

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
        max_concurrency: int,
        default_max_tokens: int,
        tracer_provider: trace.TracerProvider | None,
    ) -> None:
        self.engine = engine
        self.model = model
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.default_max_tokens = default_max_tokens
        self.active = 0
        self.created = int(time.time())
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
        async for piece in request.stream():
            body += piece
            if len(body) > self.max_body_bytes:
                return self._too_large()
        return bytes(body)

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

        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        infer = chat.to_inference(request_id, default_max_tokens=self.default_max_tokens)
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
                background=BackgroundTask(release),
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
        result: InferenceResult | None = None
        error: BaseException | None = None
        try:
            async with self.engine.stream(infer) as chunks:
                first = True
                async for chunk in chunks:
                    delta = (
                        {"role": "assistant", "content": chunk.text}
                        if first
                        else {"content": chunk.text}
                    )
                    first = False
                    choice = {"index": 0, "delta": delta, "finish_reason": None}
                    yield _sse({**head, "choices": [choice]})
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


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


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
    max_concurrency: int = 1024,
    default_max_tokens: int = 256,
    tracer_provider: trace.TracerProvider | None = None,
) -> Starlette:
    """An ASGI app serving ``engine`` as an OpenAI-compatible API.

    Example:
        >>> from substrates.presets import build_engine
        >>> app = create_app(build_engine("h100", model="llama-3.1-8b"))
        >>> sorted(r.path for r in app.routes)
        ['/health', '/v1/chat/completions', '/v1/models']

    Args:
        engine: a streaming substrate (any emulated engine); all requests share it.
        model: the model name clients must send; default the engine's ``model`` attribute.
        max_body_bytes: larger request bodies get 413.
        max_concurrency: requests in flight beyond this get 429 with ``Retry-After: 1``.
        default_max_tokens: output length when a request sets no ``max_tokens``.
        tracer_provider: where SERVER spans go; default the global provider.
    """
    served = model or str(getattr(engine, "model", None) or engine.name)
    app = _App(
        engine,
        model=served,
        max_body_bytes=max_body_bytes,
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


@contextmanager
def serve_in_thread(
    app: Starlette, *, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 10.0
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread (own event loop) and yield its base URL.

    For tests, benchmarks and notebooks: ``port=0`` picks a free port. Leaving the block stops the
    server (open streams get up to a second to finish) and joins the thread.

    Example:
        >>> from substrates.presets import build_engine
        >>> with serve_in_thread(create_app(build_engine("h100", model="llama-3.1-8b"))) as url:
        ...     url.startswith("http://127.0.0.1:")
        True
    """
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level="critical", lifespan="off",
        timeout_graceful_shutdown=1, access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"agentrt-serve-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout_s)
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.005)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


def serve_command(
    substrate: Annotated[
        str, typer.Option("--substrate", "-s", help="An emulated engine: wse3, h100, h200, b200.")
    ],
    model: Annotated[str | None, typer.Option(help="Model profile name.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Engine option KEY=VALUE (repeatable)."),
    ] = None,
    max_concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 1024,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body.")] = 1 << 20,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Serve an emulated engine as an OpenAI-compatible API (POST /v1/chat/completions)."""
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - depends on the installation
        msg = "agentrt serve needs the serve extra: pip install agentrt[serve]"
        raise typer.BadParameter(msg) from None
    from agentrt.registry import default_registry

    options: dict[str, Any] = {}
    for pair in option or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.strip().replace("-", "_")] = value.strip()
    if model is not None:
        options["model"] = model
    try:
        engine = default_registry().substrate(substrate, **options)
    except AgentrtError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not isinstance(engine, StreamingSubstrate):
        raise typer.BadParameter(f"substrate {substrate!r} cannot stream, so it cannot be served")
    app = create_app(engine, max_body_bytes=max_body_bytes, max_concurrency=max_concurrency)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
    anyio.run(engine.aclose)
