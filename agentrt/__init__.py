"""agentrt: an agentic workflow runtime with pluggable inference substrates.

Write an agent once (a `Plan` of think/search/debug steps, or a `Policy` that picks the next step),
run it with an `Agent` on any `Substrate` in real or virtual time, and see where the time went.

The kernel (this package) imports neither ``substrates`` nor ``tools``: it finds them by name
through entry points (`agentrt.registry`), exactly as it finds third-party plugins.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from agentrt.agent import Agent, AgentRun
from agentrt.clock import Clock, RealClock, VirtualClock, VirtualTimeStalled, current_clock, run
from agentrt.errors import (
    AgentrtError,
    BadResponse,
    ConfigError,
    DoesNotFitError,
    PlanError,
    RateLimited,
    RetryableError,
    RetryableToolError,
    RunFailed,
    StepFailed,
    StepTimeout,
    SubstrateError,
    SubstrateTimeout,
    SubstrateUnavailable,
    ToolError,
    ToolLoopFailed,
    UnknownNameError,
)
from agentrt.functions import TypedTool, function_tool
from agentrt.journal import Journal, JournalError, JournalMismatch, RunInfo, idempotency_key
from agentrt.plan import Plan, RetryPolicy, Step, StepDefaults, StepKind, load_plan
from agentrt.policy import Policy, RunState
from agentrt.result import RunResult, RunStatus, StepResult, StepStatus
from agentrt.substrate import (
    InferenceRequest,
    InferenceResult,
    Message,
    StreamingSubstrate,
    Substrate,
    Timing,
    TokenChunk,
    TokenStream,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)
from agentrt.tool import Tool, ToolResult

try:
    __version__ = version("agentrt")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "Agent",
    "AgentRun",
    "AgentrtError",
    "BadResponse",
    "Clock",
    "ConfigError",
    "DoesNotFitError",
    "InferenceRequest",
    "InferenceResult",
    "Journal",
    "JournalError",
    "JournalMismatch",
    "Message",
    "Plan",
    "PlanError",
    "Policy",
    "RateLimited",
    "RealClock",
    "RetryPolicy",
    "RetryableError",
    "RetryableToolError",
    "RunFailed",
    "RunInfo",
    "RunResult",
    "RunState",
    "RunStatus",
    "Step",
    "StepDefaults",
    "StepFailed",
    "StepKind",
    "StepResult",
    "StepStatus",
    "StepTimeout",
    "StreamingSubstrate",
    "Substrate",
    "SubstrateError",
    "SubstrateTimeout",
    "SubstrateUnavailable",
    "Timing",
    "TokenChunk",
    "TokenStream",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolError",
    "ToolLoopFailed",
    "ToolResult",
    "ToolSpec",
    "TypedTool",
    "UnknownNameError",
    "Usage",
    "VirtualClock",
    "VirtualTimeStalled",
    "__version__",
    "current_clock",
    "function_tool",
    "idempotency_key",
    "load_plan",
    "run",
]
