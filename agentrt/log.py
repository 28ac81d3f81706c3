"""Structured logging: `get_logger()`, the processor adding trace ids, and `configure_logging()`.

The library only ever *gets* loggers, and they are silent until the application configures
structlog: applications (the CLI, the examples, your program) choose how logs render by calling
`configure_logging()` once, or by configuring structlog themselves. Either way every event agentrt
logs goes through `agentrt.redact.redact_event`, so no credential reaches a log line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from opentelemetry import trace

from agentrt.redact import redact_event

__all__ = ["add_trace_ids", "configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL,
}


def _drop(logger: object, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    raise structlog.DropEvent


def _nop(*args: Any, **kwargs: Any) -> None:
    return None


class _SilentLogger:
    """What library code logs to while structlog is unconfigured: every method does nothing."""

    __slots__ = ()
    debug = info = warning = warn = error = critical = fatal = exception = msg = log = _nop

    def bind(self, **new_values: Any) -> _SilentLogger:
        return self

    new = unbind = try_unbind = bind

    def is_enabled_for(self, level: int) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return _nop


_SILENT = _SilentLogger()


class _LibraryLogger:
    """A lazy logger for library code: silent while structlog is unconfigured, redacting after.

    structlog's own default prints every event to standard output, which is right for an
    application and wrong for a library embedded in one. So this proxy decides at `bind` (agentrt
    binds one logger per run, so the hot path pays nothing per event): unconfigured, a logger whose
    methods do nothing; configured, the application's pipeline with `redact_event` before its
    renderer (unless it already has it).
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def bind(self, **new_values: Any) -> Any:
        if not structlog.is_configured():
            return _SILENT
        processors = list(structlog.get_config()["processors"])
        if redact_event not in processors:
            processors.insert(max(len(processors) - 1, 0), redact_event)
        logger = structlog.wrap_logger(
            None, processors=processors, logger_factory_args=(self._name,)
        )
        return logger.bind(**new_values)

    def new(self, **new_values: Any) -> Any:
        return self.bind(**new_values)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bind(), name)

    def __repr__(self) -> str:
        return f"<agentrt logger {self._name!r}>"


def get_logger(name: str = "agentrt") -> Any:
    """A structlog logger for library code; rendering is left to the application.

    It stays silent until the application configures structlog (`configure_logging` or
    ``structlog.configure``), then logs through that configuration with every value redacted.

    Example:
        >>> log = get_logger("agentrt.example")
        >>> log.info("step_finished", step_id="plan", latency_s=0.2)  # doctest: +SKIP
    """
    return _LibraryLogger(name)


def add_trace_ids(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add ``trace_id`` and ``span_id`` of the current OpenTelemetry span."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def configure_logging(
    *,
    format: Literal["console", "json"] = "console",
    level: Literal["debug", "info", "warning", "error", "off"] = "info",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for an application: run/step/trace ids on every event, secrets redacted.

    Every value of every event goes through `agentrt.redact.redact_event` just before rendering,
    exceptions and tracebacks included.

    Args:
        format: ``console`` for people, ``json`` (one object per line) for machines.
        level: the lowest level shown; ``off`` silences everything.
        stream: where lines go; default standard error, so standard output stays for results.
    """
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    if level == "off":
        # The filtering logger stops everything below CRITICAL for free; this drops the rest.
        structlog.configure(
            processors=[_drop],
            wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
            logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        )
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            # After the context variables (an application may bind anything), before the
            # level, ids and timestamp, which are agentrt's own and need no redaction.
            redact_event,
            structlog.processors.add_log_level,
            add_trace_ids,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        # No caching: a cached module-level logger would ignore any later configure() call.
        # agentrt binds one logger per run instead, which costs the same per event.
        cache_logger_on_first_use=False,
    )
