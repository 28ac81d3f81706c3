"""The ``agentrt`` command: run plans on substrates and show where the time went."""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from opentelemetry.trace import NoOpTracerProvider
from pydantic import JsonValue
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# typer >= 0.23 carries its own copy of click: its exceptions are the ones its commands raise.
from typer._click.exceptions import NoArgsIsHelpError as _NoArgsIsHelpError
from typer._click.exceptions import UsageError as _UsageError

from agentrt import __version__
from agentrt import cli_options as opt
from agentrt import replay as rp
from agentrt.agent import Agent, AgentRun
from agentrt.cli_tasks import map_tasks, wants_progress
from agentrt.clock import VirtualClock, run
from agentrt.compare import Comparison
from agentrt.comparetask import compare_substrate
from agentrt.errors import AgentrtError, ConfigError, UnknownNameError
from agentrt.interrupts import Interrupted, raise_on_signals
from agentrt.journal import Journal, JournalError, storable_options
from agentrt.log import configure_logging
from agentrt.plan import Plan, load_plan
from agentrt.redact import redact
from agentrt.registry import default_registry
from agentrt.render import (
    print_comparison,
    print_report,
    print_run,
    print_waterfall,
    terminal_console,
)
from agentrt.replay import registered_tools
from agentrt.report import Attribution, from_run, load_trace_file
from agentrt.result import RunResult
from agentrt.telemetry.configure import Telemetry, configure, parse_trace_target
from agentrt.tool import Tool
from agentrt.trajectory import Trajectory, TrajectoryRecorder, read_trajectory

__all__ = ["MAX_TABLE_STEPS", "app", "finish_run", "main"]

#: Runs with more steps than this print their totals and slowest steps, not a row per step.
MAX_TABLE_STEPS = 200
_LARGE_RUN_ROWS = 20

