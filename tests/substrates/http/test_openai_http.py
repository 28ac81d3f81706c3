"""`OpenAIHTTPSubstrate` against a loopback fault server, and end to end against `agentrt serve`."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from agentrt import Agent, InferenceRequest, Plan, Step
from agentrt.errors import (
    BadResponse,
    ConfigError,
    RateLimited,
    SubstrateTimeout,
    SubstrateUnavailable,
)
from agentrt.registry import _call
from substrates.http.client import OpenAIHTTPSubstrate, openai_http

TOKENS = ["Hello", " there", " friend"]


def _chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    event = {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


USAGE = b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}\n\n'


class FaultServer:
    """A stdlib HTTP server whose first path segment picks the behaviour."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                mode = self.path.split("/")[1]
                owner.hits[mode] += 1
                owner.headers.append(dict(self.headers))
                owner.paths.append(self.path)
                n = owner.hits[mode]
                if mode == "e500" or (mode == "flaky" and n == 1):
                    return self.plain(500, b'{"error": {"message": "boom"}}')
                if mode == "e429" and n == 1:
                    return self.plain(429, b'{"error": {"message": "slow down"}}', "0.3")
                if mode == "e429long":
                    return self.plain(429, b'{"error": {"message": "come back later"}}', "30")
                if mode == "e401echo":  # some servers quote the credentials they refused
                    said = f"bad key {self.headers.get('Authorization')} for {self.path}"
                    return self.plain(401, json.dumps({"error": {"message": said}}).encode())
                if mode == "e400":
                    return self.plain(400, b'{"error": {"message": "max_tokens too big"}}')
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if mode == "badjson":
                    return self.send(b"data: {not json\n\n", end=True)
                if mode == "stall0":
                    owner.release.wait(5)
                    return
                self.send(_chunk(TOKENS[0]))
                if mode == "cut":  # half a chunk, then the connection drops
                    self.wfile.write(b"40\r\ndata: {")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if mode == "truncated":
                    return self.send(b"", end=True)
                if mode == "stall":
                    owner.release.wait(5)
                    return
                for t in TOKENS[1:]:
                    time.sleep(0.02)
                    self.send(_chunk(t))
                self.send(_chunk(None, "stop") + USAGE + b"data: [DONE]\n\n", end=True)

            def plain(self, status: int, body: bytes, retry_after: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(body)

            def send(self, data: bytes, *, end: bool = False) -> None:
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                if end:
                    self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the client hanging up on a stalled or cut stream is the point

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = False  # server_close() joins the handler threads
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.02,), name="fault-server"
        )

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"


@pytest.fixture
def faults() -> Iterator[FaultServer]:
    before = set(threading.enumerate())
    server = FaultServer()
    server.thread.start()
    yield server
    server.release.set()
    server.httpd.shutdown()
    server.httpd.server_close()
    server.thread.join(5)
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, leaked


def _sub(url: str, **options: object) -> OpenAIHTTPSubstrate:
    opts: dict[str, object] = {
        "connect_timeout_s": 1.0, "first_token_timeout_s": 1.0, "total_timeout_s": 2.0,
        "max_retries": 2, "backoff_s": 0.01, "seed": 1, "api_key_env": "AGENTRT_TEST_NO_KEY",
        **options,
    }  # fmt: skip
    return OpenAIHTTPSubstrate(url, "m", **opts)  # type: ignore[arg-type]


REQ = InferenceRequest.from_prompt("hi", max_output_tokens=3)


async def _timed(sub: OpenAIHTTPSubstrate) -> tuple[object, float]:
    tasks = len(anyio.get_running_tasks())
    t0 = time.perf_counter()
    try:
        return await sub.infer(REQ), time.perf_counter() - t0
    except Exception as exc:
        return exc, time.perf_counter() - t0
    finally:
        await sub.aclose()
        assert len(anyio.get_running_tasks()) == tasks  # nothing left running


async def test_streams_and_measures_timing(faults: FaultServer) -> None:
    result, _ = await _timed(_sub(faults.url("ok")))
    assert not isinstance(result, Exception)
    assert result.text == "".join(TOKENS)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (7, 3)
    t = result.timing
    assert t.ttft_s == pytest.approx(t.network_s + t.prefill_s)
    assert t.decode_s >= 0.035  # two 20 ms gaps after the first token
    assert t.tpot_s == pytest.approx(t.decode_s / 2)
    assert result.attributes["server.address"] == "127.0.0.1"
    assert result.attributes["server.port"] == faults.port
    assert result.attributes["agentrt.http.max_gap_s"] >= 0.015
    assert result.finish_reason == "stop"


