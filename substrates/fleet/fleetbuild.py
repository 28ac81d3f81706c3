"""A fleet from its spec: pools, router, autoscaler controllers, rollouts, tenants; and a run.

`build_fleet` turns a `FleetSpec` into live objects (each pool's replicas built through the
registry, seeded apart); `run_fleet_spec` runs them with `run_fleet` in virtual or real time and
returns the `FleetReport`; `measure_fleet` reads an ``agentrt check`` target off that report.

Example:
    >>> from substrates.fleet.fleetspec import load_fleet_spec
    >>> spec = load_fleet_spec("examples/fleets/autoscale-h100.yaml")  # doctest: +SKIP
    >>> report = run_fleet_spec(spec, virtual=True)                  # doctest: +SKIP
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace

from agentrt import VirtualClock, run
from agentrt.errors import ConfigError
from agentrt.interrupts import Interrupted
from agentrt.plan import Plan, load_plan
from agentrt.registry import default_registry
from agentrt.substrate import Substrate
from agentrt.tool import Tool
from substrates.fleet.autoscale import ScalingController
from substrates.fleet.checkspec import measure_samples
from substrates.fleet.fleetreport import FleetReport
from substrates.fleet.fleetrun import Background, run_fleet
from substrates.fleet.fleetspec import CanarySpec, FleetSpec, PoolSpec, load_fleet_spec
from substrates.fleet.pool import Pool
from substrates.fleet.rollout import BlueGreen, Canary
from substrates.fleet.router import Router
from substrates.fleet.study import tools_for
from substrates.fleet.targets import Target
from substrates.fleet.tenants import Tenant

__all__ = [
    "Fleet",
    "FleetInterrupted",
    "build_fleet",
    "build_pool",
    "measure_fleet",
    "measure_fleet_spec",
    "run_fleet_spec",
]

_CANCEL_ON = (signal.SIGINT, signal.SIGTERM)


class FleetInterrupted(Exception):
    """A signal cancelled a fleet run; carries the report counted until then."""

    def __init__(self, interrupted: Interrupted, report: FleetReport) -> None:
        super().__init__(str(interrupted))
        self.interrupted = interrupted
        self.report = report


@dataclass(slots=True)
class Fleet:
    """The live objects of a fleet spec, ready for `run_fleet`."""

    spec: FleetSpec
    pools: dict[str, Pool]
    substrate: Substrate
    tenants: list[Tenant]
    controllers: list[ScalingController] = field(default_factory=list)
    rollouts: list[Canary | BlueGreen] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)

    @property
    def background(self) -> list[Background]:
        """What runs alongside the arrivals: the controllers and the rollouts."""
        items: list[Background] = [c.run for c in self.controllers]
        items += [r.run for r in self.rollouts]
        return items


def build_pool(name: str, spec: PoolSpec, *, seed: int | None) -> Pool:
    """One `Pool` of ``spec.preset`` replicas (replica ``i`` seeded ``seed + i``).

    Raises:
        ConfigError: an unknown preset or a bad option (the replicas are built at once).
    """
    registry = default_registry()
    options = dict(spec.options)

    def make_replica(index: int) -> Substrate:
        return registry.substrate(
            spec.preset, seed=None if seed is None else seed + index, **options
        )

    extra: dict[str, Any] = {}
    if spec.warm_start_s is not None:
        extra["warm_start_s"] = spec.warm_start_s
    return Pool(
        make_replica,
        name=name,
        version=spec.version,
        min_replicas=spec.min,
        max_replicas=spec.max,
        initial=spec.initial_replicas,
        standby=spec.standby,
        cold_start_s=spec.cold_start_s,
        when_cold=spec.when_cold,
        wait_timeout_s=spec.wait_timeout_s,
        max_queue=spec.max_queue,
        **extra,
    )


def build_fleet(
    spec: FleetSpec,
    *,
    virtual: bool = True,
    seed: int | None = None,
    tracer: trace.Tracer | None = None,
    meter: metrics.Meter | None = None,
) -> Fleet:
    """Build the pools, router, controllers, rollouts and tenants ``spec`` describes.

    ``tracer`` and ``meter`` receive every scale and rollout decision as a span event and a
    metric (``agentrt load FLEET --trace ...``); without them the decisions are report rows.

    ``seed`` (default the spec's) seeds the pools 1000 apart and the router. Tenants' plans are
    read now (their paths as given: `load_fleet_spec` resolves them against the spec's folder).

    Raises:
        ConfigError: a bad preset, option, plan or rollout.
    """
    seed = spec.seed if seed is None else seed
    pools: dict[str, Pool] = {}
    for i, (name, pool) in enumerate(spec.pools.items()):
        try:
            pools[name] = build_pool(name, pool, seed=seed + 1000 * i)
        except ConfigError as exc:
            raise ConfigError(f"{spec.where('pools', name)}: {exc}") from None
    substrate: Substrate
    if len(pools) == 1 and not spec.rollouts:
        substrate = next(iter(pools.values()))
    else:
        r = spec.routing
        substrate = Router(
            pools,
            policy=r.policy,
            by_slo=r.by_slo,
            by_kind=r.by_kind,
            default=r.default,
            weights=_weights(spec),
            failover=r.failover,
            hedge_after_s=r.hedge_after_s,
            ewma_alpha=r.ewma_alpha,
            seed=seed,
            name="fleet",
        )
    controllers = [
        ScalingController(pools[name], pool.autoscaler, tracer=tracer, meter=meter)
        for name, pool in spec.pools.items()
        if pool.autoscaler is not None
    ]
    try:
        rollouts = _build_rollouts(spec, pools, substrate, tracer=tracer, meter=meter)
    except ConfigError as exc:
        raise ConfigError(f"{spec.where('rollouts')}: {exc}") from None
    registry = default_registry()
    tenants: list[Tenant] = []
    tools: dict[str, Tool] = {}
    for name, t in spec.tenants.items():
        plan: Plan = load_plan(t.plan, tools=registry.tool_args_model)
        for tool in tools_for(plan, virtual=virtual):
            tools.setdefault(tool.name, tool)
        tenants.append(
            Tenant(
                name=name,
                plan=plan,
                arrivals=t.arrivals,
                slo=t.slo,
                priority=t.priority,
                e2e_s=t.e2e_s,
                ttft_s=t.ttft_s,
            )
        )
    return Fleet(spec, pools, substrate, tenants, controllers, rollouts, list(tools.values()))


def _build_rollouts(
    spec: FleetSpec,
    pools: dict[str, Pool],
    substrate: Substrate,
    *,
    tracer: trace.Tracer | None,
    meter: metrics.Meter | None,
) -> list[Canary | BlueGreen]:
    if not spec.rollouts or not isinstance(substrate, Router):
        return []
    rollouts: list[Canary | BlueGreen] = []
    for r in spec.rollouts:
        if isinstance(r, CanarySpec):
            rollouts.append(
                Canary(
                    substrate,
                    pools[r.stable],
                    pools[r.canary],
                    percent=r.percent,
                    slo=r.slo,
                    window_s=r.window_s,
                    min_requests=r.min_requests,
                    interval_s=r.interval_s,
                    steps=r.steps,
                    promote=r.promote,
                    drain=r.drain,
                    tracer=tracer,
                    meter=meter,
                )
            )
        else:
            rollouts.append(
                BlueGreen(
                    substrate,
                    pools[r.blue],
                    pools[r.green],
                    switch_at_s=r.switch_at_s,
                    ready_timeout_s=r.ready_timeout_s,
                    drain_timeout_s=r.drain_timeout_s,
                    interval_s=r.interval_s,
                    tracer=tracer,
                    meter=meter,
                )
            )
    return rollouts


def _weights(spec: FleetSpec) -> dict[str, float] | None:
    """The router's starting weights: as given, else all traffic on each rollout's old pool."""
    if spec.routing.weights or not spec.rollouts:
        return dict(spec.routing.weights) or None
    weights: dict[str, float] = {}
    for rollout in spec.rollouts:
        old, new = rollout.pools()
        weights.setdefault(old, 100.0)
        weights.setdefault(new, 0.0)
    return weights


def run_fleet_spec(
    spec: FleetSpec,
    *,
    virtual: bool = True,
    seed: int | None = None,
    tracer: trace.Tracer | None = None,
    meter: metrics.Meter | None = None,
) -> FleetReport:
    """Build the fleet and run it for ``spec.duration_s`` (virtual time: no waiting).

    Raises:
        ConfigError: the spec cannot be built.
        FleetInterrupted: SIGINT or SIGTERM cancelled the run (with the partial report).
    """
    fleet = build_fleet(spec, virtual=virtual, seed=seed, tracer=tracer, meter=meter)
    report = FleetReport()

    async def main() -> FleetReport:
        try:
            return await run_fleet(
                fleet.tenants,
                fleet.substrate,
                duration_s=spec.duration_s,
                seed=spec.seed if seed is None else seed,
                sample_s=spec.sample_s,
                pools=fleet.pools.values(),
                background=fleet.background,
                events=[*fleet.controllers, *fleet.rollouts],
                tools=fleet.tools,
                drain_timeout_s=spec.drain_timeout_s,
                report=report,
            )
        finally:
            for pool in fleet.pools.values():  # a router closes its routes: the pools
                await pool.aclose()

    try:
        return run(main, clock=VirtualClock() if virtual else None, cancel_on=_CANCEL_ON)
    except Interrupted as exc:
        raise FleetInterrupted(exc, report) from None


def measure_fleet(report: FleetReport, target: Target) -> float | None:
    """What ``target`` measures in a fleet run, over the fleet or one tenant or pool.

    A pool scope measures its calls (TTFT and E2E per call), its cold starts and rejections;
    ``cost_per_task`` is cost over completed runs; ``error_rate`` is (failed + rejected) over
    arrivals; ``throughput`` is completed runs per simulated second.
    """
    if "pool" in target.scope:
        pool = report.pools.get(target.scope["pool"])
        if pool is None:
            return None
        if target.percentile is not None:
            return measure_samples(target, pool.e2e_s, pool.ttft_s)
        if target.metric == "rejected":
            return float(pool.rejected or 0)
        return None
    tenants = list(report.tenants.values())
    if "tenant" in target.scope:
        tenants = [t for t in tenants if t.name == target.scope["tenant"]]
        if not tenants:
            return None
    arrivals = sum(t.arrivals for t in tenants)
    completed = sum(t.completed for t in tenants)
    if target.percentile is not None:
        e2e = [v for t in tenants for v in t.e2e_s]
        ttft = [v for t in tenants for v in t.ttft_s]
        return measure_samples(target, e2e, ttft)
    match target.metric:
        case "slo_attainment":
            return sum(t.within_slo for t in tenants) / arrivals if arrivals else None
        case "error_rate":
            bad = sum(t.failed + t.rejected for t in tenants)
            return bad / arrivals if arrivals else None
        case "cost_per_task":
            return sum(t.cost_usd for t in tenants) / completed if completed else None
        case "rejected":
            return float(sum(t.rejected for t in tenants))
        case "lost":
            return float(sum(t.lost for t in tenants))
        case "throughput":
            return completed / report.sim_s if report.sim_s > 0 else None
    return None


def measure_fleet_spec(
    path: str, virtual: bool, seed: int | None
) -> Callable[[Target], float | None]:
    """Run the fleet spec at ``path`` (for ``agentrt check``); return its target measure."""
    report = run_fleet_spec(load_fleet_spec(path), virtual=virtual, seed=seed)
    return lambda target: measure_fleet(report, target)
