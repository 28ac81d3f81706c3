"""Sizing a fleet spec for an SLO: each pool's ceiling (``max``), autoscaler and cold starts kept.

A fleet spec brings its own load (the tenants' arrivals), pools, autoscalers and cold starts.
`size_fleet` runs the spec (`run_fleet_spec`, virtual time) and measures the percentile of
end-to-end time over every tenant's arrivals (runs that did not complete count as infinitely
slow). If the spec's ceilings miss the target it doubles them all until they meet it (at most
``cap``; ``missed="autoscaler"`` when no pool even reached its ceiling, so more cannot help);
then, pool by pool, it bisects that pool's ``max`` down to the fewest meeting the target with
the other pools held where they are. Every ceiling is proved by simulation: the fleet meets
the target with it and misses with one replica fewer (the other pools unchanged).

`price_fleet` prices the sized fleet per pool: owned systems at the run's *peak* replicas (the
autoscaler may never reach ``max``), and, where the system has a rental price, the replica-hours
the run used, as a month of the same mean replicas rented.

Example:
    >>> from substrates.fleet.fleetspec import load_fleet_spec
    >>> from substrates.fleet.targets import parse_target
    >>> spec = load_fleet_spec("examples/fleets/autoscale-h100.yaml")
    >>> sized = size_fleet(spec, parse_target("p95(e2e) <= 120s"), cap=8)
    >>> sized.met, sized.ceilings
    (True, {'h100': 2})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentrt.errors import ConfigError
from substrates.emulated.engine import build_engine
from substrates.emulated.tco import (
    HOURS_PER_MONTH,
    Facility,
    TcoBreakdown,
    default_facility,
    load_system,
    tco,
)
from substrates.fleet.fleetbuild import run_fleet_spec
from substrates.fleet.fleetreport import FleetReport
from substrates.fleet.fleetspec import FleetSpec
from substrates.fleet.targets import Target
from substrates.fleet.tcorun import percentiles
from substrates.fleet.tcosize import DEFAULT_CAP, p95_target

__all__ = ["FleetSizing", "PoolCost", "fleet_e2e_s", "price_fleet", "size_fleet"]


def fleet_e2e_s(report: FleetReport, q: float) -> float:
    """The ``q``-th percentile of end-to-end time over every tenant's arrivals (missing: inf)."""
    e2e = [v for t in report.tenants.values() for v in t.e2e_s]
    missing = max(0, sum(t.arrivals for t in report.tenants.values()) - len(e2e))
    return percentiles(e2e, missing, (q,))[q]


@dataclass(frozen=True, slots=True)
class FleetSizing:
    """The ceilings found per pool, whether they meet the target, and the run that proved it."""

    name: str
    target: Target
    met: bool
    ceilings: dict[str, int]
    measured_s: float
    report: FleetReport
    simulations: int
    missed: str = ""


def _with_ceilings(spec: FleetSpec, ceilings: Mapping[str, int]) -> FleetSpec:
    pools = {}
    for name, pool in spec.pools.items():
        top = ceilings[name]
        update: dict[str, Any] = {"max": top, "min": min(pool.min, top)}
        if pool.initial is not None:
            update["initial"] = min(pool.initial, top)
        pools[name] = pool.model_copy(update=update)
    return spec.model_copy(update={"pools": pools})


