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

from agentrt import cli_options as opt
from agentrt.errors import AgentrtError, ConfigError
from agentrt.interrupts import Interrupted, raise_on_signals
from agentrt.log import configure_logging
from agentrt.plan import load_plan
from agentrt.registry import default_registry
from agentrt.render import Column, print_table, terminal_console
from substrates.fleet.study import SWEEP_POINTS, LoadInterrupted, run_load_study
from substrates.fleet.sweep import plot_curves, print_curves, sweep_rates

__all__ = ["load_command", "main"]

_out = terminal_console(piped_width=160)
_err = Console(stderr=True)

# Signals that cancel a load run: it unwinds, kills what it started, prints the partial report.
_CANCEL_ON = (signal.SIGINT, signal.SIGTERM)


def _fail(message: str) -> typer.Exit:
    return opt.fail(message)


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
    stack: opt.Stack = None,
    ep: opt.Ep = None,
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
            stack=stack,
            ep=ep,
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
            report = run_load_study(plan, substrate, rate=arrival_rate, **common).to_dict()
            report["substrate"] = substrate
        else:
            curves = sweep_rates(
                partial(run_load_study, plan, **common),
                [n.strip() for n in substrate.split(",") if n.strip()],
                [arrival_rate * f for f in SWEEP_POINTS],
            )
    except AgentrtError as exc:
        raise _fail(str(exc).replace("\n", " ")) from None
    except LoadInterrupted as cancelled:
        raise _interrupted(cancelled, substrate, as_json=as_json, sweep=sweep) from None
    if not sweep:
        if as_json:
            _out.print_json(json.dumps(report))
        else:
            _print_report(substrate, report)
        if report["lost"]:
            raise typer.Exit(1)
        return
    if as_json:
        _out.print_json(json.dumps(curves))
    else:
        print_curves(_out, curves)
    if plot is not None:
        plot_curves(curves, plot, title=f"{plan.name}: latency vs load")
        _err.print(f"wrote {plot}", highlight=False)


def _interrupted(
    cancelled: LoadInterrupted, substrate: str, *, as_json: bool, sweep: bool
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
