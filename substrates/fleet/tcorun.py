"""One sizing simulation: seeded arrivals of a workload on N replicas, stopped on a sure miss.

`simulate` plays the same arrivals `run_load` would (the same seeded schedule, the same agents)
on a `Pool` of ``replicas`` warm replicas, in virtual time, and returns a `Measurement`. Given an
``abort`` bound ``(q, limit_s)`` it stops as soon as the ``q``-th percentile of end-to-end time
over *all* arrivals is certain to exceed ``limit_s``: the schedule is known up front, so the
number of arrivals ``N`` is too, and once more than ``N - floor((N - 1) q / 100)`` of them are
certainly over the limit (finished over it, failed, or still running more than ``limit_s`` after
they arrived) the percentile's lower rank already lies above it, whatever the rest do. An
aborted measurement proves a miss and nothing else: it carries no percentiles.

Example:
    >>> from agentrt import Plan, Step
    >>> from substrates.emulated.engine import build_engine
    >>> plan = Plan(name="p", steps=[Step(id="a", max_output_tokens=50)])
    >>> make = lambda i: build_engine("b200", seed=i, model="llama-3.1-8b")
    >>> m = simulate(plan, make, replicas=1, load_per_s=2.0, duration_s=10.0, seed=1)
    >>> m.aborted, m.completed == m.arrivals
    (False, True)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from agentrt import Agent, VirtualClock, current_clock, run
from agentrt.compare import percentile
from agentrt.plan import Plan
from agentrt.replay import replay
from agentrt.substrate import Substrate
from agentrt.tool import Tool
from agentrt.trajectory import Trajectory
from substrates.emulated.engine import EmulatedEngine
from substrates.fleet.pool import Pool

__all__ = ["Measurement", "arrival_count", "percentiles", "simulate", "sure_miss_count"]

#: What each arrival runs: a plan's agent, or a recorded trajectory's conversations.
Workload = Plan | Trajectory


@dataclass(frozen=True, slots=True)
class Measurement:
    """One simulated pool of ``replicas`` at the target load.

    ``e2e_by_q`` maps percentiles (50, 95, 99) to seconds (``inf`` when too many runs did not
    complete); ``busy_fraction`` is the replicas' mean share of the run spent computing. An
    ``aborted`` measurement stopped at ``sim_s`` once the ``abort_q``-th percentile was sure to
    exceed ``abort_s``: its ``e2e_by_q`` is empty and it proves only that miss.
    """

    replicas: int
    arrivals: int
    completed: int
    e2e_by_q: Mapping[float, float]
    output_tokens: int
    busy_fraction: float
    energy_j: float
    sim_s: float
    aborted: bool = False
    abort_q: float = 0.0
    abort_s: float = 0.0
    tokens_per_s: float = 0.0

    def e2e_s(self, q: float) -> float:
        """The ``q``-th percentile of run end-to-end time (incomplete runs are ``inf``)."""
        return self.e2e_by_q.get(q, math.inf)

    def misses(self, q: float, limit_s: float) -> bool | None:
        """True/False when this measurement decides ``pq(e2e) <= limit_s``; None if it cannot."""
        if not self.aborted:
            return not self.e2e_s(q) <= limit_s
        # p_q >= p_abort_q > abort_s >= limit_s: a looser percentile or limit is not decided.
        return True if q >= self.abort_q and limit_s <= self.abort_s else None

    @property
    def tokens_per_task(self) -> float:
        """Output tokens per completed run."""
        return self.output_tokens / self.completed if self.completed else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``inf`` as None)."""
        return {
            "replicas": self.replicas,
            "arrivals": self.arrivals,
            "completed": self.completed,
            "e2e_s": {
                f"p{q:g}": (v if math.isfinite(v) else None) for q, v in self.e2e_by_q.items()
            },
            "tokens_per_task": self.tokens_per_task,
            "busy_fraction": self.busy_fraction,
            "sim_s": self.sim_s,
            "aborted": {"p": self.abort_q, "over_s": self.abort_s} if self.aborted else None,
        }


def arrival_count(*, load_per_s: float, duration_s: float, agents: int, seed: int) -> int:
    """How many arrivals `run_load`'s seeded schedule makes within ``duration_s``."""
    rng = random.Random(seed)
    rng.randrange(2**31)  # the agents' base seed comes first
    t, n = 0.0, 0
    for i in range(agents):
        if i:
            t += rng.expovariate(load_per_s)
        if t >= duration_s:
            break
        n += 1
    return n


def sure_miss_count(arrivals: int, q: float) -> int:
    """Arrivals over a limit that make the ``q``-th percentile of ``arrivals`` exceed it.

    Example:
        >>> sure_miss_count(100, 95)  # the 95th percentile of 100 interpolates ranks 94 and 95
        6
    """
    return arrivals - int((arrivals - 1) * q / 100)


def percentiles(
    e2e_s: list[float], missing: int, qs: Iterable[float] = (50.0, 95.0, 99.0)
) -> dict[float, float]:
    """Percentiles over all arrivals, the ``missing`` ones counting as infinitely slow.

    Example:
        >>> percentiles([1.0, 2.0, 3.0], 1, qs=(50.0, 95.0))
        {50.0: 2.5, 95.0: inf}
    """
    out: dict[float, float] = {}
    total = len(e2e_s) + missing
    for q in qs:
        if total == 0:
            out[q] = math.inf
        elif missing == 0:
            out[q] = percentile(e2e_s, q)
        else:
            ordered = sorted(e2e_s) + [math.inf] * missing
            high = min(int((total - 1) * q / 100) + 1, total - 1)
            out[q] = math.inf if math.isinf(ordered[high]) else percentile(ordered, q)
    return out


