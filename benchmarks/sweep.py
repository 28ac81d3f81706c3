"""One load-sweep study on every executor: wall-clock speed-up of 2 workers over 1, and overhead.

Run: ``python benchmarks/sweep.py [--rates N] [--seeds N] [--agents N] [--trivial N]``.
The study is ``agentrt load --sweep``'s grid (wse3 and h100 x N rates x N seeds, each point a
load study in virtual time), run on local, processes:1, processes:2, ray:1 and ray:2 (Ray's
local cluster). Start-up (pool or cluster, and each worker's first imports) is timed apart from
the study; then ``--trivial``
tasks that do nothing give each executor's per-task overhead. Every executor's results must be
identical to the local executor's.
Target: 2 workers at least 1.6x faster than 1 on processes and on Ray (a 2-core machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from typing import Any

from _common import logging_off, print_table

from agentrt.executors import Executor, parse_executor
from agentrt.executors.checks import echo
from agentrt.plan import Plan, Step
from substrates.fleet.grid import sweep_point

PLAN = Plan(
    name="short",
    steps=(
        Step(id="think", slo="interactive"),
        Step(id="answer", kind="answer", depends_on=("think",)),
    ),
)


def _study(rates: int, seeds: int, agents: int) -> list[dict[str, Any]]:
    common: dict[str, Any] = {"agents": agents, "duration_s": None, "virtual": True, "faults": None,
              "slo_s": None, "options": {}}  # fmt: skip
    return [
        {"plan": PLAN, "substrate": name, "rate": float(rate), "seed": seed, **common}
        for name in ("wse3", "h100")
        for rate in range(1, rates + 1)
        for seed in range(seeds)
    ]


def _timed(ex: Executor, fn: Any, params: list[dict[str, Any]]) -> tuple[float, list[Any]]:
    wall0 = time.perf_counter()
    out = ex.map(fn, params)
    return time.perf_counter() - wall0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, default=10, help="Arrival rates 1..N per second.")
    parser.add_argument("--seeds", type=int, default=6, help="Seeds per rate.")
    parser.add_argument("--agents", type=int, default=100, help="Agents per point.")
    parser.add_argument("--trivial", type=int, default=400, help="Do-nothing tasks for overhead.")
    parser.add_argument("--no-ray", action="store_true", help="Skip the Ray executors.")
    args = parser.parse_args()
    logging_off()
    study = _study(args.rates, args.seeds, args.agents)
    trivial = [{"value": i} for i in range(args.trivial)]
    names = ["local", "processes:1", "processes:2"]
    if not args.no_ray and importlib.util.find_spec("ray") is not None:
        names += ["ray:1", "ray:2"]
    rows, walls, reference = [], {}, None
    for name in names:
        start0 = time.perf_counter()
        with parse_executor(name) as ex:
            # Start the pool or the cluster, and have each worker import the simulator.
            ex.map(sweep_point, [{**p, "agents": 1} for p in study[:4]])
            startup = time.perf_counter() - start0
            wall, out = _timed(ex, sweep_point, study)
            overhead, _ = _timed(ex, echo, trivial)
        if reference is None:
            reference = out
        elif out != reference:
            raise SystemExit(f"{name}: results differ from the local executor's")
        walls[name] = wall
        kind, _, n = name.partition(":")
        one = walls.get(f"{kind}:1")
        speedup = f"{one / wall:.2f}x" if one and n == "2" else "-"
        rows.append([name, f"{startup:.2f}", f"{wall:.2f}", speedup,
                     f"{overhead / len(trivial) * 1e6:,.0f}"])  # fmt: skip
    print_table(
        f"sweep: {len(study)} points (2 substrates x {args.rates} rates x {args.seeds} seeds, "
        f"{args.agents} agents each), identical results on every executor",
        ["executor", "start-up s", "study wall s", "2 vs 1 worker", "µs per trivial task"],
        rows,
    )
    pairs = [(k, walls[f"{k}:1"] / walls[f"{k}:2"]) for k in ("processes", "ray")
             if f"{k}:2" in walls]  # fmt: skip
    verdict = "meets" if all(s >= 1.6 for _, s in pairs) else "MISSES"
    shown = ", ".join(f"{k} {s:.2f}x" for k, s in pairs)
    print(f"target: 2 workers >= 1.6x faster than 1 ({shown}; {os.cpu_count()} cores) -> {verdict}")


if __name__ == "__main__":
    main()
