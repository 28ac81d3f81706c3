"""The autoscaler: a controller that runs a scaling policy on a pool every ``interval_s``.

Each tick the controller takes the pool's snapshot and the requests finished in the last
``window_s``, asks its policy (`substrates.fleet.scalers`) for a replica count, clamps it to the
bounds, and applies it with `ScalablePool.scale_to` only when

- the recommendation has stood on the same side of the current count for the **delay**
  (``scale_up_delay_s`` / ``scale_down_delay_s``; the count applied is the most cautious one
  seen in that time: the smallest going up, the largest going down, as Kubernetes'
  stabilization windows do), and
- the **cooldown** since the last change has passed (``scale_up_cooldown_s`` /
  ``scale_down_cooldown_s``).

A pool at zero replicas with requests waiting wakes at once (one replica, no delay or
cooldown), as Knative's activator does: the arrival pays the cold start. Every applied
decision is a `ScaleEvent` in ``events``, an ``agentrt.fleet.scale`` span event and a count of
``agentrt.fleet.scale.events``; the desired and current replicas are gauges
(``agentrt.fleet.replicas``), labelled with the pool and its version.

Example:
    >>> spec = SloSpec(kind="slo", target_s=8.0, scale_down_delay_s=120)
    >>> spec.build().name
    'slo'
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Literal, Self, final

import anyio
from opentelemetry import metrics, trace
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from agentrt import current_clock
from substrates.fleet.ops import ScalablePool, ScaleEvent
from substrates.fleet.scalers import (
    ConcurrencyPolicy,
    ForecastPolicy,
    QueueLengthPolicy,
    ScalePolicy,
    ScheduleEntry,
    SchedulePolicy,
    SloPolicy,
    UtilizationPolicy,
)
from substrates.fleet.signals import (
    EVENT_SCALE,
    FLEET_POOL,
    FLEET_VERSION,
    METRIC_REPLICAS,
    METRIC_SCALE_EVENTS,
    Signals,
)

__all__ = [
    "AUTOSCALER_KINDS",
    "AutoscalerSpec",
    "ForecastSpec",
    "QueueLengthSpec",
    "ScaleTiming",
    "ScalingController",
    "ScheduleSpec",
    "SloSpec",
    "TargetConcurrencySpec",
    "UtilizationSpec",
    "parse_autoscaler",
]


class ScaleTiming(BaseModel):
    """When a controller looks and how long a decision must stand (every policy has these)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    interval_s: float = Field(default=5.0, gt=0, description="seconds between two decisions")
    window_s: float = Field(default=60.0, gt=0, description="the window of finished requests")
    scale_up_delay_s: float = Field(default=0.0, ge=0, description="how long 'more' must stand")
    scale_down_delay_s: float = Field(default=60.0, ge=0, description="how long 'fewer' must stand")
    scale_up_cooldown_s: float = Field(
        default=15.0, ge=0, description="no scale-up this soon after a change"
    )
    scale_down_cooldown_s: float = Field(
        default=60.0, ge=0, description="no scale-down this soon after a change"
    )
    min_replicas: int | None = Field(
        default=None, ge=0, description="a floor above the pool's (0 = to zero)"
    )
    max_replicas: int | None = Field(default=None, ge=0, description="a ceiling below the pool's")

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_replicas {low} > max_replicas {high}; lower min or raise max")
        return self


class TargetConcurrencySpec(ScaleTiming):
    """``target_concurrency``: requests in flight or queued per replica (default its batch)."""

    kind: Literal["target_concurrency"] = "target_concurrency"
    target: float | None = Field(
        default=None, gt=0, description="requests per replica; None = max_batch"
    )
    tolerance: float = Field(default=0.1, ge=0, lt=1, description="no change within this ratio")

    def build(self) -> ConcurrencyPolicy:
        """The policy."""
        return ConcurrencyPolicy(self.target, self.tolerance, self.window_s)


class UtilizationSpec(ScaleTiming):
    """``utilization``: the share of the replicas' batch slots in use, kept near ``target``."""

    kind: Literal["utilization"] = "utilization"
    target: float = Field(default=0.7, gt=0, le=1, description="busy slots / all slots")
    tolerance: float = Field(default=0.1, ge=0, lt=1, description="no change within this ratio")

    def build(self) -> UtilizationPolicy:
        """The policy."""
        return UtilizationPolicy(self.target, self.tolerance, self.window_s)


class QueueLengthSpec(ScaleTiming):
    """``queue_length``: more replicas while over ``target`` requests queue per replica."""

    kind: Literal["queue_length"] = "queue_length"
    target: float = Field(default=2.0, gt=0, description="queued requests per warm replica")
    down_utilization: float = Field(default=0.5, gt=0, le=1, description="scale down below this")

    def build(self) -> QueueLengthPolicy:
        """The policy."""
        return QueueLengthPolicy(self.target, self.down_utilization)