app = typer.Typer(
    name="agentrt",
    help="An agentic workflow runtime with pluggable inference substrates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=opt.Group,
)
# Piped output keeps full-width tables instead of rich's 80-column default.
_out = terminal_console()
_err = Console(stderr=True)
# Signals that cancel a run: it unwinds, kills what it started and flushes its traces.
_CANCEL_ON = (signal.SIGINT, signal.SIGTERM)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"agentrt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """An agentic workflow runtime with pluggable inference substrates."""


def _fail(message: str, code: int = 2) -> typer.Exit:
    return opt.fail(message, code)


def _print_json(data: object) -> None:
    """JSON on stdout: pretty and coloured on a terminal, plain and fast (C encoder) otherwise.

    The text is redacted first: step text and tool output are a server's data.
    """
    text = redact(json.dumps(data))
    if _out.is_terminal:
        _out.print_json(text)
    else:
        sys.stdout.write(text)
        sys.stdout.write("\n")
        sys.stdout.flush()


def _print_large_run(result: RunResult, report: Attribution) -> None:
    """A run of more than MAX_TABLE_STEPS steps: the totals and its slowest steps, not every row.

    Rich lays out a table row in about 2 ms: 10,000 steps took 18 s to print three tables.
    """
    shown = sorted(
        sorted(report.steps, key=lambda s: -s.latency_s)[:_LARGE_RUN_ROWS],
        key=lambda s: s.start_s,
    )
    path = report.critical_path
    if len(path) > 2 * _LARGE_RUN_ROWS:
        hidden = len(path) - _LARGE_RUN_ROWS - 1
        path = (*path[:_LARGE_RUN_ROWS], f"({hidden:,} more)", path[-1])
    colour = "green" if result.status == "succeeded" else "red"
    _out.print(
        f"run {result.run_id} · {result.plan} · {result.clock} time · {len(result.steps):,} steps "
        f"(tables list the {len(shown)} slowest; more than {MAX_TABLE_STEPS} steps are not "
        "tabulated; --json has every step)",
        highlight=False,
    )
    _out.print(
        f"[{colour}]{result.status}[/] · end-to-end {result.e2e_s:.3f} s · "
        f"{result.input_tokens} in / {result.output_tokens} out tokens · "
        f"${result.cost_usd:.6f} · {result.energy_j:.1f} J",
        highlight=False,
    )
    if result.error:
        _out.print(f"[red]reason:[/] {redact(result.error)}", highlight=False)
    _out.print()
    trimmed = report.model_copy(update={"steps": tuple(shown), "critical_path": path})
    print_report(_out, trimmed)
    print_waterfall(_out, trimmed)


def _tracer_provider(telemetry: Telemetry) -> Any:
    """The agent's tracer provider: a no-op one with ``--trace none``.

    Recording spans that nobody reads cost about a third of a long virtual run.
    """
    if telemetry.target.kind == "none":
        return NoOpTracerProvider()
    return telemetry.tracer_provider


def _load(plan_path: Path) -> Plan:
    """The plan at ``plan_path``, its tools and tool arguments checked against the registry."""
    return load_plan(plan_path, tools=default_registry().tool_args_model)


@app.command("run", cls=opt.Command)
def run_command(
    plan_path: Annotated[Path, typer.Argument(metavar="PLAN", help="Plan file (.yaml or .json).")],
    substrate: Annotated[
        str | None,
        typer.Option(
            "--substrate",
            "-s",
            metavar="NAME",
            help="Substrate name (see `agentrt substrates`); default the plan's `substrate`.",
        ),
    ] = None,
    virtual: opt.Virtual = False,
    seed: opt.Seed = opt.SEED_DEFAULT,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON.")] = False,
    latency_ms: opt.LatencyMs = None,
    output_tokens: opt.OutputTokens = None,
    model: opt.Model = None,
    chips: opt.Chips = None,
    tp: opt.Tp = None,
    pp: opt.Pp = None,
    precision: opt.Precision = None,
    max_batch: opt.MaxBatch = None,
    network_rtt_ms: opt.NetworkRttMs = None,
    spec_decode: opt.SpecDecode = None,
    stack: opt.Stack = None,
    ep: opt.Ep = None,
    option: opt.Options = None,
    deadline_s: Annotated[
        float | None,
        typer.Option("--deadline", metavar="S", help="Whole-run deadline in seconds."),
    ] = None,
    faults: opt.Faults = None,
    record: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Write the run's trajectory (JSON Lines) to FILE, for `agentrt replay`.",
        ),
    ] = None,
    log_format: Annotated[
        str, typer.Option(metavar="FORMAT", help="Log format on stderr: console or json.")
    ] = "console",
    log_level: Annotated[
        str,
        typer.Option(metavar="LEVEL", help="Lowest log level: debug, info, warning, error or off."),
    ] = "warning",
    trace: opt.Trace = "none",
    trace_detail: Annotated[
        str,
        typer.Option(
            metavar="DETAIL",
            help="Span detail: phases (queue/network/prefill/decode) or steps.",
        ),
    ] = "phases",
    journal_path: Annotated[
        Path | None,
        typer.Option(
            "--journal",
            metavar="FILE",
            help="Commit each finished step to this SQLite journal (`agentrt resume` continues "
            "the run if the process dies).",
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id",
            metavar="ID",
            help="The run's id (default random); with --journal, an id the journal holds "
            "continues that run.",
        ),
    ] = None,
) -> None:
    """Run PLAN on a substrate and print each step's timing, or the whole run as JSON."""
    journal: Journal | None = None
    try:
        if trace_detail not in ("phases", "steps"):
            raise ConfigError(f"--trace-detail must be phases or steps, not {trace_detail!r}")
        if log_format not in ("console", "json"):
            raise ConfigError(f"--log-format must be console or json, not {log_format!r}")
        if log_level not in ("debug", "info", "warning", "error", "off"):
            raise ConfigError("--log-level must be debug, info, warning, error or off")
        configure_logging(format=log_format, level=log_level)  # type: ignore[arg-type]
        opt.check_number("--deadline", deadline_s)
        options = opt.engine_options(
            option,
            latency_ms=latency_ms,
            output_tokens=output_tokens,
            model=model,
            chips=chips,
            tp=tp,
            pp=pp,
            precision=precision,
            max_batch=max_batch,
            network_rtt_ms=network_rtt_ms,
            spec_decode=spec_decode,
            stack=stack,
            ep=ep,
        )
        target = parse_trace_target(trace)
        plan = _load(plan_path)
        registry = default_registry()
        if substrate is None:
            if plan.substrate is None:
                raise ConfigError(
                    "no substrate: pass --substrate NAME or set `substrate:` in the plan file"
                )
            substrate = plan.substrate
            options = {**plan.substrate_options, **options}
        sub = registry.substrate(substrate, seed=seed, **options)
        faults = faults or plan.faults
        if faults:
            sub = registry.wrap("faults", sub, faults, seed=seed)
        tools = _tools_for(plan, virtual=virtual)
        if journal_path is not None:
            journal = Journal(journal_path)
        telemetry = configure(target, service_name="agentrt", set_global=False)
        recorder = TrajectoryRecorder(record, agent=plan.name) if record is not None else None
        agent = Agent(
            sub,
            tools=tools,
            recorder=recorder,
            name=plan.name,
            seed=seed,
            tracer_provider=_tracer_provider(telemetry),
            meter_provider=telemetry.meter_provider,
            trace_detail=trace_detail,  # type: ignore[arg-type]
            journal=journal,
        )
        launch: dict[str, JsonValue] = {
            "cli": {
                "plan_path": str(plan_path),
                "substrate": substrate,
                "options": storable_options(options),
                "faults": json.loads(json.dumps(faults, default=str)),
                "seed": seed,
                "virtual": virtual,
                "deadline_s": deadline_s,
                "trace_detail": trace_detail,
            }
        }
        prepared = agent.prepare(plan, deadline_s=deadline_s, run_id=run_id, launch=launch)
    except AgentrtError as exc:
        if journal is not None:
            journal.close()
        raise _fail(str(exc).replace("\n", " ")) from None
    if journal is not None:
        _err.print(
            f"run {prepared.run_id} · journal {journal.path} (if it stops: agentrt resume "
            f"{prepared.run_id} --journal {journal.path})",
            highlight=False,
            soft_wrap=True,
        )
    try:
        finish_run(prepared, plan, telemetry, recorder, as_json=as_json, virtual=virtual)
    finally:
        if journal is not None:
            journal.close()


