"""The tool loop's parts: limits, step records, retries, argument parsing (`agentrt._toolloop`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from opentelemetry.trace import Span
from pydantic import BaseModel, ValidationError

from agentrt._construct import trusted
from agentrt.clock import Clock, RealClock
from agentrt.plan import RetryPolicy
from agentrt.redact import redact
from agentrt.result import StepResult
from agentrt.retry import is_retryable, retrying
from agentrt.substrate import InferenceRequest, InferenceResult, Message, ToolCall
from agentrt.tool import Tool, ToolResult

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = [
    "ASSISTANT_FIELDS",
    "DEFAULT_MAX_CONCURRENT_TOOLS",
    "DEFAULT_MAX_TOOL_FAILURES",
    "DEFAULT_MAX_TURNS",
    "REQUEST_DEFAULTS",
    "TOOL_MESSAGE_FIELDS",
    "LoopStep",
    "OpenChat",
    "OpenTool",
    "call_with_retries",
    "conversation",
    "describe",
    "fast_clock",
    "parse_arguments",
    "retry_after",
]

_State = Literal["running", "succeeded", "failed", "cancelled"]

#: Model calls a conversation may make before it fails (a 50-tool-call loop needs 51).
DEFAULT_MAX_TURNS = 100
#: Tool calls of one turn that run at the same time; the others wait for a free slot.
DEFAULT_MAX_CONCURRENT_TOOLS = 8
#: Failed tool calls in a row (bad arguments, unknown tool, an error) that end the loop.
DEFAULT_MAX_TOOL_FAILURES = 3

T = TypeVar("T")


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    rng: Any,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> T:
    """Await ``attempt()``; on a retryable error, again under ``policy`` (back-off on the clock).

    The first attempt runs outside tenacity: most calls succeed at once, and building a tenacity
    iteration costs more than the rest of a step. On a retryable failure tenacity takes over and
    is shown that failure as its own first attempt, so back-off, Retry-After, logging and the
    attempt budget behave exactly as if it had run it.
    """
    try:
        return await attempt()
    except Exception as exc:
        if policy.max_attempts == 1 or not is_retryable(exc):
            raise
        failed = exc
    return await retry_after(failed, attempt, policy, rng=rng, before_sleep=before_sleep)


async def retry_after(
    failed: Exception,
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    rng: Any,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> T:
    """`call_with_retries` after its first attempt failed with ``failed`` (a retryable error).

    For hot paths that make the first attempt themselves, without building a closure.
    """
    replay: list[Exception] = [failed]
    async for retry in retrying(policy, rng=rng, before_sleep=before_sleep):
        with retry:
            if replay:
                raise replay.pop()
            value = await attempt()
        if not retry.retry_state.outcome or not retry.retry_state.outcome.failed:
            return value
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


class LoopStep:
    """One model call (kind ``chat``) or tool call (kind ``tool``) while the loop runs."""

    __slots__ = (
        "attempts",
        "call",
        "end",
        "error",
        "id",
        "index",
        "inference",
        "kind",
        "last_attempt_start",
        "restored",
        "start",
        "state",
        "tool_result",
        "tool_s",
        "waits_for",
    )

    def __init__(
        self, step_id: str, kind: str, index: int, waits_for: tuple[str, ...], start: float
    ) -> None:
        self.id = step_id
        self.kind = kind
        self.index = index
        self.waits_for = waits_for
        self.start = start
        self.end: float | None = None
        self.state: _State = "running"
        self.attempts = 0
        self.last_attempt_start = start
        self.inference: InferenceResult | None = None
        self.call: ToolCall | None = None
        self.tool_result: ToolResult | None = None
        self.tool_s = 0.0
        self.error: str | None = None
        #: The result a journal holds for this step (restored, not run, in this execution).
        self.restored: StepResult | None = None

    @property
    def retry_s(self) -> float:
        """Time before the final attempt (failed attempts and back-off); 0 if tried once."""
        return self.last_attempt_start - self.start if self.attempts > 1 else 0.0

    def freeze(self, origin: float, now: float) -> StepResult:
        """The step's `StepResult` (a running step shows as cancelled, ending ``now``)."""
        if self.restored is not None:
            return self.restored
        values = _STEP_DEFAULTS.copy()
        values["id"] = self.id
        values["kind"] = self.kind
        values["status"] = "cancelled" if self.state == "running" else self.state
        values["start_s"] = self.start - origin
        values["end_s"] = (self.end if self.end is not None else now) - origin
        values["attempts"] = self.attempts
        values["index"] = self.index
        values["waits_for"] = self.waits_for
        values["error"] = self.error
        if self.attempts > 1:
            values["retry_s"] = self.last_attempt_start - self.start
        inference = self.inference
        if inference is not None:
            usage = inference.usage
            values["substrate"] = inference.substrate
            values["model"] = inference.model
            values["input_tokens"] = usage.input_tokens
            values["output_tokens"] = usage.output_tokens
            values["timing"] = inference.timing
            values["cost_usd"] = inference.cost_usd
            values["energy_j"] = inference.energy_j
            values["text"] = inference.text
            values["tool_calls"] = inference.tool_calls
        call = self.call
        if call is not None:
            values["tool"] = call.name
            values["tool_call_id"] = call.id
            values["tool_s"] = self.tool_s
            tool_result = self.tool_result
            if tool_result is not None:
                values["tool_ok"] = tool_result.ok
                values["tool_output"] = tool_result.output
        return trusted(StepResult, values, _STEP_FIELDS)


