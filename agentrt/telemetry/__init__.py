"""OpenTelemetry for agentrt: span and metric helpers (API only) and `configure()` for apps."""

from __future__ import annotations

from agentrt.telemetry.configure import Telemetry, TraceTarget, configure, parse_trace_target
from agentrt.telemetry.tracing import Detail, Instruments, RunTracer

__all__ = [
    "Detail",
    "Instruments",
    "RunTracer",
    "Telemetry",
    "TraceTarget",
    "configure",
    "parse_trace_target",
]
