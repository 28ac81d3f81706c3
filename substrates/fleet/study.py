"""A load study from names: substrate and tools built through the registry, run on a clock.

What ``agentrt load`` runs: `run_load_study` builds the substrate (``route:FILE.yaml`` for a
router, with ``--faults``) and the plan's tools (their twins in virtual time), runs `run_load`
in real or virtual time, and on SIGINT/SIGTERM raises `LoadInterrupted` with the partial report.
"""

from __future__ import annotations

import signal
from typing import Any

from agentrt import VirtualClock, run
from agentrt.interrupts import Interrupted
from agentrt.plan import Plan
from agentrt.registry import default_registry
from agentrt.substrate import Substrate
from agentrt.tool import Tool
from substrates.fleet.faults import wrap
from substrates.fleet.load import LoadReport, run_load

__all__ = ["SWEEP_POINTS", "LoadInterrupted", "build_substrate", "run_load_study", "tools_for"]

# Signals that cancel a load run: it unwinds, kills what it started, keeps the partial report.
_CANCEL_ON = (signal.SIGINT, signal.SIGTERM)
#: Multiples of --arrival-rate that --sweep visits.
SWEEP_POINTS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


class LoadInterrupted(Exception):
    """A signal cancelled a load run; carries what it counted until then."""

    def __init__(self, interrupted: Interrupted, report: LoadReport) -> None:
        super().__init__(str(interrupted))
        self.interrupted = interrupted
        self.report = report


def build_substrate(
    name: str, *, seed: int | None, faults: str | None, options: dict[str, Any]
) -> Substrate:
    """Build ``name`` (``route:FILE.yaml`` for a router) through the registry, with faults."""
    registry = default_registry()
    if name.startswith("route:") and "route" not in registry.names("agentrt.substrates"):
        # Before the entry point is installed, build routers directly.
        from substrates.fleet.spec import route

        sub: Substrate = route(spec=name.removeprefix("route:"), seed=seed)
    else:
        sub = registry.substrate(name, seed=seed, **options)
    if faults:
        sub = wrap(sub, faults, seed=seed)
    return sub


def tools_for(plan: Plan, *, virtual: bool) -> list[Tool]:
    """The registered tools ``plan`` names; in virtual time each one's twin, where it has one."""
    registry = default_registry()
    known = set(registry.names("agentrt.tools"))
    tools = []
    for name in sorted({s.tool for s in plan.steps if s.tool}):
        twin = f"{name}-twin"
        tools.append(registry.tool(twin if virtual and twin in known else name))
    return tools


def run_load_study(
    plan: Plan,
    name: str,
    *,
    agents: int,
    rate: float,
    duration_s: float | None,
    virtual: bool,
    seed: int | None,
    faults: str | None,
    slo_s: float | None,
    options: dict[str, Any],
    signals: bool = True,
) -> LoadReport:
    """Agents arriving at ``rate`` per second run ``plan`` on substrate ``name``.

    ``options`` are the substrate's (``model``, ``chips``, ``max_batch``, ...). In virtual time
    the run takes no waiting. SIGINT or SIGTERM cancels it: everything unwinds and
    `LoadInterrupted` carries the report counted until then (``signals=False``: the caller
    handles signals, as in an executor's worker process or thread).

    Raises:
        LoadInterrupted: a signal cancelled the run.
        AgentrtError: a bad substrate name or option.
    """
    sub = build_substrate(name, seed=seed, faults=faults, options=options)
    tools = tools_for(plan, virtual=virtual)
    report = LoadReport()

    async def main() -> LoadReport:
        try:
            return await run_load(
                plan,
                sub,
                agents=agents,
                arrival_rate=rate,
                duration_s=duration_s,
                seed=seed,
                slo_s=slo_s,
                tools=tools,
                report=report,
            )
        finally:
            await sub.aclose()

    try:
        clock = VirtualClock() if virtual else None
        return run(main, clock=clock, cancel_on=_CANCEL_ON if signals else ())
    except Interrupted as exc:
        raise LoadInterrupted(exc, report) from None