async def test_stream_yields_chunks_as_they_arrive(faults: FaultServer) -> None:
    sub = _sub(faults.url("ok"))
    async with sub.stream(REQ) as chunks:
        got = [(c.index, c.text, c.t_s) async for c in chunks]
    await sub.aclose()
    assert [g[1] for g in got] == TOKENS
    assert got[-1][2] - got[0][2] >= 0.035
    assert chunks.result().usage.output_tokens == 3


async def test_500_is_retried_then_reported(faults: FaultServer) -> None:
    error, elapsed = await _timed(_sub(faults.url("e500")))
    assert isinstance(error, SubstrateUnavailable)
    assert "HTTP 500" in str(error)
    assert "boom" in str(error)
    assert faults.hits["e500"] == 3  # 1 + max_retries
    assert elapsed < 2.0


async def test_500_once_then_success(faults: FaultServer) -> None:
    result, _ = await _timed(_sub(faults.url("flaky")))
    assert not isinstance(result, Exception)
    assert result.attributes["agentrt.http.attempts"] == 2


async def test_429_honours_retry_after(faults: FaultServer) -> None:
    result, elapsed = await _timed(_sub(faults.url("e429")))
    assert not isinstance(result, Exception)
    assert faults.hits["e429"] == 2
    assert elapsed >= 0.3


async def test_429_beyond_the_total_timeout_fails_at_once(faults: FaultServer) -> None:
    error, elapsed = await _timed(_sub(faults.url("e429long")))
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == 30
    assert faults.hits["e429long"] == 1
    assert elapsed < 1.0


async def test_400_is_not_retried(faults: FaultServer) -> None:
    error, _ = await _timed(_sub(faults.url("e400")))
    assert isinstance(error, BadResponse)
    assert "max_tokens too big" in str(error)
    assert faults.hits["e400"] == 1


@pytest.mark.parametrize(
    ("mode", "error_type", "match"),
    [
        ("badjson", BadResponse, "invalid JSON"),
        ("cut", BadResponse, "cut mid-way"),
        ("truncated", BadResponse, "truncated"),
    ],
)
async def test_broken_streams_are_clear_errors(
    faults: FaultServer, mode: str, error_type: type[Exception], match: str
) -> None:
    error, elapsed = await _timed(_sub(faults.url(mode)))
    assert isinstance(error, error_type), error
    assert match in str(error)
    assert faults.hits[mode] == 1  # a body once started is never replayed
    assert elapsed < 1.0


async def test_stall_after_first_token_hits_the_total_timeout(faults: FaultServer) -> None:
    error, elapsed = await _timed(_sub(faults.url("stall"), total_timeout_s=0.5))
    assert isinstance(error, SubstrateTimeout)
    assert "the next token" in str(error)
    assert 0.45 <= elapsed < 0.8


async def test_stall_before_first_token_hits_the_first_token_timeout(faults: FaultServer) -> None:
    error, elapsed = await _timed(
        _sub(faults.url("stall0"), first_token_timeout_s=0.3, max_retries=0)
    )
    assert isinstance(error, SubstrateTimeout)
    assert "first_token_timeout_s" in str(error)
    assert 0.25 <= elapsed < 0.6


async def test_connection_refused_is_retried_then_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    error, elapsed = await _timed(_sub(f"http://127.0.0.1:{port}/v1"))
    assert isinstance(error, SubstrateUnavailable)
    assert "cannot reach" in str(error)
    assert elapsed < 1.0


