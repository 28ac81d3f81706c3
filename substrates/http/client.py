"""A substrate over any OpenAI-compatible ``/v1/chat/completions`` endpoint, streamed over SSE.

vLLM, llama.cpp's ``llama-server``, Ollama, SGLang, Cerebras' and OpenAI's clouds, and
``agentrt serve`` all speak this API. Every call streams (``stream: true`` with
``stream_options.include_usage``), so the time to first token and the gaps between tokens are
measured, not guessed. How the measured times map onto `agentrt.Timing`:

- ``network_s``: from sending the request to the response headers (connect, TLS, upload, and
  whatever the server does before it answers; streaming servers answer at once).
- ``prefill_s``: from the headers to the first content token. Server-side queueing cannot be
  told apart from prefill by a client, so it lands here; ``queue_s`` is always 0.
- ``decode_s``: from the first token to the end of the stream. ``tpot_s`` is its mean per token;
  ``attributes["agentrt.http.max_gap_s"]`` holds the longest gap between two chunks.
- ``ttft_s`` = ``network_s + prefill_s``; ``e2e_s`` is the wall time of the successful attempt.

Errors map onto agentrt's tree: connection failures and 5xx → `SubstrateUnavailable`, 429 →
`RateLimited` (with the server's Retry-After), timeouts → `SubstrateTimeout`, other 4xx and
malformed, truncated or cut streams → `BadResponse`. Retryable errors are retried (with
`agentrt.retry.backoff_s`, at least Retry-After) only until the first byte of a response body:
once tokens flow, a failure is reported, never replayed.

Secrets: the API key (``api_key``, or the ``api_key_env`` variable) and any password or secret
query parameter in ``base_url`` are registered with `agentrt.redact.register_secret` when the
substrate is built, and every error message, ``repr`` and log shows ``base_url`` redacted
(``http://***@host/v1?api-key=***``), so a server that echoes the request's ``Authorization``
header in its error body cannot make agentrt print the key.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import anyio
import httpx
from opentelemetry import propagate

from agentrt.clock import current_clock
from agentrt.errors import ConfigError, RetryableError, SubstrateTimeout, SubstrateUnavailable
from agentrt.plan import RetryPolicy
from agentrt.redact import redact, register_secret
from agentrt.retry import backoff_s
from agentrt.substrate import InferenceRequest, InferenceResult
from substrates.http._errors import status_error
from substrates.http._stream import HTTPStream
from substrates.http._toolcalls import wire_message, wire_tool_choice

__all__ = ["OpenAIHTTPSubstrate", "openai_http"]

_KNOWN_PROVIDERS: Final = {
    "api.openai.com": "openai",
    "api.cerebras.ai": "cerebras",
    "api.groq.com": "groq",
    "api.together.xyz": "together",
    "api.fireworks.ai": "fireworks",
}


def _provider_from(url: httpx.URL) -> str:
    host = url.host or ""
    return next((p for h, p in _KNOWN_PROVIDERS.items() if host.endswith(h)), "openai")


class _RedactingFilter(logging.Filter):
    """Redacts httpx's own log records: ``HTTP Request: POST <url with its query>``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


