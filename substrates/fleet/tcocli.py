"""``agentrt tco WORKLOAD --load 5/s --slo 'p95(e2e) <= 10s'``: what a fleet meeting the SLO costs.

Per substrate (``wse3``, ``h100``, ``h100:vllm`` for a stack) it sizes the fleet with the fleet
simulator in virtual time (`substrates.fleet.tcosize`), prices it with the sourced cost model
(`substrates.emulated.tco`), and prints a side-by-side table (``--json``: JSON with the sources
of every figure; ``--plot FILE``: cost per task vs SLO tightness). Bad input exits 2 with one
line. Registered as ``tco = "substrates.fleet.tcocli:tco_command"`` in ``agentrt.commands``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from agentrt import cli_options as opt
from agentrt.cli_tasks import progress_bar, wants_progress
from agentrt.errors import AgentrtError, ConfigError
from agentrt.executors import parse_executor
from agentrt.log import configure_logging
from agentrt.render import Column, print_table, terminal_console
from substrates.emulated.tco import TcoBreakdown, UnitCosts
from substrates.fleet.targets import TargetError, parse_target
from substrates.fleet.tcofleet import FleetSizing, PoolCost, price_fleet, size_fleet
from substrates.fleet.tcoplan import FleetCost, SloPoint, parse_load, price_fleets, slo_points
from substrates.fleet.tcosize import DEFAULT_CAP, Sizer, p95_target
from substrates.fleet.tcowork import load_workload

__all__ = ["SWEEP_FACTORS", "plot_sweep", "render_rows", "tco_command"]

#: ``--plot`` re-sizes for the SLO's limit times each of these.
SWEEP_FACTORS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)

_out = terminal_console(piped_width=100)


def _usd(value: float) -> str:
    if value >= 1e6:
        return f"${value / 1e6:,.2f}M"
    if value >= 1e3:
        return f"${value / 1e3:,.1f}k"
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def _verdict(c: FleetCost) -> str:
    s = c.sizing
    return f"{s.replicas} x {s.deployment.split(' (')[0]}" if s.met else f"misses ({s.missed})"


def _measured(c: FleetCost) -> str:
    value = c.sizing.measured_s
    return "inf" if math.isinf(value) else f"{value:,.2f} s"


def render_rows(costs: Sequence[FleetCost], months: Sequence[int]) -> list[list[str]]:
    """The table's rows: one figure per row, one substrate per column ("-": SLO missed)."""
    q = p95_target(costs[0].sizing.target) if costs else 95.0

    def priced(fn: Callable[[TcoBreakdown, UnitCosts], str]) -> list[str]:
        return [fn(c.steady, c.units) if c.steady and c.units else "-" for c in costs]

    rows: list[list[str]] = [
        ["replicas", *(_verdict(c) for c in costs)],
        [f"p{q:g}(e2e) measured", *(_measured(c) for c in costs)],
        ["systems", *(f"{c.systems:,}" if c.systems else "-" for c in costs)],
        ["capex", *priced(lambda b, u: _usd(b.capex_usd))],
        ["opex / month", *priced(lambda b, u: _usd(b.opex_usd_per_month))],
    ]
    rows += [
        [f"TCO {n} months", *(_usd(c.bills[n].total_usd) if c.bills else "-" for c in costs)]
        for n in months
    ]
    rows += [
        ["USD / task", *priced(lambda b, u: _usd(u["usd_per_task"]))],
        ["USD / M output tok", *priced(lambda b, u: _usd(u["usd_per_mtok"]))],
        ["J / output token", *priced(lambda b, u: f"{u['j_per_token']:,.2f}")],
        ["tasks/s per MW", *priced(lambda b, u: f"{u['tasks_per_s_per_mw']:,.1f}")],
        ["MW at full load", *priced(lambda b, u: f"{b.facility_power_full_mw:,.3f}")],
        ["racks", *priced(lambda b, u: f"{b.racks:,}")],
        ["floor m2", *priced(lambda b, u: f"{b.floor_m2:,.0f}")],
    ]
    return rows


