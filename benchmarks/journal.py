"""What a journal costs: the tool loop per turn and a sequential plan per step, with and without.

Run: ``python benchmarks/journal.py [--runs N] [--turns K]``.

The model and tool are instant (benchmarks/overhead.py's scenarios), so what is left is the
runtime plus, with a journal, one SQLite commit per finished step (``synchronous=FULL``: an
fsync each; a tool-loop turn is two steps, its model call and its tool call). Printed: median
and minimum microseconds per turn (per step), and the journal's share. A real model call takes
hundreds of milliseconds: the journal's milliseconds are what durability costs on this disk.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from _common import logging_off, print_table
from overhead import InstantTool, plan_chain, tool_loop

from agentrt import Agent, Plan
from agentrt.journal import Journal


async def per_step_us(agent: Agent, target: Any, turns: int, runs: int) -> list[float]:
    """Microseconds per turn (or step) of ``runs`` runs of ``target``, after one warm-up."""
    out: list[float] = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        result = await agent.run(target, max_turns=turns + 1)
        elapsed = time.perf_counter() - t0
        assert result.status == "succeeded", result.error
        if i:
            out.append(elapsed / turns * 1e6)
    return out


def journaled(agent: Agent, journal: Journal) -> Agent:
    """The same agent, committing to ``journal``."""
    return Agent(agent.substrate, tools=[InstantTool()], journal=journal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    logging_off()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Journal(Path(tmp) / "runs.db") as journal:
        for label, make in (
            ("tool loop (per turn)", tool_loop),
            ("plan chain (per step)", plan_chain),
        ):
            agent, target, _ = (
                make(args.turns, traced=False) if make is tool_loop else make(args.turns)
            )
            plain = anyio.run(per_step_us, agent, target, args.turns, args.runs)
            durable = anyio.run(
                per_step_us, journaled(agent, journal), target, args.turns, args.runs
            )
            share = statistics.median(durable) - statistics.median(plain)
            rows.append(
                (
                    label,
                    f"{statistics.median(plain):.1f} (min {min(plain):.1f})",
                    f"{statistics.median(durable):.1f} (min {min(durable):.1f})",
                    f"{share:.1f}",
                )
            )
            assert isinstance(target, Plan | str)
    print_table(
        f"journal cost: {args.turns} turns/steps, instant model and tool "
        f"(µs, median of {args.runs})",
        ["scenario", "no journal", "journal (synchronous=FULL)", "journal's share"],
        rows,
    )


if __name__ == "__main__":
    main()
