"""Trajectories: the turns of an agent run (model replies, tool calls, tool results), to replay.

This module holds the `Recorder` protocol the agent loop calls; the trajectory file format, its
reader and the file recorder are built on it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from agentrt.substrate import InferenceRequest, InferenceResult, ToolCall
from agentrt.tool import ToolResult

__all__ = ["Recorder"]


@runtime_checkable
class Recorder(Protocol):
    """**Protocol:** receives every turn of a run as it finishes (``Agent(..., recorder=...)``).

    The agent calls ``model_turn`` after each model call, ``tool_result`` after each tool call
    (``duration_s`` on the run's clock), and ``finish`` once at the end of the run. A recorder
    must be cheap and must not raise.
    """

    def model_turn(self, request: InferenceRequest, result: InferenceResult) -> None:
        """A model call finished."""
        ...

    def tool_result(self, call: ToolCall, result: ToolResult, duration_s: float) -> None:
        """A tool call finished (``result.ok`` False for an error sent back to the model)."""
        ...

    def finish(self, run_id: str, status: str, e2e_s: float) -> None:
        """The run ended."""
        ...