def plot_sweep(points: Sequence[SloPoint], path: Path, *, title: str) -> None:
    """Draw USD per task vs the SLO limit, one line per substrate (matplotlib, imported here).

    Raises:
        ConfigError: matplotlib is not installed or the file cannot be written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib") from exc
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(p.substrate for p in points):
        xs = [p.slo_s for p in points if p.substrate == name and p.usd_per_task is not None]
        ys = [p.usd_per_task for p in points if p.substrate == name and p.usd_per_task]
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("SLO: p95 end-to-end limit (s); tighter to the left")
    ax.set_ylabel("USD per task at the SLO")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise ConfigError(f"--plot {path}: cannot write: {exc}") from exc
    finally:
        plt.close(fig)


def _print_fleet(
    sized: FleetSizing, pools: Sequence[PoolCost], months: Sequence[int], *, as_json: bool
) -> None:
    """A fleet spec's sized ceilings and their price, one pool per column (or JSON)."""
    verdict = "meets" if sized.met else f"misses ({sized.missed})"
    measured = "inf" if math.isinf(sized.measured_s) else f"{sized.measured_s:,.2f} s"
    if as_json:
        data = {
            "kind": "fleet", "fleet": sized.name, "slo": sized.target.text, "met": sized.met,
            "missed": sized.missed or None, "measured_s": None if measured == "inf"
            else sized.measured_s, "simulations": sized.simulations, "months": list(months),
            "pools": [p.to_dict() for p in pools],
        }  # fmt: skip
        _out.print_json(json.dumps(data))
        return

    def bill(p: PoolCost, n: int) -> str:
        return _usd(p.owned[n].total_usd) if n in p.owned else "-"

    rows = [
        ["preset", *(p.preset for p in pools)],
        ["ceiling (max)", *(f"{p.ceiling:,}" for p in pools)],
        ["peak replicas", *(f"{p.peak_replicas:,}" for p in pools)],
        ["mean replicas", *(f"{p.mean_replicas:,.2f}" for p in pools)],
        ["systems at peak", *(f"{p.systems:,}" for p in pools)],
        ["capex", *(_usd(p.owned[min(p.owned)].capex_usd) for p in pools)],
        ["opex / month", *(_usd(p.owned[min(p.owned)].opex_usd_per_month) for p in pools)],
        *([f"TCO {n} months", *(bill(p, n) for p in pools)] for n in months),
        ["rented / month", *(_usd(p.rent_usd_per_month) if p.rent_usd_per_month is not None
                             else "-" for p in pools)],
    ]  # fmt: skip
    print_table(
        _out,
        [Column("", "left"), *(Column(p.pool) for p in pools)],
        rows,
        title=f"agentrt tco: fleet {sized.name}, {sized.target.text}: {verdict}, {measured}",
    )


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"{what} {text!r}: write whole numbers >= 1 separated by commas")
    return values


def _auto_executor(executor: str, substrates: int) -> str:
    """``auto``: a process per substrate when there are several and cores to run them."""
    if executor.strip() != "auto":
        return executor
    cores = os.cpu_count() or 1
    return f"processes:{min(substrates, cores)}" if substrates > 1 and cores > 1 else "local"