#: Every `StepResult` field's default: a step's values start as a copy (no merge per step).
_STEP_DEFAULTS: dict[str, Any] = {
    name: field.default for name, field in StepResult.model_fields.items()
}
_STEP_FIELDS = set(_STEP_DEFAULTS)
#: The same for requests: a conversation's requests start from one full dict.
REQUEST_DEFAULTS: dict[str, Any] = {
    name: field.default
    for name, field in InferenceRequest.model_fields.items()
    if not field.is_required()
}


#: The fields given in every assistant and tool message the loop appends (shared: the models
#: are frozen, nothing adds to these sets).
ASSISTANT_FIELDS = {"role", "content", "tool_calls"}
TOOL_MESSAGE_FIELDS = {"role", "content", "tool_call_id", "name"}


class OpenChat:
    """A model call in progress: its step, request, span and log context tokens."""

    __slots__ = ("request", "span", "step", "tokens")

    def __init__(
        self,
        step: LoopStep,
        request: InferenceRequest,
        span: Span | None,
        tokens: Mapping[str, Any] | None,
    ) -> None:
        self.step = step
        self.request = request
        self.span = span
        self.tokens = tokens


class OpenTool:
    """A tool call in progress: its step, span, tokens, tool and arguments, or what is wrong."""

    __slots__ = ("args", "problem", "span", "step", "tokens", "tool")

    def __init__(
        self,
        step: LoopStep,
        span: Span | None,
        tokens: Mapping[str, Any] | None,
        tool: Tool | None,
        args: BaseModel | None,
        problem: str | None,
    ) -> None:
        self.step = step
        self.span = span
        self.tokens = tokens
        self.tool = tool
        self.args = args
        self.problem = problem


def fast_clock(clock: Clock) -> Callable[[], float]:
    """A function reading ``clock``: the running asyncio loop's own ``time`` for real time.

    `RealClock.current_time` reads the same number after a lookup of the running loop; a loop
    reads the clock several times per turn, on one event loop.
    """
    if isinstance(clock, RealClock):
        try:
            return asyncio.get_running_loop().time
        except RuntimeError:
            pass
    return clock.current_time


def parse_arguments(model: type[BaseModel], call: ToolCall) -> BaseModel | str:
    """The call's arguments validated by the tool's model, or what is wrong with them."""
    try:
        return model.model_validate_json(call.arguments or "{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return (
                f"the arguments of {call.name} are not valid JSON ({first['msg']}): "
                f"{call.arguments[:200]!r}; send one JSON object that matches the tool's schema"
            )
        where = ".".join(str(p) for p in first["loc"]) or "arguments"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return (
            f"invalid arguments for {call.name}: {where}: {first['msg']}{more}; call it again "
            "with arguments that match its schema"
        )


def describe(error: BaseException) -> str:
    return redact(f"{type(error).__name__}: {error}")


_USER_FIELDS = {"role", "content"}


def conversation(task: str | Sequence[Message]) -> list[Message]:
    """The messages a run starts from: a task text becomes one user message."""
    if isinstance(task, str):
        return [trusted(Message, {"role": "user", "content": task}, _USER_FIELDS)]
    return list(task)
