"""An open-loop fleet run: tenants' arrivals start agent runs on shared pools, sampled over time.

`run_fleet` starts one agent run of a tenant's plan at each of its arrivals and never waits for
runs to finish before the next arrival (open loop: overload shows as a growing queue). All runs
share one substrate: a pool, a `Router` over pools, or any `Substrate`. Alongside run the
``background`` coroutines (autoscaler controllers, rollouts), started before the first arrival
and cancelled after the drain. Every ``sample_s`` it records a `Sample`; at the end it collects
scale and rollout events from the objects it was given and returns a `FleetReport`.

Example:
    >>> from functools import partial
    >>> from agentrt import Plan, Step, VirtualClock, run
    >>> from agentrt.testing import FixedLatencySubstrate
    >>> from substrates.fleet.arrivals import PoissonArrivals
    >>> from substrates.fleet.tenants import Tenant
    >>> chat = Tenant(name="chat", plan=Plan(name="p", steps=[Step(id="a")]),
    ...               arrivals=PoissonArrivals(rate=5.0), e2e_s=1.0)
    >>> report = run(partial(run_fleet, [chat], FixedLatencySubstrate(latency_s=0.5),
    ...              duration_s=10.0, seed=1), clock=VirtualClock())
    >>> report.lost, report.completed == report.arrivals, report.tenants["chat"].slo_attainment
    (0, True, 1.0)
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Protocol, runtime_checkable

import anyio

from agentrt import Agent, current_clock
from agentrt.result import RunResult
from agentrt.substrate import InferenceRequest, InferenceResult, Substrate
from agentrt.tool import Tool
from substrates.fleet.fleetreport import FleetReport, PoolReport, Sample, TenantReport, percentiles
from substrates.fleet.ops import PoolSnapshot, RolloutEvent, ScaleEvent
from substrates.fleet.router import Router
from substrates.fleet.tenants import Tenant, TenantSubstrate

__all__ = ["Background", "run_fleet"]

#: Something to run alongside the arrivals: a coroutine function (cancelled after the drain) or an
#: async context manager (entered before the first arrival, exited after the drain).
Background = Callable[[], Awaitable[None]] | AbstractAsyncContextManager[object]


@runtime_checkable
class _Snapshots(Protocol):
    name: str

    def snapshot(self) -> PoolSnapshot: ...


def _pools_of(substrate: Substrate, extra: Iterable[object]) -> dict[str, _Snapshots]:
    """The pools to sample: ``extra``, the router's routes and the substrate that have snapshots."""
    found: dict[str, _Snapshots] = {}
    candidates: list[tuple[str, object]] = [(getattr(p, "name", ""), p) for p in extra]
    if isinstance(substrate, Router):
        candidates += list(substrate.routes.items())
    candidates.append((substrate.name, substrate))
    for name, obj in candidates:
        if isinstance(obj, _Snapshots) and not any(p is obj for p in found.values()):
            found[name or obj.name] = obj
    return found


def _events_of(sources: Iterable[object]) -> tuple[list[ScaleEvent], list[RolloutEvent]]:
    """Scale and rollout events from lists of them or objects with an ``events`` list."""
    seen: set[int] = set()
    scale: list[ScaleEvent] = []
    rollout: list[RolloutEvent] = []
    for source in sources:
        items = getattr(source, "events", source)
        if not isinstance(items, Iterable) or isinstance(items, str | bytes):
            continue
        for event in items:
            if id(event) in seen:
                continue
            seen.add(id(event))
            if isinstance(event, ScaleEvent):
                scale.append(event)
            elif isinstance(event, RolloutEvent):
                rollout.append(event)
    return sorted(scale, key=lambda e: e.t_s), sorted(rollout, key=lambda e: e.t_s)


class _Observed(TenantSubstrate):
    """A tenant's view of the shared substrate that also reports every successful call."""

    def __init__(
        self, inner: Substrate, tenant: Tenant, on_call: Callable[[InferenceResult], None]
    ):
        super().__init__(inner, priority=tenant.priority, slo=tenant.slo)
        self._on_call = on_call

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        result = await super().infer(request)
        self._on_call(result)
        return result


class _Interval:
    """What happened since the last sample."""

    __slots__ = ("arrivals", "completed", "e2e_s", "failed", "rejected", "ttft_s")

    def __init__(self) -> None:
        self.arrivals = self.completed = self.failed = self.rejected = 0
        self.e2e_s: list[float] = []
        self.ttft_s: list[float] = []


