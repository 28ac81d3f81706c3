"""Fleet load in virtual time: 10,000 agents x 20 steps (200,000 inference calls) on one core.

Run: ``python benchmarks/load.py [--agents N] [--steps N] [--rate R]``.
Target: under 60 s of wall time and under 2 GB peak memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from functools import partial

from _common import chain, logging_off, print_table

from agentrt import VirtualClock, run
from agentrt.testing import FixedLatencySubstrate
from substrates.fleet.load import run_load


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rate", type=float, default=50.0, help="Arrivals per simulated second.")
    parser.add_argument("--step-ms", type=float, default=200.0)
    args = parser.parse_args()
    logging_off()
    plan = chain(args.steps, name="load")
    substrate = FixedLatencySubstrate(latency_s=args.step_ms / 1000, output_tokens=16)
    clock = VirtualClock()
    wall0 = time.perf_counter()
    report = run(
        partial(run_load, plan, substrate, agents=args.agents, arrival_rate=args.rate, seed=1),
        clock=clock,
    )
    wall = time.perf_counter() - wall0
    rss = peak_rss_mb()
    data = report.to_dict()
    calls = args.agents * args.steps
    if data["lost"] or data["completed"] != args.agents:
        raise SystemExit(f"runs failed or were lost: {data['failure_reasons']}")
    print_table(
        f"load: {args.agents:,} agents x {args.steps} steps in virtual time",
        ["measure", "value"],
        [
            ["inference calls", f"{data['calls']:,}"],
            ["completed / failed / lost", f"{data['completed']} / {data['failed']} / 0"],
            ["simulated time (s)", f"{data['sim_s']:,.1f}"],
            ["wall time (s)", f"{wall:.2f}"],
            ["wall µs per call", f"{wall / calls * 1e6:.1f}"],
            ["peak memory, ru_maxrss (MB)", f"{rss:,.0f}"],
            ["e2e p50 / p99 (s)", f"{data['e2e_p50_s']:.2f} / {data['e2e_p99_s']:.2f}"],
            ["clock jumps", f"{clock.jumps:,}"],
        ],
    )
    verdict = "meets" if wall < 60 and rss < 2048 else "MISSES"
    print(f"target: {calls:,} calls in < 60 s wall and < 2 GB -> {verdict}")


if __name__ == "__main__":
    main()
