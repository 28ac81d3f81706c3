"""`compare_substrate`: one substrate's trials of a plan, as a task ``agentrt compare`` maps.

Each substrate runs on its own clock, in whichever process or Ray node the executor picks; the
command joins the summaries with `Comparison.from_summaries`. The numbers do not depend on where
a task ran, or on the order the tasks finished.
"""

from __future__ import annotations

import signal
from typing import Any

from opentelemetry.trace import TracerProvider

from agentrt.clock import VirtualClock, run
from agentrt.compare import Comparison, SubstrateSummary, compare
from agentrt.plan import Plan
from agentrt.registry import default_registry
from agentrt.replay import registered_tools

__all__ = ["compare_substrate"]


def compare_substrate(
    *,
    plan: Plan,
    substrate: str,
    trials: int,
    seed: int | None,
    options: dict[str, Any],
    faults: str | None,
    virtual: bool,
    signals: bool = False,
    tracer_provider: TracerProvider | None = None,
) -> tuple[SubstrateSummary, str]:
    """One substrate's trials of ``plan``, on its own clock: a task of ``agentrt compare``.

    Builds ``substrate`` through the registry (with ``options`` and ``faults``) and the plan's
    tools (their twins in virtual time), runs `compare` on it alone and returns its summary and
    the clock kind. ``signals`` lets SIGINT/SIGTERM cancel it (in the command's own process).

    Raises:
        Interrupted: a signal cancelled the trials.
        ConfigError: a bad substrate name or option.
    """
    registry = default_registry()
    sub = registry.substrate(substrate, seed=seed, **options)
    if faults:
        sub = registry.wrap("faults", sub, faults, seed=seed)
    tools = list(registered_tools([s.tool for s in plan.steps if s.tool], virtual=virtual).values())

    async def main() -> Comparison:
        try:
            return await compare(
                plan, {substrate: sub}, tools=tools, trials=trials, seed=seed,
                tracer_provider=tracer_provider,
            )  # fmt: skip
        finally:
            await sub.aclose()

    cancel_on = (signal.SIGINT, signal.SIGTERM) if signals else ()
    done = run(main, clock=VirtualClock() if virtual else None, cancel_on=cancel_on)
    return done.substrates[substrate], done.clock
