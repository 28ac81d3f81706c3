"""`configure()`: set up the OpenTelemetry SDK for an application (the CLI, the examples, yours).

The library itself only uses the OpenTelemetry API; nothing here runs unless an application asks.
Needs the SDK: ``pip install 'agentrt[otel]'``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentrt.errors import ConfigError
from agentrt.log import get_logger
from agentrt.redact import redact, register_secret

__all__ = ["Telemetry", "TraceTarget", "configure", "parse_trace_target"]

TraceKind = Literal["otlp", "otlp-grpc", "jaeger-json", "console", "none"]
_FORMS = "otlp, otlp-grpc, jaeger-json:PATH, console or none"
_DEFAULT_TIMEOUT_S = 3.0
_log = get_logger("agentrt.telemetry")


@dataclass(frozen=True, slots=True)
class TraceTarget:
    """Where traces go: ``kind`` plus a file path for ``jaeger-json``."""

    kind: TraceKind
    path: Path | None = None


def parse_trace_target(spec: str) -> TraceTarget:
    """Parse ``otlp | otlp-grpc | jaeger-json:PATH | console | none``.

    Example:
        >>> parse_trace_target("jaeger-json:run.json").path
        PosixPath('run.json')

    Raises:
        ConfigError: anything else, with the accepted forms; a ``jaeger-json`` path whose folder
            does not exist (agentrt does not create folders) or that is a directory.
    """
    kind, _, rest = spec.partition(":")
    if kind == "jaeger-json":
        if not rest:
            raise ConfigError(f"--trace jaeger-json needs a file: jaeger-json:PATH (got {spec!r})")
        return TraceTarget("jaeger-json", _trace_file(Path(rest)))
    if kind in ("otlp", "otlp-grpc", "console", "none") and not rest:
        return TraceTarget(kind)  # type: ignore[arg-type]
    raise ConfigError(f"unknown trace target {spec!r}; use {_FORMS}")


def _trace_file(path: Path) -> Path:
    """Check a trace file's path up front: its folder must exist (it is never created)."""
    parent = path.parent
    if path.is_dir():
        raise ConfigError(f"--trace jaeger-json:{path}: {path} is a directory; name a file in it")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise ConfigError(
            f"--trace jaeger-json:{path}: the folder {parent} {what}; "
            "create it first or pick another path"
        )
    try:  # the file is written at exit: find out now whether it can be
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".agentrt-trace-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"--trace jaeger-json:{path}: cannot write in {parent} ({exc.strerror or exc}); "
            "pick another path"
        ) from None
    return path


class _GuardedExporter:
    """Wraps a span exporter so a collector that is down or slow never fails or floods the run.

    The first failure logs one warning naming the destination; later ones are only counted.
    """

    def __init__(self, inner: Any, destination: str) -> None:
        self._inner = inner
        self.destination = destination
        self.failures = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self._inner.export(spans)
        except Exception as exc:
            self._failed(redact(f"{type(exc).__name__}: {exc}"))
            return SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._failed("the exporter reported a failure")
        return result

    def _failed(self, reason: str) -> None:
        with self._lock:
            self.failures += 1
            first = self.failures == 1
        if first:
            _log.warning(
                "trace_export_failed",
                destination=self.destination,
                reason=reason,
                hint="is the collector (e.g. Jaeger) running? the run goes on without it",
            )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self._inner.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self._inner.shutdown()


@dataclass
class Telemetry:
    """What `configure()` set up; call `shutdown()` before exit so the last spans are sent.

    Attributes:
        tracer_provider: the SDK tracer provider (pass it to ``Agent(tracer_provider=...)`` or
            rely on the global one when ``set_global=True``).
        meter_provider: the SDK meter provider, if metrics are exported.
        target: where traces go.
        destination: a person-readable description of it.
    """

    tracer_provider: Any
    meter_provider: Any
    target: TraceTarget
    destination: str
    _guard: _GuardedExporter | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def export_failures(self) -> int:
        """How many span batches could not be exported."""
        return self._guard.failures if self._guard is not None else 0

    def where(self, trace_id: str | None) -> str | None:
        """Where to look at a trace: the Jaeger UI URL for OTLP, the file for Jaeger JSON."""
        if trace_id is None or self.target.kind in ("none", "console"):
            return None
        if self.target.kind == "jaeger-json":
            return str(self.target.path)
        ui = os.environ.get("AGENTRT_JAEGER_UI", "http://localhost:16686").rstrip("/")
        return redact(f"{ui}/trace/{trace_id}")

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Flush and close the exporters (bounded by the exporters' own timeouts)."""
        if self._closed:
            return
        self._closed = True
        if not hasattr(self.tracer_provider, "force_flush"):  # the no-op provider: nothing to send
            return
        self.tracer_provider.force_flush(int(timeout_s * 1000))
        self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=timeout_s * 1000)


def _register_header_secrets() -> None:
    """The values of ``OTEL_EXPORTER_OTLP_*HEADERS`` (collector API keys) are secrets too."""
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
        for pair in os.environ.get(name, "").split(","):
            _, _, value = pair.partition("=")
            register_secret(value.strip())