def finish_run(
    prepared: AgentRun,
    plan: Plan,
    telemetry: Telemetry,
    recorder: TrajectoryRecorder | None,
    *,
    as_json: bool,
    virtual: bool,
) -> None:
    """Execute a prepared plan run and print it (`agentrt run`, `agentrt resume`).

    Raises:
        typer.Exit: 1 if the run did not succeed; 128 + N if signal N interrupted it.
    """
    show_progress = not as_json and not virtual and _err.is_terminal
    interrupted: Interrupted | None = None
    try:
        result = run(
            _execute,
            prepared,
            plan,
            show_progress,
            clock=VirtualClock() if virtual else None,
            cancel_on=_CANCEL_ON,
        )
    except Interrupted as exc:
        interrupted = exc
    except JournalError as exc:
        raise _fail(str(exc), code=1) from None
    finally:
        telemetry.shutdown()
    if interrupted is not None:
        partial = prepared.result()
        done = sum(s.status == "succeeded" for s in partial.steps)
        where = telemetry.where(partial.trace_id)
        raise _interrupted(
            interrupted,
            f"run {partial.run_id} cancelled after {done} of {len(plan.steps)} steps",
            f"trace: {where}" if where else None,
        )
    if recorder is not None and recorder.error is not None:
        _err.print(f"[yellow]warning:[/] {recorder.error}", highlight=False, soft_wrap=True)
    report = from_run(result)
    if as_json:
        data = result.to_dict()
        data["report"] = report.to_dict()
        data["trace"] = telemetry.where(result.trace_id)
        _print_json(data)
    elif len(result.steps) > MAX_TABLE_STEPS:
        _print_large_run(result, report)
    else:
        print_run(_out, result)
        _out.print()
        print_report(_out, report)
        print_waterfall(_out, report)
    if not as_json:
        where = telemetry.where(result.trace_id)
        if where:
            _out.print(f"trace: {where}", highlight=False)
    if result.status != "succeeded":
        raise typer.Exit(1)


