"""Structured logging: `get_logger()`, the processor adding trace ids, and `configure_logging()`.

The library only ever *gets* loggers; applications (the CLI, the examples, your program) choose how
logs render by calling `configure_logging()` once, or by configuring structlog themselves.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from opentelemetry import trace

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


def get_logger(name: str = "agentrt") -> Any:
    """A structlog logger for library code; rendering is left to the application.

    Example:
        >>> log = get_logger("agentrt.example")
        >>> log.info("step_finished", step_id="plan", latency_s=0.2)  # doctest: +SKIP
    """
    return structlog.get_logger(name)


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
    """Configure structlog for an application: run/step/trace ids on every event.

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
