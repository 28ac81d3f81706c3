"""The agent loop: runs a conversation with tools, a plan's DAG or a policy on anyio.

Timeouts, deadlines and retries are the same for all three; the tool-calling loop itself lives in
`agentrt._toolloop`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, final

import anyio
import structlog
from anyio.abc import TaskGroup
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, TracerProvider
from pydantic import JsonValue, ValidationError
from tenacity import RetryCallState

from agentrt._construct import trusted
from agentrt._journalrun import (
    RestoredCall,
    RunJournal,
    conversation_hash,
    launch_of,
    target_of,
)
from agentrt._loopparts import (
    DEFAULT_MAX_CONCURRENT_TOOLS,
    DEFAULT_MAX_TOOL_FAILURES,
    DEFAULT_MAX_TURNS,
    call_with_retries,
    conversation,
)
from agentrt._timeouts import AttemptTimeouts
from agentrt._toolloop import ToolLoop
from agentrt.clock import Clock, VirtualClock, current_clock
from agentrt.errors import (
    ConfigError,
    PlanError,
    StepFailed,
    StepTimeout,
    ToolError,
    ToolLoopFailed,
)
from agentrt.journal import _KEY, Journal, digest, wants_key
from agentrt.log import get_logger
from agentrt.plan import (
    Plan,
    RetryPolicy,
    Step,
    StepDefaults,
    StepKind,
    _templates_of,
    render_template,
    template_refs,
)
from agentrt.policy import Policy, RunState
from agentrt.redact import redact
from agentrt.result import RunResult, RunStatus, StepResult, StepStatus
from agentrt.retry import is_retryable
from agentrt.substrate import (
    InferenceRequest,
    InferenceResult,
    Message,
    Substrate,
    ToolCall,
    ToolSpec,
)
from agentrt.telemetry.tracing import Detail, Instruments, RunTracer, current_span, provider_of
from agentrt.tool import Tool, ToolResult, tool_spec
from agentrt.trajectory import Recorder

__all__ = ["Agent", "AgentRun"]

_log_proxy = get_logger("agentrt.agent")

_State = Literal["pending", "running", "succeeded", "failed", "cancelled", "skipped"]
#: Steps a policy may run: room for a 50-tool-call loop written as a policy, and then some.
_DEFAULT_MAX_STEPS = 200
#: The name a tool-calling run reports as its plan.
_CONVERSATION = "conversation"


@dataclass(slots=True)
class _StepRecord:
    """Mutable bookkeeping for one step while the run is in progress."""

    step: Step
    state: _State = "pending"
    start: float | None = None
    end: float | None = None
    attempts: int = 0
    inference: InferenceResult | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    energy_j: float = 0.0
    tool_result: ToolResult | None = None
    tool_s: float = 0.0
    error: BaseException | None = None
    index: int = 0
    waits_for: tuple[str, ...] = ()
    last_attempt_start: float | None = None
    span: Span | None = None
    span_context: Context | None = None
    frozen: StepResult | None = field(default=None)

    def outputs(self) -> dict[str, str]:
        frozen = self.frozen
        if frozen is not None and self.inference is None and self.tool_result is None:
            text, tool = frozen.text, frozen.tool_output  # restored from a journal
        else:
            text = self.inference.text if self.inference is not None else ""
            tool = self.tool_result.output if self.tool_result is not None else None
        return {"text": text, "tool": tool or "", "output": text if tool is None else tool}


@final
class Agent:
    """Runs conversations with tools, plans and policies on a substrate.

    ``await agent.run("task")`` is the tool-calling loop: the model answers with tool calls, the
    agent runs them (concurrently, at most ``max_concurrent_tools`` at a time) and sends the
    results back, until the model answers without tool calls (docs/agent-loop.md). One agent can
    run many conversations, plans and policies, one after another or concurrently; each run is
    independent.

    Example:
        >>> from agentrt import Agent, VirtualClock, run
        >>> from agentrt.testing import FunctionTool, ScriptedToolSubstrate
        >>> model = ScriptedToolSubstrate([("grep", {"pattern": "TODO"}), "3 TODOs left."])
        >>> grep = FunctionTool("grep", lambda args: "a.py:1 b.py:7 b.py:9")
        >>> result = run(Agent(model, tools=[grep]).run, "How many TODOs?", clock=VirtualClock())
        >>> result.output, [s.kind for s in result.steps]
        ('3 TODOs left.', ['chat', 'tool', 'chat'])

        >>> from agentrt import Agent, Plan, Step, VirtualClock, run
        >>> from agentrt.testing import FixedLatencySubstrate
        >>> agent = Agent(FixedLatencySubstrate(latency_s=0.2))
        >>> plan = Plan(name="hello", steps=[Step(id="think", prompt="Say hi.")])
        >>> result = run(agent.run, plan, clock=VirtualClock())
        >>> result.status, result.e2e_s
        ('succeeded', 0.2)

    Args:
        substrate: where every model call goes.
        tools: tools the model (or a plan's steps) may call, as instances (or a name -> tool
            mapping).
        name: the agent's name (in results, logs and traces).
        seed: seeds retry jitter, so virtual-time runs repeat exactly.
        defaults: timeout and retry policy for policy-driven steps that set none (plans carry
            their own ``defaults``).
        tracer_provider: where spans go; default the global one (a no-op until an application
            configures the SDK, e.g. with `agentrt.telemetry.configure`).
        meter_provider: where metrics go; default the global one.
        trace_detail: ``steps`` (default) emits run, step, chat and tool spans; ``phases`` also
            queue/network/prefill/decode spans under each model call (up to four more spans
            per call: the CLI's ``run`` turns them on, many-run commands leave them off).
        recorder: told of every model and tool call (`agentrt.trajectory.Recorder`), e.g. to
            write a trajectory to replay.
        max_concurrent_tools: tool calls of one model turn that run at the same time.
        max_tool_failures: failed tool calls in a row (bad arguments, unknown tool, an error:
            each goes back to the model as a tool message) after which a tool loop fails.
        journal: commit every finished step of plans and conversations to this
            `agentrt.journal.Journal`, so that `resume` can continue a run after its process
            died (docs/journal.md).
    """

    def __init__(
        self,
        substrate: Substrate,
        *,
        tools: Iterable[Tool] | Mapping[str, Tool] = (),
        name: str = "agent",
        seed: int | None = None,
        defaults: StepDefaults | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        trace_detail: Detail = "steps",
        recorder: Recorder | None = None,
        max_concurrent_tools: int = DEFAULT_MAX_CONCURRENT_TOOLS,
        max_tool_failures: int = DEFAULT_MAX_TOOL_FAILURES,
        journal: Journal | None = None,
    ) -> None:
        if max_concurrent_tools < 1:
            raise ConfigError(
                f"max_concurrent_tools must be at least 1, got {max_concurrent_tools}"
            )
        if max_tool_failures < 1:
            raise ConfigError(f"max_tool_failures must be at least 1, got {max_tool_failures}")
        self.substrate = substrate
        self.recorder = recorder
        self.max_concurrent_tools = max_concurrent_tools
        self.max_tool_failures = max_tool_failures
        self._specs: dict[tuple[str, ...], tuple[ToolSpec, ...]] = {}
        self.defaults = defaults or StepDefaults()
        self.tracer_provider = tracer_provider
        self.trace_detail: Detail = trace_detail
        self._instruments = Instruments(meter_provider)
        self._provider = provider_of(substrate)
        self._remote = bool(getattr(substrate, "remote", False))
        if isinstance(tools, Mapping):
            self.tools: dict[str, Tool] = dict(tools)
        else:
            self.tools = {}
            for tool in tools:
                if tool.name in self.tools:
                    raise ConfigError(f"two tools are named {tool.name!r}; tool names must differ")
                self.tools[tool.name] = tool
        self.name = name
        self.seed = seed
        self.journal = journal

    def specs(self, names: Sequence[str] | None = None) -> tuple[ToolSpec, ...]:
        """The `ToolSpec` of each tool (or of the tools ``names``), as model requests offer them.

        Computed once per set of names.

        Raises:
            ConfigError: a tool's name is not one a model can call (OpenAI's rule:
                ``^[A-Za-z0-9_-]{1,64}$``) or its argument model has no JSON schema.
        """
        key = tuple(self.tools) if names is None else tuple(names)
        specs = self._specs.get(key)
        if specs is None:
            try:
                specs = tuple(tool_spec(self.tools[n]) for n in key)
            except (ValidationError, TypeError, ValueError) as exc:
                raise ConfigError(
                    f"cannot offer the tools {', '.join(key)} to a model: {exc}; tool names "
                    "must match ^[A-Za-z0-9_-]{1,64}$ and argument models must have a JSON schema"
                ) from exc
            self._specs[key] = specs
        return specs

    def prepare(
        self,
        target: Plan | Policy | str | Sequence[Message],
        *,
        run_id: str | None = None,
        deadline_s: float | None = None,
        max_steps: int | None = None,
        max_turns: int | None = None,
        launch: Mapping[str, JsonValue] | None = None,
    ) -> AgentRun:
        """Check ``target`` against this agent and return a run ready to `AgentRun.execute`.

        Use this instead of `run` when you need the partial result of a run that is cancelled
        from outside: ``AgentRun.result()`` works at any time.

        Raises:
            ConfigError: a step names a tool this agent does not have, a bad limit, an empty
                conversation, or a policy with a journal (journals hold plans and conversations).
            JournalMismatch: ``run_id`` is in the journal with another plan or task.
        """
        if isinstance(target, str | Sequence):
            if max_steps is not None:
                raise ConfigError(
                    "max_steps bounds a policy; a conversation is bounded by max_turns"
                )
            messages = conversation(target)
            if not messages or not all(isinstance(m, Message) for m in messages):
                raise ConfigError(
                    "a conversation is a task text or a non-empty sequence of Message objects"
                )
            target = messages
            self.specs()  # fails here, before the run, if a tool cannot be offered
        elif isinstance(target, Plan):
            wanted = (name for s in target.steps for name in (s.tool, *s.tools) if name)
            missing = sorted({name for name in wanted if name not in self.tools})
            if missing:
                users = [s.id for s in target.steps if {s.tool, *s.tools} & set(missing)]
                known = ", ".join(sorted(self.tools)) or "none"
                raise PlanError(
                    f"step(s) {', '.join(users)} use tool(s) {', '.join(missing)} that the agent "
                    f"does not have (agent tools: {known}); pass them as Agent(..., tools=[...])",
                    step_ids=tuple(users),
                )
            for step in target.steps:
                if step.tools:
                    self.specs(step.tools)
        if deadline_s is not None and deadline_s <= 0:
            raise ConfigError(f"deadline_s must be positive, got {deadline_s}")
        if max_steps is not None and max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
        if max_turns is not None and max_turns < 1:
            raise ConfigError(f"max_turns must be at least 1, got {max_turns}")
        run_id = run_id or os.urandom(8).hex()
        journal = None if self.journal is None else self._run_journal(target, run_id, launch)
        return AgentRun(
            self,
            target,
            run_id=run_id,
            deadline_s=deadline_s,
            max_steps=max_steps,
            max_turns=max_turns,
            journal=journal,
        )

    def _run_journal(
        self,
        target: Plan | Policy | list[Message],
        run_id: str,
        launch: Mapping[str, JsonValue] | None,
    ) -> RunJournal:
        assert self.journal is not None
        if not isinstance(target, Plan | list):
            raise ConfigError(
                f"policy {target.name!r} cannot run with a journal: journals hold plans and "
                "conversations; run it on an Agent without journal=..."
            )
        described: dict[str, JsonValue] = {
            **launch_of(target),
            "substrate": self.substrate.name,
            "tools": list(self.tools),
            "seed": self.seed,
            **(launch or {}),
        }
        if isinstance(target, Plan):
            return RunJournal(
                self.journal,
                run_id,
                kind="plan",
                name=target.name,
                digest=digest(target.model_dump(mode="json")),
                launch=described,
                steps_total=len(target.steps),
            )
        return RunJournal(
            self.journal,
            run_id,
            kind="conversation",
            name=_CONVERSATION,
            digest=conversation_hash(target, self.specs()),
            launch=described,
            steps_total=None,
        )

    async def run(
        self,
        target: Plan | Policy | str | Sequence[Message],
        *,
        run_id: str | None = None,
        deadline_s: float | None = None,
        max_steps: int | None = None,
        max_turns: int | None = None,
        launch: Mapping[str, JsonValue] | None = None,
    ) -> RunResult:
        """Run a conversation with tools, a plan or a policy, and return the result.

        A task text (or a list of messages) runs the tool-calling loop: model, tool calls, tool
        messages, model ... until the model answers without tool calls (``result.output``). A
        plan runs its DAG, independent steps concurrently; a policy chooses steps as it goes.

        A failed run is returned, not raised: check ``result.status`` or call
        ``result.raise_for_status()``. Cancellation from outside propagates (use `prepare` to keep
        the partial result).

        Args:
            target: the task text or conversation, a `Plan`, or a `Policy`.
            run_id: an id for logs and traces; random by default.
            deadline_s: the whole-run deadline; default the plan's ``deadline_s`` (none
                otherwise unless given).
            max_steps: for policies, the most steps to run (default 200).
            max_turns: for conversations, the most model calls (default 100); for a plan, the
                default of its steps with ``tools`` that set none.
            launch: with a journal, extra JSON stored with the run to rebuild it elsewhere (the
                CLI stores its substrate options); the plan or messages, substrate name, tool
                names and seed are stored anyway.

        With a journal, a ``run_id`` the journal already holds continues that run (as `resume`
        does, with this target: a changed one raises `agentrt.journal.JournalMismatch`).
        """
        agent_run = self.prepare(
            target,
            run_id=run_id,
            deadline_s=deadline_s,
            max_steps=max_steps,
            max_turns=max_turns,
            launch=launch,
        )
        await agent_run.execute()
        return agent_run.result()

    async def resume(
        self,
        run_id: str,
        *,
        target: Plan | str | Sequence[Message] | None = None,
        deadline_s: float | None = None,
        max_turns: int | None = None,
    ) -> RunResult:
        """Continue the journaled run ``run_id``: finished steps are not run again.

        Steps the journal holds as finished keep their results (their outputs feed the steps
        after them); steps that were in flight run again, their tool calls with the same
        `agentrt.journal.idempotency_key`. A run that succeeded returns its stored result.

        Example:
            >>> import tempfile, pathlib
            >>> from agentrt import Agent, Plan, Step, VirtualClock, run
            >>> from agentrt.journal import Journal
            >>> from agentrt.testing import FixedLatencySubstrate
            >>> journal = Journal(pathlib.Path(tempfile.mkdtemp()) / "runs.db")
            >>> agent = Agent(FixedLatencySubstrate(latency_s=0.2), journal=journal)
            >>> plan = Plan(name="hello", steps=[Step(id="think", prompt="Say hi.")])
            >>> first = run(lambda: agent.run(plan, run_id="r1"), clock=VirtualClock())
            >>> run(agent.resume, "r1", clock=VirtualClock()) == first  # stored: nothing runs
            True
            >>> journal.close()

        Args:
            run_id: the run to continue.
            target: the plan (or task) to check against the journal; default the one stored.
            deadline_s: the whole-run deadline of this execution.
            max_turns: as in `run`.

        Raises:
            ConfigError: the agent has no journal.
            UnknownNameError: the journal has no such run (the message suggests close ones).
            JournalMismatch: ``target`` is not the plan (or task) the run started with.
        """
        if self.journal is None:
            raise ConfigError("resume needs a journal: Agent(..., journal=Journal(PATH))")
        info = self.journal.run(run_id)
        return await self.run(
            target if target is not None else target_of(info.launch),
            run_id=run_id,
            deadline_s=deadline_s,
            max_turns=max_turns,
            launch=info.launch,
        )

    async def aclose(self) -> None:
        """Close the substrate and every tool."""
        await self.substrate.aclose()
        for tool in self.tools.values():
            await tool.aclose()


@final
class AgentRun:
    """One execution of a conversation, plan or policy by an `Agent`; see `Agent.prepare`."""

    def __init__(
        self,
        agent: Agent,
        target: Plan | Policy | list[Message],
        *,
        run_id: str,
        deadline_s: float | None,
        max_steps: int | None,
        max_turns: int | None = None,
        journal: RunJournal | None = None,
    ) -> None:
        self.agent = agent
        self._journal = journal
        self.target = target
        self.run_id = run_id
        plan_deadline = target.deadline_s if isinstance(target, Plan) else None
        self.deadline_s = deadline_s if deadline_s is not None else plan_deadline
        self.max_steps = max_steps or _DEFAULT_MAX_STEPS
        self.max_turns = max_turns or DEFAULT_MAX_TURNS
        # (isinstance against the Policy protocol is slow: not on every run.)
        self.name = _CONVERSATION if isinstance(target, list) else target.name
        self._loop: ToolLoop | None = None
        self._records: dict[str, _StepRecord] = {}
        self._finished: list[StepResult] = []
        self._finished_by_id: dict[str, StepResult] = {}
        self._clock: Clock = current_clock()
        self._start: float | None = None
        self._end: float | None = None
        self._status: RunStatus | None = None
        self._error: str | None = None
        self._failed_step: str | None = None
        self._started = False
        self._random: random.Random | None = None
        self._log: Any = _log_proxy
        # Replaced by the run's own tracer in execute(); until then nothing is traced.
        self._tracer = _idle_tracer()
        self._metrics = False
        self._log_context = True
        self._log_steps = True
        # Created in execute(), on the loop that runs the attempts.
        self._timeouts: AttemptTimeouts
        if isinstance(target, Plan):
            for index, step in enumerate(target.steps):
                self._records[step.id] = _StepRecord(step, index=index, waits_for=step.depends_on)

    @property
    def _rng(self) -> random.Random:
        """Retry jitter's generator, seeded on first use (most runs never retry)."""
        if self._random is None:
            self._random = random.Random(self.agent.seed)
        return self._random

    @property
    def _plan(self) -> Plan | None:
        return self.target if isinstance(self.target, Plan) else None

    async def execute(self) -> None:
        """Run to completion, failure or deadline. Call once.

        Never raises for step failures (they end up in `result`); cancellation from outside
        propagates after every in-flight step has been cancelled and recorded. A journaled run
        that succeeded before does nothing.
        """
        if self._started:
            raise ConfigError(f"run {self.run_id} was already executed; prepare a new one")
        self._started = True
        if self._journal is not None and self._journal.stored is not None:
            return  # it succeeded before: `result` is the journal's
        self._clock = current_clock()
        self._start = self._clock.current_time()
        target_name = self.name
        tracer = self._tracer = RunTracer(
            self.agent.tracer_provider, self._clock, detail=self.agent.trace_detail
        )
        journal = self._journal
        tracer.start_run(
            agent=self.agent.name,
            run_id=self.run_id,
            target=target_name,
            t=self._start,
            links=(journal.link,) if journal is not None and journal.link is not None else (),
        )
        if journal is not None:
            self._restore(journal)
        self._metrics = self.agent._instruments.active
        self._log_context = _logs_read_contextvars()
        self._timeouts = AttemptTimeouts()
        # One concrete logger per run, built from the logging configuration in force now:
        # cheaper per event than the module-level proxy, and never stale after a reconfigure.
        self._log = _log_proxy.bind()
        _log = self._log
        self._log_steps = _info_enabled(_log)
        with (
            structlog.contextvars.bound_contextvars(run_id=self.run_id)
            if self._log_context
            else nullcontext(),
            current_span(tracer.root if tracer.enabled else None),
        ):
            _log.info("run_started", agent=self.agent.name, target=target_name)
            try:
                # No scope at all without a deadline: one cancel scope less per run.
                deadline = self.deadline_s
                with (
                    anyio.move_on_after(deadline) if deadline is not None else _NO_DEADLINE
                ) as scope:
                    if isinstance(self.target, list):
                        await self._run_conversation(self.target)
                    elif isinstance(self.target, Plan):
                        await self._run_dag(self.target)
                    else:
                        await self._run_policy(self.target)
                if scope.cancelled_caught:
                    self._fail(f"run deadline of {self.deadline_s} s exceeded", step_id=None)
            finally:
                self._timeouts.close()
                self._end = self._clock.current_time()
                self._close_records()
                if self._status is None:
                    # Leaving without a verdict means we were cancelled from outside.
                    self._status = "cancelled"
                    self._error = self._error or "cancelled by the caller"
                tracer.end_run(status=self._status, error=self._error, t=self._end)
                if self.agent.recorder is not None:
                    self.agent.recorder.finish(self.run_id, self._status, self._end - self._start)
                if journal is not None:
                    journal.finish(self.result())
                _log.info(
                    "run_finished",
                    status=self._status,
                    e2e_s=self._end - self._start,
                    error=self._error,
                )

    def _restore(self, journal: RunJournal) -> None:
        """Record the run as (re)started, and take over the steps an earlier execution finished."""
        tracer = self._tracer
        root = tracer.root.get_span_context() if tracer.enabled and tracer.root else None
        journal.begin(
            tracer.trace_id,
            None if root is None else format(root.span_id, "016x"),
        )
        if not isinstance(self.target, Plan):
            return
        for result, _ in journal.steps:
            record = self._records.get(result.id)
            if record is not None:
                record.state = result.status
                record.attempts = result.attempts
                record.frozen = result

    def result(self) -> RunResult:
        """The run's result so far: final after `execute` returns (or is cancelled).

        A journaled run that had succeeded before is its stored result.
        """
        if self._journal is not None and self._journal.stored is not None:
            return self._journal.stored
        start = self._start if self._start is not None else 0.0
        end = self._end if self._end is not None else self._clock.current_time()
        messages: tuple[Message, ...] = ()
        if isinstance(self.target, list):
            loop = self._loop
            steps = loop.results(start, end) if loop is not None else []
            messages = tuple(loop.messages) if loop is not None else tuple(self.target)
            output = loop.output if loop is not None else ""
        else:
            if isinstance(self.target, Plan):
                steps = [self._freeze(self._records[sid]) for sid in self.target.order]
                last: StepResult | None = steps[-1]
            else:
                steps = [self._freeze(rec) for rec in self._records.values()]
                last = self._finished[-1] if self._finished else steps[-1] if steps else None
            output = last.output if last is not None and last.status == "succeeded" else ""
        # Every part is valid already: validating the result would re-check each step and
        # message, work proportional to the run on top of the run.
        return trusted(
            RunResult,
            {
                "run_id": self.run_id,
                "agent": self.agent.name,
                "plan": self.name,
                "status": self._status or ("cancelled" if self._end is not None else "failed"),
                "clock": "virtual" if isinstance(self._clock, VirtualClock) else "real",
                "e2e_s": max(0.0, end - start) if self._start is not None else 0.0,
                "steps": tuple(steps),
                "error": self._error if self._status != "succeeded" else None,
                "failed_step": self._failed_step,
                "trace_id": self._tracer.trace_id,
                "seed": self.agent.seed,
                "output": output,
                "messages": messages,
            },
        )

    # -- the three drivers -----------------------------------------------------------------

    async def _run_conversation(self, messages: list[Message]) -> None:
        agent = self.agent
        loop = self._loop = ToolLoop(
            self,
            list(messages),
            tools=agent.tools,
            specs=agent.specs(),
            max_turns=self.max_turns,
            timeout_s=agent.defaults.timeout_s,
            retry=agent.defaults.retry,
            request={"run_id": self.run_id, "step_kind": "chat"},
            parent=self._tracer.root_context if self._tracer.enabled else None,
            as_steps=True,
        )
        try:
            journal = self._journal
            if journal is not None and journal.steps:
                restored = [RestoredCall(result, payload) for result, payload in journal.steps]
                if not loop.restore(restored):
                    await loop.run_to_answer()
            else:
                await loop.run_to_answer()
        except ToolLoopFailed as exc:
            self._fail(str(exc), step_id=loop.failed_step)
        except Exception as exc:  # a model call failed for good
            step = loop.steps[-1]
            self._fail(str(StepFailed(step.id, exc, attempts=step.attempts)), step_id=step.id)
        else:
            self._status = "succeeded"

    async def _run_dag(self, plan: Plan) -> None:
        journal = self._journal
        waiting = {s.id: len(set(s.depends_on)) for s in plan.steps}
        children: dict[str, list[str]] = {s.id: [] for s in plan.steps}
        for s in plan.steps:
            for dep in set(s.depends_on):
                children[dep].append(s.id)

        async def chain(step_id: str, tg: TaskGroup) -> None:
            # Run a step, then its newly ready dependents: the first inline (a sequential chain
            # costs no task spawns), the others as new tasks.
            current: str | None = step_id
            while current is not None:
                record = self._records[current]
                if record.state == "pending":  # (else restored from the journal)
                    await self._execute_step(
                        record, plan.timeout_for(record.step), plan.retry_for(record.step)
                    )
                    if journal is not None:
                        self._commit(journal, record)
                if record.state == "failed" and not record.step.optional:
                    self._fail(str(record.error), step_id=current)
                    tg.cancel_scope.cancel()
                    return
                ready = []
                for child in children[current]:
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        ready.append(child)
                current = ready[0] if ready else None
                for other in ready[1:]:
                    tg.start_soon(chain, other, tg, name=f"agentrt step {other}")

        async with anyio.create_task_group() as tg:
            for step_id in plan.order:
                if waiting[step_id] == 0:
                    tg.start_soon(chain, step_id, tg, name=f"agentrt step {step_id}")
        if self._status is None:
            self._status = "succeeded"

    def _commit(self, journal: RunJournal, record: _StepRecord) -> None:
        """Journal a plan step that ended so that the run goes on (succeeded, or optional)."""
        if record.state == "succeeded" or (record.state == "failed" and record.step.optional):
            journal.plan_step(self._freeze(record))

    async def _run_policy(self, policy: Policy) -> None:
        started = 0
        previous: tuple[str, ...] = ()
        while True:
            state = RunState(
                results=self._finished,
                index=self._finished_by_id,
                elapsed_s=self._clock.current_time() - (self._start or 0.0),
                steps_run=started,
                max_steps=self.max_steps,
            )
            try:
                proposed = list(await policy.next_steps(state))
            except Exception as exc:
                self._log.exception("policy_failed", policy=policy.name)
                self._fail(
                    f"policy {policy.name!r} raised {type(exc).__name__}: {exc}", step_id=None
                )
                return
            if not proposed:
                self._status = "succeeded"
                return
            if started >= self.max_steps:
                self._fail(
                    f"max_steps={self.max_steps} reached before the policy finished "
                    f"(no {StepKind.ANSWER.value} step succeeded)",
                    step_id=None,
                )
                return
            batch = proposed[: self.max_steps - started]
            try:
                self._admit(batch, after=previous, first_index=started)
            except PlanError as exc:
                self._fail(str(exc), step_id=None)
                return
            started += len(batch)
            previous = tuple(s.id for s in batch)
            async with anyio.create_task_group() as tg:
                for step in batch:
                    tg.start_soon(self._run_policy_step, self._records[step.id], tg)
            if self._status is not None:
                return
            if any(
                self._records[s.id].state == "succeeded" and s.kind == StepKind.ANSWER
                for s in batch
            ):
                self._status = "succeeded"
                return

    async def _run_policy_step(self, record: _StepRecord, tg: TaskGroup) -> None:
        defaults = self.agent.defaults
        timeout = record.step.timeout_s or defaults.timeout_s
        policy = record.step.retry or defaults.retry
        await self._execute_step(record, timeout, policy)
        if record.state == "failed" and not record.step.optional:
            self._fail(str(record.error), step_id=record.step.id)
            tg.cancel_scope.cancel()

    def _admit(self, batch: Sequence[Step], *, after: tuple[str, ...], first_index: int) -> None:
        """Check a policy's proposed steps against what has run, then record them.

        ``after`` is the previous batch: a policy step cannot start before it has ended, so it
        waits for those steps as well as for its declared dependencies.
        """
        problems: list[str] = []
        ids = [s.id for s in batch]
        for step in batch:
            if step.id in self._records or ids.count(step.id) > 1:
                problems.append(f"step id {step.id!r} is already used in this run")
            unknown = [d for d in step.depends_on if d not in self._records or d in ids]
            if unknown:
                problems.append(f"step {step.id!r} depends on steps not finished yet: {unknown}")
            problems.extend(
                f"step {step.id!r} uses unknown tool {name!r}"
                for name in (step.tool, *step.tools)
                if name is not None and name not in self.agent.tools
            )
            if step.kind in (StepKind.SEARCH, StepKind.DEBUG) and not (step.tool or step.tools):
                problems.append(f"step {step.id!r} is a {step.kind} step but names no tool")
        if problems:
            raise PlanError(
                "policy proposed invalid steps: " + "; ".join(problems), step_ids=tuple(ids)
            )
        for offset, step in enumerate(batch):
            waits_for = tuple(dict.fromkeys((*after, *step.depends_on)))
            self._records[step.id] = _StepRecord(
                step, index=first_index + offset, waits_for=waits_for
            )

    # -- one step ----------------------------------------------------------------------------

    async def _execute_step(
        self, record: _StepRecord, timeout_s: float, policy: RetryPolicy
    ) -> None:
        step = record.step
        clock = self._clock
        record.state = "running"
        record.start = clock.current_time()
        tracer = self._tracer
        span = record.span = tracer.start_step(step, t=record.start)
        # Children get the step's context explicitly; the run's root span stays the current one
        # (log lines carry its trace id), which saves attaching a context per step.
        record.span_context = tracer.context_of(span)
        # bind/reset rather than bound_contextvars(): same effect, a third of the cost per step;
        # and nothing at all when no log processor reads context variables (logging off).
        tokens = (
            structlog.contextvars.bind_contextvars(step_id=step.id, kind=step.kind)
            if self._log_context
            else None
        )
        _log = self._log
        log_steps = self._log_steps
        if log_steps:
            _log.info("step_started")
        try:
            await self._attempts(record, timeout_s, policy)
        except Exception as exc:
            record.error = StepFailed(step.id, exc, attempts=record.attempts)
            record.state = "failed"
            record.end = clock.current_time()
            _log.warning(
                "step_failed",
                substrate=self.agent.substrate.name,
                latency_s=record.end - record.start,
                attempts=record.attempts,
                optional=step.optional,
                error=f"{type(exc).__name__}: {exc}",
            )
        else:
            record.state = "succeeded"
            record.end = clock.current_time()
            if log_steps:
                _log.info(
                    "step_finished",
                    substrate=record.inference.substrate if record.inference else None,
                    latency_s=record.end - record.start,
                    attempts=record.attempts,
                )
        finally:
            if record.state == "running":
                record.state = "cancelled"
                record.end = clock.current_time()
                _log.info("step_cancelled", latency_s=record.end - record.start)
            if span is not None:
                tracer.end_step(
                    span,
                    step,
                    index=record.index,
                    waits_for=record.waits_for,
                    status=record.state,
                    attempts=record.attempts,
                    retry_s=_retry_s(record),
                    error=record.error,
                    t=record.end if record.end is not None else clock.current_time(),
                )
            if self._plan is None:
                finished = self._freeze(record)
                self._finished.append(finished)
                self._finished_by_id[finished.id] = finished
            if tokens is not None:
                structlog.contextvars.reset_contextvars(**tokens)

    async def _attempts(self, record: _StepRecord, timeout_s: float, policy: RetryPolicy) -> None:
        await call_with_retries(
            lambda: self._timed_attempt(record, timeout_s),
            policy,
            rng=self._rng,
            before_sleep=self._log_retry,
        )

    async def _timed_attempt(self, record: _StepRecord, timeout_s: float) -> None:
        record.attempts += 1
        record.last_attempt_start = self._clock.current_time()
        timeouts = self._timeouts
        scope = timeouts.scope()
        timeouts.add(scope, timeout_s)
        try:
            with scope:
                await self._attempt(record)
        finally:
            timeouts.remove(scope)
        if scope.cancelled_caught:
            raise StepTimeout(
                f"attempt {record.attempts} of step {record.step.id!r} exceeded its "
                f"timeout of {timeout_s} s"
            )

    async def _attempt(self, record: _StepRecord) -> None:
        step = record.step
        outputs = self._outputs_for(step)
        prompt = step.prompt or step.default_prompt()
        if outputs:
            prompt = render_template(prompt, outputs)
        # A plan's own prompts repeat run after run; rendered ones (tool output inside) do not.
        message = (
            _user_message(prompt)
            if not outputs and len(prompt) <= _CACHED_PROMPT_CHARS
            else Message(role="user", content=prompt)
        )
        if step.tools:
            await self._tool_loop_attempt(record, message)
            return
        request = InferenceRequest(
            messages=(message,),
            max_output_tokens=step.output_tokens_hint,
            prompt_tokens=step.prompt_tokens,
            run_id=self.run_id,
            step_id=step.id,
            step_kind=step.kind,
            slo=step.slo,
            substrate_hint=step.substrate,
        )
        tracer = self._tracer
        clock = self._clock
        t0 = clock.current_time()
        substrate = self.agent.substrate
        chat = tracer.start_chat(record.span_context, request, substrate, t=t0)
        result: InferenceResult | None = None
        error: BaseException | None = None
        try:
            if chat is not None and self.agent._remote:
                # Remote substrates propagate the current span (W3C traceparent) to their server.
                with current_span(chat):
                    result = await substrate.infer(request)
            else:
                result = await substrate.infer(request)
        except BaseException as exc:  # recorded on the span, then re-raised untouched
            error = exc
            raise
        finally:
            t1 = clock.current_time()
            if chat is not None:
                tracer.end_chat(
                    chat,
                    request,
                    substrate,
                    attempt=record.attempts,
                    result=result,
                    error=error,
                    t_start=t0,
                    t_end=t1,
                )
        if self._metrics:
            self.agent._instruments.record(result, t1 - t0, self.agent._provider)
        recorder = self.agent.recorder
        if recorder is not None:
            recorder.model_turn(request, result)
        record.inference = result
        record.input_tokens += result.usage.input_tokens
        record.output_tokens += result.usage.output_tokens
        record.cost_usd += result.cost_usd
        record.energy_j += result.energy_j
        if step.tool is None:
            return
        tool = self.agent.tools[step.tool]
        raw_args = _render_args(step.args, outputs)
        try:
            args = tool.args_model.model_validate(raw_args)
        except ValidationError as exc:
            raise ToolError(
                f"invalid arguments for tool {tool.name!r} in step {step.id!r}: "
                f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
            ) from exc
        t0 = clock.current_time()
        tool_span = tracer.start_tool(record.span_context, tool.name, attempt=record.attempts, t=t0)
        tool_result: ToolResult | None = None
        key = (
            _KEY.set((self.run_id, step.id))
            if self._journal is not None or wants_key(tool)
            else None
        )
        try:
            with current_span(tool_span if getattr(tool, "remote", False) else None):
                tool_result = await tool.call(args)
        except BaseException as exc:  # recorded on the span, then re-raised untouched
            error = exc
            raise
        finally:
            if key is not None:
                _KEY.reset(key)
            t1 = clock.current_time()
            tracer.end_tool(tool_span, result=tool_result, error=error, t=t1)
        measured = t1 - t0
        record.tool_result = tool_result
        record.tool_s = tool_result.duration_s if tool_result.duration_s is not None else measured
        if recorder is not None:
            arguments = json.dumps(raw_args, separators=(",", ":"))
            call = ToolCall(id=f"{step.id}-{record.attempts}", name=tool.name, arguments=arguments)
            recorder.tool_result(call, tool_result, record.tool_s)

    async def _tool_loop_attempt(self, record: _StepRecord, message: Message) -> None:
        """One attempt of a plan step with ``tools``: a small tool loop from its prompt."""
        step = record.step
        agent = self.agent
        plan = self._plan
        if plan is not None:
            timeout_s, retry = plan.timeout_for(step), plan.retry_for(step)
        else:
            timeout_s = step.timeout_s or agent.defaults.timeout_s
            retry = step.retry or agent.defaults.retry
        loop = ToolLoop(
            self,
            [message],
            tools={name: agent.tools[name] for name in step.tools},
            specs=agent.specs(step.tools),
            max_turns=step.max_turns or self.max_turns,
            timeout_s=timeout_s,
            retry=retry,
            request={
                "run_id": self.run_id,
                "step_id": step.id,
                "step_kind": step.kind,
                "max_output_tokens": step.output_tokens_hint,
                "prompt_tokens": step.prompt_tokens,
                "slo": step.slo,
                "substrate_hint": step.substrate,
            },
            parent=record.span_context,
            as_steps=False,
            attempt=record.attempts,
        )
        try:
            await loop.run_to_answer()
        except ToolLoopFailed:
            raise
        except Exception as exc:
            if not is_retryable(exc):
                raise
            # Its own retries are spent: retrying the step would run the whole loop again.
            raise ToolLoopFailed(
                f"model call {loop.turns} of step {step.id!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            record.input_tokens += loop.input_tokens
            record.output_tokens += loop.output_tokens
            record.cost_usd += loop.cost_usd
            record.energy_j += loop.energy_j
            record.tool_s = loop.tool_s
            if loop.last is not None:
                record.inference = loop.last.model_copy(
                    update={"text": loop.output, "timing": loop.timing}
                )

    def _outputs_for(self, step: Step) -> dict[str, dict[str, str]]:
        if not step.args and (step.prompt is None or "{{" not in step.prompt):
            return {}
        # Only the steps the templates name (plans check that each is an ancestor, and find
        # them once when built): walking every ancestor per step made long chains quadratic.
        plan = self._plan
        wanted: Iterable[str | None] = (
            plan.references(step.id)
            if plan is not None
            else {ref.step_id for text in _templates_of(step) for ref in template_refs(text)}
        )
        records = self._records
        return {sid: records[sid].outputs() for sid in wanted if sid is not None and sid in records}

    # -- bookkeeping ---------------------------------------------------------------------------

    def _log_retry(self, state: RetryCallState) -> None:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        self._log.info(
            "step_retry",
            attempt=state.attempt_number,
            wait_s=state.upcoming_sleep,
            error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
        )

    def _fail(self, reason: str, *, step_id: str | None) -> None:
        if self._status is None:
            self._status = "failed"
            self._error = redact(reason)
            self._failed_step = step_id

    def _close_records(self) -> None:
        now = self._clock.current_time()
        for record in self._records.values():
            if record.state == "running":
                record.state = "cancelled"
                record.end = now
            elif record.state == "pending":
                record.state = "skipped"

    def _freeze(self, record: _StepRecord) -> StepResult:
        if record.frozen is not None and record.state not in ("pending", "running"):
            return record.frozen
        origin = self._start or 0.0
        inference = record.inference
        status: StepStatus = (
            "cancelled"
            if record.state == "running"
            else "skipped"
            if record.state == "pending"
            else record.state
        )
        # Every value is valid by construction: no validation (it cost a tenth of a step).
        frozen = trusted(
            StepResult,
            {
                "id": record.step.id,
                "kind": record.step.kind,
                "status": status,
                "substrate": inference.substrate if inference else None,
                "model": inference.model if inference else None,
                "start_s": None if record.start is None else record.start - origin,
                "end_s": None if record.end is None else record.end - origin,
                "attempts": record.attempts,
                "input_tokens": record.input_tokens,
                "output_tokens": record.output_tokens,
                "tool": record.step.tool,
                "tool_s": record.tool_s,
                "tool_ok": record.tool_result.ok if record.tool_result else None,
                "timing": inference.timing if inference else None,
                "cost_usd": record.cost_usd,
                "energy_j": record.energy_j,
                "text": inference.text if inference else "",
                "tool_output": record.tool_result.output if record.tool_result else None,
                "error": _describe(record.error),
                "index": record.index,
                "waits_for": record.waits_for,
                "retry_s": _retry_s(record),
            },
        )
        if record.state not in ("pending", "running"):
            record.frozen = frozen
        return frozen


class _NoDeadline:
    """What ``move_on_after`` would be without a deadline: a scope that is never cancelled."""

    cancelled_caught = False

    def __enter__(self) -> _NoDeadline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_DEADLINE = _NoDeadline()


@functools.cache
def _idle_tracer() -> RunTracer:
    """A tracer that never records: what a prepared run holds before it executes."""
    return RunTracer(trace.NoOpTracerProvider(), current_clock())


#: Prompts up to this long are cached as messages (1,024 of them: at most ~4 million characters).
_CACHED_PROMPT_CHARS = 4096


@functools.lru_cache(maxsize=1024)
def _user_message(prompt: str) -> Message:
    """A user message, built once per prompt: messages are immutable."""
    return Message(role="user", content=prompt)


def _info_enabled(log: Any) -> bool:
    """Whether ``log`` emits info events (structlog's filtering loggers can tell; else assume so).

    Checked once per run: the per-step events are then skipped outright, arguments and all.
    """
    is_enabled_for = getattr(log, "is_enabled_for", None)
    return bool(is_enabled_for(logging.INFO)) if callable(is_enabled_for) else True


def _logs_read_contextvars() -> bool:
    """Whether structlog's processors, as configured now, merge context variables into events.

    They do by default and in every `agentrt.log.configure_logging` level but ``off``; when they
    do not, binding a step's ids to context variables would buy nothing.
    """
    if not structlog.is_configured():
        return False  # agentrt's loggers are silent (agentrt.log.get_logger)
    processors = structlog.get_config().get("processors", ())
    return structlog.contextvars.merge_contextvars in processors


def _retry_s(record: _StepRecord) -> float:
    """Time the step spent before its last attempt: failed attempts and back-off.

    Zero for a step tried once: the moment between its start and its only attempt is the
    runtime's own overhead, not a retry.
    """
    if record.start is None or record.last_attempt_start is None or record.attempts <= 1:
        return 0.0
    return record.last_attempt_start - record.start


def _describe(error: BaseException | None) -> str | None:
    if error is None:
        return None
    cause = error.__cause__ if isinstance(error, StepFailed) else error
    return redact(f"{type(cause).__name__}: {cause}" if cause is not None else str(error))


def _render_args(
    args: Mapping[str, JsonValue], outputs: Mapping[str, Mapping[str, str]]
) -> dict[str, JsonValue]:
    def render(value: JsonValue) -> JsonValue:
        if isinstance(value, str):
            return render_template(value, outputs) if "{{" in value else value
        if isinstance(value, dict):
            return {k: render(v) for k, v in value.items()}
        if isinstance(value, list):
            return [render(v) for v in value]
        return value

    return {k: render(v) for k, v in args.items()}
