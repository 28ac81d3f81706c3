"""The ``debug`` tool (code, scripts and pytest in a sandboxed subprocess) and its emulated twin."""

from __future__ import annotations

from tools.debug.args import DebugArgs, SandboxLimits
from tools.debug.report import DebugReport, ExceptionInfo, FailedTest, LimitName, TestSummary
from tools.debug.tool import DebugTool, make_debug
from tools.debug.twin import (
    DEBUG_LATENCY,
    DebugLatency,
    DebugOutcome,
    DebugTwin,
    make_debug_twin,
    measure_debug_latency,
)

__all__ = [
    "DEBUG_LATENCY",
    "DebugArgs",
    "DebugLatency",
    "DebugOutcome",
    "DebugReport",
    "DebugTool",
    "DebugTwin",
    "ExceptionInfo",
    "FailedTest",
    "LimitName",
    "SandboxLimits",
    "TestSummary",
    "make_debug",
    "make_debug_twin",
    "measure_debug_latency",
]