def _tools_for(plan: Plan, *, virtual: bool) -> list[Tool]:
    """The registered tools a plan names; in virtual time, their ``-twin`` where one exists."""
    return list(registered_tools([s.tool for s in plan.steps if s.tool], virtual=virtual).values())


@app.command("compare", cls=opt.Command)
def compare_command(
    plan_path: Annotated[Path, typer.Argument(metavar="PLAN", help="Plan file (.yaml or .json).")],
    substrates: Annotated[
        str,
        typer.Option(
            "--substrates",
            metavar="NAMES",
            help="Comma-separated substrate names, e.g. wse3,h100.",
        ),
    ],
    trials: Annotated[int, typer.Option(min=1, metavar="N", help="Runs per substrate.")] = 10,
    virtual: opt.Virtual = False,
    seed: opt.Seed = opt.SEED_DEFAULT,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    latency_ms: opt.LatencyMs = None,
    output_tokens: opt.OutputTokens = None,
    model: opt.Model = None,
    chips: opt.Chips = None,
    tp: opt.Tp = None,
    pp: opt.Pp = None,
    precision: opt.Precision = None,
    max_batch: opt.MaxBatch = None,
    network_rtt_ms: opt.NetworkRttMs = None,
    spec_decode: opt.SpecDecode = None,
    stack: opt.Stack = None,
    ep: opt.Ep = None,
    option: opt.Options = None,
    faults: opt.Faults = None,
    trace: Annotated[
        str,
        typer.Option(
            envvar="AGENTRT_TRACE",
            metavar="TARGET",
            help="Where traces go (one per run): otlp, otlp-grpc, jaeger-json:PATH, console, none.",
        ),
    ] = "none",
    executor: opt.ExecutorName = "local",
) -> None:
    """Run PLAN on several substrates: end-to-end p50/p95/p99, per-step medians, speed-ups.

    Exits 1, with no speed-up, when any run failed.
    """
    try:
        configure_logging(level="warning")
        options = opt.engine_options(
            option,
            latency_ms=latency_ms,
            output_tokens=output_tokens,
            model=model,
            chips=chips,
            tp=tp,
            pp=pp,
            precision=precision,
            max_batch=max_batch,
            network_rtt_ms=network_rtt_ms,
            spec_decode=spec_decode,
            stack=stack,
            ep=ep,
        )
        target = parse_trace_target(trace)
        plan = _load(plan_path)
        names = [n.strip() for n in substrates.split(",") if n.strip()]
        if not names:
            raise ConfigError("--substrates needs at least one name, e.g. --substrates wse3,h100")
        registry = default_registry()
        for name in names:  # a typo fails now, before any substrate runs
            registry.factory("agentrt.substrates", name.partition(":")[0])
        local = executor.strip() == "local"
        if target.kind != "none" and not local:
            raise ConfigError(
                f"--trace {trace} records spans in this process; use it with --executor local"
            )
        telemetry = configure(target, service_name="agentrt", set_global=False)
    except AgentrtError as exc:
        raise _fail(str(exc).replace("\n", " ")) from None
    extra: dict[str, Any] = {"tracer_provider": _tracer_provider(telemetry)} if local else {}
    params = [
        {"plan": plan, "substrate": name, "trials": trials, "seed": seed, "options": options,
         "faults": faults, "virtual": virtual, "signals": local, **extra}
        for name in names
    ]  # fmt: skip
    try:
        done = map_tasks(
            executor,
            compare_substrate,
            params,
            description=f"{plan.name}: {trials} trials on each of {len(names)} substrates",
            show=wants_progress(as_json=as_json),
            label=lambda p: f"{p['substrate']} x{p['trials']}",
        )
    except AgentrtError as exc:
        telemetry.shutdown()
        raise _fail(str(exc).replace("\n", " ")) from None
    except Interrupted as exc:
        telemetry.shutdown()
        where = telemetry.where("<trace_id>") if telemetry.target.kind != "none" else None
        line = f"traces: {where}" if where else None
        raise _interrupted(exc, "comparison cancelled", line) from None
    finally:
        telemetry.shutdown()
    comparison = Comparison.from_summaries(
        plan.name, {n: summary for n, (summary, _) in zip(names, done, strict=True)},
        trials=trials, clock=done[0][1],
    )  # fmt: skip
    where = telemetry.where("<trace_id>") if telemetry.target.kind != "none" else None
    failures = comparison.failures()
    if as_json:
        data = comparison.model_dump(mode="json")
        data["trace"] = where
        if failures:
            data["speedup"] = None  # not comparable: some runs failed
        _print_json(data)
    elif not failures:
        print_comparison(_out, comparison)
    if where and not as_json:
        _out.print(f"traces: {where} (one trace per run)", highlight=False)
    if failures:
        for line in failures:
            _err.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        _err.print("no speed-up is reported when runs fail", highlight=False)
        raise typer.Exit(1)


