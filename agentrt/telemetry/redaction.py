"""`RedactingSpanExporter`: spans leave the process with every credential replaced by ``***``.

`agentrt.telemetry.configure` puts it in front of every exporter it builds; an application that
sets up its own SDK can wrap its exporter the same way. Needs the OpenTelemetry SDK.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from agentrt.redact import redact

__all__ = ["RedactingSpanExporter", "redact_span"]


def _attributes(attributes: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
    """Redacted copies of string (and string-sequence) values; whether anything changed."""
    if not attributes:
        return None, False
    changed = False
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        hidden: Any = value
        if isinstance(value, str):
            hidden = redact(value)
        elif isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value):
            hidden = tuple(redact(v) if isinstance(v, str) else v for v in value)
            if hidden == tuple(value):
                hidden = value
        changed = changed or hidden != value
        out[key] = hidden
    return out, changed


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """``span`` itself if it shows no credential, else a copy with each one replaced by ``***``.

    Looks at the name, the attributes, the status description and every event's attributes (a
    recorded exception's message and traceback).

    Example:
        >>> from opentelemetry.sdk.trace import ReadableSpan
        >>> span = ReadableSpan("chat", attributes={"url.full": "http://u:pw1234@h/v1?key=k9"})
        >>> redact_span(span).attributes["url.full"]
        'http://***@h/v1?key=***'
    """
    name = redact(span.name)
    attributes, changed = _attributes(span.attributes)
    events = []
    for event in span.events:
        event_attributes, event_changed = _attributes(event.attributes)
        if event_changed:
            changed = True
            events.append(Event(event.name, event_attributes, event.timestamp))
        else:
            events.append(event)
    status = span.status
    if status.description:
        description = redact(status.description)
        if description != status.description:
            changed = True
            status = Status(status.status_code, description)
    if not changed and name == span.name:
        return span
    return ReadableSpan(
        name=name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingSpanExporter(SpanExporter):
    """Wraps a span exporter so that every span it exports goes through `redact_span` first.

    Example:
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
        >>> provider = TracerProvider()
        >>> exporter = RedactingSpanExporter(ConsoleSpanExporter())
        >>> provider.add_span_processor(SimpleSpanProcessor(exporter))

    Args:
        inner: the exporter that receives the redacted spans.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Redact, then hand the spans to the wrapped exporter."""
        return self.inner.export([redact_span(span) for span in spans])

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the wrapped exporter."""
        return bool(self.inner.force_flush(timeout_millis))

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self.inner.shutdown()
