"""Fleet load: agents arriving as a Poisson process share substrates; what happens to latency?

`run_load` starts one agent run of a plan per arrival, on the run's clock (virtual or real), all
sharing one substrate (which may be a `Router` over several, or wrapped in a `FaultInjector`), and
folds every finished run into a `LoadReport` as it ends, so memory grows with the number of runs,
not with their steps. Every arrival ends as succeeded, or failed with its reason: ``lost`` counts
arrivals with no verdict and is 0 unless something is badly wrong.

Example:
    >>> from functools import partial
    >>> from agentrt import Plan, Step, VirtualClock, run
    >>> from agentrt.testing import FixedLatencySubstrate
    >>> plan = Plan(name="p", steps=[Step(id="a")])
    >>> report = run(partial(run_load, plan, FixedLatencySubstrate(latency_s=0.5), agents=20,
    ...              arrival_rate=10.0, seed=1), clock=VirtualClock())
    >>> report.completed, report.failed, report.lost
    (20, 0, 0)
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio

from agentrt import Agent, current_clock
from agentrt.compare import percentile
from agentrt.plan import Plan
from agentrt.result import RunResult
from agentrt.substrate import Substrate
from agentrt.tool import Tool
from substrates.fleet.faults import FaultInjector
from substrates.fleet.router import Router, statistics_of

__all__ = ["LoadReport", "leaves", "run_load"]


@dataclass(slots=True)
class LoadReport:
    """What a load run did: counts, throughput, latency percentiles, cost, energy, utilisation."""

    arrivals: int = 0
    completed: int = 0
    failed: int = 0
    failure_reasons: Counter[str] = field(default_factory=Counter)
    e2e_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    calls: int = 0
    attempts: int = 0
    cost_usd: float = 0.0
    energy_j: float = 0.0
    within_slo: int = 0
    slo_s: float | None = None
    arrival_rate: float = 0.0
    sim_s: float = 0.0
    wall_s: float = 0.0
    substrates: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        """Arrivals that ended with no verdict (always 0 when the runtime keeps its promise)."""
        return self.arrivals - self.completed - self.failed

    def add(self, result: RunResult) -> None:
        """Fold one finished run in."""
        if result.status == "succeeded":
            self.completed += 1
            self.e2e_s.append(result.e2e_s)
            if self.slo_s is not None and result.e2e_s <= self.slo_s:
                self.within_slo += 1
        else:
            self.failed += 1
            failed = next((s for s in result.steps if s.id == result.failed_step), None)
            cause = failed.error.partition(":")[0] if failed and failed.error else result.error
            self.failure_reasons[f"{result.status}: {cause}"[:120]] += 1
        for step in result.steps:
            self.attempts += step.attempts
            self.cost_usd += step.cost_usd
            self.energy_j += step.energy_j
            self.output_tokens += step.output_tokens
            if step.timing is not None and step.status == "succeeded":
                self.calls += 1
                self.ttft_s.append(step.timing.ttft_s)

    def add_failure(self, reason: str) -> None:
        """Count an arrival that produced no `RunResult` at all."""
        self.failed += 1
        self.failure_reasons[reason[:120]] += 1

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields of ``agentrt load --json``."""
        span = self.sim_s if self.sim_s > 0 else float("nan")

        def pct(values: list[float], q: float) -> float | None:
            return percentile(values, q) if values else None

        return {
            "arrivals": self.arrivals,
            "completed": self.completed,
            "failed": self.failed,
            "lost": self.lost,
            "failure_reasons": dict(self.failure_reasons.most_common(10)),
            "arrival_rate": self.arrival_rate,
            "throughput_runs_per_s": self.completed / span if self.sim_s > 0 else 0.0,
            "output_tokens_per_s": self.output_tokens / span if self.sim_s > 0 else 0.0,
            "e2e_p50_s": pct(self.e2e_s, 50),
            "e2e_p95_s": pct(self.e2e_s, 95),
            "e2e_p99_s": pct(self.e2e_s, 99),
            "ttft_p50_s": pct(self.ttft_s, 50),
            "ttft_p99_s": pct(self.ttft_s, 99),
            "slo_s": self.slo_s,
            "goodput_runs_per_s": (
                self.within_slo / span if self.slo_s is not None and self.sim_s > 0 else None
            ),
            "goodput_fraction": (
                self.within_slo / self.arrivals
                if self.slo_s is not None and self.arrivals
                else None
            ),
            "calls": self.calls,
            "attempts": self.attempts,
            "cost_usd": self.cost_usd,
            "energy_j": self.energy_j,
            "sim_s": self.sim_s,
            "wall_s": self.wall_s,
            "substrates": self.substrates,
            "faults_injected": self.faults,
        }


