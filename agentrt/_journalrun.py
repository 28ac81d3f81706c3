"""One run's view of a `agentrt.journal.Journal`: what to restore, where finished steps go."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.trace import Link, SpanContext, TraceFlags
from pydantic import JsonValue

from agentrt.errors import ConfigError
from agentrt.journal import Journal, JournalMismatch, JournalState, _alive, digest
from agentrt.plan import Plan
from agentrt.result import RunResult, RunStatus, StepResult
from agentrt.substrate import InferenceResult, Message, ToolCall, ToolSpec
from agentrt.tool import ToolResult

__all__ = ["RestoredCall", "RunJournal", "conversation_hash", "launch_of", "target_of"]

_STATES: dict[RunStatus, JournalState] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "interrupted",
}


def conversation_hash(messages: Sequence[Message], specs: Sequence[ToolSpec]) -> str:
    """The hash of a task: its messages and the specs of the tools offered."""
    return digest(
        {
            "messages": [m.model_dump(mode="json", exclude_defaults=True) for m in messages],
            "tools": [s.model_dump(mode="json") for s in specs],
        }
    )


def launch_of(target: Plan | Sequence[Message]) -> dict[str, JsonValue]:
    """What rebuilds ``target``: the plan as JSON, or the conversation's messages."""
    if isinstance(target, Plan):
        return {"plan": target.model_dump(mode="json")}
    return {"messages": [m.model_dump(mode="json", exclude_defaults=True) for m in target]}


def target_of(launch: Mapping[str, Any]) -> Plan | list[Message]:
    """The plan or conversation ``launch`` (from `launch_of`) describes."""
    if "plan" in launch:
        return Plan.model_validate(launch["plan"])
    return [Message.model_validate(m) for m in launch["messages"]]


class RestoredCall:
    """A finished model or tool call of a tool loop, as the journal holds it."""

    __slots__ = ("call", "inference", "message", "result", "tool_result")

    def __init__(self, result: StepResult, payload: Mapping[str, Any]) -> None:
        self.result = result
        self.message = Message.model_validate(payload["message"])
        inference = payload.get("inference")
        self.inference = None if inference is None else InferenceResult.model_validate(inference)
        call = payload.get("call")
        self.call = None if call is None else ToolCall.model_validate(call)
        tool_result = payload.get("tool_result")
        self.tool_result = None if tool_result is None else ToolResult.model_validate(tool_result)


class RunJournal:
    """Where one run's finished steps are committed, and what an earlier execution left.

    Raises:
        JournalMismatch: the run exists with another hash.
        ConfigError: the run exists but is of another kind (a plan resumed as a conversation).
    """

    def __init__(
        self,
        journal: Journal,
        run_id: str,
        *,
        kind: str,
        name: str,
        digest: str,
        launch: Mapping[str, JsonValue],
        steps_total: int | None,
    ) -> None:
        self.journal = journal
        self.run_id = run_id
        self._kind = kind
        self._name = name
        self._digest = digest
        self._launch = launch
        self._steps_total = steps_total
        self.stored: RunResult | None = None
        self.link: Link | None = None
        self.steps: list[tuple[StepResult, dict[str, Any]]] = []
        row = journal._row(run_id)
        if row is None:
            return
        state, journaled, result, trace_id, span_id, stored_kind, pid, host = row
        if state == "running" and pid != os.getpid() and _alive(pid, host):
            raise ConfigError(
                f"run {run_id!r} is running in process {pid} on {host}; wait for it to end (or "
                "stop it) before resuming, or start a new run id"
            )
        if stored_kind != kind:
            raise ConfigError(
                f"run {run_id!r} in {journal.path} is a {stored_kind} run, not a {kind}; resume "
                "it with `agent.resume(run_id)` or start a new run id"
            )
        if journaled != digest:
            raise JournalMismatch(run_id, journaled, digest)
        if state == "succeeded" and result is not None:
            self.stored = RunResult.model_validate_json(result)
            return
        if trace_id and span_id:
            context = SpanContext(
                int(trace_id, 16),
                int(span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            self.link = Link(context, {"agentrt.link": "resumed_from"})
        self.steps = [
            (StepResult.model_validate_json(result), json.loads(payload))
            for _, result, payload in journal._steps(run_id)
        ]

    def begin(self, trace_id: str | None, span_id: str | None) -> None:
        """Record that the run (re)starts now, in this process."""
        self.journal._begin(
            self.run_id,
            kind=self._kind,
            name=self._name,
            digest=self._digest,
            launch=self._launch,
            steps_total=self._steps_total,
            trace_id=trace_id,
            span_id=span_id,
        )

    def plan_step(self, result: StepResult) -> None:
        """Commit a finished plan step (its result holds its text and tool output)."""
        self.journal._step(self.run_id, result.id, result.model_dump_json(), "{}")

    def loop_step(
        self,
        result: StepResult,
        message: Message,
        *,
        inference: InferenceResult | None = None,
        call: ToolCall | None = None,
        tool_result: ToolResult | None = None,
    ) -> None:
        """Commit a finished model or tool call of a conversation, with its message."""
        payload = {
            "message": message.model_dump(mode="json"),
            "inference": None if inference is None else inference.model_dump(mode="json"),
            "call": None if call is None else call.model_dump(mode="json"),
            "tool_result": None if tool_result is None else tool_result.model_dump(mode="json"),
        }
        self.journal._step(
            self.run_id, result.id, result.model_dump_json(), json.dumps(payload, default=str)
        )

    def finish(self, result: RunResult) -> None:
        """Record how the run ended (a succeeded run keeps its result, to return on resume)."""
        state = _STATES[result.status]
        stored = result.model_dump_json() if state == "succeeded" else None
        self.journal._finish(self.run_id, state, stored)
