"""``agentrt load``: agents arriving as a Poisson process share substrates (entry point command).

Registered as ``load = "substrates.fleet.cli:load_command"`` in ``agentrt.commands``; also runs as
``python -m substrates.fleet.cli PLAN ...``.
"""

from __future__ import annotations

import json
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from agentrt import VirtualClock, run
from agentrt import cli_options as opt
from agentrt.errors import AgentrtError, ConfigError
from agentrt.interrupts import Interrupted, raise_on_signals
from agentrt.log import configure_logging
from agentrt.plan import Plan, load_plan
from agentrt.registry import default_registry
from agentrt.render import Column, print_table, terminal_console
from agentrt.substrate import Substrate
from agentrt.tool import Tool
from substrates.fleet.faults import wrap
from substrates.fleet.load import LoadReport, run_load

__all__ = ["build_substrate", "load_command", "main"]

_out = terminal_console(piped_width=160)
_err = Console(stderr=True)

# Signals that cancel a load run: it unwinds, kills what it started, prints the partial report.
_CANCEL_ON = (signal.SIGINT, signal.SIGTERM)
#: Multiples of --arrival-rate that --sweep visits.
SWEEP_POINTS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def _fail(message: str) -> typer.Exit:
    return opt.fail(message)


def build_substrate(
    name: str, *, seed: int | None, faults: str | None, options: dict[str, Any]
) -> Substrate:
    """Build ``name`` (``route:FILE.yaml`` for a router) through the registry, with faults."""
    registry = default_registry()
    if name.startswith("route:") and "route" not in registry.names("agentrt.substrates"):
        # Before the entry point is installed, build routers directly.
        from substrates.fleet.spec import route

        sub: Substrate = route(spec=name.removeprefix("route:"), seed=seed)
    else:
        sub = registry.substrate(name, seed=seed, **options)
    if faults:
        sub = wrap(sub, faults, seed=seed)
    return sub


def _tools_for(plan: Plan, *, virtual: bool) -> list[Tool]:
    registry = default_registry()
    known = set(registry.names("agentrt.tools"))
    tools = []
    for name in sorted({s.tool for s in plan.steps if s.tool}):
        twin = f"{name}-twin"
        tools.append(registry.tool(twin if virtual and twin in known else name))
    return tools


def _one(
    plan: Plan,
    name: str,
    *,
    agents: int,
    rate: float,
    duration_s: float | None,
    virtual: bool,
    seed: int | None,
    faults: str | None,
    slo_s: float | None,
    options: dict[str, Any],
) -> LoadReport:
    sub = build_substrate(name, seed=seed, faults=faults, options=options)
    tools = _tools_for(plan, virtual=virtual)
    report = LoadReport()

    async def main() -> LoadReport:
        try:
            return await run_load(
                plan,
                sub,
                agents=agents,
                arrival_rate=rate,
                duration_s=duration_s,
                seed=seed,
                slo_s=slo_s,
                tools=tools,
                report=report,
            )
        finally:
            await sub.aclose()

    try:
        return run(main, clock=VirtualClock() if virtual else None, cancel_on=_CANCEL_ON)
    except Interrupted as exc:
        raise _LoadInterrupted(exc, report) from None


class _LoadInterrupted(Exception):
    """A signal cancelled a load run; carries what it counted until then."""

    def __init__(self, interrupted: Interrupted, report: LoadReport) -> None:
        super().__init__(str(interrupted))
        self.interrupted = interrupted
        self.report = report


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}{unit}"
    return f"{value:,}{unit}"


def _print_report(name: str, data: dict[str, Any]) -> None:
    rows = [
        [key, _fmt(data[key])]
        for key in (
            "arrivals", "completed", "failed", "lost", "throughput_runs_per_s",
            "output_tokens_per_s", "e2e_p50_s", "e2e_p95_s", "e2e_p99_s", "ttft_p50_s",
            "ttft_p99_s", "goodput_runs_per_s", "cost_usd", "energy_j", "sim_s", "wall_s",
        )
    ]  # fmt: skip
    for sub, entry in data["substrates"].items():
        util = entry.get("utilisation")
        rows.append(
            [
                f"substrate {sub}",
                f"{entry['calls']:,} calls" + (f", {util:.0%} busy" if util is not None else ""),
            ]
        )
    rows += [[reason, f"{count:,}"] for reason, count in data["failure_reasons"].items()]
    if data["faults_injected"]:
        rows.append(["faults injected", json.dumps(data["faults_injected"])])
    print_table(
        _out,
        [Column("measure", "left", wrap=True), Column("value", wrap=True)],
        rows,
        title=f"load on {name}",
    )


