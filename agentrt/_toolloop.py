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

import asyncio
import difflib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import structlog
from opentelemetry.context import Context
from opentelemetry.trace import Span
from pydantic import BaseModel, ValidationError

from agentrt._construct import trusted
from agentrt.clock import Clock, RealClock
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
    "fast_clock",
    "retry_after",
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
_REQUEST_DEFAULTS: dict[str, Any] = {
    name: field.default
    for name, field in InferenceRequest.model_fields.items()
    if not field.is_required()
}


#: The fields given in every assistant and tool message the loop appends (shared: the models
#: are frozen, nothing adds to these sets).
_ASSISTANT_FIELDS = {"role", "content", "tool_calls"}
_TOOL_MESSAGE_FIELDS = {"role", "content", "tool_call_id", "name"}


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
        parent: the trace context the spans go under (the run's root, or a plan step's span);
            None when the run is not traced.
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
        agent = run.agent
        self.run = run
        self.messages = messages
        self.tools = tools
        self.max_turns = max_turns
        self.timeout_s = timeout_s
        self.retry = retry
        self.parent = parent
        self.as_steps = as_steps
        self.attempt = attempt
        self._request = {**_REQUEST_DEFAULTS, **request, "tools": specs}
        self._request_fields = {"messages", *request, "tools"}
        self._step_id: str | None = request.get("step_id")
        self._now = fast_clock(run._clock)
        self._substrate = agent.substrate
        self._recorder = agent.recorder
        self._remote_tools = frozenset(n for n, t in tools.items() if getattr(t, "remote", False))
        # Per-step log events and context variables: only for a run's own steps, and only when
        # a log processor would read them.
        self._logs = as_steps and (run._log_steps or run._log_context)
        self._index = 0
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
        # Where the turn stands (see "the loop" below).
        self._phase: Literal["chat", "tools"] = "chat"
        self._waits: tuple[str, ...] = ()
        self._chat_step: LoopStep | None = None
        self._turn_tools: list[LoopStep] = []
        # Created by run_to_answer, on the loop that runs the calls.
        self._stretch: anyio.CancelScope
        self._cut: _OpenChat | _OpenTool | None = None

    # -- the loop ------------------------------------------------------------------------------
    #
    # Every model and tool call has a timeout. A cancel scope per call cost a fifth of a turn,
    # so the common path (one call at a time, first attempts) shares one scope per stretch of
    # turns: each wait arms it for its own timeout and disarms it when done. When a wait runs
    # out of time the shared scope is cancelled, which unwinds the whole stretch; the call that
    # was cut short stays open (``_cut``), `_resume` finishes it the slow way (retries, each
    # attempt in a scope of its own) and a new stretch picks the turn up where it stopped
    # (``_phase``). Concurrent tool calls and retries always use a scope per attempt.

    async def run_to_answer(self) -> None:
        """Turn after turn until the model answers without tool calls.

        Raises:
            ToolLoopFailed: ``max_turns`` model calls and the model still asks for tools, or
                ``max_tool_failures`` tool calls in a row failed (``failed_step`` names the step).
            Exception: a model call that failed for good (retries exhausted or permanent).
        """
        timeouts = self.run._timeouts
        while True:
            stretch = self._stretch = timeouts.scope()
            try:
                with stretch:
                    await self._turns()
                    return
            finally:
                timeouts.remove(stretch)
            if await self._resume():
                return

    async def _turns(self) -> None:
        while True:
            if self._phase == "chat":
                self.turns += 1
                if self._answered(await self._chat(self._open_chat(self.turns))):
                    return
            chat = self._chat_step
            assert chat is not None
            assert chat.inference is not None
            if self._phase == "tools":
                calls = chat.inference.tool_calls
                if len(calls) == 1:
                    step = self._tool_step(self.turns, 1, calls[0], (chat.id,))
                    self._turn_tools = [step]
                    reply = await self._tool(self._open_tool(step), shared=True)
                    self.messages.append(reply)
                else:
                    steps = [
                        self._tool_step(self.turns, k, c, (chat.id,))
                        for k, c in enumerate(calls, 1)
                    ]
                    self._turn_tools = steps
                    self.messages += await self._tools(steps)
            self._after_tools(chat)

    def _answered(self, chat: LoopStep) -> bool:
        """After a model call: True if it answered, else on to its tool calls."""
        result = chat.inference
        assert result is not None
        if not result.tool_calls:
            self.output = result.text
            return True
        self._chat_step = chat
        self._phase = "tools"
        return False

    def _after_tools(self, chat: LoopStep) -> None:
        """After a turn's tool calls: count failures, check max_turns, on to the next turn."""
        steps = self._turn_tools
        max_failures = self.run.agent.max_tool_failures
        if self.as_steps:
            self._waits = tuple(s.id for s in steps) if len(steps) > 1 else (steps[0].id,)
        else:
            # The tools ran side by side: their wall time is what the step spent in tools.
            self.tool_s += max(s.end or s.start for s in steps) - min(s.start for s in steps)
        self._phase = "chat"
        for step in steps:
            if step.state != "failed":
                self.failures = 0
                continue
            self.failures += 1
            if self.failures >= max_failures:
                self.failed_step = step.id
                raise ToolLoopFailed(
                    f"{self.failures} tool calls in a row failed (the last: {step.error}); "
                    f"the limit is max_tool_failures={max_failures}: fix the tools or "
                    "their descriptions, or raise Agent(max_tool_failures=...)"
                )
        if self.turns >= self.max_turns:
            self.failed_step = chat.id
            assert chat.inference is not None
            names = ", ".join(dict.fromkeys(c.name for c in chat.inference.tool_calls))
            raise ToolLoopFailed(
                f"max_turns={self.max_turns} reached and the model still asks for tools "
                f"(last: {names}); raise max_turns, or tell the model to answer sooner"
            )

    async def _resume(self) -> bool:
        """Finish the call a timeout cut short, the slow way; True if the model has answered."""
        cut = self._cut
        self._cut = None
        if cut is None:  # pragma: no cover - the stretch is only cancelled by a timeout
            return False
        if isinstance(cut, _OpenChat):
            timeout = StepTimeout(
                f"attempt {cut.step.attempts} of model call {cut.step.id!r} exceeded its "
                f"timeout of {self.timeout_s} s"
            )
            return self._answered(await self._chat(cut, timed_out=timeout))
        timeout = StepTimeout(f"it did not finish within its timeout of {self.timeout_s} s")
        self.messages.append(await self._tool(cut, shared=False, timed_out=timeout))
        chat = self._chat_step
        assert chat is not None
        self._after_tools(chat)
        return False

    # -- model calls ---------------------------------------------------------------------------

    def _open_chat(self, turn: int) -> _OpenChat:
        fields = self._request.copy()
        fields["messages"] = tuple(self.messages)
        if self.as_steps:
            step_id = fields["step_id"] = f"chat-{turn}"
            index = self._index
            self._index = index + 1
        else:
            step_id = self._step_id or ""
            index = 0
            if turn > 1:
                fields["prompt_tokens"] = None  # the step's hint is for its first call
        request = trusted(InferenceRequest, fields, self._request_fields)
        step = LoopStep(step_id, "chat", index, self._waits, self._now())
        if self.as_steps:
            self.steps.append(step)
        span = (
            self.run._tracer.start_chat(self.parent, request, self._substrate, t=step.start)
            if self.parent is not None
            else None
        )
        tokens = self._bind(step) if self._logs else None
        return _OpenChat(step, request, span, tokens)

    async def _chat(self, chat: _OpenChat, *, timed_out: Exception | None = None) -> LoopStep:
        """Make the model call (retrying transient errors) and close its step."""
        step = chat.step
        error: BaseException | None = None
        try:
            try:
                if timed_out is not None:
                    raise timed_out
                await self._chat_attempt(chat, shared=True)
            except Exception as exc:
                if self.retry.max_attempts == 1 or not is_retryable(exc):
                    raise
                await retry_after(
                    exc,
                    lambda: self._chat_attempt(chat, shared=False),
                    self.retry,
                    rng=self.run._rng,
                    before_sleep=self.run._log_retry,
                )
        except BaseException as exc:
            if self._cut is chat:
                raise  # the shared scope's timeout: `_resume` finishes this call
            error = exc
            raise
        finally:
            if self._cut is not chat:
                self._close_chat(chat, error)
        return step

    async def _chat_attempt(self, chat: _OpenChat, *, shared: bool) -> None:
        run = self.run
        step, request, span = chat.step, chat.request, chat.span
        step.attempts += 1
        t0 = step.last_attempt_start = step.start if step.attempts == 1 else self._now()
        timeouts = run._timeouts
        scope = self._stretch if shared else timeouts.scope()
        timeouts.add(scope, self.timeout_s)
        try:
            if span is not None and run.agent._remote:
                # Remote substrates propagate the current span (W3C traceparent).
                with current_span(span), nullcontext() if shared else scope:
                    result = await self._substrate.infer(request)
            elif shared:
                result = await self._substrate.infer(request)
            else:
                with scope:
                    result = await self._substrate.infer(request)
        except BaseException:
            if shared and scope.cancel_called:
                self._cut = chat
            raise
        finally:
            timeouts.remove(scope)
        if not shared and scope.cancelled_caught:
            raise StepTimeout(
                f"attempt {step.attempts} of model call {step.id!r} exceeded its timeout of "
                f"{self.timeout_s} s"
            )
        if run._metrics:
            agent = run.agent
            agent._instruments.record(result, self._now() - t0, agent._provider)
        step.inference = result

    def _close_chat(self, chat: _OpenChat, error: BaseException | None) -> None:
        step = chat.step
        end = step.end = self._now()
        if error is None:
            step.state = "succeeded"
        elif isinstance(error, Exception):
            step.state = "failed"
            step.error = _describe(error)
        else:
            step.state = "cancelled"
        if chat.span is not None:
            self.run._tracer.end_chat(
                chat.span,
                chat.request,
                self._substrate,
                attempt=step.attempts if self.as_steps else self.attempt,
                result=step.inference,
                error=error,
                t_start=step.last_attempt_start,
                t_end=end,
                step=self._step_attributes(step) if self.as_steps else None,
            )
        if self._logs:
            self._log_end(step, chat.tokens)
        result = step.inference
        if error is not None or result is None:
            return
        self.messages.append(
            trusted(
                Message,
                {"role": "assistant", "content": result.text, "tool_calls": result.tool_calls},
                _ASSISTANT_FIELDS,
            )
        )
        self.last = result
        if not self.as_steps:
            self.timing = result.timing if self.turns == 1 else self.timing.plus(result.timing)
            self.input_tokens += result.usage.input_tokens
            self.output_tokens += result.usage.output_tokens
            self.cost_usd += result.cost_usd
            self.energy_j += result.energy_j
        if self._recorder is not None:
            self._recorder.model_turn(chat.request, result)

    # -- tool calls ----------------------------------------------------------------------------

    def _tool_step(self, turn: int, k: int, call: ToolCall, waits: tuple[str, ...]) -> LoopStep:
        step_id = f"tool-{turn}-{k}" if self.as_steps else f"{self._step_id}:{call.id}"
        step = LoopStep(step_id, "tool", 0, waits, 0.0)
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
                replies[i] = await self._tool(self._open_tool(step), shared=False)

        async with anyio.create_task_group() as tg:
            for i, step in enumerate(steps):
                tg.start_soon(one, i, step, name=f"agentrt tool call {step.id}")
        return [r for r in replies if r is not None]

    def _open_tool(self, step: LoopStep) -> _OpenTool:
        call = step.call
        assert call is not None
        if self.as_steps:
            step.index = self._index
            self._index += 1
            self.steps.append(step)
        step.start = step.last_attempt_start = self._now()
        span = (
            self.run._tracer.start_tool(
                self.parent, call.name, attempt=self.attempt, t=step.start, call_id=call.id
            )
            if self.parent is not None
            else None
        )
        tokens = self._bind(step) if self._logs else None
        tool = self.tools.get(call.name)
        if tool is None:
            return _OpenTool(step, span, tokens, None, None, self._unknown_tool(call.name))
        args = _parse_arguments(tool.args_model, call)
        if isinstance(args, str):
            return _OpenTool(step, span, tokens, tool, None, args)
        return _OpenTool(step, span, tokens, tool, args, None)

    async def _tool(
        self, op: _OpenTool, *, shared: bool, timed_out: Exception | None = None
    ) -> Message:
        """Run one tool call; every failure becomes a tool message the model reads."""
        step = op.step
        call = step.call
        assert call is not None
        result: ToolResult | None = None
        problem = op.problem
        error: BaseException | None = None
        try:
            if problem is None:
                try:
                    try:
                        if timed_out is not None:
                            raise timed_out
                        result = await self._tool_attempt(op, shared=shared)
                    except Exception as exc:
                        if self.retry.max_attempts == 1 or not is_retryable(exc):
                            raise
                        result = await retry_after(
                            exc,
                            lambda: self._tool_attempt(op, shared=False),
                            self.retry,
                            rng=self.run._rng,
                            before_sleep=self.run._log_retry,
                        )
                except Exception as exc:
                    problem = f"{call.name} failed: {type(exc).__name__}: {exc}"
                    error = exc
        except BaseException as exc:  # cancelled: recorded on the step and span, re-raised
            if self._cut is op:
                raise  # the shared scope's timeout: `_resume` finishes this call
            error = exc
            raise
        finally:
            if self._cut is not op:
                result = self._close_tool(op, result, problem, error)
        assert result is not None
        if self._recorder is not None:
            self._recorder.tool_result(call, result, step.tool_s)
        return trusted(
            Message,
            {"role": "tool", "content": result.output, "tool_call_id": call.id, "name": call.name},
            _TOOL_MESSAGE_FIELDS,
        )

    async def _tool_attempt(self, op: _OpenTool, *, shared: bool) -> ToolResult:
        step, tool, args = op.step, op.tool, op.args
        assert tool is not None
        step.attempts += 1
        if step.attempts > 1:
            step.last_attempt_start = self._now()
        timeouts = self.run._timeouts
        scope = self._stretch if shared else timeouts.scope()
        timeouts.add(scope, self.timeout_s)
        try:
            if op.span is not None and tool.name in self._remote_tools:
                with current_span(op.span), nullcontext() if shared else scope:
                    result = await tool.call(args)
            elif shared:
                result = await tool.call(args)
            else:
                with scope:
                    result = await tool.call(args)
        except BaseException:
            if shared and scope.cancel_called:
                self._cut = op
            raise
        finally:
            timeouts.remove(scope)
        if not shared and scope.cancelled_caught:
            raise StepTimeout(f"it did not finish within its timeout of {self.timeout_s} s")
        return result

    def _close_tool(
        self,
        op: _OpenTool,
        result: ToolResult | None,
        problem: str | None,
        error: BaseException | None,
    ) -> ToolResult | None:
        step = op.step
        end = step.end = self._now()
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
        if op.span is not None:
            self.run._tracer.end_tool(
                op.span,
                result=result,
                error=error if error is not None else ToolError(problem) if problem else None,
                t=end,
                step=self._step_attributes(step) if self.as_steps else None,
            )
        if self._logs:
            self._log_end(step, op.tokens)
        return result

    def _unknown_tool(self, name: str) -> str:
        known = sorted(self.tools)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"there is no tool named {name!r}{hint}; the tools are: {', '.join(known) or 'none'}"

    # -- bookkeeping ---------------------------------------------------------------------------

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


class _OpenChat:
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


class _OpenTool:
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
