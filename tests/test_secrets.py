"""No credential reaches any output: every CLI output and every library output, against a real
loopback server that echoes the request's Authorization header and URL in its 401 body."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentrt import Agent, InferenceRequest, Plan, Step
from agentrt.log import configure_logging, get_logger
from agentrt.testing import FunctionSubstrate
from substrates.http.client import OpenAIHTTPSubstrate

ROOT = Path(__file__).resolve().parent.parent
USER_KEY = "sk-userinfo-1111aaaa"  # the password of base_url (sent as HTTP Basic auth)
QUERY_KEY = "qs-secret-2222bbbb"  # ?api-key= in base_url
OPTION_KEY = "sk-option-3333cccc"  # -o api_key=
ENV_KEY = "sk-env-4444dddd"  # $OPENAI_API_KEY
BASIC = base64.b64encode(f"user:{USER_KEY}".encode()).decode()  # what the server sees
SECRETS = (USER_KEY, QUERY_KEY, OPTION_KEY, ENV_KEY, BASIC)


class EchoServer:
    """Answers every request 401, echoing its Authorization header and URL, as some servers do."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path.startswith("/ok/"):  # a 200 whose text quotes the credentials
                    text = f"you are {self.headers.get('Authorization')}"
                    choice = {"message": {"content": text}, "finish_reason": "stop"}
                    return self.reply(200, {"model": "m", "choices": [choice]})
                message = (
                    f"Incorrect API key provided: {self.headers.get('Authorization')}; "
                    f"request {self.path}"
                )
                self.reply(401, {"error": {"message": message}})

            def reply(self, status: int, data: object) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,))


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
    server.thread.join(5)


def _plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text("name: leak\nsteps:\n  - id: ask\n    prompt: hello\n")
    return path


