"""``agentrt batch TASKS.jsonl``: many real agent runs, bounded concurrency (entry point command).

Reads and checks the TASKS file (`agentrt.batch.read_tasks`), runs every task on the substrate
(in this process, or sharded over ``--executor processes|ray``), then prints one JSON line per
task (``--json``) or a summary table, and writes the lines to ``--out``. Exits 0 when every
task succeeded, 1 when any failed, 2 on bad input, 130/143 when interrupted (a journal makes the
same command resume). Registered as ``batch = "agentrt.batch_cli:batch_command"``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from agentrt import cli_options as opt
from agentrt.batch import (
    BatchSettings,
    BatchTask,
    TaskResult,
    read_tasks,
    run_batch,
    run_shard,
    shard,
)
from agentrt.clock import VirtualClock, run
from agentrt.errors import AgentrtError, ConfigError
from agentrt.executors import Executor, TaskFailed, parse_executor
from agentrt.interrupts import Interrupted
from agentrt.log import configure_logging
from agentrt.redact import redact
from agentrt.registry import default_registry
from agentrt.render import Column, print_table, terminal_console
from agentrt.tasksfile import check_tools

__all__ = ["batch_command", "summary_rows"]

_out = terminal_console(piped_width=160)
_err = Console(stderr=True)
_CANCEL_ON = (signal.SIGINT, signal.SIGTERM)
_SHOWN_FAILURES = 10


def _settings(
    tasks_path: Path,
    *,
    substrate: str,
    options: dict[str, Any],
    tools: str | None,
    concurrency: int,
    journal: Path | None,
    virtual: bool,
    seed: int,
    name: str | None,
) -> BatchSettings:
    names = tuple(n.strip() for n in (tools or "").split(",") if n.strip())
    batch = name or tasks_path.stem
    try:
        return BatchSettings(
            substrate=substrate,
            options=options,
            seed=seed,
            tools=names,
            virtual=virtual,
            concurrency=concurrency,
            journal=str(journal) if journal is not None else None,
            name=batch,
        )
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        if field == "name":
            raise ConfigError(
                f"batch name {batch!r} must be non-empty without '/' or spaces; pass --name NAME"
            ) from None
        raise ConfigError(f"--{field.replace('_', '-')}: {exc.errors()[0]['msg']}") from None


def _progress(total: int, unit: str, *, enabled: bool) -> Progress:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),
        TimeElapsedColumn(),
        console=_err,
        transient=True,
        disable=not enabled,
    )
    progress.add_task("batch", total=total)
    return progress


def _run_here(
    settings: BatchSettings, tasks: Sequence[BatchTask], *, show: bool
) -> tuple[list[TaskResult], Interrupted | None]:
    """Run in this process; on a signal, the results of the tasks that finished."""
    done: dict[str, TaskResult] = {}
    with _progress(len(tasks), "tasks", enabled=show) as progress:

        def on_done(result: TaskResult) -> None:
            done[result.id] = result
            progress.update(progress.task_ids[0], advance=1, description=result.id)

        try:
            results = run(
                run_batch,
                settings,
                tasks,
                on_done,
                clock=VirtualClock() if settings.virtual else None,
                cancel_on=_CANCEL_ON,
            )
        except Interrupted as exc:
            return [done[t.id] for t in tasks if t.id in done], exc
    return results, None


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _run_sharded(
    executor: Executor, settings: BatchSettings, tasks: Sequence[BatchTask], *, show: bool
) -> tuple[list[TaskResult], Interrupted | None]:
    """Deal the tasks into shards, one per worker, and map `run_shard` over them."""
    # processes:N has N workers, ray:N N CPUs; a cluster of unknown size gets a shard per slot.
    workers = getattr(executor, "workers", None) or getattr(executor, "num_cpus", None)
    workers = int(workers or settings.concurrency)
    shards = shard(tasks, min(workers, settings.concurrency))
    params = [
        {
            "settings": settings.model_copy(update={"concurrency": share}),
            "tasks": part,
            "owner": (socket.gethostname(), os.getpid()),
        }
        for part, share in zip(shards, _shares(settings.concurrency, len(shards)), strict=True)
    ]
    label: Callable[[Any], str] = lambda p: (  # noqa: E731 - a one-line label
        f"shard of {len(p['tasks'])} tasks from {p['tasks'][0].id!r}"
    )
    with _progress(len(shards), "shards", enabled=show) as progress:
        try:
            out = executor.map(
                run_shard,
                params,
                label=label,
                on_done=lambda n, _total: progress.update(progress.task_ids[0], completed=n),
            )
        except (Interrupted, TaskFailed) as exc:
            # The signal may arrive while the executor waits for a shard (it wraps what it
            # catches there). Ctrl-C on a terminal reaches the workers too; a signal to this
            # process alone does not: pass it on, so the shards unwind and journal their runs
            # before the pool closes. SIGTERM, since a background job ignores SIGINT.
            cause = exc.cause if isinstance(exc, TaskFailed) else exc
            if not isinstance(cause, Interrupted):
                raise
            for child in multiprocessing.active_children():
                if child.pid is not None:
                    os.kill(child.pid, signal.SIGTERM)
            return [], cause
    by_id = {r.id: r for part in out for r in part}
    return [by_id[t.id] for t in tasks], None


def summary_rows(results: Sequence[TaskResult], wall_s: float) -> list[list[str]]:
    """The rows of the summary table: counts, times and tokens of a finished batch.

    Example:
        >>> r = TaskResult(id="a", run_id="b/a", status="succeeded", e2e_s=1.5)
        >>> summary_rows([r], 2.0)[0]
        ['tasks', '1']
    """
    e2e = sorted(r.e2e_s for r in results if r.journal != "done") or [0.0]
    p95 = e2e[min(len(e2e) - 1, round(0.95 * (len(e2e) - 1)))]
    count = {s: sum(r.status == s for r in results) for s in ("succeeded", "failed")}
    rows = [
        ["tasks", f"{len(results)}"],
        ["succeeded", f"{count['succeeded']}"],
        ["failed", f"{count['failed']}"],
        ["resumed", f"{sum(r.journal == 'resumed' for r in results)}"],
        ["already done (journal)", f"{sum(r.journal == 'done' for r in results)}"],
        ["wall time (s)", f"{wall_s:.3f}"],
        ["run e2e p50 (s)", f"{statistics.median(e2e):.3f}"],
        ["run e2e p95 (s)", f"{p95:.3f}"],
        ["tokens in / out", f"{sum(r.input_tokens for r in results)} / "
                            f"{sum(r.output_tokens for r in results)}"],
    ]  # fmt: skip
    return rows


def _check_journal_place(executor: str, journal: Path | None) -> None:
    """Refuse a journal that a remote Ray cluster's nodes would each keep a copy of."""
    kind, _, address = executor.strip().partition(":")
    local = not address or address.isdigit() or address.split(":")[0] in ("127.0.0.1", "localhost")
    if journal is not None and kind == "ray" and not local:
        raise ConfigError(
            f"--journal cannot follow --executor {executor}: the journal is an SQLite file that "
            "every worker must reach on one machine; run resumable batches with --executor "
            "processes (or ray on this machine), or drop --journal (--out keeps the results)"
        )