def load_command(
    plan_path: Annotated[Path, typer.Argument(metavar="PLAN", help="Plan file (.yaml or .json).")],
    substrate: Annotated[
        str,
        typer.Option(
            "--substrate",
            "-s",
            metavar="NAME",
            help="Substrate name, route:FILE.yaml, or (with --sweep) a list.",
        ),
    ],
    agents: Annotated[
        int, typer.Option(min=1, metavar="N", help="Most agent runs (arrivals).")
    ] = 100,
    arrival_rate: Annotated[
        float, typer.Option(metavar="R", help="Mean arrivals per second (Poisson), > 0.")
    ] = 1.0,
    duration_s: Annotated[
        float | None,
        typer.Option("--duration", metavar="S", help="Stop arrivals after this many seconds."),
    ] = None,
    virtual: opt.Virtual = False,
    seed: opt.Seed = opt.SEED_DEFAULT,
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
    option: opt.Options = None,
    faults: opt.Faults = None,
    slo_s: Annotated[
        float | None,
        typer.Option("--slo-s", metavar="S", help="End-to-end SLO for goodput, seconds."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Vary the arrival rate; latency-vs-load per substrate.")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="With --sweep: draw the curves to FILE.png or .svg."),
    ] = None,
) -> None:
    """Agents arriving as a Poisson process run PLAN, sharing the substrate's capacity."""
    try:
        configure_logging(level="off")
        opt.check_number("--arrival-rate", arrival_rate)
        opt.check_number("--duration", duration_s)
        opt.check_number("--slo-s", slo_s)
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
        )
        if plot is not None and not sweep:
            raise ConfigError("--plot draws the --sweep curves; add --sweep")
        registry = default_registry()
        plan = load_plan(plan_path, tools=registry.tool_args_model)
        common: dict[str, Any] = {
            "agents": agents,
            "duration_s": duration_s,
            "virtual": virtual,
            "seed": seed,
            "faults": faults,
            "slo_s": slo_s,
            "options": options,
        }
        if not sweep:
            report = _one(plan, substrate, rate=arrival_rate, **common).to_dict()
            report["substrate"] = substrate
        else:
            from substrates.fleet.sweep import sweep_rates

            curves = sweep_rates(
                partial(_one, plan, **common),
                [n.strip() for n in substrate.split(",") if n.strip()],
                [arrival_rate * f for f in SWEEP_POINTS],
            )
    except AgentrtError as exc:
        raise _fail(str(exc).replace("\n", " ")) from None
    except _LoadInterrupted as cancelled:
        raise _interrupted(cancelled, substrate, as_json=as_json, sweep=sweep) from None
    if not sweep:
        if as_json:
            _out.print_json(json.dumps(report))
        else:
            _print_report(substrate, report)
        if report["lost"]:
            raise typer.Exit(1)
        return
    from substrates.fleet.sweep import plot_curves, print_curves

    if as_json:
        _out.print_json(json.dumps(curves))
    else:
        print_curves(_out, curves)
    if plot is not None:
        plot_curves(curves, plot, title=f"{plan.name}: latency vs load")
        _err.print(f"wrote {plot}", highlight=False)


def _interrupted(
    cancelled: _LoadInterrupted, substrate: str, *, as_json: bool, sweep: bool
) -> typer.Exit:
    """Print the partial report (single runs) and one line; exit 128 + the signal."""
    exc, report = cancelled.interrupted, cancelled.report
    what = "sweep cancelled"
    if not sweep:
        data = report.to_dict()
        data["substrate"] = substrate
        data["interrupted"] = exc.signal_name
        if as_json:
            _out.print_json(json.dumps(data))
        else:
            _print_report(f"{substrate} (partial: interrupted)", data)
        what = (
            f"load cancelled after {report.arrivals:,} arrivals ({report.completed:,} completed, "
            f"{report.failed:,} failed or cancelled); the report above is partial"
        )
    line = f"agentrt: interrupted by {exc.signal_name}; {what}"
    _err.print(line, highlight=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)


def main() -> None:
    """Run ``load`` as a stand-alone command (``python -m substrates.fleet.cli``)."""
    restore = raise_on_signals(_CANCEL_ON)
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(cls=opt.Command)(load_command)
    try:
        app()
    except Interrupted as exc:
        _err.print(f"agentrt: interrupted by {exc.signal_name}", highlight=False)
        sys.exit(exc.exit_code)
    finally:
        # The exit status is decided: a late signal must not change it while Python exits.
        restore()
        for sig in _CANCEL_ON:
            signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    main()
