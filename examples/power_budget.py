"""750 MW of wafers or of GPUs: how many agent tasks per second at p95 <= X, at what USD/task?

The OpenAI x Cerebras framing counts capacity in megawatts. This example turns megawatts into
useful work: for each substrate it finds, with the fleet simulator in virtual time, the highest
Poisson load one replica (a deployment of the model: 4 CS-3s, 2 H100s, ...) serves with its
p95 end-to-end time within the SLO (doubling the rate, then bisecting), prices that replica
with the sourced cost model (`substrates.emulated.tco`), and scales its tasks/s per MW of
facility power (full load, PUE included) to the budget. Scaling is linear: N copies of a
replica, each at its SLO capacity; a pool shares load a little better than that.

    python examples/power_budget.py                      # CS-3 vs H100 vs B200, seconds
    python examples/power_budget.py --executor local     # one process (default: one per core)
    python examples/power_budget.py --zoo --slo 'p95(e2e) <= 20s' --mw 750
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from rich.console import Console
from rich.table import Table

from agentrt.errors import AgentrtError
from agentrt.executors import parse_executor
from agentrt.plan import Plan, Step
from substrates.emulated.tco import system_names
from substrates.fleet.targets import Target, TargetError, parse_target
from substrates.fleet.tcoplan import FleetCost, price_sizing
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
) -> tuple[float | None, Sizer]:
    """The highest tasks/s one replica of ``preset`` serves within ``target`` (None: not 1/s).

    A short run offered ``most``/s comes first: a replica that keeps up with it within the
    target is tried at ``most`` directly (the answer is then a lower bound); otherwise the
    tasks/s it completed while saturated bound the answer from above, and the search starts
    at a power of two below half that bound, halving while one replica misses, then doubles
    while it meets and bisects ``steps`` times between the last rate met and the first missed.
    Each trial is a simulation that stops early on a sure miss. Returns the rate and the sizer
    that proved it.
    """
    tried: dict[float, Sizer] = {}

    def meets(rate: float) -> bool:
        tried[rate] = Sizer(TASK, preset, load_per_s=rate, duration_s=_duration(rate, target))
        return tried[rate].meets(1, target)

    quick = Sizer(TASK, preset, load_per_s=most, duration_s=5.0)
    first = quick.probe(1, target)
    if not first.aborted and target.met_by(first.e2e_s(95.0)) and meets(most):
        return most, tried[most]
    per_task = quick.floor().tokens_per_task
    bound = first.tokens_per_s / per_task if per_task > 0 else most
    low = 2.0 ** math.floor(math.log2(max(bound / 2, 1.0)))
    while not meets(low):
        low /= 2
        if low < 1:
            return None, Sizer(TASK, preset, load_per_s=1.0, duration_s=_duration(1.0, target))
    high = low * 2
    while high < most and meets(high):
        low, high = high, high * 2
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (mid, high) if meets(mid) else (low, mid)
    return low, tried[low]


def size_replica(name: str, slo: str) -> FleetCost:
    """One replica of ``name`` at its SLO capacity, priced (an executor task: module-level).

    Missing even 1/s, the replica is priced at 1/s and its row says why.
    """
    target = parse_target(slo)
    rate, sizer = replica_capacity(name, target)
    return price_sizing(name, sizer.size(target, cap=1 if rate else 64))


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
    parser.add_argument(
        "--executor", default=None,
        help="local, processes[:N] or ray[:ADDRESS] (default: a process per core)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    names = list(HEADLINE)
    if args.zoo:
        names += [n for n in system_names() if n not in HEADLINE]
    cores = os.cpu_count() or 1
    default = f"processes:{min(cores, len(names))}" if cores > 1 else "local"
    try:
        target = parse_target(args.slo)
        with parse_executor(args.executor or default) as executor:
            params = [{"name": name, "slo": target.text} for name in names]
            costs = executor.map(size_replica, params, label=lambda p: str(p["name"]))
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
