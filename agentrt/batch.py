"""Batches of agent runs: the TASKS file, and many runs with bounded concurrency, in shards.

A TASKS file holds one JSON object a line: ``{"id": "t1", "task": "text"}`` is a tool-calling
run, ``{"id": "t2", "plan": "path.yaml"}`` runs a plan (its path relative to the TASKS file);
either may set ``max_turns`` and ``seed``. `read_tasks` checks the whole file before anything
runs and names the first bad line as ``FILE:LINE: what and the fix``.

`run_batch` runs the tasks on one substrate, at most ``concurrency`` at a time (an anyio
`CapacityLimiter`). A task that fails is a failed `TaskResult`; it does not stop the others.
Run ids are ``BATCH/TASK_ID``. With a journal, a task the journal shows succeeded is not run
again (its stored result is reported), and one that was cut short (a crash, Ctrl-C) or failed
continues where it stopped; a task line changed since is refused (`JournalMismatch`).

`shard` and `run_shard` spread a batch over an `agentrt.executors.Executor`: each shard runs in
its own process (or Ray task) with its share of the concurrency, and the results come back in
task order.

Example:
    >>> import agentrt
    >>> from agentrt.batch import BatchSettings, BatchTask, run_batch
    >>> tasks = [BatchTask(id="a", task="Say hi."), BatchTask(id="b", task="Say bye.")]
    >>> settings = BatchSettings(substrate="fixed", name="demo", concurrency=2)
    >>> results = agentrt.run(run_batch, settings, tasks, clock=agentrt.VirtualClock())
    >>> [(r.run_id, r.status) for r in results]
    [('demo/a', 'succeeded'), ('demo/b', 'succeeded')]
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
from opentelemetry.trace import NoOpTracerProvider
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from agentrt.agent import Agent
from agentrt.clock import VirtualClock
from agentrt.clock import run as run_on_clock
from agentrt.errors import AgentrtError, ConfigError
from agentrt.journal import Journal
from agentrt.plan import Plan, load_plan
from agentrt.registry import default_registry
from agentrt.replay import registered_tools
from agentrt.result import RunResult
from agentrt.substrate import Substrate
from agentrt.tool import Tool

__all__ = [
    "BatchSettings",
    "BatchTask",
    "TaskResult",
    "read_tasks",
    "run_batch",
    "run_shard",
    "shard",
]

_FIELDS = ("id", "task", "plan", "max_turns", "seed")
_SHAPE = (
    'each line is one object like {"id": "t1", "task": "text"} or {"id": "t2", "plan": "p.yaml"}'
)
#: Signals that cancel a shard running in a worker process (it unwinds and journals).
_CANCEL_ON = (signal.SIGINT, signal.SIGTERM)


class BatchTask(BaseModel):
    """One task of a batch: a task text for the tool-calling loop, or a plan.

    Example:
        >>> BatchTask(id="t1", task="Fix the bug.", max_turns=8).target
        'Fix the bug.'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=200, pattern=r"^[^/\s]+$")
    task: str | None = Field(default=None, min_length=1)
    plan: Plan | None = None
    max_turns: int | None = Field(default=None, ge=1)
    seed: int | None = None

    @property
    def target(self) -> str | Plan:
        """What the agent runs: the task text or the plan."""
        target = self.task if self.task is not None else self.plan
        if target is None:
            raise ConfigError(f"task {self.id!r} has neither a task nor a plan")
        return target

    def tool_names(self, tools: Sequence[str]) -> tuple[str, ...]:
        """The tools this task's agent holds: ``tools`` for a task text, a plan's own for a plan."""
        if self.plan is None:
            return tuple(tools)
        return tuple(sorted({n for s in self.plan.steps for n in (s.tool, *s.tools) if n}))


class BatchSettings(BaseModel):
    """How a batch runs: the substrate, tools, clock, concurrency and journal (picklable).

    Example:
        >>> BatchSettings(substrate="openai_http", options={"model": "llama-3.1-8b"}).concurrency
        4
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    substrate: str = Field(description="Registered substrate name.")
    options: dict[str, Any] = Field(default_factory=dict, description="Substrate options.")
    seed: int = Field(default=0, description="Substrate seed; tasks' default agent seed.")
    tools: tuple[str, ...] = Field(default=(), description="Tools offered to task-text runs.")
    virtual: bool = Field(default=False, description="Run in virtual time.")
    concurrency: int = Field(default=4, ge=1, description="Runs in flight at once.")
    journal: str | None = Field(default=None, description="SQLite journal file.")
    name: str = Field(default="batch", min_length=1, pattern=r"^[^/\s]+$")

    def run_id(self, task: BatchTask) -> str:
        """The task's stable run id, ``BATCH/TASK_ID``."""
        return f"{self.name}/{task.id}"


