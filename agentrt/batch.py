"""Batches of agent runs: a TASKS file's tasks run with bounded concurrency, in shards.

The tasks come from a TASKS file (`agentrt.tasksfile`: `BatchTask`, `read_tasks`, both
re-exported here).

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

import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
from opentelemetry.trace import NoOpTracerProvider
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from agentrt.agent import Agent
from agentrt.clock import VirtualClock
from agentrt.clock import run as run_on_clock
from agentrt.errors import AgentrtError
from agentrt.journal import Journal, storable_options
from agentrt.registry import default_registry
from agentrt.replay import registered_tools
from agentrt.result import RunResult
from agentrt.substrate import Substrate
from agentrt.tasksfile import BatchTask, read_tasks
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

#: Signals that cancel a shard running in a worker process (it unwinds and journals).
_CANCEL_ON = (signal.SIGINT, signal.SIGTERM)
#: Real seconds between a worker's checks that the batch that started it still lives.
_ORPHAN_POLL_S = 0.5


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
    status: Literal["succeeded", "failed"]
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
        # What `agentrt resume RUN_ID` reads to rebuild a plan run, as `agentrt run` stores it.
        launch: dict[str, JsonValue] = {
            "batch": settings.name,
            "cli": {
                "substrate": settings.substrate,
                "options": storable_options(settings.options),
                "seed": seed,
                "virtual": settings.virtual,
            },
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
    tools: dict[str, Tool] = {}
    journal: Journal | None = None
    results: list[TaskResult | None] = [None] * len(tasks)
    limiter = anyio.CapacityLimiter(settings.concurrency)
    try:
        if shared is None:
            await probe.aclose()
        names = set(settings.tools).union(*(t.tool_names(()) for t in tasks))
        tools = registered_tools(sorted(names), virtual=settings.virtual, registry=registry)
        if settings.journal is not None:
            journal = Journal(settings.journal)
        states = {r.run_id: r.state for r in journal.runs()} if journal is not None else {}

        async def one(index: int, task: BatchTask) -> None:
            async with limiter:
                try:
                    result = await _run_one(
                        settings, task, shared=shared, tools=tools, journal=journal,
                        journal_states=states,
                    )  # fmt: skip
                except Exception as exc:  # one task's bug must not stop the batch
                    result = TaskResult(
                        id=task.id, run_id=settings.run_id(task), status="failed",
                        error=_describe(exc),
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


def run_shard(
    settings: BatchSettings, tasks: list[BatchTask], owner: tuple[str, int] | None = None
) -> list[TaskResult]:
    """Run one shard of a batch to the end on a fresh event loop (an executor's task).

    SIGINT and SIGTERM cancel the shard: its runs unwind and the journal records them as
    interrupted, so re-running the batch resumes them. So does the death of the process that
    started this worker, or of ``owner`` (the batch's host name and process id, watched on its
    own host only): a killed batch leaves no worker running on as an orphan.
    """
    # Signal handlers need the main thread; an executor running tasks in threads gets none.
    main = threading.current_thread() is threading.main_thread()
    done, orphaned = threading.Event(), threading.Event()
    if main and (owner is None or owner[0] == socket.gethostname()):
        watched = owner[1] if owner is not None else None
        threading.Thread(
            target=_cancel_when_orphaned, args=(watched, done, orphaned), daemon=True
        ).start()
    try:
        return run_on_clock(
            run_batch,
            settings,
            tasks,
            clock=VirtualClock() if settings.virtual else None,
            cancel_on=_CANCEL_ON if main else (),
        )
    finally:
        done.set()
        if orphaned.is_set():
            # The runs have unwound and are journalled. Nobody will read a result, and a pool
            # worker would wait for its next task on a pipe its siblings still hold open.
            os._exit(128 + signal.SIGTERM)


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie not yet reaped counts as ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return Path("/proc/self").exists()  # no such process, if this system has a /proc
    except (OSError, IndexError):
        pass
    else:
        return fields[0] == "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _cancel_when_orphaned(
    owner: int | None, done: threading.Event, orphaned: threading.Event
) -> None:
    """SIGTERM this process once ``owner`` or the process that started this one has gone."""
    parent = os.getppid()
    while not done.wait(_ORPHAN_POLL_S):
        if os.getppid() != parent or (owner is not None and _gone(owner)):
            orphaned.set()
            os.kill(os.getpid(), signal.SIGTERM)
            return