def _guard_httpx_logs() -> None:
    """An application that shows INFO logs would otherwise see every request URL, secrets too."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
        logger.addFilter(_RedactingFilter())


def _parse_base_url(base_url: str) -> httpx.URL:
    """``base_url`` as an httpx URL, its secrets registered; `ConfigError` if it is not http(s)."""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ConfigError(
            f"base_url {redact(base_url)!r} is not a URL ({redact(str(exc))}); "
            "use e.g. base_url=http://localhost:8000/v1"
        ) from exc
    if url.password:
        register_secret(url.password, user=url.username)
    for name, value in url.params.multi_items():
        if redact(f"?{name}={value}") != f"?{name}={value}":
            register_secret(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            f"base_url {redact(base_url)!r} is not an http(s) URL with a host; "
            "use e.g. base_url=http://localhost:8000/v1"
        )
    return url


class OpenAIHTTPSubstrate:
    """A `StreamingSubstrate` over an OpenAI-compatible chat completions endpoint.

    Example:
        >>> sub = OpenAIHTTPSubstrate("http://127.0.0.1:8000/v1", "llama-3.1-8b")
        >>> sub.remote, sub.provider, sub.name
        (True, 'openai', 'openai_http')

    Args:
        base_url: the API root as OpenAI clients take it, e.g. ``http://localhost:8000/v1``;
            requests go to ``{base_url}/chat/completions``.
        model: the model name sent when a request names none.
        api_key: the API key, sent as ``Authorization: Bearer KEY``; prefer ``api_key_env``, since
            a key on a command line is visible to other users of the machine (``ps``).
        api_key_env: the environment variable holding the API key when ``api_key`` is not given
            (read at construction; unset means no ``Authorization`` header, as local servers
            need none).
        name: the substrate name in results and traces.
        provider: ``gen_ai.provider.name``; default guessed from the host (``openai`` otherwise).
        connect_timeout_s: to open a TCP/TLS connection (and to get one from the pool).
        first_token_timeout_s: from sending the request to the first content token, per attempt.
        total_timeout_s: the whole call, retries and back-off included.
        max_retries: retries after the first attempt, for connection errors, 429, 5xx and
            connect timeouts.
        backoff_s: the first back-off; it doubles per retry (never less than Retry-After).
        max_connections: the connection pool's size.
        seed: seeds the back-off jitter.
        transport: an httpx transport instead of the network (tests).
    """

    remote = True

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        name: str = "openai_http",
        provider: str | None = None,
        connect_timeout_s: float = 5.0,
        first_token_timeout_s: float = 60.0,
        total_timeout_s: float = 600.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_connections: int = 100,
        seed: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # Registered first, so that no message below can show them; the variable's value is
        # a secret of this process even when the api_key option overrides it.
        register_secret(api_key)
        register_secret(os.environ.get(api_key_env))
        _guard_httpx_logs()
        key = api_key or os.environ.get(api_key_env)
        url = _parse_base_url(base_url)
        for label, value in (
            ("connect_timeout_s", connect_timeout_s),
            ("first_token_timeout_s", first_token_timeout_s),
            ("total_timeout_s", total_timeout_s),
        ):
            if not value > 0:
                raise ValueError(f"{label} must be positive, got {value}")
        self.name = name
        self.model = model
        # The query (e.g. Azure's ?api-version=...) goes with every request, after the path.
        self.base_url = url.copy_with(
            query=None, username=None, password=None, path=url.path.rstrip("/") + "/"
        )
        self._params = url.params
        # Credentials in the URL become HTTP Basic auth (as httpx does), kept out of base_url.
        self._auth = httpx.BasicAuth(url.username, url.password) if url.username else None
        #: ``base_url`` as shown in messages and logs: credentials and secret parameters hidden.
        self.shown_url = redact(str(url.copy_with(path=self.base_url.path)))
        self._key_hint = (
            "is the api_key option right?" if api_key else f"is ${api_key_env} set and right?"
        )
        self.provider = provider or _provider_from(self.base_url)
        self.connect_timeout_s = connect_timeout_s
        self.first_token_timeout_s = first_token_timeout_s
        self.total_timeout_s = total_timeout_s
        self._policy = RetryPolicy(
            max_attempts=max_retries + 1, initial_backoff_s=backoff_s, jitter_s=backoff_s / 5
        )
        self._rng = random.Random(seed)
        headers = {"Accept": "text/event-stream"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            params=self._params,
            auth=self._auth,
            headers=headers,
            # Read/write deadlines come from the first-token and total timeouts (anyio), which
            # bound every await; httpx only bounds connecting and waiting for a pooled connection.
            timeout=httpx.Timeout(None, connect=connect_timeout_s, pool=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
        )
        port = self.base_url.port or (443 if self.base_url.scheme == "https" else 80)
        self._server: dict[str, str | int | float | bool] = {
            "server.address": self.base_url.host,
            "server.port": port,
        }

    def __repr__(self) -> str:
        return f"OpenAIHTTPSubstrate({self.shown_url!r}, {self.model!r})"

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Run one call (streamed underneath, to measure the time to first token)."""
        async with self.stream(request) as chunks:
            async for _ in chunks:
                pass
        return chunks.result()

    def stream(self, request: InferenceRequest) -> AbstractAsyncContextManager[HTTPStream]:
        """Open a token stream; leaving the block early closes the connection (cancels it)."""
        return self._stream(request)

    async def aclose(self) -> None:
        """Close the connection pool; safe to call more than once."""
        await self._client.aclose()

    # -- internals ---------------------------------------------------------------------------

    def _body(self, request: InferenceRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": [wire_message(m) for m in request.messages],
            "max_tokens": request.max_output_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.seed is not None:
            body["seed"] = request.seed
        if request.tools:
            body["tools"] = [t.to_openai() for t in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = wire_tool_choice(request.tool_choice)
        return body

    @asynccontextmanager
    async def _stream(self, request: InferenceRequest) -> AsyncIterator[HTTPStream]:
        clock = current_clock()
        deadline = clock.current_time() + self.total_timeout_s
        body = self._body(request)
        headers: dict[str, str] = {}
        propagate.inject(headers)  # W3C traceparent of the current (CLIENT chat) span
        attempt = 0
        while True:
            attempt += 1
            t0 = clock.current_time()
            try:
                response = await self._open(body, headers, deadline, t0)
                break
            except RetryableError as exc:
                if attempt >= self._policy.max_attempts:
                    raise
                wait = max(backoff_s(self._policy, attempt, self._rng), exc.retry_after_s or 0.0)
                if clock.current_time() + wait >= deadline:
                    raise
                await anyio.sleep(wait)
        try:
            yield HTTPStream(self, request, response, t0, deadline, attempt)
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _open(
        self, body: dict[str, Any], headers: dict[str, str], deadline: float, t0: float
    ) -> httpx.Response:
        """Send the request and return a streaming 200 response, or raise the mapped error."""
        limit = min(deadline, t0 + self.first_token_timeout_s) - t0
        request = self._client.build_request("POST", "chat/completions", json=body, headers=headers)
        try:
            with anyio.fail_after(max(limit, 0.0)):
                response = await self._client.send(request, stream=True)
                if response.status_code != 200:
                    try:
                        await response.aread()
                    finally:
                        await response.aclose()
        except TimeoutError as exc:
            raise SubstrateTimeout(
                f"{self.name}: no response from {self.shown_url} within {limit:.3g} s"
            ) from exc
        except httpx.TimeoutException as exc:
            raise SubstrateTimeout(
                f"{self.name}: connecting to {self.shown_url} timed out "
                f"(connect_timeout_s={self.connect_timeout_s})"
            ) from exc
        except httpx.TransportError as exc:
            raise SubstrateUnavailable(
                redact(f"{self.name}: cannot reach {self.shown_url}: {type(exc).__name__}: {exc}")
            ) from exc
        if response.status_code != 200:
            raise status_error(
                response, name=self.name, shown_url=self.shown_url, key_hint=self._key_hint
            )
        return response


def openai_http(
    *,
    base_url: str,
    model: str,
    api_key: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    name: str = "openai_http",
    provider: str | None = None,
    connect_timeout_s: float = 5.0,
    first_token_timeout_s: float = 60.0,
    total_timeout_s: float = 600.0,
    max_retries: int = 3,
    backoff_s: float = 0.5,
    max_connections: int = 100,
    seed: int | None = None,
) -> OpenAIHTTPSubstrate:
    """Registry factory: ``--substrate openai_http -o base_url=URL -o model=NAME``.

    Options: those of `OpenAIHTTPSubstrate` (except ``transport``).
    """
    return OpenAIHTTPSubstrate(
        base_url,
        model,
        api_key=api_key,
        api_key_env=api_key_env,
        name=name,
        provider=provider,
        connect_timeout_s=connect_timeout_s,
        first_token_timeout_s=first_token_timeout_s,
        total_timeout_s=total_timeout_s,
        max_retries=max_retries,
        backoff_s=backoff_s,
        max_connections=max_connections,
        seed=seed,
    )