async def test_traceparent_is_sent_and_api_key_read_from_env(
    faults: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_TEST_KEY", "sk-test")
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span("caller") as span:
        result, _ = await _timed(_sub(faults.url("ok"), api_key_env="AGENTRT_TEST_KEY"))
    assert not isinstance(result, Exception)
    sent = {k.lower(): v for k, v in faults.headers[-1].items()}
    assert sent["authorization"] == "Bearer sk-test"
    assert sent["traceparent"].split("-")[1] == f"{span.get_span_context().trace_id:032x}"


def test_registry_factory_converts_string_options() -> None:
    options = {"base_url": "https://api.cerebras.ai/v1", "model": "llama3.1-8b", "max_retries": "5"}
    built = _call(openai_http, "substrate", "openai_http", options)
    assert built.provider == "cerebras"
    assert built._policy.max_attempts == 6
    assert built._server == {"server.address": "api.cerebras.ai", "server.port": 443}


async def test_agent_plan_end_to_end_with_one_trace() -> None:
    from substrates.emulated import build_engine
    from substrates.http.server import create_app, serve_in_thread

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine = build_engine("h100", model="llama-3.1-8b", jitter=0, stall_prob=0)
    plan = Plan(
        name="http",
        steps=[
            Step(id="plan", max_output_tokens=8),
            Step(id="a", depends_on=["plan"], max_output_tokens=8),
            Step(id="b", depends_on=["plan"], max_output_tokens=8),
        ],
    )
    with serve_in_thread(create_app(engine, tracer_provider=provider)) as url:
        sub = OpenAIHTTPSubstrate(f"{url}/v1", "llama-3.1-8b", api_key_env="AGENTRT_TEST_NO_KEY")
        try:
            result = await Agent(sub, tracer_provider=provider).run(plan)
        finally:
            await sub.aclose()
    result.raise_for_status()
    assert [s.output_tokens for s in result.steps] == [8, 8, 8]
    assert all(s.substrate == "openai_http" and s.text for s in result.steps)
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    clients = {s.context.span_id: s for s in spans if s.kind is SpanKind.CLIENT}
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(clients) == len(servers) == 3
    for server in servers:
        assert server.parent is not None
        assert server.parent.span_id in clients  # each server span under its client chat span
        assert server.attributes is not None
        assert server.attributes["gen_ai.usage.output_tokens"] == 8


# -- credentials: sent where they belong, shown nowhere ---------------------------------------


async def test_base_url_query_goes_after_the_path_and_credentials_become_basic_auth(
    faults: FaultServer,
) -> None:
    url = faults.url("ok").replace("http://", "http://alice:pw-in-url-123@")
    sub = _sub(url + "?api-version=2024-06&api-key=qk-987654")
    result, _ = await _timed(sub)
    assert not isinstance(result, Exception)
    assert faults.paths[-1] == "/ok/v1/chat/completions?api-version=2024-06&api-key=qk-987654"
    sent = {k.lower(): v for k, v in faults.headers[-1].items()}
    assert sent["authorization"] == "Basic " + base64.b64encode(b"alice:pw-in-url-123").decode()
    assert str(sub.base_url) == f"http://127.0.0.1:{faults.port}/ok/v1/"
    shown = f"http://***@127.0.0.1:{faults.port}/ok/v1/?api-version=2024-06&api-key=***"
    assert sub.shown_url == shown
    assert repr(sub) == f"OpenAIHTTPSubstrate({shown!r}, 'm')"


async def test_the_api_key_option_is_sent_and_wins_over_the_environment(
    faults: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_TEST_KEY", "sk-from-env-1234")
    sub = _sub(faults.url("ok"), api_key="sk-option-5678", api_key_env="AGENTRT_TEST_KEY")
    result, _ = await _timed(sub)
    assert not isinstance(result, Exception)
    sent = {k.lower(): v for k, v in faults.headers[-1].items()}
    assert sent["authorization"] == "Bearer sk-option-5678"
    assert _call(openai_http, "substrate", "openai_http", {
        "base_url": "http://h/v1", "model": "m", "api_key": "sk-option-5678",
    }).name == "openai_http"  # fmt: skip


async def test_a_401_that_echoes_the_key_is_reported_without_it(
    faults: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_TEST_KEY", "sk-echoed-by-server-42")
    sub = _sub(faults.url("e401echo") + "?sig=sg-135791", api_key_env="AGENTRT_TEST_KEY")
    error, _ = await _timed(sub)
    assert isinstance(error, BadResponse)
    message = str(error)
    assert "HTTP 401" in message
    assert "bad key Bearer ***" in message
    assert "$AGENTRT_TEST_KEY" in message  # names the variable to check
    assert "sk-echoed-by-server-42" not in message
    assert "sg-135791" not in message


@pytest.mark.parametrize(
    "url", ["::not a url::", "localhost:8000/v1", "ftp://h/v1", "http:///v1", "http://[::1/v1"]
)
def test_a_bad_base_url_is_a_config_error_naming_the_fix(url: str) -> None:
    with pytest.raises(ConfigError, match="base_url .* use e.g. base_url=http://localhost:8000/v1"):
        OpenAIHTTPSubstrate(url, "m")


def test_a_bad_base_url_does_not_show_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        OpenAIHTTPSubstrate("ftp://bob:pw-not-shown-9@h/v1", "m")
    assert "pw-not-shown-9" not in str(info.value)
    assert "***" in str(info.value)


async def test_httpx_request_logs_show_no_query_secret(
    faults: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    # An application that shows INFO logs sees httpx's "HTTP Request: POST <url>" lines.
    sub = _sub(faults.url("ok") + "?api-key=qk-in-httpx-log-1")
    with caplog.at_level(logging.INFO, logger="httpx"):
        result, _ = await _timed(sub)
    assert not isinstance(result, Exception)
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("/ok/v1/chat/completions?api-key=***" in line for line in lines)
    assert not any("qk-in-httpx-log-1" in line for line in lines)
