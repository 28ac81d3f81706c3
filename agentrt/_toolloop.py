"""The tool-calling loop: model -> tool calls (concurrently, bounded) -> tool messages -> model.

One `ToolLoop` drives one conversation: a run's (``Agent.run("task")``), where every model call
and every tool call is a step of the run, or a plan step's (``Step(tools=[...])``), where they are
child spans of that step and the step sums their times. See docs/agent-loop.md.

Every turn is constant work, whatever the length of the conversation: the request, the messages
and the step results are built from parts that are valid already (`agentrt._construct.trusted`),
the offered tools' schemas are computed once per run, and a tool is looked up by name once per
call.
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import structlog
from opentelemetry.context import Context
from opentelemetry.trace import Span
from pydantic import BaseModel, ValidationError

from agentrt._construct import trusted
from agentrt.errors import StepTimeout, ToolError, ToolLoopFailed
from agentrt.plan import RetryPolicy
from agentrt.redact import redact
from agentrt.result import StepResult
from agentrt.retry import is_retryable, retrying
from agentrt.substrate import (
    InferenceRequest,
    InferenceResult,
    Message,
    Timing,
    ToolCall,
    ToolSpec,
)
from agentrt.telemetry.tracing import current_span
from agentrt.tool import Tool, ToolResult

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from agentrt.agent import AgentRun

__all__ = [
    "DEFAULT_MAX_CONCURRENT_TOOLS",
    "DEFAULT_MAX_TOOL_FAILURES",
    "DEFAULT_MAX_TURNS",
    "LoopStep",
    "ToolLoop",
    "call_with_retries",
    "conversation",
]

#: Model calls a conversation may make before it fails (a 50-tool-call loop needs 51).
DEFAULT_MAX_TURNS = 100
#: Tool calls of one turn that run at the same time; the others wait for a free slot.
DEFAULT_MAX_CONCURRENT_TOOLS = 8
#: Failed tool calls in a row (bad arguments, unknown tool, an error) that end the loop.
DEFAULT_MAX_TOOL_FAILURES = 3

T = TypeVar("T")
_State = Literal["running", "succeeded", "failed", "cancelled"]


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
        replay: list[Exception] = [exc]
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

    @property
    def retry_s(self) -> float:
        """Time before the final attempt (failed attempts and back-off); 0 if tried once."""
        return self.last_attempt_start - self.start if self.attempts > 1 else 0.0

    def freeze(self, origin: float, now: float) -> StepResult:
        """The step's `StepResult` (a running step shows as cancelled, ending ``now``)."""
        inference = self.inference
        call = self.call
        tool_result = self.tool_result
        end = self.end if self.end is not None else now
        values: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "status": "cancelled" if self.state == "running" else self.state,
            "start_s": self.start - origin,
            "end_s": end - origin,
            "attempts": self.attempts,
            "index": self.index,
            "waits_for": self.waits_for,
            "retry_s": self.retry_s,
            "error": self.error,
        }
        if inference is not None:
            values["substrate"] = inference.substrate
            values["model"] = inference.model
            values["input_tokens"] = inference.usage.input_tokens
            values["output_tokens"] = inference.usage.output_tokens
            values["timing"] = inference.timing
            values["cost_usd"] = inference.cost_usd
            values["energy_j"] = inference.energy_j
            values["text"] = inference.text
            values["tool_calls"] = inference.tool_calls
        if call is not None:
            values["tool"] = call.name
            values["tool_call_id"] = call.id
            values["tool_s"] = self.tool_s
            if tool_result is not None:
                values["tool_ok"] = tool_result.ok
                values["tool_output"] = tool_result.output
        return trusted(StepResult, values)