def _agentrt(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": ENV_KEY, "COLUMNS": "300"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("AGENTRT_TRACE", None)
    return subprocess.run(
        [sys.executable, "-m", "agentrt", "run", str(_plan(tmp_path)), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=tmp_path,
    )


def _assert_hidden(*texts: str) -> None:
    joined = "\n".join(texts)
    for secret in SECRETS:
        assert secret not in joined, f"{secret!r} leaked:\n{joined}"
    assert "***" in joined


@pytest.mark.parametrize(
    "outputs",
    [
        ["--log-level", "debug", "--log-format", "console", "--trace", "jaeger-json:TRACE"],
        ["--log-level", "debug", "--log-format", "json", "--trace", "console"],
        ["--json", "--log-level", "debug", "--log-format", "json", "--trace", "jaeger-json:TRACE"],
        ["--json", "--trace", "console"],
    ],
    ids=["console-logs+jaeger", "json-logs+console-trace", "json+jaeger", "json+console-trace"],
)
def test_the_cli_shows_no_key_on_any_output(
    echo: EchoServer, tmp_path: Path, outputs: list[str]
) -> None:
    trace = tmp_path / "trace.json"
    url = f"http://user:{USER_KEY}@127.0.0.1:{echo.port}/v1?api-key={QUERY_KEY}"
    args = [a.replace("TRACE", str(trace)) for a in outputs]
    done = _agentrt(
        tmp_path,
        *["-s", "openai_http", "-o", f"base_url={url}", "-o", "model=m", "-o", "max_retries=1"],
        *["-o", "backoff_s=0.01", "-o", f"api_key={OPTION_KEY}", *args],
    )
    assert done.returncode == 1, done.stderr
    assert "HTTP 401" in done.stdout + done.stderr  # the server's message is still shown...
    assert "Incorrect API key provided" in done.stdout + done.stderr
    texts = [done.stdout, done.stderr]
    if trace.exists():
        texts.append(trace.read_text())
        assert "***" in texts[-1]
    _assert_hidden(*texts)  # ... with every credential in it replaced


def test_the_environment_key_is_hidden_when_echoed_as_a_bearer_token(
    echo: EchoServer, tmp_path: Path
) -> None:
    trace = tmp_path / "trace.json"
    done = _agentrt(
        tmp_path,
        *["-s", "openai_http", "-o", f"base_url=http://127.0.0.1:{echo.port}/v1"],
        *["-o", "model=m", "-o", "max_retries=0", "--log-level", "debug"],
        *["--trace", f"jaeger-json:{trace}"],
    )
    assert done.returncode == 1
    assert "Bearer ***" in done.stderr
    _assert_hidden(done.stdout, done.stderr, trace.read_text())


def test_json_output_hides_a_key_the_server_put_in_the_model_text(
    echo: EchoServer, tmp_path: Path
) -> None:
    done = _agentrt(
        tmp_path,
        *["-s", "openai_http", "-o", f"base_url=http://127.0.0.1:{echo.port}/ok/v1"],
        *["-o", "model=m", "--json"],
    )
    assert done.returncode == 0, done.stderr
    assert "you are Bearer ***" in done.stdout
    _assert_hidden(done.stdout, done.stderr)


def test_a_bad_base_url_is_one_line_without_the_key(tmp_path: Path) -> None:
    done = _agentrt(
        tmp_path, "-s", "openai_http", "-o", f"base_url=ftp://u:{USER_KEY}@h/v1", "-o", "model=m"
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "base_url" in done.stderr
    assert "http" in done.stderr
    _assert_hidden(done.stdout, done.stderr)


def test_the_library_shows_no_key_in_results_logs_or_spans(echo: EchoServer) -> None:
    url = f"http://user:{USER_KEY}@127.0.0.1:{echo.port}/v1?api-key={QUERY_KEY}"
    sub = OpenAIHTTPSubstrate(url, "m", api_key=OPTION_KEY, max_retries=0)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent = Agent(sub, tracer_provider=provider, trace_detail="phases")
    plan = Plan(name="leak", steps=[Step(id="ask", prompt="hello")])
    with structlog.testing.capture_logs() as logs:
        result = anyio.run(agent.run, plan)
    anyio.run(sub.aclose)
    assert result.status == "failed"
    assert result.error is not None
    assert "HTTP 401" in result.error
    spans = [span.to_json() for span in exporter.get_finished_spans()]
    assert any("HTTP 401" in s for s in spans)
    assert any(e.get("error") and "HTTP 401" in e["error"] for e in logs)
    _assert_hidden(json.dumps(result.to_dict()), repr(result), repr(sub), json.dumps(logs), *spans)


def test_errors_of_any_substrate_are_redacted_in_results_logs_and_spans() -> None:
    # Not only openai_http: the agent and the tracer redact whatever error text reaches them.
    async def fails(request: InferenceRequest) -> str:
        raise RuntimeError(f"cannot reach http://admin:{USER_KEY}@10.0.0.1/v1?token={QUERY_KEY}")

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent = Agent(FunctionSubstrate(fails), tracer_provider=provider)
    plan = Plan(name="leak", steps=[Step(id="ask", prompt="hello")])
    stream = io.StringIO()
    configure_logging(format="json", level="debug", stream=stream)
    try:
        result = anyio.run(agent.run, plan)
    finally:
        structlog.reset_defaults()
    spans = [span.to_json() for span in exporter.get_finished_spans()]
    assert "cannot reach http://***@10.0.0.1/v1?token=***" in (result.error or "")
    assert any('"exception.stacktrace"' in s for s in spans)
    _assert_hidden(json.dumps(result.to_dict()), stream.getvalue(), *spans)


def test_an_application_pipeline_gets_redacted_events_too() -> None:
    # The application configured structlog itself, without agentrt's processor.
    stream = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(stream),
    )
    try:
        try:
            raise ValueError(f"token={QUERY_KEY}&x=1 from http://u:{USER_KEY}@h")
        except ValueError:
            get_logger("agentrt.test").exception("failed", url=f"http://u:{USER_KEY}@h/v1")
    finally:
        structlog.reset_defaults()
    line = json.loads(stream.getvalue())
    assert line["url"] == "http://***@h/v1"
    assert "ValueError: token=***&x=1 from http://***@h" in line["exception"]
    _assert_hidden(stream.getvalue())