def _timeout_s() -> float:
    raw = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TIMEOUT"
    )
    return float(raw) if raw else _DEFAULT_TIMEOUT_S


def configure(
    trace: str | TraceTarget = "otlp",
    *,
    service_name: str | None = None,
    metrics: bool = True,
    set_global: bool = True,
    batch: bool = True,
) -> Telemetry:
    """Set up OpenTelemetry tracing (and metrics) for an application.

    OTLP honours the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``,
    ``OTEL_EXPORTER_OTLP_TIMEOUT``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, …); the
    export timeout defaults to 3 s here so a missing collector delays exit by at most that.
    A collector that is down logs one warning (``trace_export_failed``) and never fails the run.
    Every span goes through `agentrt.telemetry.redaction.RedactingSpanExporter` before any
    exporter sees it, and the ``OTEL_EXPORTER_OTLP_*HEADERS`` values are registered as secrets.

    Example:
        >>> telemetry = configure("jaeger-json:/tmp/agentrt-doc.json", set_global=False)
        >>> telemetry.destination
        'Jaeger JSON file /tmp/agentrt-doc.json'
        >>> telemetry.shutdown()

    Args:
        trace: ``otlp`` (HTTP, default), ``otlp-grpc``, ``jaeger-json:PATH``, ``console`` or
            ``none``, as a string or a `TraceTarget`.
        service_name: ``service.name``; default ``OTEL_SERVICE_NAME`` or ``agentrt``.
        metrics: also export the GenAI metrics (OTLP targets and console only).
        set_global: install the providers as OpenTelemetry's global ones (once per process).
        batch: export through a batch processor (True) or span by span (tests).

    Raises:
        ConfigError: an unknown target, or the SDK / an exporter package is not installed.
    """
    target = trace if isinstance(trace, TraceTarget) else parse_trace_target(trace)
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:  # pragma: no cover - the dev extra installs the SDK
        if target.kind == "none":  # tracing off needs no SDK: the API's no-op provider
            from opentelemetry.trace import NoOpTracerProvider

            return Telemetry(NoOpTracerProvider(), None, target, "nowhere (tracing off)")
        raise ConfigError(
            "tracing needs the OpenTelemetry SDK: pip install 'agentrt[otel]'"
        ) from exc
    from agentrt import __version__

    attributes: dict[str, str] = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name or "agentrt"
    resource = Resource.create(attributes)
    provider = TracerProvider(resource=resource)
    _register_header_secrets()
    exporter, destination, metric_exporter = _exporters(target)
    destination = redact(destination)
    guard = None
    if exporter is not None:
        from agentrt.telemetry.redaction import RedactingSpanExporter

        # Every span is redacted before any exporter (file, console, collector) sees it.
        guard = _GuardedExporter(RedactingSpanExporter(exporter), destination)
        processor = BatchSpanProcessor(guard) if batch else SimpleSpanProcessor(guard)  # type: ignore[arg-type]
        provider.add_span_processor(processor)
    meter_provider = None
    if metrics and metric_exporter is not None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        reader = PeriodicExportingMetricReader(metric_exporter)
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    if set_global:
        from opentelemetry import metrics as otel_metrics
        from opentelemetry import trace as otel_trace

        otel_trace.set_tracer_provider(provider)
        if meter_provider is not None:
            otel_metrics.set_meter_provider(meter_provider)
    return Telemetry(provider, meter_provider, target, destination, guard)


def _exporters(target: TraceTarget) -> tuple[Any, str, Any]:
    kind = target.kind
    if kind == "none":
        return None, "nowhere (tracing off)", None
    if kind == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return (
            ConsoleSpanExporter(out=sys.stderr),
            "the console (stderr)",
            ConsoleMetricExporter(out=sys.stderr),
        )
    if kind == "jaeger-json":
        from agentrt.telemetry.jaeger import JaegerJsonExporter

        assert target.path is not None
        return JaegerJsonExporter(target.path), f"Jaeger JSON file {target.path}", None
    # The OTLP exporters log a warning per retry and an error per failed batch through the
    # standard library; the guard reports a down collector once instead.
    logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
    timeout = _timeout_s()
    if kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ConfigError(
                "OTLP over HTTP needs opentelemetry-exporter-otlp-proto-http: "
                "pip install 'agentrt[otel]'"
            ) from exc
        span_exporter = OTLPSpanExporter(timeout=timeout)
        endpoint = getattr(span_exporter, "_endpoint", "the OTLP endpoint")
        return span_exporter, f"OTLP/HTTP {endpoint}", OTLPMetricExporter(timeout=timeout)
    try:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )
    except ImportError as exc:
        raise ConfigError(
            "OTLP over gRPC needs opentelemetry-exporter-otlp-proto-grpc: "
            "pip install 'agentrt[otel-grpc]'"
        ) from exc
    grpc_exporter = GrpcSpanExporter(timeout=timeout)
    endpoint = getattr(grpc_exporter, "_endpoint", "the OTLP endpoint")
    return grpc_exporter, f"OTLP/gRPC {endpoint}", GrpcMetricExporter(timeout=timeout)