@app.command("replay", cls=opt.Command)
def replay_command(
    trajectory_path: Annotated[
        Path, typer.Argument(metavar="FILE", help="A trajectory (agentrt run ... --record FILE).")
    ],
    substrates: Annotated[
        str,
        typer.Option(
            "--substrates",
            metavar="NAMES",
            help="Comma-separated substrates to replay on, e.g. wse3,h100,route:fleet.yaml.",
        ),
    ],
    virtual: Annotated[
        bool,
        typer.Option("--virtual/--real", help="Virtual time (the default) or real waiting."),
    ] = True,
    rerun_tools: Annotated[
        bool,
        typer.Option("--rerun-tools", help="Run the registered tools instead of their recording."),
    ] = False,
    seed: opt.Seed = opt.SEED_DEFAULT,
    as_json: Annotated[bool, typer.Option("--json", help="Print the replay as JSON.")] = False,
    model: opt.Model = None,
    option: opt.Options = None,
    trace: opt.Trace = "none",
) -> None:
    """Replay a recorded run's exact turns on each substrate: per-turn and end-to-end times.

    Tools take their recorded durations and outputs (or run again with --rerun-tools).
    """
    try:
        configure_logging(level="warning")
        options = opt.engine_options(option, model=model)
        target = parse_trace_target(trace)
        names = [n.strip() for n in substrates.split(",") if n.strip()]
        if not names:
            raise ConfigError("--substrates needs at least one name, e.g. --substrates wse3,h100")
        trajectory = read_trajectory(trajectory_path)
        subs = rp.replay_substrates(trajectory_path, names, seed=seed, options=options)
        rerun = _rerun_tools(trajectory, virtual=virtual) if rerun_tools else None
        telemetry = configure(target, service_name="agentrt", set_global=False)
    except AgentrtError as exc:
        raise _fail(str(exc)) from None

    async def main() -> rp.Replay:
        try:
            return await rp.replay(
                trajectory,
                subs,
                rerun_tools=rerun,
                seed=seed,
                tracer_provider=_tracer_provider(telemetry),
            )
        finally:
            for sub in subs.values():
                await sub.aclose()

    try:
        result = run(main, clock=VirtualClock() if virtual else None, cancel_on=_CANCEL_ON)
    except Interrupted as exc:
        raise _interrupted(exc, "replay cancelled", None) from None
    except AgentrtError as exc:
        raise _fail(str(exc)) from None
    finally:
        telemetry.shutdown()
    failures = [f"{r.name}: {r.error}" for r in result.substrates.values() if r.error]
    if as_json:
        data = {"file": str(trajectory_path), **result.model_dump(mode="json")}
        if failures:
            data["speedup"] = None  # not comparable: a replay failed
        _print_json(data)
    else:
        counts = result.trajectory
        title = (
            f"{trajectory_path.name}: {counts['turns']} turns, {counts['tool_calls']} tool calls"
        )
        rp.print_replay(_out, result, trajectory, title=title)
    for line in failures:
        _err.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(1)