class TaskResult(BaseModel):
    """How one task of a batch went (one JSON line of the results).

    ``journal`` is ``new`` for a run started here, ``done`` for one the journal shows
    succeeded (its stored result; nothing runs again), ``resumed`` for one the journal holds
    unfinished (a crash, Ctrl-C) or failed: it continues, its finished steps not run again.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    run_id: str
    status: Literal["succeeded", "failed", "interrupted"]
    output: str = ""
    e2e_s: float = 0.0
    error: str | None = None
    steps: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    journal: Literal["new", "resumed", "done"] = "new"

    @classmethod
    def from_run(
        cls, task: BatchTask, result: RunResult, journal: Literal["new", "resumed", "done"]
    ) -> TaskResult:
        """The task's line from its `RunResult`."""
        return cls(
            id=task.id,
            run_id=result.run_id,
            status="succeeded" if result.status == "succeeded" else "failed",
            output=result.output,
            e2e_s=result.e2e_s,
            error=result.error,
            steps=len(result.steps),
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            journal=journal,
        )


def _line_error(where: str, what: str) -> ConfigError:
    return ConfigError(f"{where}: {what}")


def _parse_line(text: str, where: str, base: Path) -> BatchTask:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _line_error(where, f"not JSON ({exc.msg} at column {exc.colno}); {_SHAPE}") from None
    if not isinstance(raw, dict):
        raise _line_error(where, f"a JSON {type(raw).__name__}, not an object; {_SHAPE}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise _line_error(
            where,
            f"unknown field(s) {', '.join(map(repr, unknown))}; a line holds id, task or plan, "
            "and optionally max_turns and seed",
        )
    if "id" not in raw:
        raise _line_error(where, f"no id; {_SHAPE}")
    if ("task" in raw) == ("plan" in raw):
        raise _line_error(where, f"give exactly one of task and plan; {_SHAPE}")
    fields = dict(raw)
    if "plan" in raw:
        if not isinstance(raw["plan"], str) or not raw["plan"]:
            raise _line_error(where, "plan must be a path to a plan file (.yaml or .json)")
        path = base / raw["plan"]
        try:
            fields["plan"] = load_plan(path, tools=default_registry().tool_args_model)
        except ConfigError as exc:
            raise _line_error(where, f"plan {raw['plan']!r}: {exc}") from None
    try:
        return BatchTask(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "line"
        fix = {
            "id": "ids are 1-200 characters without '/' or spaces",
            "task": "task is a non-empty text",
            "max_turns": "max_turns is a whole number >= 1",
            "seed": "seed is a whole number",
        }.get(field, _SHAPE)
        raise _line_error(
            where, f"{field}: {err['msg']} (got {err.get('input')!r}); {fix}"
        ) from None


def read_tasks(path: str | Path) -> list[BatchTask]:
    """The tasks of a TASKS file (JSON Lines), each checked, plans loaded, ids unique.

    Example:
        ``tasks = read_tasks("examples/batch/tasks.jsonl")``

    Raises:
        ConfigError: the file is missing or empty, or a line is bad; the message starts with
            ``FILE:LINE`` and says how to fix it.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the TASKS file {p}: {exc}; pass a JSON Lines file"
        ) from None
    tasks: list[BatchTask] = []
    seen: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{p}:{number}"
        task = _parse_line(text, where, p.parent)
        if task.id in seen:
            raise _line_error(
                where,
                f"id {task.id!r} is also on line {seen[task.id]}; ids must be unique (they name "
                "the runs in the journal)",
            )
        seen[task.id] = number
        tasks.append(task)
    if not tasks:
        raise ConfigError(f"{p}: no tasks; {_SHAPE}")
    return tasks


def check_tools(names: Sequence[str], tasks: Sequence[BatchTask]) -> None:
    """Refuse tool names that no plug-in registers, before anything runs.

    Raises:
        ConfigError: an unknown tool; the message lists the registered ones.
    """
    known = set(default_registry().names("agentrt.tools"))
    wanted = set(names).union(*(t.tool_names(()) for t in tasks))
    missing = sorted(wanted - known)
    if missing:
        raise ConfigError(
            f"unknown tool(s) {', '.join(missing)}; registered tools: {', '.join(sorted(known))}"
        )


async def _run_one(
    settings: BatchSettings,
    task: BatchTask,
    *,
    shared: Substrate | None,
    tools: dict[str, Tool],
    journal: Journal | None,
    journal_states: Mapping[str, str],
) -> TaskResult:
    run_id = settings.run_id(task)
    before = journal_states.get(run_id)
    if before == "running":  # a live process runs it now
        return TaskResult(
            id=task.id, run_id=run_id, status="failed",
            error=f"run {run_id} is running in another process; wait for it to finish or pass "
            "another --name",
        )  # fmt: skip
    seed = task.seed if task.seed is not None else settings.seed
    try:
        substrate = shared or default_registry().substrate(
            settings.substrate, seed=seed, **settings.options
        )
    except AgentrtError as exc:
        return TaskResult(id=task.id, run_id=run_id, status="failed", error=_describe(exc))
    try:
        agent = Agent(
            substrate,
            tools={n: tools[n] for n in task.tool_names(settings.tools)},
            name=task.plan.name if task.plan is not None else settings.name,
            seed=seed,
            tracer_provider=NoOpTracerProvider(),
            journal=journal,
        )
        launch: dict[str, JsonValue] = {
            "batch": settings.name,
            "substrate": settings.substrate,
            "options": _public(settings.options),
        }
        result = await agent.run(
            task.target, run_id=run_id, max_turns=task.max_turns, launch=launch
        )
    except AgentrtError as exc:
        return TaskResult(id=task.id, run_id=run_id, status="failed", error=_describe(exc))
    finally:
        if shared is None:
            with anyio.CancelScope(shield=True):
                await substrate.aclose()
    how: Literal["new", "resumed", "done"] = (
        "new" if before is None else "done" if before == "succeeded" else "resumed"
    )
    return TaskResult.from_run(task, result, how)


def _public(options: dict[str, Any]) -> dict[str, JsonValue]:
    """Options fit to store in a journal: no keys, tokens or secrets."""
    hidden = ("key", "token", "secret", "password")
    return {k: v for k, v in options.items() if not any(h in k.lower() for h in hidden)}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def run_batch(
    settings: BatchSettings,
    tasks: Sequence[BatchTask],
    on_done: Callable[[TaskResult], None] | None = None,
) -> list[TaskResult]:
    """Run every task on ``settings.substrate``, at most ``settings.concurrency`` at a time.

    Each task gets its own `Agent`. A remote substrate (``openai_http``: a client and its
    connection pool) serves the whole batch; any other (an emulated engine) is built afresh for
    each task, seeded with the task's seed, so a task's result does not depend on which tasks
    ran beside it, at what concurrency or on which executor. To measure runs contending for one
    engine, serve it (``agentrt serve``) and batch against it with ``openai_http``.

    Args:
        settings: substrate, tools, clock, concurrency, journal and batch name.
        tasks: the tasks, in order.
        on_done: called with each task's result as it finishes (progress bars, partial results).

    Returns:
        One `TaskResult` per task, in task order.
    """
    registry = default_registry()
    probe = registry.substrate(settings.substrate, seed=settings.seed, **settings.options)
    shared = probe if getattr(probe, "remote", False) else None
    if shared is None:
        await probe.aclose()
    names = set(settings.tools).union(*(t.tool_names(()) for t in tasks))
    tools = registered_tools(sorted(names), virtual=settings.virtual, registry=registry)
    journal = Journal(settings.journal) if settings.journal is not None else None
    results: list[TaskResult | None] = [None] * len(tasks)
    limiter = anyio.CapacityLimiter(settings.concurrency)
    try:
        states = {r.run_id: r.state for r in journal.runs()} if journal is not None else {}

        async def one(index: int, task: BatchTask) -> None:
            async with limiter:
                result = await _run_one(
                    settings, task, shared=shared, tools=tools, journal=journal,
                    journal_states=states,
                )  # fmt: skip
            results[index] = result
            if on_done is not None:
                on_done(result)

        async with anyio.create_task_group() as tg:
            for index, task in enumerate(tasks):
                tg.start_soon(one, index, task)
    finally:
        with anyio.CancelScope(shield=True):
            if shared is not None:
                await shared.aclose()
            for tool in tools.values():
                await tool.aclose()
        if journal is not None:
            journal.close()
    return [r for r in results if r is not None]


def shard(tasks: Sequence[BatchTask], count: int) -> list[list[BatchTask]]:
    """``tasks`` dealt round-robin into at most ``count`` non-empty shards.

    Example:
        >>> ts = [BatchTask(id=str(i), task="t") for i in range(5)]
        >>> [[t.id for t in s] for s in shard(ts, 2)]
        [['0', '2', '4'], ['1', '3']]
    """
    count = max(1, min(count, len(tasks)))
    return [list(tasks[i::count]) for i in range(count)]


def run_shard(settings: BatchSettings, tasks: list[BatchTask]) -> list[TaskResult]:
    """Run one shard of a batch to the end on a fresh event loop (an executor's task).

    SIGINT and SIGTERM cancel the shard: its runs unwind and the journal records them as
    interrupted, so re-running the batch resumes them.
    """
    return run_on_clock(
        run_batch,
        settings,
        tasks,
        clock=VirtualClock() if settings.virtual else None,
        cancel_on=_CANCEL_ON,
    )
