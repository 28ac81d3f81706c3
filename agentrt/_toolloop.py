"""The tool-calling loop: model -> tool calls (concurrently, bounded) -> tool messages -> model.

One `ToolLoop` drives one conversation: a run's (``Agent.run("task")``), where every model call
and every tool call is a step of the run, or a plan step's (``Step(tools=[...])``), where they are
child spans of that step and the step sums their times. See docs/agent-loop.md.

Every turn is constant work, whatever the length of the conversation: the request, the messages
and the step results are built from parts that are valid already (`agentrt._construct.trusted`),
the offered tools' schemas are computed once per run, and a tool is looked up by name once per
call. The step records, limits and retry helpers live in `agentrt._loopparts`.

Why one module: the model-call and tool-call halves share the state machine that lets a shared
cancel scope be cut by a timeout and the turn resume (see "the loop" below).
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import structlog
from opentelemetry.context import Context

from agentrt._construct import trusted
from agentrt._loopparts import (
    ASSISTANT_FIELDS,
    REQUEST_DEFAULTS,
    TOOL_MESSAGE_FIELDS,
    LoopStep,
    OpenChat,
    OpenTool,
    describe,
    fast_clock,
    parse_arguments,
    retry_after,
)
from agentrt.errors import StepTimeout, ToolError, ToolLoopFailed
from agentrt.journal import _KEY, wants_key
from agentrt.plan import RetryPolicy
from agentrt.redact import redact
from agentrt.result import StepResult
from agentrt.retry import is_retryable
from agentrt.substrate import InferenceRequest, InferenceResult, Message, Timing, ToolCall, ToolSpec
from agentrt.telemetry import semconv as sc
from agentrt.telemetry.tracing import current_span
from agentrt.tool import Tool, ToolResult

if TYPE_CHECKING:
    from agentrt._journalrun import RestoredCall
    from agentrt.agent import AgentRun

__all__ = ["ToolLoop"]

T = TypeVar("T")


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
        self._request = {**REQUEST_DEFAULTS, **request, "tools": specs}
        self._request_fields = {"messages", *request, "tools"}
        self._step_id: str | None = request.get("step_id")
        self._now = fast_clock(run._clock)
        self._substrate = agent.substrate
        self._recorder = agent.recorder
        self._remote_tools = frozenset(n for n, t in tools.items() if getattr(t, "remote", False))
        # Per-step log events and context variables: only for a run's own steps, and only when
        # a log processor would read them.
        self._logs = as_steps and (run._log_steps or run._log_context)
        # A run's own conversation commits each finished call (a plan step commits as a whole).
        self._journal = run._journal if as_steps else None
        self._run_id = run.run_id
        # Tools whose calls get an idempotency key: all in a journaled run, else those that ask.
        self._keyed = frozenset(
            n for n, t in tools.items() if run._journal is not None or wants_key(t)
        )
        # Tool calls of the current turn that a journal holds: step id -> (step, message).
        self._done: dict[str, tuple[LoopStep, Message]] = {}
        self._index = 0
        self.steps: list[LoopStep] = []
        self.output = ""
        self.turns = 0
        self.failures = 0
        self.failed_step: str | None = None
        # Sums over the conversation, for a plan step that holds it.
        self.last: InferenceResult | None = None
        self.timing: Timing | None = None
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
        self._cut: OpenChat | OpenTool | None = None

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
                if self._done:
                    await self._rest_of_turn(calls)
                elif len(calls) == 1:
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

    def restore(self, calls: list[RestoredCall]) -> bool:
        """Take over the calls an earlier execution finished; True if the model has answered.

        Complete turns are replayed (their failures and ``max_turns`` count as before); a turn
        whose tool calls were cut short keeps the finished ones, and `run_to_answer` runs the
        rest.
        """
        turn_tools: list[LoopStep] = []
        for restored in calls:
            result = restored.result
            step = LoopStep(result.id, result.kind, result.index, result.waits_for, 0.0)
            step.restored = result
            step.state = result.status  # type: ignore[assignment]
            step.attempts = result.attempts
            step.error = result.error
            self.steps.append(step)
            self._index = max(self._index, result.index + 1)
            if result.kind == "chat":
                if turn_tools:
                    self._finish_restored_turn(turn_tools)
                    turn_tools = []
                step.inference = restored.inference
                self.turns += 1
                self.messages.append(restored.message)
                self.last = restored.inference
                if self._answered(step):
                    return True
            else:
                step.call = restored.call
                step.tool_result = restored.tool_result
                step.tool_s = result.tool_s
                turn_tools.append(step)
                self._done[step.id] = (step, restored.message)
        chat = self._chat_step
        if (
            chat is not None
            and chat.inference is not None
            and self._phase == "tools"
            and len(self._done) == len(chat.inference.tool_calls)
        ):
            self._finish_restored_turn(turn_tools)
        return False

    def _finish_restored_turn(self, steps: list[LoopStep]) -> None:
        """A turn whose every tool call the journal holds: its messages, in call order."""
        chat = self._chat_step
        assert chat is not None
        self._turn_tools = sorted(steps, key=lambda s: _call_number(s.id))
        self.messages += [self._done[s.id][1] for s in self._turn_tools]
        self._done = {}
        self._after_tools(chat)

    async def _rest_of_turn(self, calls: tuple[ToolCall, ...]) -> None:
        """The tool calls of a restored turn that the journal does not hold."""
        done = self._done
        chat = self._chat_step
        assert chat is not None
        steps = [self._tool_step(self.turns, k, c, (chat.id,)) for k, c in enumerate(calls, 1)]
        missing = [s for s in steps if s.id not in done]
        replies = iter(await self._tools(missing))
        self._turn_tools = [done[s.id][0] if s.id in done else s for s in steps]
        self.messages += [done[s.id][1] if s.id in done else next(replies) for s in steps]
        self._done = {}

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
        if isinstance(cut, OpenChat):
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

    def _open_chat(self, turn: int) -> OpenChat:
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
        return OpenChat(step, request, span, tokens)

    async def _chat(self, chat: OpenChat, *, timed_out: Exception | None = None) -> LoopStep:
        """Make the model call (retrying transient errors) and close its step."""
        step = chat.step
        error: BaseException | None = None
        try:
            try:
                if timed_out is not None:
                    raise timed_out
                await self._chat_attempt(chat, shared=True)
            except Exception as exc:
                await self._retry(exc, lambda: self._chat_attempt(chat, shared=False))
        except BaseException as exc:
            if self._cut is chat:
                raise  # the shared scope's timeout: `_resume` finishes this call
            error = exc
            raise
        finally:
            if self._cut is not chat:
                self._close_chat(chat, error)
        return step

    async def _chat_attempt(self, chat: OpenChat, *, shared: bool) -> None:
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

    def _close_chat(self, chat: OpenChat, error: BaseException | None) -> None:
        step = chat.step
        end = step.end = self._now()
        if error is None:
            step.state = "succeeded"
        elif isinstance(error, Exception):
            step.state = "failed"
            step.error = describe(error)
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
                ASSISTANT_FIELDS,
            )
        )
        self.last = result
        if self._journal is not None:
            self._journal.loop_step(
                step.freeze(self.run._start or 0.0, end), self.messages[-1], inference=result
            )
        if not self.as_steps:
            timing = self.timing
            self.timing = result.timing if timing is None else timing.plus(result.timing)
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

    def _open_tool(self, step: LoopStep) -> OpenTool:
        call = step.call
        assert call is not None
        if self.as_steps:
            step.index = self._index
            self._index += 1
            self.steps.append(step)
        step.start = step.last_attempt_start = self._now()
        span = (
            self.run._tracer.start_tool(
                self.parent,
                call.name,
                attempt=None if self.as_steps else self.attempt,
                t=step.start,
                call_id=call.id,
            )
            if self.parent is not None
            else None
        )
        tokens = self._bind(step) if self._logs else None
        tool = self.tools.get(call.name)
        if tool is None:
            return OpenTool(step, span, tokens, None, None, self._unknown_tool(call.name))
        args = parse_arguments(tool.args_model, call)
        if isinstance(args, str):
            return OpenTool(step, span, tokens, tool, None, args)
        return OpenTool(step, span, tokens, tool, args, None)

    async def _tool(
        self, op: OpenTool, *, shared: bool, timed_out: Exception | None = None
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
                        result = await self._retry(
                            exc, lambda: self._tool_attempt(op, shared=False)
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
        message = trusted(
            Message,
            {"role": "tool", "content": result.output, "tool_call_id": call.id, "name": call.name},
            TOOL_MESSAGE_FIELDS,
        )
        if self._journal is not None:
            self._journal.loop_step(
                step.freeze(self.run._start or 0.0, step.end or step.start),
                message,
                call=call,
                tool_result=result,
            )
        return message

    async def _tool_attempt(self, op: OpenTool, *, shared: bool) -> ToolResult:
        step, tool, args = op.step, op.tool, op.args
        assert tool is not None
        step.attempts += 1
        if step.attempts > 1:
            step.last_attempt_start = self._now()
        timeouts = self.run._timeouts
        scope = self._stretch if shared else timeouts.scope()
        timeouts.add(scope, self.timeout_s)
        key = _KEY.set((self._run_id, step.id)) if tool.name in self._keyed else None
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
            if key is not None:
                _KEY.reset(key)
            timeouts.remove(scope)
        if not shared and scope.cancelled_caught:
            raise StepTimeout(f"it did not finish within its timeout of {self.timeout_s} s")
        return result

    def _close_tool(
        self,
        op: OpenTool,
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

    async def _retry(self, failed: Exception, attempt: Callable[[], Awaitable[T]]) -> T:
        """After a first attempt failed with ``failed``: retry if the policy lets, else raise it."""
        if self.retry.max_attempts == 1 or not is_retryable(failed):
            raise failed
        return await retry_after(
            failed, attempt, self.retry, rng=self.run._rng, before_sleep=self.run._log_retry
        )

    def _step_attributes(self, step: LoopStep) -> dict[str, Any]:
        """The ``agentrt.step.*`` attributes of a call's span, leaving out what is implied.

        The kind is the span's operation (chat, execute_tool); a missing status means
        succeeded, missing attempts one, a missing retry_s none: each attribute costs the
        OpenTelemetry SDK about a microsecond, and a turn has two spans.
        """
        attributes: dict[str, Any] = {sc.STEP_ID: step.id, sc.STEP_INDEX: step.index}
        if step.waits_for:
            attributes[sc.STEP_WAITS_FOR] = step.waits_for
        if step.state != "succeeded":
            attributes[sc.STEP_STATUS] = step.state
        if step.attempts != 1:
            attributes[sc.STEP_ATTEMPTS] = step.attempts
            if step.attempts > 1:
                attributes[sc.STEP_RETRY_S] = step.retry_s
        return attributes

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


def _call_number(step_id: str) -> int:
    """K of a tool step ``tool-T-K``."""
    return int(step_id.rpartition("-")[2])