async def _awaited(fn: Callable[[], Awaitable[None]]) -> None:
    await fn()


def _merged(
    tenants: Sequence[Tenant], duration_s: float, seeds: list[int]
) -> Iterator[tuple[float, int]]:
    """All tenants' arrivals in time order, each as (time, tenant index)."""

    def tagged(k: int) -> Iterator[tuple[float, int]]:
        for t in tenants[k].arrivals.times(duration_s, seed=seeds[k]):
            yield t, k

    return heapq.merge(*(tagged(k) for k in range(len(tenants))))


async def run_fleet(
    tenants: Sequence[Tenant],
    substrate: Substrate,
    *,
    duration_s: float,
    seed: int | None = None,
    sample_s: float = 1.0,
    pools: Iterable[object] = (),
    background: Sequence[Background] = (),
    events: Iterable[object] = (),
    tools: Iterable[Tool] = (),
    drain_timeout_s: float = 3600.0,
    report: FleetReport | None = None,
) -> FleetReport:
    """Run the tenants' arrivals for ``duration_s`` open-loop on ``substrate``; report.

    Args:
        tenants: who arrives, when, with which plan and SLO (names must differ).
        substrate: shared by every run (a pool, a `Router` over pools, any substrate).
        duration_s: arrivals stop after this long; the runs in flight then get
            ``drain_timeout_s`` to finish, after which they are cancelled and count as failed.
        seed: seeds every tenant's arrivals and each agent's retry jitter.
        sample_s: the time series' interval.
        pools: objects with ``snapshot()`` to sample (a router's routes and the substrate itself
            are found without being named); a ``replica_seconds`` attribute, where one has it,
            replaces the sampled integral.
        background: coroutine functions or async context managers run alongside.
        events: lists of `ScaleEvent`/`RolloutEvent`, or objects with such an ``events`` list
            (controllers, rollouts), read at the end; the pools' ``events`` are read too.
        tools: tools the plans' steps use.
        drain_timeout_s: how long in-flight runs may take after the last arrival.
        report: fill this report (a caller that cancels the run keeps what was counted).

    Raises:
        ValueError: no tenants, two tenants with one name, or a non-positive duration/interval.
    """
    names = [t.name for t in tenants]
    if not tenants or len(set(names)) != len(names):
        raise ValueError(f"run_fleet needs tenants with distinct names, got {names}")
    if duration_s <= 0 or sample_s <= 0:
        raise ValueError("duration_s and sample_s must be > 0")
    report = report if report is not None else FleetReport()
    report.duration_s, report.sample_s = duration_s, sample_s
    sampled = _pools_of(substrate, pools)
    rng = random.Random(seed)
    seeds = [rng.randrange(2**31) for _ in tenants]
    agent_seed = rng.randrange(2**31) if seed is not None else None
    tool_list = list(tools)
    plans = [t.tagged_plan() for t in tenants]
    for t in tenants:
        report.tenants[t.name] = TenantReport(
            t.name, t.slo, t.priority, e2e_target_s=t.e2e_s, ttft_target_s=t.ttft_s
        )
    for name, pool in sampled.items():
        report.pools[name] = PoolReport(name, version=getattr(pool, "version", ""))
    clock = current_clock()
    wall0, t0 = time.perf_counter(), clock.current_time()
    report.start_s = t0
    interval = _Interval()
    in_flight = 0
    last_end = t0

    def on_call(result: InferenceResult) -> None:
        attrs = result.attributes
        # The router's route names the pool; else a Pool's own label; else the engine.
        pool_name = str(
            attrs.get("agentrt.route.substrate", attrs.get("agentrt.pool", result.substrate))
        )
        pool = report.pools.setdefault(pool_name, PoolReport(pool_name))
        pool.calls += 1
        pool.ttft_s.append(result.timing.ttft_s)
        pool.e2e_s.append(result.timing.e2e_s)
        pool.cost_usd += result.cost_usd
        pool.energy_j += result.energy_j
        interval.ttft_s.append(result.timing.ttft_s)

    views = [_Observed(substrate, t, on_call) for t in tenants]

    def fold(tenant: Tenant, result: RunResult) -> None:
        nonlocal last_end
        last_end = max(last_end, clock.current_time())
        entry = report.tenants[tenant.name]
        ttfts = [s.timing.ttft_s for s in result.steps if s.timing and s.status == "succeeded"]
        entry.ttft_s += ttfts
        for step in result.steps:
            entry.cost_usd += step.cost_usd
            entry.energy_j += step.energy_j
        if result.status == "succeeded":
            entry.completed += 1
            interval.completed += 1
            entry.e2e_s.append(result.e2e_s)
            interval.e2e_s.append(result.e2e_s)
            if tenant.meets_slo(e2e_s=result.e2e_s, ttft_s=max(ttfts, default=None)):
                entry.within_slo += 1
            return
        failed = next((s for s in result.steps if s.id == result.failed_step), None)
        cause = (failed.error if failed and failed.error else result.error) or result.status
        if cause.startswith("RateLimited"):
            entry.rejected += 1
            interval.rejected += 1
        else:
            entry.failed += 1
            interval.failed += 1
            entry.failure_reasons[f"{result.status}: {cause.partition(':')[0]}"[:120]] += 1

    async def one(i: int, k: int) -> None:
        nonlocal in_flight
        tenant = tenants[k]
        agent = Agent(
            views[k],
            tools=tool_list,
            name=f"{tenant.name}-{i}",
            seed=None if agent_seed is None else agent_seed + i,
            trace_detail="steps",
        )
        try:
            prepared = agent.prepare(plans[k], run_id=f"{tenant.name}-{i}")
        except Exception as exc:
            report.tenants[tenant.name].failed += 1
            report.tenants[tenant.name].failure_reasons[type(exc).__name__] += 1
            return
        in_flight += 1
        try:
            await prepared.execute()
        finally:
            # Reached on success, failure and cancellation alike: no arrival goes uncounted.
            in_flight -= 1
            fold(tenant, prepared.result())

    def take_sample() -> None:
        nonlocal interval
        now = clock.current_time()
        snaps = {name: pool.snapshot() for name, pool in sampled.items()}
        for name, snap in snaps.items():
            entry = report.pools[name]
            replicas = snap.replicas + snap.standby + snap.draining
            width = now - (t0 + report.samples[-1].t_s if report.samples else t0)
            entry.replica_s = (entry.replica_s or 0.0) + replicas * width
            entry.peak_replicas = max(entry.peak_replicas or 0, snap.replicas)
            entry.cold_starts, entry.rejected = snap.cold_starts, snap.rejected
        done, interval = interval, _Interval()
        report.samples.append(
            Sample(
                t_s=now - t0,
                arrivals=done.arrivals,
                completed=done.completed,
                failed=done.failed,
                rejected=done.rejected,
                in_flight=in_flight,
                pools={
                    name: {
                        "replicas": s.replicas,
                        "warm": s.warm,
                        "starting": s.starting,
                        "queued": s.queued,
                        "in_flight": s.in_flight,
                    }
                    for name, s in snaps.items()
                },
                latency={**percentiles(done.e2e_s, "e2e"), **percentiles(done.ttft_s, "ttft")},
            )
        )

    async def sampler() -> None:
        k = 1
        while True:
            await anyio.sleep(max(0.0, t0 + k * sample_s - clock.current_time()))
            take_sample()
            k += 1

    try:
        async with AsyncExitStack() as stack:
            for item in background:
                if isinstance(item, AbstractAsyncContextManager):
                    await stack.enter_async_context(item)
            async with anyio.create_task_group() as side:
                for item in background:
                    if not isinstance(item, AbstractAsyncContextManager):
                        side.start_soon(_awaited, item)
                side.start_soon(sampler)
                async with anyio.create_task_group() as runs:
                    for i, (at_s, k) in enumerate(_merged(tenants, duration_s, seeds)):
                        await anyio.sleep(max(0.0, t0 + at_s - clock.current_time()))
                        report.tenants[tenants[k].name].arrivals += 1
                        interval.arrivals += 1
                        runs.start_soon(one, i, k)
                    await anyio.sleep(max(0.0, t0 + duration_s - clock.current_time()))
                    # Every wait has a deadline: runs still going after the drain are cancelled.
                    runs.cancel_scope.deadline = anyio.current_time() + drain_timeout_s
                side.cancel_scope.cancel()
            take_sample()
    finally:
        report.sim_s = last_end - t0
        report.wall_s = time.perf_counter() - wall0
        for name, pool in sampled.items():
            counted = getattr(pool, "replica_seconds", None)
            if isinstance(counted, int | float):
                report.pools[name].replica_s = float(counted)
        report.scale_events, report.rollout_events = _events_of([*events, *sampled.values()])
    return report
