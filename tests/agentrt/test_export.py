"""Trace export for real: OTLP over HTTP and gRPC to receivers on loopback, Jaeger JSON files."""

from __future__ import annotations

import gzip
import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from agentrt import Agent, Plan, RetryPolicy, Step, SubstrateUnavailable
from agentrt.report import load_trace_file
from agentrt.telemetry import configure
from agentrt.testing import FunctionTool, ScriptedSubstrate

ROOT = Path(__file__).resolve().parents[2]


class Received:
    def __init__(self) -> None:
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.lock = threading.Lock()

    def spans(self) -> list[Any]:
        return [
            s
            for r in self.traces
            for rs in r.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        ]

    def resources(self) -> list[dict[str, Any]]:
        return [
            {a.key: a.value.string_value for a in rs.resource.attributes}
            for r in self.traces
            for rs in r.resource_spans
        ]

    def metric_names(self) -> set[str]:
        return {
            m.name
            for r in self.metrics
            for rm in r.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        }


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            assert self.headers["Content-Type"] == "application/x-protobuf"
            if self.path == "/v1/traces":
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                with received.lock:
                    received.traces.append(req)
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            elif self.path == "/v1/metrics":
                mreq = metrics_service_pb2.ExportMetricsServiceRequest()
                mreq.ParseFromString(body)
                with received.lock:
                    received.metrics.append(mreq)
                out = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    received = Received()

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            with received.lock:
                received.traces.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            with received.lock:
                received.metrics.append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(grace=None).wait(5)


def run_traced_plan(vrun: Callable[..., Any], telemetry: Any) -> Any:
    sub = ScriptedSubstrate(
        {"flaky": [SubstrateUnavailable("warming up"), "ok"]}, default="some words", latency_s=0.5
    )
    plan = Plan(
        name="export",
        steps=[
            Step(id="plan"),
            Step(
                id="flaky",
                depends_on=["plan"],
                retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.25, jitter_s=0),
            ),
            Step(id="look", kind="search", tool="search", depends_on=["plan"]),
            Step(id="answer", kind="answer", depends_on=["flaky", "look"]),
        ],
    )
    agent = Agent(
        sub,
        tools=[FunctionTool("search", lambda a: "hits")],
        name="exporter",
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    )
    result = vrun(agent.run, plan)
    telemetry.shutdown()
    return result


