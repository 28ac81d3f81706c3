"""Built-in agent tools for agentrt: a real search index, a real sandbox, and their twins."""

from __future__ import annotations

from tools.debug import DebugArgs, DebugOutcome, DebugTool, DebugTwin, SandboxLimits
from tools.search import SearchArgs, SearchHit, SearchTool, SearchTwin

__all__ = [
    "DebugArgs",
    "DebugOutcome",
    "DebugTool",
    "DebugTwin",
    "SandboxLimits",
    "SearchArgs",
    "SearchHit",
    "SearchTool",
    "SearchTwin",
]