class SloSpec(ScaleTiming):
    """``slo``: a windowed latency percentile (default p95 of E2E) against ``target_s``."""

    kind: Literal["slo"] = "slo"
    metric: Literal["ttft", "e2e"] = "e2e"
    quantile: float = Field(default=95.0, gt=0, le=100, description="the percentile, 0-100")
    target_s: float = Field(gt=0, description="the latency target in seconds")
    down_below: float = Field(default=0.5, gt=0, lt=1, description="scale down below this x target")
    min_samples: int = Field(default=10, ge=1, description="requests needed in the window to act")

    def build(self) -> SloPolicy:
        """The policy."""
        return SloPolicy(
            self.metric, self.quantile, self.target_s, self.down_below, self.min_samples
        )


class ScheduleSpec(ScaleTiming):
    """``schedule``: replica counts from set times on, optionally repeating every ``period_s``."""

    kind: Literal["schedule"] = "schedule"
    entries: list[ScheduleEntry] = Field(min_length=1, description="(at_s, replicas), by time")
    period_s: float | None = Field(
        default=None, gt=0, description="repeat the schedule (86400 = daily)"
    )
    scale_down_delay_s: float = Field(default=0.0, ge=0, description="how long 'fewer' must stand")
    scale_up_cooldown_s: float = Field(
        default=0.0, ge=0, description="no scale-up this soon after a change"
    )
    scale_down_cooldown_s: float = Field(
        default=0.0, ge=0, description="no scale-down this soon after a change"
    )

    @field_validator("entries")
    @classmethod
    def _in_order(cls, entries: list[ScheduleEntry]) -> list[ScheduleEntry]:
        times = [e.at_s for e in entries]
        if times != sorted(times):
            raise ValueError(f"schedule entries must be in time order; got at_s {times}")
        return entries

    def build(self) -> SchedulePolicy:
        """The policy."""
        return SchedulePolicy(self.entries, self.period_s)


class ForecastSpec(ScaleTiming):
    """``forecast``: replicas for the arrival rate ``horizon_s`` ahead (about the cold start)."""

    kind: Literal["forecast"] = "forecast"
    horizon_s: float = Field(default=30.0, ge=0, description="how far ahead to provision")
    history_s: float = Field(
        default=120.0, gt=0, description="the arrivals the trend is fitted over"
    )
    target: float = Field(
        default=0.7, gt=0, le=1, description="busy slots / all slots at the forecast"
    )
    service_s: float | None = Field(
        default=None, gt=0, description="seconds per request; None = measured"
    )

    def build(self) -> ForecastPolicy:
        """The policy."""
        return ForecastPolicy(self.horizon_s, self.history_s, self.target, self.service_s)


#: One autoscaler of a fleet spec, told apart by ``kind``.
AutoscalerSpec = Annotated[
    TargetConcurrencySpec
    | UtilizationSpec
    | QueueLengthSpec
    | SloSpec
    | ScheduleSpec
    | ForecastSpec,
    Field(discriminator="kind"),
]
AUTOSCALER_KINDS = (
    "target_concurrency",
    "utilization",
    "queue_length",
    "slo",
    "schedule",
    "forecast",
)
_ADAPTER: TypeAdapter[AutoscalerSpec] = TypeAdapter(AutoscalerSpec)


def parse_autoscaler(data: Mapping[str, object]) -> AutoscalerSpec:
    """An autoscaler spec from a mapping with a ``kind`` (raises pydantic's ValidationError)."""
    return _ADAPTER.validate_python(dict(data))


