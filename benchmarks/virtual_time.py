"""Virtual time: 10,000 sequential steps of 200 ms simulated each, simulated vs wall time.

Run: ``python benchmarks/virtual_time.py [--steps N] [--step-ms MS]``.
Target: 2,000 s simulated in under 2 s of wall time.
"""

from __future__ import annotations

import argparse
import time

from _common import chain, logging_off, print_table

from agentrt import Agent, VirtualClock, run
from agentrt.testing import FixedLatencySubstrate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--step-ms", type=float, default=200.0)
    args = parser.parse_args()
    logging_off()
    t_plan = time.perf_counter()
    plan = chain(args.steps)
    build_s = time.perf_counter() - t_plan
    agent = Agent(FixedLatencySubstrate(latency_s=args.step_ms / 1000, output_tokens=16))
    clock = VirtualClock()
    wall0 = time.perf_counter()
    result = run(agent.run, plan, clock=clock)
    wall = time.perf_counter() - wall0
    assert result.status == "succeeded", result.error
    print_table(
        f"virtual time: {args.steps:,} sequential steps of {args.step_ms:g} ms",
        ["measure", "value"],
        [
            ["simulated time (s)", f"{result.e2e_s:,.1f}"],
            ["wall time to run (s)", f"{wall:.3f}"],
            ["speed-up (simulated / wall)", f"{result.e2e_s / wall:,.0f}x"],
            ["wall µs per step", f"{wall / args.steps * 1e6:.1f}"],
            ["clock jumps", f"{clock.jumps:,}"],
            ["plan build + validation (s)", f"{build_s:.3f}"],
        ],
    )
    verdict = (
        "meets"
        if wall < 2.0 and result.e2e_s >= 0.999 * args.steps * args.step_ms / 1000
        else "MISSES"
    )
    print(f"target: {args.steps * args.step_ms / 1000:,.0f} s simulated in < 2 s wall -> {verdict}")


if __name__ == "__main__":
    main()
