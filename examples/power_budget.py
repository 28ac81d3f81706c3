"""750 MW of wafers or of GPUs: how many agent tasks per second at p95 <= X, at what USD/task?

The OpenAI x Cerebras framing counts capacity in megawatts. This example turns megawatts into
useful work: for each substrate it finds, with the fleet simulator in virtual time, the highest
Poisson load one replica (a deployment of the model: 4 CS-3s, 2 H100s, ...) serves with its
p95 end-to-end time within the SLO (doubling the rate, then bisecting), prices that replica
with the sourced cost model (`substrates.emulated.tco`), and scales its tasks/s per MW of
facility power (full load, PUE included) to the budget. Scaling is linear: N copies of a
replica, each at its SLO capacity; a pool shares load a little better than that.

    python examples/power_budget.py                      # CS-3 vs H100 vs B200, seconds
    python examples/power_budget.py --zoo --slo 'p95(e2e) <= 20s' --mw 750
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from agentrt.errors import AgentrtError
from agentrt.plan import Plan, Step
from substrates.emulated.tco import system_names
from substrates.fleet.targets import Target, TargetError, parse_target
from substrates.fleet.tcoplan import FleetCost, price_fleets
from substrates.fleet.tcosize import Sizer

#: A short agent task: plan, then answer (180 output tokens on the critical path).
TASK = Plan(
    name="agent-task",
    steps=(
        Step(id="plan", kind="think", prompt="Plan the change.", max_output_tokens=60),
        Step(
            id="answer", kind="answer", prompt="Write it.", depends_on=("plan",),
            max_output_tokens=120,
        ),
    ),
)  # fmt: skip
HEADLINE = ("wse3", "h100", "b200")
#: The highest rate tried per replica: a wafer replica may serve more (its row is then a floor).
MOST_PER_S = 128.0


def _duration(rate: float, target: Target) -> float:
    """Long enough for ~300 arrivals and two SLO spans: near steady state, still seconds."""
    return max(2 * target.limit, 300 / rate)


def replica_capacity(
    preset: str, target: Target, *, steps: int = 2, most: float = MOST_PER_S
) -> float | None:
    """The highest tasks/s one replica of ``preset`` serves within ``target`` (None: not 1/s).

    Doubles the rate from 1/s while one replica meets the target, then bisects ``steps`` times
    between the last rate met and the first missed; stops at ``most`` (a lower bound, then).
    """

    def meets(rate: float) -> bool:
        sizer = Sizer(TASK, preset, load_per_s=rate, duration_s=_duration(rate, target))
        return sizer.meets(1, target)

    low, high = 0.0, 1.0
    while meets(high):
        low, high = high, high * 2
        if high > most:
            return low
    if low == 0.0:
        return None
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (mid, high) if meets(mid) else (low, mid)
    return low


def budget_rows(costs: list[FleetCost], mw: float) -> list[dict[str, object]]:
    """Per substrate: tasks/s and tokens/s a budget of ``mw`` MW delivers, and USD/task."""
    rows: list[dict[str, object]] = []
    for c in costs:
        row: dict[str, object] = {"substrate": c.substrate, "met": c.sizing.met}
        at_least = ">=" if c.sizing.load_per_s >= MOST_PER_S else ""  # the search's ceiling
        row["replica"] = f"{c.sizing.deployment.split(' (')[0]} @ {at_least}{c.tasks_per_s:.3g}/s"
        if c.units is not None and c.steady is not None and c.systems:
            # At scale replicas pack into systems: a replica of 2 GPUs uses a quarter of an
            # 8-GPU node, so price it by its share of the system, not by the whole node.
            chips = c.sizing.replicas * c.sizing.chips_per_replica
            share = chips / (c.systems * c.economics.chips_per_system)
            per_mw = c.units["tasks_per_s_per_mw"] / share
            row |= {
                "tasks_per_s": per_mw * mw,
                "tokens_per_s": per_mw * mw * c.tokens_per_s / c.tasks_per_s,
                "usd_per_task": c.units["usd_per_task"] * share,
                "j_per_token": c.units["j_per_token"] * share,
                "systems": round(mw / c.steady.facility_power_full_mw * c.systems),
                "p95_s": c.sizing.measured_s,
            }
        else:
            row["missed"] = c.sizing.missed
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the budget table; exit 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slo", default="p95(e2e) <= 15s", help="the SLO every fleet meets")
    parser.add_argument("--mw", type=float, default=750.0, help="facility power budget, MW")
    parser.add_argument("--zoo", action="store_true", help="every preset with system data")
    args = parser.parse_args(argv)
    names = list(HEADLINE)
    if args.zoo:
        names += [n for n in system_names() if n not in HEADLINE]
    try:
        target = parse_target(args.slo)
        costs = []
        for name in names:
            rate = replica_capacity(name, target)
            if rate is None:  # one replica misses even at a trickle: show why
                rate = 1.0
            costs += price_fleets(TASK, [name], load_per_s=rate, target=target,
                                  duration_s=_duration(rate, target), cap=64)  # fmt: skip
    except (AgentrtError, TargetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = Table(title=f"{args.mw:,.0f} MW at {target.text} (llama-3.1-70b, {TASK.name})")
    headers = ("substrate", "replica", "tasks/s", "Mtok/s", "USD/task", "J/token", "systems", "p95")
    for header in headers:
        table.add_column(header, justify="left" if header == "substrate" else "right")
    for row in budget_rows(costs, args.mw):
        if "tasks_per_s" not in row:
            table.add_row(str(row["substrate"]), "", f"misses the SLO ({row['missed']})")
            continue
        table.add_row(
            str(row["substrate"]),
            str(row["replica"]),
            f"{row['tasks_per_s']:,.0f}",
            f"{float(str(row['tokens_per_s'])) / 1e6:,.2f}",
            f"${row['usd_per_task']:.5f}",
            f"{row['j_per_token']:,.2f}",
            f"{row['systems']:,}",
            f"{row['p95_s']:.1f} s",
        )
    Console(width=100).print(table)
    print(
        "replica: one deployment at the highest load it serves within the SLO (searched up to "
        f"{MOST_PER_S:g}/s: '>=' marks a lower bound), scaled linearly to "
        f"{args.mw:g} MW of facility power (PUE included)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