@final
class ScalingController:
    """Runs ``policy`` on ``pool`` every ``timing.interval_s`` on the run's clock.

    Example:
        >>> # async with anyio.create_task_group() as tg:
        >>> #     tg.start_soon(ScalingController(pool, SloSpec(target_s=8)).run, 600.0)

    Args:
        pool: the pool to scale.
        policy: a spec (its timing fields apply) or any `ScalePolicy` (with ``timing``).
        timing: delays, cooldowns and bounds for a policy given as an object.
        tracer: a span per controller carries the ``agentrt.fleet.scale`` events; None = the
            events go on the current span, if any.
        meter: where the event counter and replica gauges go; None = no metrics.
    """

    def __init__(
        self,
        pool: ScalablePool,
        policy: ScalePolicy | AutoscalerSpec,
        *,
        timing: ScaleTiming | None = None,
        tracer: trace.Tracer | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        if isinstance(policy, ScaleTiming):
            self.timing: ScaleTiming = policy
            self.policy: ScalePolicy = policy.build()
        else:
            self.timing = timing or ScaleTiming()
            self.policy = policy
        self.pool = pool
        self.events: list[ScaleEvent] = []
        self.ticks = 0
        self._signals = Signals(f"autoscale {pool.name}", tracer=tracer, meter=meter)
        self._seen: deque[tuple[float, int]] = deque()
        self._up_since: float | None = None
        self._down_since: float | None = None
        self._last_change: float | None = None

    def _labels(self) -> dict[str, str]:
        return {FLEET_POOL: self.pool.name, FLEET_VERSION: self.pool.version}

    def step(self, now: float | None = None) -> ScaleEvent | None:
        """Take one decision at clock time ``now`` (default: the clock's); the event if applied."""
        t = self.timing
        now = current_clock().current_time() if now is None else now
        self.ticks += 1
        snap = self.pool.snapshot()
        window = self.pool.completions_since(now - t.window_s)
        rec = self.policy.desired(snap, window, now)
        low = max(snap.min_replicas, t.min_replicas or 0)
        high = (
            snap.max_replicas if t.max_replicas is None else min(snap.max_replicas, t.max_replicas)
        )
        want = max(low, min(high, rec.replicas))
        current = snap.replicas
        # Demand at zero: requests waiting for a replica, or (``when_cold: reject``) refused
        # since the last tick.
        shed = any(c.rejected and c.t_s >= now - t.interval_s for c in window)
        woke = current == 0 and (snap.queued + snap.in_flight > 0 or shed)
        if woke and high > 0:
            want = max(want, 1)
        self._seen.append((now, want))
        keep = max(t.scale_up_delay_s, t.scale_down_delay_s)
        while self._seen and self._seen[0][0] < now - keep:
            self._seen.popleft()
        self._signals.gauge(
            METRIC_REPLICAS, want, {**self._labels(), "agentrt.fleet.replicas.kind": "desired"},
            description="Replicas a pool's autoscaler wants (desired) and has (current).",
        )  # fmt: skip
        self._signals.gauge(
            METRIC_REPLICAS, current, {**self._labels(), "agentrt.fleet.replicas.kind": "current"},
            description="Replicas a pool's autoscaler wants (desired) and has (current).",
        )  # fmt: skip
        target = self._target(now, current, want, woke=woke)
        if target is None:
            return None
        event = self.pool.scale_to(target, reason=rec.reason, policy=self.policy.name)
        if event is None:
            return None
        self._last_change = now
        self._up_since = self._down_since = None
        self._record(event)
        return event

    def _target(self, now: float, current: int, want: int, *, woke: bool) -> int | None:
        """The count to apply now, or None to hold (delays and cooldowns)."""
        t = self.timing
        if want > current:
            self._down_since = None
            if woke:
                return want if t.scale_up_delay_s == 0 else 1
            self._up_since = now if self._up_since is None else self._up_since
            return self._settled(
                now, self._up_since, t.scale_up_delay_s, t.scale_up_cooldown_s, min
            )
        if want < current:
            self._up_since = None
            self._down_since = now if self._down_since is None else self._down_since
            return self._settled(
                now, self._down_since, t.scale_down_delay_s, t.scale_down_cooldown_s, max
            )
        self._up_since = self._down_since = None
        return None

    def _settled(
        self,
        now: float,
        since: float,
        delay_s: float,
        cooldown_s: float,
        cautious: Callable[[Iterable[int]], int],
    ) -> int | None:
        """The most ``cautious`` count wanted over the delay, once it held and cooled down."""
        if now - since < delay_s:
            return None
        if self._last_change is not None and now - self._last_change < cooldown_s:
            return None
        start = max(since, now - delay_s)
        return cautious(w for ts, w in self._seen if ts >= start)

    def _record(self, event: ScaleEvent) -> None:
        self.events.append(event)
        attrs: dict[str, str | int] = {
            **self._labels(),
            "agentrt.fleet.scale.kind": event.kind,
            "agentrt.fleet.scale.before": event.before,
            "agentrt.fleet.scale.after": event.after,
            "agentrt.fleet.scale.reason": event.reason,
            "agentrt.fleet.scale.policy": event.policy,
        }
        self._signals.event(EVENT_SCALE, event.t_s, attrs)
        self._signals.count(
            METRIC_SCALE_EVENTS,
            {
                **self._labels(),
                "agentrt.fleet.scale.kind": event.kind,
                "agentrt.fleet.scale.policy": event.policy,
            },
            description="Scaling decisions applied to a pool.",
        )

    async def run(self, until_s: float | None = None) -> None:
        """Decide every ``interval_s`` until the clock reads ``until_s`` (None: until cancelled)."""
        clock = current_clock()
        self._signals.start({**self._labels(), "agentrt.fleet.scale.policy": self.policy.name})
        try:
            while until_s is None or clock.current_time() < until_s:
                self.step(clock.current_time())
                wait = self.timing.interval_s
                if until_s is not None:
                    wait = min(wait, max(0.0, until_s - clock.current_time()))
                await clock.sleep(wait)
        finally:
            self._signals.end()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ScalingController]:
        """Run the controller in the background for the ``async with`` block."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.run)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