@dataclass(slots=True)
class _Tally:
    done_e2e: list[float]
    output_tokens: int = 0
    energy_j: float = 0.0
    over: int = 0  # finished over the limit, or failed


async def _play(
    workload: Workload, pool: Substrate, i: int, seed: int, tools: list[Tool]
) -> tuple[bool, float, int, float]:
    """One arrival: (succeeded, e2e seconds, output tokens, joules)."""
    if isinstance(workload, Trajectory):
        played = (await replay(workload, {"pool": pool}, seed=seed)).substrates["pool"]
        tokens = sum(t.output_tokens for t in played.turns)
        return played.status == "succeeded", played.e2e_s, tokens, 0.0
    agent = Agent(pool, tools=tools, name=f"agent-{i}", seed=seed, trace_detail="steps")
    prepared = agent.prepare(workload, run_id=f"load-{i}")
    try:
        await prepared.execute()
    finally:
        result = prepared.result()
    tokens = sum(s.output_tokens for s in result.steps)
    energy = sum(s.energy_j for s in result.steps)
    return result.status == "succeeded", result.e2e_s, tokens, energy


def simulate(
    workload: Workload,
    make: Callable[[int], EmulatedEngine],
    *,
    replicas: int,
    load_per_s: float,
    duration_s: float,
    seed: int,
    tools: Iterable[Tool] = (),
    drain_timeout_s: float = 600.0,
    abort: tuple[float, float] | None = None,
) -> Measurement:
    """Play ``workload`` per seeded Poisson arrival on ``replicas`` replicas built by ``make``.

    Args:
        workload: a plan (each arrival runs its agent) or a trajectory (each replays it).
        make: builds replica ``i``'s engine.
        replicas: warm replicas in the pool.
        load_per_s: arrivals per second.
        duration_s: seconds of arrivals.
        seed: seeds the arrivals and the agents, as `run_load` does.
        tools: the plan's tools (their twins).
        drain_timeout_s: how long runs in flight may take after the last arrival.
        abort: ``(q, limit_s)``: stop once ``pq(e2e) <= limit_s`` is sure to be missed.
    """
    engines: list[EmulatedEngine] = []

    def build(index: int) -> Substrate:
        engine = make(index)
        engines.append(engine)
        return engine

    pool = Pool(build, name="sizing", min_replicas=replicas, max_replicas=replicas,
                initial=replicas, wait_timeout_s=drain_timeout_s)  # fmt: skip
    agents = max(1, math.ceil(load_per_s * duration_s * 2 + 50))
    total = arrival_count(load_per_s=load_per_s, duration_s=duration_s, agents=agents, seed=seed)
    q, limit = abort if abort is not None else (100.0, math.inf)
    need = sure_miss_count(total, q) if abort is not None else total + 1
    tally = _Tally(done_e2e=[])
    started: dict[int, float] = {}
    tool_list = list(tools)
    state = {"aborted": False, "end": 0.0}

    async def main() -> None:
        clock = current_clock()
        t0 = clock.current_time()
        rng = random.Random(seed)
        base_seed = rng.randrange(2**31)

        def sure_miss(scope: anyio.CancelScope) -> None:
            now = clock.current_time()
            late = sum(1 for s in started.values() if now - s > limit)
            if tally.over + late >= need:
                state["aborted"] = True
                scope.cancel()

        async def one(i: int, scope: anyio.CancelScope) -> None:
            started[i] = clock.current_time()
            ok, e2e, tokens, energy = False, math.inf, 0, 0.0
            try:
                ok, e2e, tokens, energy = await _play(workload, pool, i, base_seed + i, tool_list)
            finally:
                del started[i]
                tally.output_tokens += tokens
                tally.energy_j += energy
                if ok:
                    tally.done_e2e.append(e2e)
                if not ok or e2e > limit:
                    tally.over += 1
                state["end"] = max(state["end"], clock.current_time() - t0)
            sure_miss(scope)

        async def watch(scope: anyio.CancelScope) -> None:
            tick = max(limit / 4, duration_s / 200) if math.isfinite(limit) else duration_s
            while True:
                await anyio.sleep(tick)
                sure_miss(scope)

        try:
            async with anyio.create_task_group() as outer:
                if abort is not None:
                    outer.start_soon(watch, outer.cancel_scope)
                async with anyio.create_task_group() as tg:
                    for i in range(total):
                        if i:
                            await anyio.sleep(rng.expovariate(load_per_s))
                        tg.start_soon(one, i, outer.cancel_scope)
                    tg.cancel_scope.deadline = anyio.current_time() + drain_timeout_s
                outer.cancel_scope.cancel()
        finally:
            state["end"] = max(state["end"], clock.current_time() - t0)
            await pool.aclose()

    run(main, clock=VirtualClock())
    sim_s = float(state["end"])
    span = max(sim_s, 1e-9)
    busy = sum(e.statistics().busy_s for e in engines)
    generated = sum(e.statistics().tokens_generated for e in engines)
    completed = len(tally.done_e2e)
    aborted = bool(state["aborted"])
    return Measurement(
        replicas=replicas,
        arrivals=total,
        completed=completed,
        e2e_by_q={} if aborted else percentiles(tally.done_e2e, total - completed),
        output_tokens=tally.output_tokens,
        busy_fraction=min(1.0, busy / (replicas * max(sim_s, duration_s))),
        energy_j=tally.energy_j,
        sim_s=sim_s,
        aborted=aborted,
        abort_q=q if aborted else 0.0,
        abort_s=limit if aborted else 0.0,
        tokens_per_s=generated / span,
    )