def tco_command(
    workload_path: Annotated[
        Path,
        typer.Argument(
            metavar="WORKLOAD",
            help="What each task runs: a plan (.yaml), a trajectory (.jsonl) or a fleet spec.",
        ),
    ],
    load: Annotated[
        str, typer.Option(metavar="RATE", help="Target load: tasks/s (`5/s`) or `2000tok/s`.")
    ] = "5/s",
    slo: Annotated[
        str, typer.Option(metavar="TARGET", help="The SLO, e.g. 'p95(e2e) <= 10s'.")
    ] = "p95(e2e) <= 10s",
    substrates: Annotated[
        str, typer.Option(metavar="LIST", help="Presets (PRESET or PRESET:STACK), comma-separated.")
    ] = "wse3,h100,b200",
    months: Annotated[
        str, typer.Option(metavar="LIST", help="TCO horizons in months.")
    ] = "12,24,36",
    duration: Annotated[
        float, typer.Option(metavar="S", help="Simulated seconds of arrivals per candidate.")
    ] = 120.0,
    cap: Annotated[int, typer.Option(metavar="N", help="Most replicas tried.")] = DEFAULT_CAP,
    plot: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Draw cost per task vs SLO tightness.")
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            metavar="EXECUTOR",
            help="Where substrates are sized, one task each: auto (processes when sizing more "
            "than one on a machine with more than one core, else local), local, processes[:N], "
            "ray[:ADDRESS]. Results are the same on every executor.",
        ),
    ] = "auto",
    model: opt.Model = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Seeds arrivals and replicas.")] = 1,
    as_json: opt.AsJson = False,
) -> None:
    """Size a fleet per substrate to meet the SLO at the load, then price it: capex, TCO, $/task."""
    configure_logging(level="off")
    try:
        target = parse_target(slo)
        p95_target(target)
        rate, unit = parse_load(load)
        horizons = _ints(months, "--months")
        names = [s.strip() for s in substrates.split(",") if s.strip()]
        work = load_workload(workload_path)
        if work.fleet is not None:  # its own arrivals, pools and autoscalers: --load unused
            sized = replace(size_fleet(work.fleet, target, cap=cap), name=work.name)
            _print_fleet(sized, price_fleet(work.fleet, sized, months=horizons), horizons,
                         as_json=as_json)  # fmt: skip
            return
        if work.workload is None:
            raise ConfigError(f"{workload_path}: nothing to size")
        options = {**({"model": model} if model else {}), **work.options}
        if unit == "tokens":  # convert through the workload's output tokens per task
            probe = Sizer(work.workload, names[0].partition(":")[0] if names else "wse3",
                          load_per_s=1.0, seed=seed, options=options)  # fmt: skip
            per_task = probe.floor().tokens_per_task
            if per_task <= 0:
                raise ConfigError(f"{workload_path}: its tasks produce no output tokens; use /s")
            rate /= per_task
        show = wants_progress(as_json=as_json)
        with (
            parse_executor(_auto_executor(executor, len(names))) as runner,
            progress_bar("sizing", show=show, unit="substrates") as on_done,
        ):
            on_done(0, len(names))
            costs = price_fleets(
                work.workload, names, load_per_s=rate, target=target, months=horizons,
                duration_s=duration, seed=seed, cap=cap, options=options, executor=runner,
                sweep_factors=SWEEP_FACTORS if plot is not None else (), on_done=on_done,
            )  # fmt: skip
        points = slo_points(costs)
        title = f"{work.name} at {rate:,.3g} tasks/s"
        if plot is not None:
            plot_sweep(points, plot, title=title)
    except (AgentrtError, TargetError) as exc:
        raise opt.fail(str(exc)) from None
    if as_json:
        data = {
            "workload": str(workload_path),
            "kind": work.kind,
            "load_tasks_per_s": rate,
            "slo": target.text,
            "months": horizons,
            "substrates": [c.to_dict() for c in costs],
            "sweep": [  # cost vs SLO tightness (with --plot)
                {
                    "substrate": p.substrate,
                    "slo_s": p.slo_s,
                    "systems": p.systems,
                    "usd_per_task": p.usd_per_task,
                    "usd_per_month": p.usd_per_month,
                }
                for p in points
            ],
            "plot": str(plot) if plot else None,
        }
        _out.print_json(json.dumps(data))
        return
    print_table(
        _out,
        [Column("", "left"), *(Column(c.substrate) for c in costs)],
        render_rows(costs, horizons),
        title=f"agentrt tco: {title}, {target.text}",
    )
    if plot is not None:
        _out.print(f"wrote {plot}", highlight=False)
