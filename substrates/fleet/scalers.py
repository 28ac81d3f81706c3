"""Autoscaler policies: how many replicas a pool should have, from its snapshot and recent requests.

A policy is a small object with a ``name`` and ``desired(snapshot, window, now)`` returning a
`Recommendation` (a replica count and why); `substrates.fleet.autoscale.ScalingController`
turns recommendations into `scale_to` calls with delays, cooldowns and bounds. Each policy is
built from a pydantic spec whose ``kind`` names it (so fleet specs can hold them):

- ``target_concurrency``: requests in flight or queued per replica;
- ``utilization``: the same as a share of the replicas' batch slots;
- ``queue_length``: add replicas while the queue per replica is long, shed them when idle;
- ``slo``: a windowed p95 (or any percentile) of TTFT or E2E against a target;
- ``schedule``: replica counts at set times (optionally repeating: a daily curve);
- ``forecast``: the arrival rate a horizon ahead (a linear fit of recent rates) times the
  service time (Little's law).

A pool with nothing in flight, nothing queued and no request in the window is idle: every
reactive policy then recommends 0, so a pool whose minimum is 0 scales to zero (the next
arrival pays the cold start).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from agentrt.compare import percentile
from substrates.fleet.ops import Completion, PoolSnapshot

__all__ = [
    "ConcurrencyPolicy",
    "ForecastPolicy",
    "QueueLengthPolicy",
    "Recommendation",
    "ScalePolicy",
    "ScheduleEntry",
    "SchedulePolicy",
    "SloPolicy",
    "UtilizationPolicy",
    "average_load",
    "is_idle",
]


class Recommendation(NamedTuple):
    """A policy's answer: the replicas it wants and why (the scale event's reason)."""

    replicas: int
    reason: str


@runtime_checkable
class ScalePolicy(Protocol):
    """**Protocol:** a scaling policy.

    Example:
        >>> class Fixed:
        ...     name = "fixed"
        ...     def desired(self, snapshot, window, now):
        ...         return Recommendation(3, "always 3")
    """

    name: str

    def desired(
        self, snapshot: PoolSnapshot, window: Sequence[Completion], now: float
    ) -> Recommendation:
        """The replicas ``snapshot``'s pool should have at clock time ``now``.

        ``window`` holds the requests finished in the controller's window (``window_s``).
        """
        ...


def is_idle(snapshot: PoolSnapshot, window: Sequence[Completion]) -> bool:
    """Nothing in flight, nothing queued and no request finished in the window."""
    return snapshot.in_flight == 0 and snapshot.queued == 0 and not window


def _load(snapshot: PoolSnapshot) -> int:
    return snapshot.in_flight + snapshot.queued


def average_load(snapshot: PoolSnapshot, window: Sequence[Completion], window_s: float) -> float:
    """Requests in flight or queued: now, or on average over the window if more.

    The average is Little's law over the window: the seconds its requests spent in the pool
    over the window's length. A sample at one instant misses a busy pool between two bursts;
    the average keeps it from scaling down (or to zero) until a whole window was quiet.
    """
    busy_s = sum(c.e2e_s for c in window if not c.rejected)
    return max(float(_load(snapshot)), busy_s / window_s)


def _proportional(
    snapshot: PoolSnapshot, load: float, per_replica: float, tolerance: float, what: str
) -> Recommendation:
    """ceil(load / per_replica), unless the load is within ``tolerance`` of the current target."""
    current = snapshot.replicas
    want = math.ceil(load / per_replica - 1e-9)
    if current > 0 and abs(load / (current * per_replica) - 1.0) <= tolerance:
        want = current
    return Recommendation(want, f"{what}: {load:.3g} in flight+queued / {per_replica:g} -> {want}")


class _FromSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(slots=True)
class ConcurrencyPolicy:
    """``target_concurrency``: ``ceil(load / target)`` replicas (load: see `average_load`)."""

    target: float | None
    tolerance: float
    window_s: float = 60.0
    name: str = "target_concurrency"

    def desired(
        self, snapshot: PoolSnapshot, window: Sequence[Completion], now: float
    ) -> Recommendation:
        """See the class docs."""
        if is_idle(snapshot, window):
            return Recommendation(0, f"{self.name}: idle")
        per = self.target if self.target is not None else float(snapshot.slots_per_replica)
        load = average_load(snapshot, window, self.window_s)
        return _proportional(snapshot, load, per, self.tolerance, self.name)


@dataclass(slots=True)
class UtilizationPolicy:
    """``utilization``: keep ``(in_flight + queued) / (replicas * slots)`` near ``target``."""

    target: float
    tolerance: float
    window_s: float = 60.0
    name: str = "utilization"

    def desired(
        self, snapshot: PoolSnapshot, window: Sequence[Completion], now: float
    ) -> Recommendation:
        """See the class docs."""
        if is_idle(snapshot, window):
            return Recommendation(0, f"{self.name}: idle")
        load = average_load(snapshot, window, self.window_s)
        per = snapshot.slots_per_replica * self.target
        return _proportional(snapshot, load, per, self.tolerance, self.name)


@dataclass(slots=True)
class QueueLengthPolicy:
    """``queue_length``: step up while the queue per warm replica exceeds ``target``.

    Up to ``max(replicas + 1, ceil(queued / target))``; down by one while nothing is queued and
    the in-flight requests fit one replica fewer at ``down_utilization``; 0 when idle.
    """

    target: float
    down_utilization: float
    name: str = "queue_length"

    def desired(
        self, snapshot: PoolSnapshot, window: Sequence[Completion], now: float
    ) -> Recommendation:
        """See the class docs."""
        current = snapshot.replicas
        if is_idle(snapshot, window):
            return Recommendation(0, f"{self.name}: idle")
        per_warm = snapshot.queued / max(1, snapshot.warm)
        if per_warm > self.target:
            want = max(current + 1, math.ceil(snapshot.queued / self.target))
            return Recommendation(want, f"{self.name}: {per_warm:.3g} queued per replica")
        fits = (current - 1) * snapshot.slots_per_replica * self.down_utilization
        if snapshot.queued == 0 and snapshot.in_flight <= fits:
            return Recommendation(current - 1, f"{self.name}: {snapshot.in_flight} fit fewer")
        return Recommendation(current, f"{self.name}: steady")


@dataclass(slots=True)
class SloPolicy:
    """``slo``: scale on a windowed latency percentile against a target.

    Above the target (or with requests shed in the window): ``ceil(replicas * p / target)``,
    at least one more. Below ``down_below * target``: one fewer. Fewer than ``min_samples``
    requests in the window: no change (0 when idle).
    """

    metric: Literal["ttft", "e2e"]
    quantile: float
    target_s: float
    down_below: float
    min_samples: int
    name: str = "slo"

    def desired(
        self, snapshot: PoolSnapshot, window: Sequence[Completion], now: float
    ) -> Recommendation:
        """See the class docs."""
        current = snapshot.replicas
        if is_idle(snapshot, window):
            return Recommendation(0, f"{self.name}: idle")
        shed = sum(1 for c in window if c.rejected)
        served = [c.ttft_s if self.metric == "ttft" else c.e2e_s for c in window if not c.rejected]
        label = f"p{self.quantile:g}({self.metric})"
        if shed:
            return Recommendation(max(current + 1, 1), f"{self.name}: {shed} shed in the window")
        if len(served) < self.min_samples:
            want = max(current, 1 if _load(snapshot) else 0)
            return Recommendation(want, f"{self.name}: {len(served)} samples, holding")
        p = percentile(served, self.quantile)
        if p > self.target_s:
            want = max(current + 1, math.ceil(max(1, current) * p / self.target_s))
            return Recommendation(want, f"{self.name}: {label} {p:.3g} s > {self.target_s:g} s")
        if p < self.down_below * self.target_s:
            return Recommendation(
                current - 1, f"{self.name}: {label} {p:.3g} s < {self.down_below:g} x target"
            )
        return Recommendation(current, f"{self.name}: {label} {p:.3g} s within target")


class ScheduleEntry(_FromSpec):
    """From ``at_s`` seconds after the controller starts (within a period), ``replicas``."""

    at_s: float = Field(ge=0, description="seconds after the start (or into the period)")
    replicas: int = Field(ge=0, description="replicas from then on")


@dataclass(slots=True)
class SchedulePolicy:
    """``schedule``: the replicas of the last entry at or before now (since the first call).

    With ``period_s`` the schedule repeats (before the first entry, the last one holds).
    Before the first entry of a one-off schedule the count is left as it is.
    """

    entries: Sequence[ScheduleEntry]
    period_s: float | None
    name: str = "schedule"
    origin_s: float | None = None

    def desired(
        self, snapshot: PoolSnapshot, window: Sequence[Completion], now: float
    ) -> Recommendation:
        """See the class docs."""
        if self.origin_s is None:
            self.origin_s = now
        elapsed = now - self.origin_s
        if self.period_s is not None:
            elapsed %= self.period_s
        due = [e for e in self.entries if e.at_s <= elapsed]
        if due:
            entry = due[-1]
        elif self.period_s is not None:
            entry = self.entries[-1]
        else:
            return Recommendation(snapshot.replicas, f"{self.name}: before the first entry")
        return Recommendation(
            entry.replicas, f"{self.name}: {entry.replicas} from t={entry.at_s:g} s"
        )


@dataclass(slots=True)
class ForecastPolicy:
    """``forecast``: replicas for the arrival rate ``horizon_s`` ahead (Little's law).

    Arrivals are counted from snapshots (served + rejected + in flight + queued); the rate per
    interval is fitted with a least-squares line over ``history_s`` and read ``horizon_s``
    ahead; replicas = ``ceil(rate * service_s / (slots * target))``, never below what the
    current load needs at that utilization.
    """

    horizon_s: float
    history_s: float
    target: float
    service_s: float | None
    name: str = "forecast"
    _seen: deque[tuple[float, int]] | None = None

    def desired(
        self, snapshot: PoolSnapshot, window: Sequence[Completion], now: float
    ) -> Recommendation:
        """See the class docs."""
        seen = self._seen if self._seen is not None else deque()
        self._seen = seen
        arrived = snapshot.served + snapshot.rejected + snapshot.in_flight + snapshot.queued
        seen.append((now, arrived))
        while seen and seen[0][0] < now - self.history_s:
            seen.popleft()
        per_slot = snapshot.slots_per_replica * self.target
        now_need = math.ceil(_load(snapshot) / per_slot)
        if is_idle(snapshot, window) and (len(seen) < 2 or seen[0][1] == arrived):
            return Recommendation(0, f"{self.name}: idle")
        rate = _fitted_rate(list(seen), now + self.horizon_s)
        served = [c.e2e_s for c in window if not c.rejected]
        service = self.service_s or (sum(served) / len(served) if served else 1.0)
        want = max(now_need, math.ceil(rate * service / per_slot))
        return Recommendation(
            want, f"{self.name}: {rate:.3g}/s in {self.horizon_s:g} s x {service:.3g} s -> {want}"
        )


def _fitted_rate(seen: list[tuple[float, int]], at: float) -> float:
    """The arrival rate at ``at`` from a line through the per-interval rates of ``seen``."""
    points = [
        ((t0 + t1) / 2, (n1 - n0) / (t1 - t0)) for (t0, n0), (t1, n1) in pairwise(seen) if t1 > t0
    ]
    if not points:
        return 0.0
    if len(points) == 1:
        return max(0.0, points[0][1])
    mean_t = sum(t for t, _ in points) / len(points)
    mean_r = sum(r for _, r in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (r - mean_r) for t, r in points) / var if var else 0.0
    return max(0.0, mean_r + slope * (at - mean_t))