def size_fleet(spec: FleetSpec, target: Target, *, cap: int = DEFAULT_CAP) -> FleetSizing:
    """The fewest replicas per pool ceiling meeting ``target`` with the spec's own arrivals.

    Raises:
        ConfigError: the target is not a ``pNN(e2e) <= X`` bound, or the spec cannot be built.
    """
    q = p95_target(target)
    runs: dict[tuple[int, ...], FleetReport] = {}
    names = list(spec.pools)

    def run_with(ceilings: Mapping[str, int]) -> FleetReport:
        key = tuple(ceilings[n] for n in names)
        if key not in runs:
            runs[key] = run_fleet_spec(_with_ceilings(spec, ceilings))
        return runs[key]

    def meets(ceilings: Mapping[str, int]) -> bool:
        return target.met_by(fleet_e2e_s(run_with(ceilings), q))

    def result(ceilings: dict[str, int], met: bool, missed: str = "") -> FleetSizing:
        report = run_with(ceilings)
        return FleetSizing(spec.name or "fleet", target, met, dict(ceilings),
                           fleet_e2e_s(report, q), report, len(runs), missed)  # fmt: skip

    ceilings = {n: min(p.max, cap) for n, p in spec.pools.items()}
    while not meets(ceilings):
        pools = run_with(ceilings).pools
        if all((pools[n].peak_replicas or 0) < c for n, c in ceilings.items() if n in pools):
            return result(ceilings, False, "autoscaler")
        if all(c >= cap for c in ceilings.values()):
            return result(ceilings, False, "cap")
        ceilings = {n: min(cap, c * 2) for n, c in ceilings.items()}
    for name in names:
        lo, hi = max(spec.pools[name].min, 1) - 1, ceilings[name]  # lo: a miss (or below min)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if meets({**ceilings, name: mid}):
                hi = mid
            else:
                lo = mid
        ceilings[name] = hi
    return result(ceilings, True)


@dataclass(frozen=True, slots=True)
class PoolCost:
    """One pool of a sized fleet: its ceiling and peak, and what owning or renting it costs."""

    pool: str
    preset: str
    ceiling: int
    peak_replicas: int
    mean_replicas: float
    systems: int
    owned: dict[int, TcoBreakdown]
    rent_usd_per_month: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        steady = self.owned[min(self.owned)] if self.owned else None
        return {
            "pool": self.pool,
            "preset": self.preset,
            "ceiling": self.ceiling,
            "peak_replicas": self.peak_replicas,
            "mean_replicas": self.mean_replicas,
            "systems": self.systems,
            "capex_usd": steady.capex_usd if steady else None,
            "opex_usd_per_month": steady.opex_usd_per_month if steady else None,
            "tco_usd": {str(m): b.total_usd for m, b in sorted(self.owned.items())},
            "rent_usd_per_month": self.rent_usd_per_month,
            "sources": steady.sources if steady else {},
        }


def price_fleet(
    spec: FleetSpec,
    sizing: FleetSizing,
    *,
    months: Sequence[int] = (12, 24, 36),
    facility: Facility | None = None,
) -> list[PoolCost]:
    """Price each pool: owned systems at its peak replicas; rented at its mean replicas.

    Raises:
        ConfigError: a pool's preset has no system data or no purchase price.
    """
    facility = facility if facility is not None else default_facility()
    report = sizing.report
    span = report.sim_s if report.sim_s > 0 else spec.duration_s
    costs: list[PoolCost] = []
    for name, pool in spec.pools.items():
        economics = load_system(pool.preset)
        seen = report.pools.get(name)
        peak = max(1, (seen.peak_replicas if seen else None) or sizing.ceilings[name])
        mean = (seen.replica_s or 0.0) / span if seen and seen.replica_s else float(peak)
        chips = int(build_engine(pool.preset, **pool.options).deployment.chips)
        systems = economics.systems_for_chips(peak * chips)
        busy = min(1.0, mean / peak)  # replicas up, not computing: energy is an upper bound
        if economics.system_price_usd is None:
            raise ConfigError(f"pool {name!r}: system {pool.preset!r} has no purchase price")
        owned = {
            n: tco(
                economics, systems, facility=facility, months=n, busy_fraction=busy, ownership="buy"
            )
            for n in months
        }
        hourly = economics.rental_usd_per_system_hour
        rent = None
        if hourly is not None:
            rent = mean * chips / economics.chips_per_system * hourly * HOURS_PER_MONTH
        costs.append(PoolCost(name, pool.preset, sizing.ceilings[name], peak, mean, systems,
                              owned, rent))  # fmt: skip
    return costs