def leaves(substrate: Substrate) -> dict[str, Substrate]:
    """The named substrates behind ``substrate``: a router's routes, else itself."""
    current: Any = substrate
    while isinstance(current, FaultInjector):
        current = current.inner
    if isinstance(current, Router):
        return dict(current.routes)
    return {substrate.name: substrate}


def _fault_counts(substrates: Iterable[Substrate]) -> Counter[str]:
    total: Counter[str] = Counter()
    seen: set[int] = set()
    for sub in substrates:
        current: Any = sub
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            if isinstance(current, FaultInjector):
                total.update(current.injected)
            current = getattr(current, "inner", None)
    return total


async def run_load(
    plan: Plan,
    substrate: Substrate,
    *,
    agents: int,
    arrival_rate: float,
    duration_s: float | None = None,
    seed: int | None = None,
    slo_s: float | None = None,
    tools: Iterable[Tool] = (),
    drain_timeout_s: float = 3600.0,
    report: LoadReport | None = None,
) -> LoadReport:
    """Run ``plan`` once per arrival of a Poisson process, all arrivals sharing ``substrate``.

    Arrivals stop after ``agents`` runs or ``duration_s`` seconds, whichever comes first; then the
    runs in flight get ``drain_timeout_s`` to finish, after which they are cancelled and counted
    as failed ("cancelled").

    Args:
        plan: what each agent runs.
        substrate: shared by every run.
        agents: most arrivals.
        arrival_rate: mean arrivals per second on the run's clock.
        duration_s: stop arriving after this long; None = when ``agents`` have arrived.
        seed: seeds the arrival process and each agent's retry jitter.
        slo_s: end-to-end target for goodput; None = no goodput figures.
        tools: tools the plan's steps use.
        drain_timeout_s: how long in-flight runs may take after the last arrival.
        report: fill this report (new by default): a caller that cancels the load keeps what
            it counted until then (runs in flight count as failed, "cancelled").
    """
    if agents < 1 or arrival_rate <= 0:
        raise ValueError("agents must be >= 1 and arrival_rate > 0")
    if report is None:
        report = LoadReport()
    report.slo_s, report.arrival_rate = slo_s, arrival_rate
    rng = random.Random(seed)
    base_seed = rng.randrange(2**31) if seed is not None else None
    tool_list = list(tools)
    clock = current_clock()
    wall0 = time.perf_counter()
    t0 = clock.current_time()
    last_end = t0

    async def one(i: int) -> None:
        nonlocal last_end
        agent = Agent(
            substrate,
            tools=tool_list,
            name=f"agent-{i}",
            seed=None if base_seed is None else base_seed + i,
            trace_detail="steps",
        )
        try:
            prepared = agent.prepare(plan, run_id=f"load-{i}")
        except Exception as exc:
            report.add_failure(f"{type(exc).__name__}: {exc}")
            return
        try:
            await prepared.execute()
        finally:
            # Reached on success, failure and cancellation alike: no arrival goes uncounted.
            report.add(prepared.result())
            last_end = max(last_end, clock.current_time())

    try:
        async with anyio.create_task_group() as tg:
            for i in range(agents):
                if i:
                    await anyio.sleep(rng.expovariate(arrival_rate))
                if duration_s is not None and clock.current_time() - t0 >= duration_s:
                    break
                report.arrivals += 1
                tg.start_soon(one, i)
            # Every wait has a deadline: runs still going after the drain time are cancelled.
            tg.cancel_scope.deadline = anyio.current_time() + drain_timeout_s
    finally:
        report.sim_s = last_end - t0
        report.wall_s = time.perf_counter() - wall0
    named = leaves(substrate)
    served = substrate.served if isinstance(substrate, Router) else None
    for name, sub in named.items():
        stats = statistics_of(sub)
        entry: dict[str, Any] = {
            "calls": served[name] if served is not None else report.calls,
            "utilisation": (
                min(1.0, stats.busy_s / report.sim_s) if stats and report.sim_s > 0 else None
            ),
        }
        if isinstance(substrate, Router):
            entry["breaker"] = substrate.breakers[name].state
            entry["failures"] = substrate.failures[name]
        report.substrates[name] = entry
    report.faults = dict(_fault_counts([substrate, *named.values()]))
    return report
