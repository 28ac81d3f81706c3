"""A research agent: three searches in parallel, then a synthesis.

Shows the critical path against the sum of step latencies: the three searches overlap, so the
run takes far less than its steps add up to. Real time searches the bundled corpus (docstrings
of the Python standard library plus agentrt's docs, built on first use and cached); virtual
time uses the search twin.

Run: python examples/research_agent.py [--substrate wse3] [--virtual] [--seed N]
"""

from __future__ import annotations

import argparse

from agentrt import Agent, Plan, Step, Tool, VirtualClock, run
from agentrt.log import configure_logging
from agentrt.registry import default_registry
from agentrt.render import print_report, print_waterfall, terminal_console
from agentrt.report import from_run

QUESTIONS = {
    "cancel": "task cancellation timeout",
    "retry": "exponential backoff retry",
    "store": "sqlite connection cursor",
}


def build_plan() -> Plan:
    """outline -> three parallel searches (each the model's turn, then the tool) -> synthesis."""
    searches = [
        Step(
            id=f"search-{key}",
            kind="search",
            tool="search",
            depends_on=["outline"],
            prompt=f"Find what the docs say about {query}.",
            args={"query": query, "k": 3},
        )
        for key, query in QUESTIONS.items()
    ]
    refs = " ".join(f"{{{{ search-{key} }}}}" for key in QUESTIONS)
    return Plan(
        name="research",
        steps=[
            Step(
                id="outline",
                kind="think",
                max_output_tokens=150,
                prompt_tokens=600,
                prompt="Outline how an agent runtime should handle cancellation, retries "
                "and storage.",
            ),
            *searches,
            Step(
                id="synthesis",
                kind="answer",
                depends_on=[s.id for s in searches],
                max_output_tokens=400,
                prompt=f"Combine the findings: {refs}",
            ),
        ],
    )


def make_search(*, virtual: bool, seed: int | None) -> Tool:
    """The real search tool over the default corpus, or its twin in virtual time."""
    return default_registry().tool("search-twin" if virtual else "search", seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Parallel searches, then a synthesis.")
    parser.add_argument("--substrate", default="wse3")
    parser.add_argument("--virtual", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    substrate = default_registry().substrate(args.substrate, seed=args.seed)
    agent = Agent(
        substrate,
        tools=[make_search(virtual=args.virtual, seed=args.seed)],
        name="research-agent",
        seed=args.seed,
    )
    result = run(agent.run, build_plan(), clock=VirtualClock() if args.virtual else None)
    report = from_run(result)
    console = terminal_console(piped_width=140)
    print_report(console, report)
    print_waterfall(console, report)
    hits = result.step("search-cancel").tool_output or ""
    console.print(f"first search found: {hits.splitlines()[0] if hits else '-'}", highlight=False)
    console.print(
        f"critical path {report.e2e_s:.2f} s vs sum of step latencies "
        f"{report.sum_of_step_latencies_s:.2f} s",
        highlight=False,
    )
    return 0 if result.status == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
