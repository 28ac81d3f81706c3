"""``agentrt load``: agents arriving as a Poisson process share substrates (entry point command).

``agentrt load PLAN --substrate NAME`` runs a plan under Poisson arrivals; ``agentrt load
FLEET.yaml`` runs a fleet spec (pools, autoscalers, tenants, rollouts: `substrates.fleet.fleetspec`)
in virtual time unless ``--real``, prints the per-tenant and per-pool summary (``--json``: the
whole report) and draws its time series with ``--plot FILE.png|svg``.

Registered as ``load = "substrates.fleet.cli:load_command"`` in ``agentrt.commands``; also runs as
``python -m substrates.fleet.cli PLAN ...``.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from agentrt import cli_options as opt
from agentrt.cli_tasks import wants_progress
from agentrt.errors import AgentrtError, ConfigError
from agentrt.interrupts import Interrupted, raise_on_signals
from agentrt.log import configure_logging
from agentrt.plan import load_plan
from agentrt.registry import default_registry
from agentrt.render import Column, print_table, terminal_console
from agentrt.telemetry.configure import configure
from substrates.fleet.fleetbuild import FleetInterrupted, run_fleet_spec
from substrates.fleet.fleetspec import is_fleet_spec, load_fleet_spec
from substrates.fleet.grid import parse_rates, seed_list, sweep_grid
from substrates.fleet.study import SWEEP_POINTS, LoadInterrupted, run_load_study
from substrates.fleet.sweep import plot_curves, print_curves
from substrates.fleet.timeline import plot_timeline, print_fleet_summary

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
    plan_path: Annotated[
        Path,
        typer.Argument(metavar="PLAN|FLEET", help="Plan file (.yaml or .json), or a fleet spec."),
    ],
    substrate: Annotated[
        str | None,
        typer.Option(
            "--substrate",
            "-s",
            metavar="NAME",
            help="Substrate name, route:FILE.yaml, or (with --sweep) a list. Plans only.",
        ),
    ] = None,
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
    rates: Annotated[
        str | None,
        typer.Option(
            metavar="RATES",
            help="--sweep: arrival rates, a list (0.5,1,2) or START:STOP:STEP (default: "
            "0.1x to 2x --arrival-rate).",
        ),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="--sweep: N seeds per point, from --seed on."),
    ] = None,
    seed_list_text: Annotated[
        str | None,
        typer.Option("--seed-list", metavar="SEEDS", help="--sweep: these seeds, e.g. 1,2,3."),
    ] = None,
    executor: opt.ExecutorName = "local",
    plot: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Draw to FILE.png or .svg: the --sweep curves, or a fleet's time series.",
        ),
    ] = None,
    real: Annotated[
        bool, typer.Option("--real", help="Fleet specs: run in real time (default: virtual).")
    ] = False,
    trace: Annotated[
        str,
        typer.Option(
            metavar="TARGET",
            help="Fleet specs: scale and rollout decisions as span events and metrics to otlp, "
            "otlp-grpc, jaeger-json:PATH, console or none.",
        ),
    ] = "none",
) -> None:
    """Agents arriving as a Poisson process run PLAN on a substrate; or run a FLEET spec."""
    configure_logging(level="off")
    if is_fleet_spec(plan_path):
        per_pool = [latency_ms, output_tokens, model, chips, tp, pp, precision, max_batch,
                    network_rtt_ms, spec_decode, stack, ep, option, faults, rates, seeds,
                    seed_list_text]  # fmt: skip
        if substrate is not None or sweep or any(v is not None for v in per_pool):
            raise _fail(
                f"{plan_path} is a fleet spec: its pools and tenants say what runs; drop "
                "--substrate, --sweep and engine options (set them under a pool's `options:`)"
            )
        if executor.strip() != "local":
            raise _fail(f"{plan_path} is one fleet simulation; --executor is for --sweep")
        seed_override = None if seed == opt.SEED_DEFAULT else seed
        _load_fleet(
            plan_path, virtual=not real, seed=seed_override, as_json=as_json, plot=plot, trace=trace
        )
        return
    if trace != "none":
        raise _fail("--trace is for fleet specs; a plan's agents are traced by `agentrt run`")
    if substrate is None:
        raise _fail(
            "missing --substrate NAME: the substrate PLAN's agents share "
            "(e.g. -s wse3), or give a fleet spec instead of a plan"
        )
    try:
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
        grid = {"--rates": rates, "--seeds": seeds, "--seed-list": seed_list_text}
        if not sweep and any(v is not None for v in grid.values()):
            given = ", ".join(k for k, v in grid.items() if v is not None)
            raise ConfigError(f"{given} set the --sweep grid; add --sweep")
        if not sweep and executor.strip() != "local":
            raise ConfigError("--executor runs the points of a --sweep; add --sweep")
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
            del common["seed"]
            curves = sweep_grid(
                plan,
                [n.strip() for n in substrate.split(",") if n.strip()],
                parse_rates(rates) if rates else [arrival_rate * f for f in SWEEP_POINTS],
                seed_list(seed=seed, seeds=seeds, listed=seed_list_text),
                executor=executor,
                show=wants_progress(as_json=as_json),
                common=common,
            )
    except AgentrtError as exc:
        raise _fail(str(exc).replace("\n", " ")) from None
    except LoadInterrupted as cancelled:
        raise _interrupted(cancelled, substrate, as_json=as_json, sweep=sweep) from None
    except Interrupted as exc:  # a sweep point's study, or the wait for the executor
        _err.print(f"agentrt: interrupted by {exc.signal_name}; sweep cancelled", highlight=False)
        raise typer.Exit(exc.exit_code) from None
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


def _load_fleet(
    path: Path,
    *,
    virtual: bool,
    seed: int | None,
    as_json: bool,
    plot: Path | None,
    trace: str = "none",
) -> None:
    """Run the fleet spec at ``path``; print its summary or JSON; draw it with ``plot``."""
    telemetry = None
    try:
        spec = load_fleet_spec(path)
        if plot is not None and plot.suffix.lower() not in (".png", ".svg"):
            raise ConfigError(f"--plot {plot}: draw to a .png or .svg file")
        telemetry = configure(trace, service_name="agentrt", set_global=False)
        tracer = telemetry.tracer_provider.get_tracer("agentrt.fleet")
        meters = telemetry.meter_provider
        meter = meters.get_meter("agentrt.fleet") if meters is not None else None
        report = run_fleet_spec(spec, virtual=virtual, seed=seed, tracer=tracer, meter=meter)
    except AgentrtError as exc:
        raise _fail(str(exc)) from None
    except FleetInterrupted as cancelled:
        exc_, report = cancelled.interrupted, cancelled.report
        print_fleet_summary(_out, report)
        _err.print(
            f"agentrt: interrupted by {exc_.signal_name}; fleet run cancelled after "
            f"{report.arrivals:,} arrivals; the report above is partial",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(exc_.exit_code) from None
    finally:
        if telemetry is not None:
            telemetry.shutdown()
    if as_json:
        _out.print_json(json.dumps({"fleet": str(path), **report.to_dict()}))
    else:
        print_fleet_summary(_out, report)
    if plot is not None:
        try:
            plot_timeline(report, plot, title=spec.name or path.stem)
        except AgentrtError as exc:
            raise _fail(str(exc)) from None
        _err.print(f"wrote {plot}", highlight=False)
    if report.lost:
        raise typer.Exit(1)


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
