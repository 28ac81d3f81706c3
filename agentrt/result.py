"""What a run produced: `StepResult` per step and the `RunResult` of the whole run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentrt.errors import RunFailed
from agentrt.substrate import Message, Timing, ToolCall

__all__ = ["RunResult", "RunStatus", "StepResult", "StepStatus"]

StepStatus = Literal["succeeded", "failed", "cancelled", "skipped"]
RunStatus = Literal["succeeded", "failed", "cancelled"]


class StepResult(BaseModel):
    """How one step went. Times are seconds on the run's clock, from the start of the run.

    ``latency_s`` is what the step cost the run; ``timing`` splits the model call of the final
    attempt into queue/network/prefill/decode/comm; ``tool_s`` is the tool's time. Whatever is
    left (retries, back-off, runtime overhead) is ``latency_s - timing.e2e_s - tool_s``.

    In a tool-calling run (``Agent.run("task")``) each model call is a step of kind ``chat``
    (``tool_calls`` holds what it asked for) and each tool call a step of kind ``tool``
    (``tool_call_id`` names the call it answers). A plan step with ``tools`` is one step whose
    ``timing`` sums its model calls and whose ``tool_s`` is the time its tools ran.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    kind: str
    status: StepStatus
    substrate: str | None = None
    model: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool: str | None = None
    tool_s: float = 0.0
    tool_ok: bool | None = None
    timing: Timing | None = None
    cost_usd: float = 0.0
    energy_j: float = 0.0
    text: str = Field(default="", description="The model's output.")
    tool_output: str | None = None
    error: str | None = Field(default=None, description="'Type: message' of the final error.")
    index: int = Field(default=0, description="Position in the plan (or policy order).")
    waits_for: tuple[str, ...] = Field(
        default=(), description="Steps that had to end before this one could start."
    )
    retry_s: float = Field(
        default=0.0, description="Time before the final attempt: failed attempts and back-off."
    )
    tool_call_id: str | None = Field(
        default=None, description="Tool steps of a tool loop: the id of the model's call."
    )
    tool_calls: tuple[ToolCall, ...] = Field(
        default=(), description="Chat steps of a tool loop: the tool calls the model asked for."
    )

    @property
    def latency_s(self) -> float:
        """End minus start (0 for a step that never started)."""
        if self.start_s is None or self.end_s is None:
            return 0.0
        return self.end_s - self.start_s

    @property
    def output(self) -> str:
        """The tool output if the step ran a tool, else the model text (what ``{{ id }}`` gives)."""
        return self.tool_output if self.tool_output is not None else self.text


class RunResult(BaseModel):
    """How a run went: status, end-to-end time, and every step.

    ``output`` is the run's answer: the model's final text in a tool-calling run, the output of
    the plan's last step (in plan order) or of the policy's last finished step. ``messages`` is
    the whole conversation of a tool-calling run (empty for plans and policies).

    Example:
        >>> r = RunResult(run_id="r1", agent="a", plan="p", status="succeeded", clock="virtual",
        ...               e2e_s=1.5, steps=())
        >>> r.to_dict()["e2e_s"]
        1.5
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    agent: str
    plan: str
    status: RunStatus
    clock: Literal["real", "virtual"]
    e2e_s: float
    steps: tuple[StepResult, ...]
    error: str | None = None
    failed_step: str | None = None
    trace_id: str | None = None
    seed: int | None = None
    output: str = Field(default="", description="The final answer (see the class docstring).")
    messages: tuple[Message, ...] = Field(
        default=(), description="A tool-calling run's conversation, oldest first."
    )

    @property
    def cost_usd(self) -> float:
        """Total cost of every inference in the run."""
        return sum(s.cost_usd for s in self.steps)

    @property
    def energy_j(self) -> float:
        """Total energy of every inference in the run."""
        return sum(s.energy_j for s in self.steps)

    @property
    def input_tokens(self) -> int:
        """Total prompt tokens."""
        return sum(s.input_tokens for s in self.steps)

    @property
    def output_tokens(self) -> int:
        """Total generated tokens."""
        return sum(s.output_tokens for s in self.steps)

    def step(self, step_id: str) -> StepResult:
        """The result of one step.

        Raises:
            KeyError: no step with that id ran in this run.
        """
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def __repr__(self) -> str:
        # Short on purpose: asyncio's runner reprs the main task's result when it restores the
        # SIGINT handler, and a full repr of a 10,000-step run costs longer than running it.
        return (
            f"<RunResult {self.run_id} {self.plan!r} {self.status} e2e_s={self.e2e_s:.6g} "
            f"steps={len(self.steps)}>"
        )

    def __iter__(self) -> Iterator[StepResult]:  # type: ignore[override]
        return iter(self.steps)

    def raise_for_status(self) -> RunResult:
        """Return self if the run succeeded, else raise `RunFailed` naming the step and cause."""
        if self.status == "succeeded":
            return self
        raise RunFailed(
            self.run_id, self.status, self.error or "no reason recorded", step_id=self.failed_step
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields plus totals and each step's ``latency_s``."""
        data = self.model_dump(mode="json")
        data["cost_usd"] = self.cost_usd
        data["energy_j"] = self.energy_j
        data["input_tokens"] = self.input_tokens
        data["output_tokens"] = self.output_tokens
        for step, raw in zip(self.steps, data["steps"], strict=True):
            raw["latency_s"] = step.latency_s
        return data