class ToolLoop:
    """Drives one conversation to the model's answer, for an `AgentRun`.

    Args:
        run: the run this conversation belongs to (clock, tracer, timeouts, logs, recorder).
        messages: the conversation so far; the loop appends to it.
        tools: the tools the model may call, by name.
        specs: their `ToolSpec` list, as the requests offer them.
        max_turns: model calls allowed.
        timeout_s: per attempt of each model and tool call.
        retry: the retry policy of model and tool calls.
        request: fields every request carries (run and step ids, hints, output length).
        parent: the trace context the spans go under (the run's root, or a plan step's span).
        as_steps: the model and tool calls are steps of the run (else parts of one plan step).
        attempt: the plan step's attempt number, for the ``agentrt.attempt`` of child spans.
    """

    def __init__(
        self,
        run: AgentRun,
        messages: list[Message],
        *,
        tools: Mapping[str, Tool],
        specs: tuple[ToolSpec, ...],
        max_turns: int,
        timeout_s: float,
        retry: RetryPolicy,
        request: dict[str, Any],
        parent: Context | None,
        as_steps: bool,
        attempt: int = 1,
    ) -> None:
        self.run = run
        self.messages = messages
        self.tools = tools
        self.max_turns = max_turns
        self.timeout_s = timeout_s
        self.retry = retry
        self.parent = parent
        self.as_steps = as_steps
        self.attempt = attempt
        self._request = {**request, "tools": specs}
        self.steps: list[LoopStep] = []
        self.output = ""
        self.turns = 0
        self.failures = 0
        self.failed_step: str | None = None
        # Sums over the conversation, for a plan step that holds it.
        self.last: InferenceResult | None = None
        self.timing = Timing()
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.energy_j = 0.0
        self.tool_s = 0.0
        self._limiter: anyio.CapacityLimiter | None = None

    # -- the loop ------------------------------------------------------------------------------

    async def run_to_answer(self) -> None:
        """Turn after turn until the model answers without tool calls.

        Raises:
            ToolLoopFailed: ``max_turns`` model calls and the model still asks for tools, or
                ``max_tool_failures`` tool calls in a row failed (``failed_step`` names the step).
            Exception: a model call that failed for good (retries exhausted or permanent).
        """
        run = self.run
        waits: tuple[str, ...] = ()
        max_failures = run.agent.max_tool_failures
        while True:
            self.turns += 1
            turn = self.turns
            chat = await self._chat(turn, waits)
            result = chat.inference
            assert result is not None
            calls = result.tool_calls
            if not calls:
                self.output = result.text
                return
            chat_id = (chat.id,)
            if len(calls) == 1:
                steps = [self._tool_step(turn, 1, calls[0], chat_id)]
                replies = [await self._tool(steps[0])]
            else:
                steps = [self._tool_step(turn, k, c, chat_id) for k, c in enumerate(calls, 1)]
                replies = await self._tools(steps)
            self.messages += replies
            if self.as_steps:
                waits = tuple(s.id for s in steps)
            else:
                # The tools ran side by side: their wall time is what the step spent in tools.
                self.tool_s += max(s.end or s.start for s in steps) - min(s.start for s in steps)
            for step in steps:
                if step.state == "failed":
                    self.failures += 1
                    if self.failures >= max_failures:
                        self.failed_step = step.id
                        raise ToolLoopFailed(
                            f"{self.failures} tool calls in a row failed (the last: {step.error}); "
                            f"the limit is max_tool_failures={max_failures}: fix the tools or "
                            "their descriptions, or raise Agent(max_tool_failures=...)"
                        )
                else:
                    self.failures = 0
            if turn >= self.max_turns:
                self.failed_step = chat.id
                names = ", ".join(dict.fromkeys(c.name for c in calls))
                raise ToolLoopFailed(
                    f"max_turns={self.max_turns} reached and the model still asks for tools "
                    f"(last: {names}); raise max_turns, or tell the model to answer sooner"
                )

    # -- model calls ---------------------------------------------------------------------------

    async def _chat(self, turn: int, waits: tuple[str, ...]) -> LoopStep:
        run = self.run
        clock = run._clock
        step_id = f"chat-{turn}" if self.as_steps else self._request["step_id"]
        step = LoopStep(step_id, "chat", self._next_index(), waits, clock.current_time())
        if self.as_steps:
            self.steps.append(step)
        fields = {**self._request, "messages": tuple(self.messages)}
        if self.as_steps:
            fields["step_id"] = step_id
        elif turn > 1:
            fields["prompt_tokens"] = None  # the step's hint is for its first call
        request = trusted(InferenceRequest, fields)
        tracer = run._tracer
        span = tracer.start_chat(self.parent, request, run.agent.substrate, t=step.start)
        tokens = self._bind(step)
        error: BaseException | None = None
        try:
            await call_with_retries(
                lambda: self._chat_attempt(step, request, span),
                self.retry,
                rng=run._rng,
                before_sleep=run._log_retry,
            )
        except BaseException as exc:
            error = exc
            raise
        finally:
            end = step.end = clock.current_time()
            if error is None:
                step.state = "succeeded"
            elif isinstance(error, Exception):
                step.state = "failed"
                step.error = _describe(error)
            else:
                step.state = "cancelled"
            if span is not None:
                tracer.end_chat(
                    span,
                    request,
                    run.agent.substrate,
                    attempt=self.attempt if not self.as_steps else step.attempts,
                    result=step.inference,
                    error=error,
                    t_start=step.last_attempt_start,
                    t_end=end,
                    step=self._step_attributes(step) if self.as_steps else None,
                )
            self._log_end(step, tokens)
        result = step.inference
        assert result is not None
        self.messages.append(
            trusted(
                Message,
                {"role": "assistant", "content": result.text, "tool_calls": result.tool_calls},
            )
        )
        self.last = result
        if not self.as_steps:
            self.timing = result.timing if self.turns == 1 else self.timing.plus(result.timing)
            self.input_tokens += result.usage.input_tokens
            self.output_tokens += result.usage.output_tokens
            self.cost_usd += result.cost_usd
            self.energy_j += result.energy_j
        if run.agent.recorder is not None:
            run.agent.recorder.model_turn(request, result)
        return step

    async def _chat_attempt(
        self, step: LoopStep, request: InferenceRequest, span: Span | None
    ) -> InferenceResult:
        run = self.run
        agent = run.agent
        clock = run._clock
        step.attempts += 1
        t0 = step.last_attempt_start = clock.current_time()
        timeouts = run._timeouts
        scope = timeouts.scope()
        timeouts.add(scope, self.timeout_s)
        try:
            with scope:
                if span is not None and agent._remote:
                    # Remote substrates propagate the current span (W3C traceparent).
                    with current_span(span):
                        result = await agent.substrate.infer(request)
                else:
                    result = await agent.substrate.infer(request)
        finally:
            timeouts.remove(scope)
        if scope.cancelled_caught:
            raise StepTimeout(
                f"attempt {step.attempts} of model call {step.id!r} exceeded its timeout of "
                f"{self.timeout_s} s"
            )
        if run._metrics:
            agent._instruments.record(result, clock.current_time() - t0, agent._provider)
        step.inference = result
        return result

    # -- tool calls ----------------------------------------------------------------------------

    def _tool_step(self, turn: int, k: int, call: ToolCall, waits: tuple[str, ...]) -> LoopStep:
        step_id = f"tool-{turn}-{k}" if self.as_steps else f"{self._request['step_id']}:{call.id}"
        step = LoopStep(step_id, "tool", -1, waits, 0.0)
        step.call = call
        return step

    async def _tools(self, steps: list[LoopStep]) -> list[Message]:
        """Run several tool calls concurrently, at most ``max_concurrent_tools`` at a time."""
        limiter = self._limiter
        if limiter is None:
            limiter = self._limiter = anyio.CapacityLimiter(self.run.agent.max_concurrent_tools)
        replies: list[Message | None] = [None] * len(steps)

        async def one(i: int, step: LoopStep) -> None:
            async with limiter:
                replies[i] = await self._tool(step)

        async with anyio.create_task_group() as tg:
            for i, step in enumerate(steps):
                tg.start_soon(one, i, step, name=f"agentrt tool call {step.id}")
        return [r for r in replies if r is not None]

    async def _tool(self, step: LoopStep) -> Message:
        """Run one tool call; every failure becomes a tool message the model reads."""
        run = self.run
        clock = run._clock
        call = step.call
        assert call is not None
        step.index = self._next_index()
        step.start = step.last_attempt_start = clock.current_time()
        if self.as_steps:
            self.steps.append(step)
        tracer = run._tracer
        span = tracer.start_tool(
            self.parent, call.name, attempt=self.attempt, t=step.start, call_id=call.id
        )
        tokens = self._bind(step)
        tool = self.tools.get(call.name)
        result: ToolResult | None = None
        problem: str | None = None
        error: BaseException | None = None
        try:
            if tool is None:
                problem = self._unknown_tool(call.name)
            else:
                args = _parse_arguments(tool.args_model, call)
                if isinstance(args, str):
                    problem = args
                else:
                    try:
                        result = await call_with_retries(
                            lambda: self._tool_attempt(step, tool, args, span),
                            self.retry,
                            rng=run._rng,
                            before_sleep=run._log_retry,
                        )
                    except Exception as exc:
                        problem = f"{call.name} failed: {type(exc).__name__}: {exc}"
                        error = exc
        except BaseException as exc:  # cancelled: recorded on the step and span, re-raised
            error = exc
            raise
        finally:
            end = step.end = clock.current_time()
            if result is not None:
                step.state = "succeeded"
                step.tool_result = result
                measured = end - step.last_attempt_start
                step.tool_s = result.duration_s if result.duration_s is not None else measured
            elif problem is not None:
                step.state = "failed"
                step.error = redact(problem)
                step.tool_s = end - step.last_attempt_start
                step.tool_result = result = ToolResult(output=f"error: {problem}", ok=False)
            else:
                step.state = "cancelled"
            if span is not None:
                tracer.end_tool(
                    span,
                    result=result,
                    error=error if error is not None else ToolError(problem) if problem else None,
                    t=end,
                    step=self._step_attributes(step) if self.as_steps else None,
                )
            self._log_end(step, tokens)
        assert result is not None
        if run.agent.recorder is not None:
            run.agent.recorder.tool_result(call, result, step.tool_s)
        return trusted(
            Message,
            {"role": "tool", "content": result.output, "tool_call_id": call.id, "name": call.name},
        )

    async def _tool_attempt(
        self, step: LoopStep, tool: Tool, args: BaseModel, span: Span | None
    ) -> ToolResult:
        run = self.run
        step.attempts += 1
        if step.attempts > 1:
            step.last_attempt_start = run._clock.current_time()
        timeouts = run._timeouts
        scope = timeouts.scope()
        timeouts.add(scope, self.timeout_s)
        try:
            with scope:
                if span is not None and getattr(tool, "remote", False):
                    with current_span(span):
                        result = await tool.call(args)
                else:
                    result = await tool.call(args)
        finally:
            timeouts.remove(scope)
        if scope.cancelled_caught:
            raise StepTimeout(f"it did not finish within its timeout of {self.timeout_s} s")
        return result

    def _unknown_tool(self, name: str) -> str:
        known = sorted(self.tools)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"there is no tool named {name!r}{hint}; the tools are: {', '.join(known) or 'none'}"

    # -- bookkeeping ---------------------------------------------------------------------------

    def _next_index(self) -> int:
        return self.run._next_index() if self.as_steps else 0

    def _step_attributes(self, step: LoopStep) -> dict[str, Any]:
        return {
            "id": step.id,
            "kind": step.kind,
            "index": step.index,
            "waits_for": step.waits_for,
            "status": step.state,
            "attempts": step.attempts,
            "retry_s": step.retry_s,
        }

    def _bind(self, step: LoopStep) -> Mapping[str, Any] | None:
        run = self.run
        if not self.as_steps:
            return None
        tokens = (
            structlog.contextvars.bind_contextvars(step_id=step.id, kind=step.kind)
            if run._log_context
            else None
        )
        if run._log_steps:
            if step.call is not None:
                run._log.info("step_started", tool=step.call.name, tool_call_id=step.call.id)
            else:
                run._log.info("step_started")
        return tokens

    def _log_end(self, step: LoopStep, tokens: Mapping[str, Any] | None) -> None:
        if not self.as_steps:
            return
        run = self.run
        latency = (step.end or step.start) - step.start
        if step.state == "succeeded":
            if run._log_steps:
                run._log.info("step_finished", latency_s=latency, attempts=step.attempts)
        elif step.state == "failed":
            run._log.warning(
                "step_failed", latency_s=latency, attempts=step.attempts, error=step.error
            )
        else:
            run._log.info("step_cancelled", latency_s=latency)
        if tokens is not None:
            structlog.contextvars.reset_contextvars(**tokens)

    def results(self, origin: float, now: float) -> list[StepResult]:
        """Every step so far, in start order."""
        return [s.freeze(origin, now) for s in self.steps]


def _parse_arguments(model: type[BaseModel], call: ToolCall) -> BaseModel | str:
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


def _describe(error: BaseException) -> str:
    return redact(f"{type(error).__name__}: {error}")


def conversation(task: str | Sequence[Message]) -> list[Message]:
    """The messages a run starts from: a task text becomes one user message."""
    if isinstance(task, str):
        return [Message(role="user", content=task)]
    return list(task)
