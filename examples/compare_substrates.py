"""The same agent on wse3 and h100: per-step and end-to-end table, speed-up, traces written.

Runs the coding agent (examples/coding_agent.py) in virtual time, several trials per substrate,
so engine jitter shows in the percentiles; every run's trace goes to one Jaeger JSON file.

Run: python examples/compare_substrates.py [--substrates wse3,h100] [--trials 20] [--trace PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coding_agent import build_plan, copy_project, make_substrate, make_tools

from agentrt import VirtualClock, run
from agentrt.compare import compare
from agentrt.log import configure_logging
from agentrt.render import print_comparison, terminal_console
from agentrt.telemetry import configure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The coding agent on several substrates.")
    parser.add_argument("--substrates", default="wse3,h100")
    parser.add_argument("--model", default="llama-3.1-70b")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", default=None, help="Jaeger JSON file for the traces")
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    trace = Path(args.trace or Path(tempfile.gettempdir()) / "agentrt-compare.trace.json")
    telemetry = configure(f"jaeger-json:{trace}", set_global=False, metrics=False)
    names = [n.strip() for n in args.substrates.split(",") if n.strip()]
    substrates = {n: make_substrate(n, seed=args.seed, model=args.model) for n in names}
    plan = build_plan(copy_project())  # virtual time: the twins never touch the copy
    try:
        comparison = run(
            lambda: compare(
                plan,
                substrates,
                tools=make_tools(virtual=True, seed=args.seed),
                trials=args.trials,
                seed=args.seed,
                tracer_provider=telemetry.tracer_provider,
            ),
            clock=VirtualClock(),
        )
    finally:
        telemetry.shutdown()
    console = terminal_console(piped_width=140)
    print_comparison(console, comparison)
    fastest = max(comparison.speedup, key=lambda n: comparison.speedup[n])
    console.print(
        f"{fastest} is {comparison.speedup[fastest]:.1f}x faster end to end (p50)", highlight=False
    )
    console.print(
        f"traces: {trace} ({args.trials * len(names)} runs; open in Jaeger's Upload tab)",
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