def _rerun_tools(trajectory: Trajectory, *, virtual: bool) -> dict[str, Tool]:
    """The registered tools a trajectory's tool results name (``replay --rerun-tools``)."""
    try:
        return rp.registered_tools([r.name for r in trajectory.tool_results], virtual=virtual)
    except UnknownNameError as exc:
        raise ConfigError(
            f"--rerun-tools runs registered tools: {exc}; replay without --rerun-tools to play "
            "the recorded results"
        ) from None


@app.command("demo", cls=opt.Command)
def demo_command(
    virtual: Annotated[
        bool, typer.Option("--virtual", help="Instant, simulated time (tools run as twins).")
    ] = False,
    substrates: Annotated[
        str, typer.Option(help="Comma-separated emulated substrates.")
    ] = "wse3,h100",
    model: Annotated[str, typer.Option(help="Model profile for the engines.")] = "llama-3.1-70b",
    seed: opt.Seed = opt.SEED_DEFAULT,
    trace: Annotated[
        str | None,
        typer.Option(
            envvar="AGENTRT_TRACE",
            help="otlp, otlp-grpc, jaeger-json:PATH, console or none (default: OTLP if "
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, else a Jaeger JSON file).",
        ),
    ] = None,
) -> None:
    """The coding agent fixes a real bug on emulated wse3 and h100, side by side."""
    # The demo is an example application (examples/demo.py): it uses the substrates and tools
    # packages, which the kernel does not import, so it is loaded from the source tree.
    path = Path(__file__).resolve().parent.parent / "examples" / "demo.py"
    if not path.is_file():
        raise _fail(
            f"agentrt demo runs examples/demo.py from a source checkout ({path} is missing); "
            "clone the repository and install it with pip install -e ."
        )
    spec = importlib.util.spec_from_file_location("agentrt_demo", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--substrates", substrates, "--model", model, "--seed", str(seed)]
    if virtual:
        argv.append("--virtual")
    if trace:
        argv += ["--trace", trace]
    try:
        code = int(module.main(argv))
    except AgentrtError as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(code)


@app.command("report", cls=opt.Command)
def report_command(
    trace_file: Annotated[
        Path,
        typer.Argument(metavar="TRACE", help="A trace file agentrt wrote (Jaeger or OTLP JSON)."),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the attribution as JSON.")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the waterfall to FILE.svg or FILE.png.")
    ] = None,
) -> None:
    """Where did the time go? Per-step attribution, critical path and totals of a trace file."""
    try:
        reports = load_trace_file(trace_file)
        if plot is not None:
            from agentrt.plot import plot_attribution

            for i, report in enumerate(reports):
                target = plot if i == 0 else plot.with_stem(f"{plot.stem}-{i + 1}")
                plot_attribution(report, target)
                _err.print(f"wrote {target}", highlight=False)
    except AgentrtError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        payload = [r.to_dict() for r in reports]
        _print_json(payload[0] if len(payload) == 1 else payload)
        return
    for report in reports:
        print_report(_out, report)
        print_waterfall(_out, report)


async def _execute(prepared: AgentRun, plan: Plan, show_progress: bool) -> RunResult:
    try:
        if not show_progress:
            await prepared.execute()
            return prepared.result()
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TimeElapsedColumn(),
            console=_err,
            transient=True,
        ) as progress:
            task = progress.add_task(plan.name, total=len(plan.steps))

            async def watch() -> None:
                while True:
                    steps = prepared.result().steps
                    done = sum(s.end_s is not None for s in steps)
                    progress.update(task, completed=done)
                    await anyio.sleep(0.1)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await prepared.execute()
                tg.cancel_scope.cancel()
        return prepared.result()
    finally:
        await prepared.agent.aclose()


