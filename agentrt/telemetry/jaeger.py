"""Jaeger's JSON trace format: an exporter that writes it and a reader that loads it back.

The format is what Jaeger's query API returns and what the Jaeger UI's *Upload* tab opens:
``{"data": [{"traceID", "spans": [...], "processes": {...}}]}``, times in microseconds since the
epoch, parents as ``CHILD_OF`` references, attributes as typed ``tags``, events as ``logs``.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from agentrt.errors import ConfigError

__all__ = ["JaegerJsonExporter", "spans_to_jaeger"]

_KINDS = {
    SpanKind.INTERNAL: "internal",
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
}


def _tag(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, str):
        return {"key": key, "type": "string", "value": value}
    # Jaeger tags are flat: lists travel as JSON strings, as Jaeger's OTLP translator does.
    return {"key": key, "type": "string", "value": json.dumps(list(value))}


def _us(ns: int | None) -> int:
    return (ns or 0) // 1000


def _span(span: ReadableSpan, process_id: str) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    trace_id = format(ctx.trace_id, "032x")
    tags = [_tag(k, v) for k, v in (span.attributes or {}).items()]
    tags.append(_tag("span.kind", _KINDS.get(span.kind, "internal")))
    if span.status.status_code is StatusCode.ERROR:
        tags.append(_tag("otel.status_code", "ERROR"))
        tags.append(_tag("error", True))
        if span.status.description:
            tags.append(_tag("otel.status_description", span.status.description))
    elif span.status.status_code is StatusCode.OK:
        tags.append(_tag("otel.status_code", "OK"))
    scope = span.instrumentation_scope
    if scope is not None:
        tags.append(_tag("otel.scope.name", scope.name))
        if scope.version:
            tags.append(_tag("otel.scope.version", scope.version))
    references = []
    if span.parent is not None:
        references.append(
            {
                "refType": "CHILD_OF",
                "traceID": trace_id,
                "spanID": format(span.parent.span_id, "016x"),
            }
        )
    references.extend(
        {
            "refType": "FOLLOWS_FROM",
            "traceID": format(link.context.trace_id, "032x"),
            "spanID": format(link.context.span_id, "016x"),
        }
        for link in span.links
    )
    logs = [
        {
            "timestamp": _us(event.timestamp),
            "fields": [_tag("event", event.name)]
            + [_tag(k, v) for k, v in (event.attributes or {}).items()],
        }
        for event in span.events
    ]
    start = _us(span.start_time)
    return {
        "traceID": trace_id,
        "spanID": format(ctx.span_id, "016x"),
        "operationName": span.name,
        "references": references,
        "startTime": start,
        "duration": max(0, _us(span.end_time) - start),
        "tags": tags,
        "logs": logs,
        "processID": process_id,
        "warnings": None,
    }


def _process(resource: Resource) -> dict[str, Any]:
    attrs = dict(resource.attributes)
    service = str(attrs.pop("service.name", "agentrt"))
    return {"serviceName": service, "tags": [_tag(k, v) for k, v in attrs.items()]}


def spans_to_jaeger(spans: Iterable[ReadableSpan]) -> dict[str, Any]:
    """Group finished spans by trace into Jaeger's JSON document ``{"data": [trace, ...]}``."""
    traces: dict[str, dict[str, Any]] = {}
    processes: dict[str, dict[str, str]] = {}
    for span in spans:
        ctx = span.get_span_context()
        if ctx is None:
            continue
        trace_id = format(ctx.trace_id, "032x")
        doc = traces.setdefault(trace_id, {"traceID": trace_id, "spans": [], "processes": {}})
        known = processes.setdefault(trace_id, {})
        process = _process(span.resource)
        key = json.dumps(process, sort_keys=True)
        process_id = known.get(key)
        if process_id is None:
            process_id = known[key] = f"p{len(known) + 1}"
            doc["processes"][process_id] = process
        doc["spans"].append(_span(span, process_id))
    for doc in traces.values():
        doc["spans"].sort(key=lambda s: (s["startTime"], -s["duration"]))
        doc["warnings"] = None
    return {"data": list(traces.values())}


class JaegerJsonExporter(SpanExporter):
    """Collects spans and writes them as one Jaeger JSON file on flush and on shutdown.

    The file is replaced atomically, so a reader never sees half a document.

    Example:
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        >>> exporter = JaegerJsonExporter("/tmp/agentrt-doc.trace.json")
        >>> provider = TracerProvider()
        >>> provider.add_span_processor(SimpleSpanProcessor(exporter))

    Raises:
        ConfigError: the file's folder does not exist (it is never created).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # Never create folders: a typo (or a hostile path, when run as root) must not make one.
        if not self.path.parent.is_dir():
            raise ConfigError(
                f"cannot write the trace file {self.path}: the folder {self.path.parent} does "
                "not exist; create it first or pick another path"
            )
        self._spans: list[ReadableSpan] = []
        self._lock = threading.Lock()
        self._dirty = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Keep the spans until the next flush."""
        with self._lock:
            self._spans.extend(spans)
            self._dirty = True
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Write the file now."""
        with self._lock:
            if not self._dirty:
                return True
            document = spans_to_jaeger(self._spans)
            self._dirty = False
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        except OSError:
            return False  # the folder went away: the SDK reports a failed flush
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1)
        os.replace(tmp, self.path)
        return True

    def shutdown(self) -> None:
        """Write the file."""
        self.force_flush()

    @property
    def trace_ids(self) -> list[str]:
        """Trace ids of the spans collected so far."""
        with self._lock:
            ids = {format(s.context.trace_id, "032x") for s in self._spans if s.context}
        return sorted(ids)


def tags_of(span: Mapping[str, Any]) -> dict[str, Any]:
    """A Jaeger JSON span's tags as a plain dict."""
    return {t["key"]: t.get("value") for t in span.get("tags") or ()}
