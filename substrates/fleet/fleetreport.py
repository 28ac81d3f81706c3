"""What a fleet run did: per tenant and per pool latency, SLO attainment, events, a time series.

`run_fleet` (in `substrates.fleet.fleetrun`) fills a `FleetReport`; ``to_dict()`` is the JSON of
``agentrt load FLEET.yaml --json``. TTFT percentiles are per model call, E2E percentiles per
agent run for tenants and per call for pools. Every arrival ends completed, failed or rejected
(shed by admission control: a ``RateLimited`` that outlasted the retries), so ``lost`` is 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from agentrt.compare import percentile
from substrates.fleet.ops import RolloutEvent, ScaleEvent

__all__ = ["FleetReport", "PoolReport", "Sample", "TenantReport", "percentiles"]


def percentiles(values: list[float], prefix: str) -> dict[str, float | None]:
    """``{prefix_p50_s, prefix_p95_s, prefix_p99_s}`` of ``values`` (None when empty)."""
    return {f"{prefix}_p{q}_s": percentile(values, q) if values else None for q in (50, 95, 99)}


@dataclass(slots=True)
class TenantReport:
    """One tenant's runs: counts, run E2E and call TTFT, SLO attainment, cost and energy."""

    name: str
    slo: str = "interactive"
    priority: int = 0
    e2e_target_s: float | None = None
    ttft_target_s: float | None = None
    arrivals: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    within_slo: int = 0
    e2e_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    cost_usd: float = 0.0
    energy_j: float = 0.0
    failure_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def lost(self) -> int:
        """Arrivals with no verdict (0 unless the runtime broke its promise)."""
        return self.arrivals - self.completed - self.failed - self.rejected

    @property
    def slo_attainment(self) -> float | None:
        """Arrivals that completed within the targets, over all arrivals (None: no arrivals)."""
        return self.within_slo / self.arrivals if self.arrivals else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "slo": self.slo,
            "priority": self.priority,
            "e2e_target_s": self.e2e_target_s,
            "ttft_target_s": self.ttft_target_s,
            "arrivals": self.arrivals,
            "completed": self.completed,
            "failed": self.failed,
            "rejected": self.rejected,
            "lost": self.lost,
            "slo_attainment": self.slo_attainment,
            **percentiles(self.ttft_s, "ttft"),
            **percentiles(self.e2e_s, "e2e"),
            "cost_usd": self.cost_usd,
            "cost_per_task_usd": self.cost_usd / self.completed if self.completed else None,
            "energy_j": self.energy_j,
            "failure_reasons": dict(self.failure_reasons.most_common(10)),
        }


@dataclass(slots=True)
class PoolReport:
    """One pool (or route): its calls' TTFT and E2E, replica-seconds, cold starts, cost."""

    name: str
    version: str = ""
    calls: int = 0
    ttft_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    cost_usd: float = 0.0
    energy_j: float = 0.0
    replica_s: float | None = None
    cold_starts: int | None = None
    rejected: int | None = None
    peak_replicas: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "version": self.version,
            "calls": self.calls,
            **percentiles(self.ttft_s, "ttft"),
            **percentiles(self.e2e_s, "e2e"),
            "replica_s": self.replica_s,
            "cold_starts": self.cold_starts,
            "rejected": self.rejected,
            "peak_replicas": self.peak_replicas,
            "cost_usd": self.cost_usd,
            "energy_j": self.energy_j,
        }


@dataclass(frozen=True, slots=True)
class Sample:
    """The fleet over one sampling interval ending at ``t_s`` (seconds from the start).

    Counts are of the interval; ``in_flight`` is runs going at ``t_s``; ``pools`` maps a pool to
    its ``replicas``, ``warm``, ``starting``, ``queued`` and ``in_flight`` at ``t_s``; latency
    percentiles are of the runs (E2E) and calls (TTFT) that finished in the interval.
    """

    t_s: float
    arrivals: int
    completed: int
    failed: int
    rejected: int
    in_flight: int
    pools: dict[str, dict[str, int]]
    latency: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(slots=True)
class FleetReport:
    """What `run_fleet` did: per tenant, per pool, the events, the time series."""

    tenants: dict[str, TenantReport] = field(default_factory=dict)
    pools: dict[str, PoolReport] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    scale_events: list[ScaleEvent] = field(default_factory=list)
    rollout_events: list[RolloutEvent] = field(default_factory=list)
    duration_s: float = 0.0
    sample_s: float = 1.0
    start_s: float = 0.0
    """The clock time at the start: events carry clock times, samples times since the start."""
    sim_s: float = 0.0
    wall_s: float = 0.0

    def _total(self, name: str) -> int:
        return sum(int(getattr(t, name)) for t in self.tenants.values())

    @property
    def arrivals(self) -> int:
        """All tenants' arrivals."""
        return self._total("arrivals")

    @property
    def completed(self) -> int:
        """Runs that succeeded."""
        return self._total("completed")

    @property
    def failed(self) -> int:
        """Runs that failed (not by admission control)."""
        return self._total("failed")

    @property
    def rejected(self) -> int:
        """Runs shed by admission control."""
        return self._total("rejected")

    @property
    def lost(self) -> int:
        """Arrivals with no verdict: always 0 when the runtime keeps its promise."""
        return self.arrivals - self.completed - self.failed - self.rejected

    @property
    def cost_usd(self) -> float:
        """All runs' cost."""
        return sum(t.cost_usd for t in self.tenants.values())

    @property
    def energy_j(self) -> float:
        """All runs' energy."""
        return sum(t.energy_j for t in self.tenants.values())

    @property
    def slo_attainment(self) -> float | None:
        """Arrivals that completed within their tenant's targets, over all arrivals."""
        arrivals = self.arrivals
        return self._total("within_slo") / arrivals if arrivals else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of a fleet run (``agentrt load FLEET.yaml --json``)."""
        e2e = [v for t in self.tenants.values() for v in t.e2e_s]
        ttft = [v for t in self.tenants.values() for v in t.ttft_s]
        return {
            "duration_s": self.duration_s,
            "sim_s": self.sim_s,
            "wall_s": self.wall_s,
            "sample_s": self.sample_s,
            "start_s": self.start_s,
            "arrivals": self.arrivals,
            "completed": self.completed,
            "failed": self.failed,
            "rejected": self.rejected,
            "lost": self.lost,
            "slo_attainment": self.slo_attainment,
            **percentiles(ttft, "ttft"),
            **percentiles(e2e, "e2e"),
            "cost_usd": self.cost_usd,
            "cost_per_task_usd": self.cost_usd / self.completed if self.completed else None,
            "energy_j": self.energy_j,
            "tenants": {name: t.to_dict() for name, t in self.tenants.items()},
            "pools": {name: p.to_dict() for name, p in self.pools.items()},
            "scale_events": [asdict(e) for e in self.scale_events],
            "rollout_events": [asdict(e) for e in self.rollout_events],
            "timeline": [s.to_dict() for s in self.samples],
        }