def _write_out(path: Path, results: Sequence[TaskResult]) -> None:
    try:
        with path.open("w", encoding="utf-8") as f:
            for r in results:
                f.write(redact(r.model_dump_json()) + "\n")
    except OSError as exc:
        raise opt.fail(f"cannot write --out {path}: {exc.strerror}; pick a writable path") from None


def batch_command(
    tasks_path: Annotated[
        Path,
        typer.Argument(metavar="TASKS", help="JSON Lines: {id, task} or {id, plan} per line."),
    ],
    substrate: Annotated[
        str,
        typer.Option("--substrate", "-s", metavar="NAME", help="Substrate every run uses."),
    ],
    option: opt.Options = None,
    tools: Annotated[
        str | None,
        typer.Option(metavar="NAMES", help="Comma-separated tools offered to task-text runs."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(metavar="N", min=1, help="Runs in flight at once (whole batch).")
    ] = 4,
    journal: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="SQLite journal: run ids BATCH/TASK_ID; re-running resumes a crashed batch.",
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(metavar="EXECUTOR", help="local, processes[:N], ray[:N] or ray:ADDRESS."),
    ] = "local",
    out: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Write one JSON line per task to FILE.")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="Batch name (run ids NAME/TASK_ID); default TASKS' stem."
        ),
    ] = None,
    virtual: opt.Virtual = False,
    seed: opt.Seed = opt.SEED_DEFAULT,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON line per task instead of tables.")
    ] = False,
) -> None:
    """Run every task of TASKS as an agent run, N at a time; exit 1 if any failed."""
    configure_logging(level="error")
    try:
        options = opt.engine_options(option)
        tasks = read_tasks(tasks_path)
        settings = _settings(
            tasks_path, substrate=substrate, options=options, tools=tools,
            concurrency=concurrency, journal=journal, virtual=virtual, seed=seed, name=name,
        )  # fmt: skip
        check_tools(settings.tools, tasks)
        probe = default_registry().substrate(substrate, seed=seed, **options)
        run(probe.aclose)
        _check_journal_place(executor, journal)
        chosen = parse_executor(executor)
    except AgentrtError as exc:
        raise opt.fail(str(exc)) from None
    show = not as_json and _err.is_terminal
    started = time.perf_counter()
    with chosen:
        try:
            if chosen.name == "local":
                results, interrupted = _run_here(settings, tasks, show=show)
            else:
                results, interrupted = _run_sharded(chosen, settings, tasks, show=show)
        except TaskFailed as exc:
            where = "; the finished runs are in the journal" if journal is not None else ""
            raise opt.fail(
                f"{exc.label} failed: {type(exc.cause).__name__}: {exc.cause}{where}", 1
            ) from None
    wall_s = time.perf_counter() - started
    if out is not None:
        _write_out(out, results)
    if as_json:
        for r in results:
            sys.stdout.write(redact(r.model_dump_json()) + "\n")
        sys.stdout.flush()
    else:
        _out.print(
            f"batch {settings.name} · {tasks_path.name} · {settings.substrate} · "
            f"{'virtual' if virtual else 'real'} time · executor {chosen.name} · "
            f"concurrency {concurrency}",
            highlight=False,
        )
        print_table(_out, [Column("", "left"), Column("value")], summary_rows(results, wall_s))
    failed = [r for r in results if r.status != "succeeded"]
    for r in failed[:_SHOWN_FAILURES]:
        _err.print(f"[bold red]failed:[/] {r.id}: {redact(r.error or '')}", highlight=False,
                   soft_wrap=True)  # fmt: skip
    if len(failed) > _SHOWN_FAILURES:
        _err.print(f"... and {len(failed) - _SHOWN_FAILURES} more failed tasks", highlight=False)
    if interrupted is not None:
        resume = (
            "; re-run the same command to resume" if journal is not None else
            "; with --journal FILE a re-run resumes instead of starting over"
        )  # fmt: skip
        _err.print(
            f"agentrt: interrupted by {interrupted.signal_name}; batch {settings.name} stopped"
            + (
                f" with {len(results)} of {len(tasks)} tasks finished"
                if chosen.name == "local"
                else ""
            )
            + resume,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(interrupted.exit_code)
    if failed:
        raise typer.Exit(1)