def check_otlp_trace(received: Received, result: Any) -> None:
    spans = received.spans()
    assert {s.trace_id.hex() for s in spans} == {result.trace_id}
    by_id = {s.span_id: s for s in spans}
    (root,) = [s for s in spans if s.name == "invoke_agent exporter"]
    assert root.parent_span_id == b""
    attrs = {s.span_id: {a.key: a.value for a in s.attributes} for s in spans}
    steps = {
        attrs[s.span_id]["agentrt.step.id"].string_value: s
        for s in spans
        if s.name.startswith("step ")
    }
    assert set(steps) == {"plan", "flaky", "look", "answer"}
    for step_id, span in steps.items():
        assert span.parent_span_id == root.span_id
        r = result.step(step_id)
        assert (span.start_time_unix_nano - root.start_time_unix_nano) / 1e9 == pytest.approx(
            r.start_s, abs=1e-6
        )
        assert (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9 == pytest.approx(
            r.latency_s, abs=1e-6
        )
    chats = [s for s in spans if s.name == "chat scripted"]
    assert len(chats) == 5  # four steps, one of them twice
    for chat in chats:
        a = attrs[chat.span_id]
        assert a["gen_ai.operation.name"].string_value == "chat"
        assert a["gen_ai.provider.name"].string_value == "agentrt.scripted"
        assert a["gen_ai.request.model"].string_value == "scripted"
        parent = by_id[chat.parent_span_id]
        assert parent.name.startswith("step ")
        assert parent.start_time_unix_nano <= chat.start_time_unix_nano
        assert chat.end_time_unix_nano <= parent.end_time_unix_nano
    ok = [c for c in chats if attrs[c.span_id].get("gen_ai.usage.output_tokens")]
    assert len(ok) == 4
    assert all(attrs[c.span_id]["gen_ai.usage.input_tokens"].int_value > 0 for c in ok)
    (tool,) = [s for s in spans if s.name == "execute_tool search"]
    assert attrs[tool.span_id]["gen_ai.tool.name"].string_value == "search"
    assert {"service.name": "agentrt"}.items() <= received.resources()[0].items()


def test_otlp_http_export_to_a_real_receiver(
    http_receiver: tuple[str, Received],
    monkeypatch: pytest.MonkeyPatch,
    vrun: Callable[..., Any],
) -> None:
    endpoint, received = http_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    telemetry = configure("otlp", set_global=False)
    result = run_traced_plan(vrun, telemetry)
    check_otlp_trace(received, result)
    assert telemetry.export_failures == 0
    assert "gen_ai.client.operation.duration" in received.metric_names()
    assert telemetry.where(result.trace_id) == f"http://localhost:16686/trace/{result.trace_id}"


def test_otlp_grpc_export_to_a_real_receiver(
    grpc_receiver: tuple[str, Received],
    monkeypatch: pytest.MonkeyPatch,
    vrun: Callable[..., Any],
) -> None:
    endpoint, received = grpc_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    telemetry = configure("otlp-grpc", set_global=False)
    result = run_traced_plan(vrun, telemetry)
    check_otlp_trace(received, result)
    assert "gen_ai.server.time_to_first_token" in received.metric_names()


def test_service_name_comes_from_the_environment(
    http_receiver: tuple[str, Received],
    monkeypatch: pytest.MonkeyPatch,
    vrun: Callable[..., Any],
) -> None:
    endpoint, received = http_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-agents")
    run_traced_plan(vrun, configure("otlp", set_global=False, metrics=False))
    assert received.resources()[0]["service.name"] == "my-agents"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_collector_that_is_down_costs_one_warning_and_no_failure(tmp_path: Path) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentrt",
            "run",
            str(ROOT / "examples/plans/research.yaml"),
            "-s",
            "fixed",
            "--latency-ms",
            "10",
            "--trace",
            "otlp",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "succeeded"
    warnings = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1, proc.stderr
    assert "trace_export_failed" in warnings[0]
    assert "Traceback" not in proc.stderr


def jaeger_ui_accepts(document: Any) -> None:
    """The checks the Jaeger UI's file loader and trace transform rely on."""
    assert isinstance(document, dict)
    assert isinstance(document["data"], list)
    assert document["data"]
    for trace in document["data"]:
        assert len(trace["traceID"]) == 32
        assert int(trace["traceID"], 16) >= 0
        ids = {s["spanID"] for s in trace["spans"]}
        for span in trace["spans"]:
            assert span["traceID"] == trace["traceID"]
            assert len(span["spanID"]) == 16
            assert isinstance(span["operationName"], str)
            assert span["operationName"]
            assert isinstance(span["startTime"], int)
            assert isinstance(span["duration"], int)
            assert span["duration"] >= 0
            assert span["startTime"] > 1_600_000_000_000_000  # microseconds since the epoch
            assert span["processID"] in trace["processes"]
            for ref in span["references"]:
                assert ref["refType"] in ("CHILD_OF", "FOLLOWS_FROM")
                assert ref["spanID"] in ids
            for tag in span["tags"]:
                assert tag["type"] in ("string", "bool", "int64", "float64", "binary")
                assert set(tag) == {"key", "type", "value"}
            for log in span["logs"]:
                assert isinstance(log["timestamp"], int)
        for process in trace["processes"].values():
            assert process["serviceName"]


def test_jaeger_json_file_opens_and_round_trips_through_report(tmp_path: Path) -> None:
    path = tmp_path / "run.trace.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentrt",
            "run",
            str(ROOT / "examples/plans/research.yaml"),
            "-s",
            "fixed",
            "--latency-ms",
            "200",
            "--virtual",
            "--json",
            "--trace",
            f"jaeger-json:{path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert run["trace"] == str(path)
    document = json.loads(path.read_text())
    jaeger_ui_accepts(document)
    assert document["data"][0]["traceID"] == run["trace_id"]
    report = subprocess.run(
        [sys.executable, "-m", "agentrt", "report", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    from_file = json.loads(report.stdout)
    assert from_file["critical_path"] == run["report"]["critical_path"]
    assert from_file["e2e_s"] == pytest.approx(run["e2e_s"], abs=1e-5)
    for name, value in run["report"]["categories"].items():
        assert from_file["categories"][name] == pytest.approx(value, abs=1e-4)
    assert set(from_file) >= {"e2e_s", "critical_path", "categories", "steps"}
    assert set(from_file["categories"]) >= {
        "queue_s",
        "network_s",
        "prefill_s",
        "decode_s",
        "comm_s",
        "tool_s",
        "overhead_s",
    }


def test_report_draws_pictures_and_refuses_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "agentrt",
            "run",
            str(ROOT / "examples/plans/research.yaml"),
            "-s",
            "fixed",
            "--latency-ms",
            "50",
            "--virtual",
            "--trace",
            f"jaeger-json:{path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for suffix in (".svg", ".png"):
        picture = tmp_path / f"w{suffix}"
        proc = subprocess.run(
            [sys.executable, "-m", "agentrt", "report", str(path), "--plot", str(picture)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "critical path: outline → angle-latency → synthesis" in proc.stdout
        assert picture.stat().st_size > 1000
    assert (tmp_path / "w.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "w.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name, text, message in (
        ("bad.json", "{not json", "not a JSON trace file"),
        ("empty.json", '{"data": []}', "no agentrt run in this trace"),
    ):
        bad = tmp_path / name
        bad.write_text(text)
        proc = subprocess.run(
            [sys.executable, "-m", "agentrt", "report", str(bad)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 2
        assert message in proc.stderr


def test_otlp_json_is_read_too(tmp_path: Path, vrun: Callable[..., Any]) -> None:
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    class T:
        tracer_provider = provider
        meter_provider = None

        @staticmethod
        def shutdown() -> None:
            pass

    result = run_traced_plan(vrun, T)
    document = MessageToDict(encode_spans(exporter.get_finished_spans()))
    # OTLP JSON files carry hex ids, not protobuf-JSON's base64.
    import base64

    for rs in document["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64decode(span[key]).hex()
    path = tmp_path / "otlp.json"
    path.write_text(json.dumps(document))
    (report,) = load_trace_file(path)
    assert report.run_id == result.run_id
    assert report.e2e_s == pytest.approx(result.e2e_s, abs=1e-6)
    assert report.critical_path == ("plan", "flaky", "answer")


def test_spans_leave_redacted_through_every_exporter(
    http_receiver: tuple[str, Received], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Spans from any instrumentation on configure()'s provider, not only agentrt's own.
    from opentelemetry.trace import Status, StatusCode

    endpoint, received = http_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=ck-5555eeee")
    secrets = ("pw-77778888", "s-123456", "ck-5555eeee", "sk-abcdefgh12", "tk-99990000")
    trace_file = tmp_path / "t.json"
    for target in ("otlp", f"jaeger-json:{trace_file}"):
        telemetry = configure(target, set_global=False, metrics=False, batch=False)
        tracer = telemetry.tracer_provider.get_tracer("app")
        with tracer.start_as_current_span("GET http://u:pw-77778888@api/v1") as span:
            span.set_attribute("url.full", "http://u:pw-77778888@api/v1?sig=s-123456&x=1")
            span.set_attribute("note", "the collector key is ck-5555eeee")
            span.add_event("retry", {"reason": "401: Authorization: Bearer sk-abcdefgh12"})
            span.set_status(Status(StatusCode.ERROR, "rejected ?token=tk-99990000"))
        telemetry.shutdown()
    shown = [str(s) for s in received.spans()] + [trace_file.read_text()]
    assert len(shown) == 2
    for text in shown:
        assert "http://***@api/v1?sig=***&x=1" in text
        assert "Bearer ***" in text
        assert "?token=***" in text
        for secret in secrets:
            assert secret not in text


def test_the_jaeger_exporter_never_creates_folders(tmp_path: Path) -> None:
    from agentrt.errors import ConfigError
    from agentrt.telemetry.jaeger import JaegerJsonExporter

    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(ConfigError, match="does not exist"):
        JaegerJsonExporter(missing / "trace.json")
    assert not (tmp_path / "no").exists()
    exporter = JaegerJsonExporter(tmp_path / "trace.json")
    exporter.shutdown()  # nothing exported: nothing written, no error
    assert not (tmp_path / "trace.json").exists()