def substrates_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List the registered substrates and tools (built-in and plug-ins)."""
    try:
        registry = default_registry()
        subs = registry.names("agentrt.substrates")
        tools = registry.names("agentrt.tools")
    except AgentrtError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        _print_json({"substrates": subs, "tools": tools})
        return
    table = Table("kind", "name")
    for name in subs:
        table.add_row("substrate", name)
    for name in tools:
        table.add_row("tool", name)
    _out.print(table)


_KERNEL_COMMANDS = frozenset({"run", "compare", "demo", "report", "replay"})


#: Which extra installs a package a command needs (the rest: ``pip install PACKAGE``).
_EXTRAS = {"httpx": "serve", "starlette": "serve", "uvicorn": "serve", "matplotlib": "plot"}


def _missing_extra_command(name: str, missing: str) -> None:
    """A command whose module needs an uninstalled package: it exits 2 saying what to install."""
    from rich.markup import escape as rich_escape

    package = missing.split(".")[0]
    extra = _EXTRAS.get(package)
    fix = f"pip install 'agentrt[{extra}]'" if extra else f"pip install {package}"

    def unavailable(ctx: typer.Context) -> None:
        raise opt.fail(f"agentrt {name} needs the package {package!r}, not installed: {fix}")

    unavailable.__doc__ = f"(not installed: {rich_escape(fix)})"  # help is rich markup
    settings = {"allow_extra_args": True, "ignore_unknown_options": True}
    app.command(name, context_settings=settings, add_help_option=False)(unavailable)


def _load_plugin_commands() -> None:
    """Add the commands other packages register under the ``agentrt.commands`` entry points.

    ``substrates`` (this distribution's emulated engines) adds ``predict``, ``calibrate`` and a
    richer ``substrates``; the kernel keeps a plain ``substrates`` listing for when none does.
    """
    names = set()
    for ep in sorted(entry_points(group="agentrt.commands"), key=lambda e: e.name):
        try:
            command = ep.load()
        except ModuleNotFoundError as exc:  # an optional extra is not installed: say so if used
            _missing_extra_command(ep.name, exc.name or str(exc))
            continue
        except (ImportError, AttributeError) as exc:
            _err.print(f"[yellow]warning:[/] cannot load command {ep.name!r} ({ep.value}): {exc}")
            continue
        app.command(ep.name, cls=opt.Command)(command)
        names.add(ep.name)
    if "substrates" not in names:
        app.command("substrates", cls=opt.Command)(substrates_command)


def _interrupted(exc: Interrupted, what: str, where: str | None) -> typer.Exit:
    """Say, on one line, that a signal cancelled the command; the exit is 128 + the signal."""
    line = f"agentrt: interrupted by {exc.signal_name}; {what}"
    _err.print(f"{line}; {where}" if where else line, highlight=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)


def main() -> None:
    """Entry point of the ``agentrt`` console script.

    SIGINT and SIGTERM cancel a running command (see `agentrt.interrupts`): it unwinds, kills
    what it started, flushes its traces, prints one line and exits 130 or 143. Outside a run
    they raise `Interrupted`, which ends the command here with the same one line.
    """
    # The kernel's own commands need no plug-in: importing them all (the server's web stack
    # included) cost ~0.1 s per `agentrt run`.
    argv = sys.argv[1:]
    if not argv or argv[0] not in _KERNEL_COMMANDS:
        _load_plugin_commands()
    restore = raise_on_signals(_CANCEL_ON)
    try:
        code = app(standalone_mode=False)
    except Interrupted as exc:
        _err.print(f"agentrt: interrupted by {exc.signal_name}", highlight=False)
        sys.exit(exc.exit_code)
    except _NoArgsIsHelpError as exc:  # `agentrt` alone: the help, as typer prints it
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
        sys.exit(exc.exit_code)
    except _UsageError as exc:
        # click's usage errors (a missing argument, `--seed abc`, `--trials 0`, a misspelt
        # flag) as one line, like every other input error.
        where = exc.ctx.command_path if exc.ctx is not None else "agentrt"
        message = " ".join(exc.format_message().split())
        _err.print(
            f"[bold red]error:[/] {message} (see `{where} --help`)", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except KeyboardInterrupt:
        _err.print("agentrt: interrupted by SIGINT", highlight=False)
        sys.exit(130)
    finally:
        # The exit status is decided: a late signal must not change it while Python exits.
        restore()
        for sig in _CANCEL_ON:
            signal.signal(sig, signal.SIG_IGN)
    sys.exit(code if isinstance(code, int) else 0)
