"""The ``agentrt resume`` and ``agentrt runs`` commands: continue and list journaled runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from agentrt import cli_options as opt
from agentrt.agent import Agent
from agentrt.cli import _err, _out, _print_json, _tools_for, _tracer_provider, finish_run
from agentrt.errors import AgentrtError, ConfigError
from agentrt.journal import Journal, RunInfo
from agentrt.log import configure_logging
from agentrt.plan import Plan
from agentrt.registry import default_registry
from agentrt.render import Column, print_table
from agentrt.telemetry.configure import configure, parse_trace_target

__all__ = ["resume_command", "runs_command"]

JournalOption = Annotated[
    Path,
    typer.Option("--journal", metavar="FILE", help="The journal `agentrt run --journal` wrote."),
]


def _open(path: Path) -> Journal:
    if not path.exists():
        raise ConfigError(
            f"no journal at {path}; pass the file `agentrt run PLAN --journal FILE` wrote"
        )
    return Journal(path)


def resume_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to continue.")],
    journal_path: JournalOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON.")] = False,
    trace: opt.Trace = "none",
    option: opt.Options = None,
) -> None:
    """Continue a journaled run: finished steps are not run again; in-flight ones are re-run.

    The run is rebuilt as `agentrt run` started it (plan, substrate and options, seed, virtual
    time). Secrets are never journaled: give them again with -o (e.g. -o api_key=...) or the
    environment. A run that succeeded prints its stored result.
    """
    journal: Journal | None = None
    try:
        configure_logging(format="console", level="warning")
        target = parse_trace_target(trace)
        journal = _open(journal_path)
        info = journal.run(run_id)
        cli = info.launch.get("cli")
        if not isinstance(cli, dict) or "plan" not in info.launch:
            raise ConfigError(
                f"run {run_id!r} was not started by `agentrt run --journal`; resume it from "
                "Python: Agent(..., journal=Journal(PATH)).resume(RUN_ID)"
            )
        plan = Plan.model_validate(info.launch["plan"])
        registry = default_registry()
        raw_seed = cli.get("seed")
        seed = raw_seed if isinstance(raw_seed, int) else None
        options: dict[str, Any] = dict(cli.get("options") or {})  # type: ignore[arg-type]
        options.update(opt.parse_options(option))  # secrets, or an endpoint that moved
        sub = registry.substrate(str(cli["substrate"]), seed=seed, **options)
        faults = cli.get("faults")
        if isinstance(faults, str) and faults:
            sub = registry.wrap("faults", sub, faults, seed=seed)
        virtual = bool(cli.get("virtual"))
        telemetry = configure(target, service_name="agentrt", set_global=False)
        agent = Agent(
            sub,
            tools=_tools_for(plan, virtual=virtual),
            name=plan.name,
            seed=seed,
            tracer_provider=_tracer_provider(telemetry),
            meter_provider=telemetry.meter_provider,
            trace_detail="phases" if cli.get("trace_detail") == "phases" else "steps",
            journal=journal,
        )
        deadline = cli.get("deadline_s")
        prepared = agent.prepare(
            plan,
            run_id=run_id,
            deadline_s=float(deadline) if isinstance(deadline, int | float) else None,
            launch={"cli": cli},
        )
    except AgentrtError as exc:
        if journal is not None:
            journal.close()
        raise opt.fail(str(exc).replace("\n", " ")) from None
    _err.print(
        f"resuming run {run_id} · {info.steps_done} of {info.steps_total} steps done",
        highlight=False,
    )
    try:
        finish_run(prepared, plan, telemetry, None, as_json=as_json, virtual=virtual)
    finally:
        journal.close()


_COLUMNS = [
    Column("run", "left"),
    Column("state", "left"),
    Column("kind", "left"),
    Column("name", "left"),
    Column("steps"),
    Column("started", "left"),
    Column("updated", "left"),
]


def _row(run: RunInfo) -> list[str]:
    steps = f"{run.steps_done}/{run.steps_total}" if run.steps_total else str(run.steps_done)
    return [
        run.run_id,
        run.state,
        run.kind,
        run.name,
        steps,
        run.started.strftime("%Y-%m-%d %H:%M:%S"),
        run.updated.strftime("%Y-%m-%d %H:%M:%S"),
    ]


def runs_command(
    journal_path: JournalOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """List the runs in a journal: state (running, succeeded, failed, interrupted) and steps."""
    try:
        with _open(journal_path) as journal:
            runs: list[RunInfo] = journal.runs()
    except AgentrtError as exc:
        raise opt.fail(str(exc).replace("\n", " ")) from None
    if as_json:
        _print_json([r.model_dump(mode="json", exclude={"launch"}) for r in runs])
        return
    if not runs:
        _out.print(f"no runs in {journal_path}", highlight=False)
        return
    print_table(_out, _COLUMNS, [_row(r) for r in runs], title=f"runs in {journal_path} (UTC)")
