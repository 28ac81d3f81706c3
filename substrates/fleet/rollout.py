"""Rollouts through a weighted `Router`: a canary with automatic rollback, and blue-green.

**Canary**: ``percent`` of the traffic goes to the canary pool (a new version, stack or
substrate), the rest to the stable one, by the router's ``weighted`` policy. Every
``interval_s`` the canary's requests of the last ``window_s`` (from its pool's
``completions_since``) are checked against its SLO: p95/p99 of TTFT and E2E and the error rate
(failed or shed requests). With at least ``min_requests`` in the window, a breach rolls the
canary back (weight 0, and its pool drains); a clean window moves it to the next of ``steps``
and, after the last, promotes it when ``promote`` is set (the stable pool then drains).

**Blue-green**: all traffic on blue until ``switch_at_s``; then green (scaled to blue's
replica count) is waited for until a replica is warm, the weights flip, and blue drains: its
in-flight requests finish, new ones go to green.

Every step is a `RolloutEvent` in ``events``, an ``agentrt.fleet.rollout`` span event and a
count of ``agentrt.fleet.rollout.events``, labelled with the pools' versions.

Example:
    >>> slo = CanarySlo(p95_e2e_s=8.0, max_error_rate=0.01)
    >>> slo.p99_ttft_s is None
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, final

import anyio
from opentelemetry import metrics, trace
from pydantic import BaseModel, ConfigDict, Field

from agentrt import current_clock
from agentrt.compare import percentile
from agentrt.errors import ConfigError
from substrates.fleet.ops import RolloutEvent, ScalablePool
from substrates.fleet.router import Router
from substrates.fleet.signals import (
    EVENT_ROLLOUT,
    FLEET_VERSION,
    METRIC_ROLLOUT_EVENTS,
    Signals,
)

__all__ = ["BlueGreen", "Canary", "CanarySlo", "CohortStats", "cohort_stats"]


class CanarySlo(BaseModel):
    """The targets a canary must meet over its window (None = not checked)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    p95_ttft_s: float | None = Field(default=None, gt=0, description="p95 time to first token")
    p99_ttft_s: float | None = Field(default=None, gt=0, description="p99 time to first token")
    p95_e2e_s: float | None = Field(default=None, gt=0, description="p95 end-to-end latency")
    p99_e2e_s: float | None = Field(default=None, gt=0, description="p99 end-to-end latency")
    max_error_rate: float | None = Field(
        default=0.05, ge=0, le=1, description="failed or shed requests / all"
    )


@dataclass(frozen=True, slots=True)
class CohortStats:
    """One cohort's (a pool's) requests over a window: counts and latency percentiles (s)."""

    pool: str
    version: str
    requests: int
    errors: int
    p50_ttft_s: float | None
    p95_ttft_s: float | None
    p99_ttft_s: float | None
    p50_e2e_s: float | None
    p95_e2e_s: float | None
    p99_e2e_s: float | None

    @property
    def error_rate(self) -> float:
        """Failed or shed requests over all (0 with none)."""
        return self.errors / self.requests if self.requests else 0.0

    def breaches(self, slo: CanarySlo) -> list[str]:
        """The targets of ``slo`` this cohort misses, each as ``measured > target``."""
        out = [
            f"{label} {measured:.3g} s > {target:g} s"
            for label, measured, target in (
                ("p95(ttft)", self.p95_ttft_s, slo.p95_ttft_s),
                ("p99(ttft)", self.p99_ttft_s, slo.p99_ttft_s),
                ("p95(e2e)", self.p95_e2e_s, slo.p95_e2e_s),
                ("p99(e2e)", self.p99_e2e_s, slo.p99_e2e_s),
            )
            if measured is not None and target is not None and measured > target
        ]
        if slo.max_error_rate is not None and self.error_rate > slo.max_error_rate:
            out.append(f"error rate {self.error_rate:.3g} > {slo.max_error_rate:g}")
        return out


def cohort_stats(pool: ScalablePool, since_s: float) -> CohortStats:
    """``pool``'s requests finished at or after ``since_s``, summarised."""
    done = pool.completions_since(since_s)
    ok = [c for c in done if c.ok and not c.rejected]
    ttft = [c.ttft_s for c in ok]
    e2e = [c.e2e_s for c in ok]

    def pct(values: list[float], q: float) -> float | None:
        return percentile(values, q) if values else None

    return CohortStats(
        pool=pool.name,
        version=pool.version,
        requests=len(done),
        errors=len(done) - len(ok),
        p50_ttft_s=pct(ttft, 50),
        p95_ttft_s=pct(ttft, 95),
        p99_ttft_s=pct(ttft, 99),
        p50_e2e_s=pct(e2e, 50),
        p95_e2e_s=pct(e2e, 95),
        p99_e2e_s=pct(e2e, 99),
    )


class _Rollout:
    """What both rollouts share: the router, its two routes, the event record."""

    def __init__(
        self,
        router: Router,
        old: ScalablePool,
        new: ScalablePool,
        *,
        span_name: str,
        tracer: trace.Tracer | None,
        meter: metrics.Meter | None,
    ) -> None:
        if router.policy != "weighted":
            raise ConfigError(
                f"a rollout shifts weights: build the router with policy='weighted', "
                f"not {router.policy!r}"
            )
        missing = [p.name for p in (old, new) if p.name not in router.routes]
        if missing:
            raise ConfigError(
                f"pool(s) {', '.join(missing)} are not routes of {router.name!r} "
                f"(routes: {', '.join(router.routes)}); add each pool under its name"
            )
        self.router = router
        self.old = old
        self.new = new
        self.events: list[RolloutEvent] = []
        self._signals = Signals(span_name, tracer=tracer, meter=meter)

    def _shift(
        self,
        kind: Literal["start", "shift", "promote", "rollback", "switch", "drained"],
        detail: str,
        new_percent: float | None,
    ) -> RolloutEvent:
        """Set the new pool's share (None: leave the weights) and record the step."""
        if new_percent is not None:
            self.router.set_weights(
                {self.old.name: 100.0 - new_percent, self.new.name: new_percent}
            )
        now = current_clock().current_time()
        event = RolloutEvent(now, kind, detail, weights=dict(self.router.weights))
        self.events.append(event)
        labels = {
            "agentrt.fleet.rollout.kind": kind,
            "agentrt.fleet.rollout.from": self.old.name,
            "agentrt.fleet.rollout.to": self.new.name,
            FLEET_VERSION: self.new.version,
        }
        self._signals.event(EVENT_ROLLOUT, now, {**labels, "agentrt.fleet.rollout.detail": detail})
        self._signals.count(
            METRIC_ROLLOUT_EVENTS, labels, description="Rollout steps: shifts, switches, rollbacks."
        )
        return event


@final
class Canary(_Rollout):
    """Send ``percent`` of the traffic to ``canary``; roll back on an SLO breach.

    Example:
        >>> # router = Router({"v1": stable, "v2": canary}, policy="weighted",
        >>> #                 weights={"v1": 100, "v2": 0}, seed=1)
        >>> # rollout = Canary(router, stable, canary, percent=10,
        >>> #                  slo=CanarySlo(p95_e2e_s=8), window_s=60, min_requests=20)
        >>> # tg.start_soon(rollout.run, 600.0)

    Args:
        router: a ``weighted`` router with both pools as routes (under their names).
        stable, canary: the pools.
        percent: the canary's first share of the traffic (0-100).
        slo: what the canary must meet over each window.
        window_s: the window its requests are judged over.
        min_requests: fewer requests in the window decide nothing.
        interval_s: seconds between checks.
        steps: later shares, each after a clean window (e.g. ``(25, 50)``).
        promote: after the last clean window, send all traffic to the canary.
        drain: drain the losing pool (the canary on rollback, the stable one on promotion).
        tracer, meter: where span events and metrics go (as `ScalingController`).
    """

    def __init__(
        self,
        router: Router,
        stable: ScalablePool,
        canary: ScalablePool,
        *,
        percent: float,
        slo: CanarySlo,
        window_s: float = 60.0,
        min_requests: int = 20,
        interval_s: float = 5.0,
        steps: Sequence[float] = (),
        promote: bool = False,
        drain: bool = True,
        tracer: trace.Tracer | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        super().__init__(
            router, stable, canary, span_name=f"canary {canary.name}", tracer=tracer, meter=meter
        )
        shares = [percent, *steps]
        if any(not 0 < p <= 100 for p in shares) or shares != sorted(shares):
            raise ConfigError(
                f"canary shares must rise within (0, 100]; got percent={percent}, steps={steps}"
            )
        if window_s <= 0 or interval_s <= 0 or min_requests < 1:
            raise ConfigError("canary window_s and interval_s must be > 0, min_requests >= 1")
        self.slo = slo
        self.window_s = window_s
        self.min_requests = min_requests
        self.interval_s = interval_s
        self.shares = shares
        self.promote = promote
        self.drain = drain
        self.state: Literal["pending", "running", "promoted", "rolled_back"] = "pending"
        self._stage = 0
        self._stage_start = 0.0

    def cohorts(self, now: float | None = None) -> dict[str, CohortStats]:
        """Both cohorts over the last window, by role (``stable``, ``canary``)."""
        now = current_clock().current_time() if now is None else now
        since = now - self.window_s
        return {"stable": cohort_stats(self.old, since), "canary": cohort_stats(self.new, since)}

    def start(self) -> RolloutEvent:
        """Send the first share to the canary."""
        self.state = "running"
        self._stage_start = current_clock().current_time()
        return self._shift(
            "start", f"canary {self.new.version}: {self.shares[0]:g}% of traffic", self.shares[0]
        )

    def check(self) -> RolloutEvent | None:
        """Judge the last window: roll back, step up, promote, or (None) wait."""
        if self.state != "running":
            return None
        now = current_clock().current_time()
        stats = self.cohorts(now)
        canary = stats["canary"]
        if canary.requests < self.min_requests:
            return None
        breaches = canary.breaches(self.slo)
        if breaches:
            self.state = "rolled_back"
            stable = stats["stable"]
            event = self._shift(
                "rollback",
                f"canary {self.new.version}: {'; '.join(breaches)} over {self.window_s:g} s "
                f"({canary.requests} requests; stable p95(e2e) {stable.p95_e2e_s or 0:.3g} s)",
                0.0,
            )
            if self.drain:
                self.new.drain()
            return event
        if now - self._stage_start < self.window_s:
            return None
        if self._stage + 1 < len(self.shares):
            self._stage += 1
            self._stage_start = now
            share = self.shares[self._stage]
            return self._shift("shift", f"canary {self.new.version}: clean, {share:g}%", share)
        if self.promote:
            self.state = "promoted"
            event = self._shift("promote", f"canary {self.new.version}: promoted", 100.0)
            if self.drain:
                self.old.drain()
            return event
        return None

    async def run(self, until_s: float | None = None) -> None:
        """Start, then check every ``interval_s`` until decided or the clock reads ``until_s``."""
        clock = current_clock()
        self._signals.start({"agentrt.fleet.rollout.to": self.new.name})
        try:
            if self.state == "pending":
                self.start()
            while self.state == "running" and (until_s is None or clock.current_time() < until_s):
                wait = self.interval_s
                if until_s is not None:
                    wait = min(wait, until_s - clock.current_time())
                await clock.sleep(wait)
                self.check()
        finally:
            self._signals.end()


@final
class BlueGreen(_Rollout):
    """All traffic on ``blue`` until ``switch_at_s`` (clock time), then on ``green``; blue drains.

    Args:
        router: a ``weighted`` router with both pools as routes (under their names).
        blue, green: the old and the new pool.
        switch_at_s: the clock time of the switch.
        ready_timeout_s: how long to wait for a warm green replica (then: no switch, an event).
        drain_timeout_s: how long to wait for blue's in-flight requests to finish.
        interval_s: how often readiness and the drain are looked at.
        tracer, meter: where span events and metrics go (as `ScalingController`).
    """

    def __init__(
        self,
        router: Router,
        blue: ScalablePool,
        green: ScalablePool,
        *,
        switch_at_s: float,
        ready_timeout_s: float = 600.0,
        drain_timeout_s: float = 600.0,
        interval_s: float = 1.0,
        tracer: trace.Tracer | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        super().__init__(
            router, blue, green, span_name=f"blue-green {green.name}", tracer=tracer, meter=meter
        )
        if switch_at_s < 0 or ready_timeout_s <= 0 or drain_timeout_s <= 0 or interval_s <= 0:
            raise ConfigError("blue-green switch_at_s must be >= 0, the timeouts and interval > 0")
        self.switch_at_s = switch_at_s
        self.ready_timeout_s = ready_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.interval_s = interval_s
        self.switched = False

    async def run(self, until_s: float | None = None) -> None:
        """Start on blue, switch at ``switch_at_s`` once green is warm, then drain blue.

        With ``until_s``, stop waiting when the clock reads it (the run is over).
        """
        clock = current_clock()
        self._signals.start({"agentrt.fleet.rollout.to": self.new.name})
        left = None if until_s is None else max(0.0, until_s - clock.current_time())
        try:
            with anyio.move_on_after(left if left is not None else float("inf")):
                await self._run()
        finally:
            self._signals.end()

    async def _run(self) -> None:
        clock = current_clock()
        self._shift("start", f"blue {self.old.version}: all traffic", 0.0)
        await clock.sleep(max(0.0, self.switch_at_s - clock.current_time()))
        blue_n = self.old.snapshot().replicas
        self.new.scale_to(
            max(1, blue_n, self.new.snapshot().replicas), reason="blue-green: match blue"
        )
        with anyio.move_on_after(self.ready_timeout_s):
            while self.new.snapshot().warm == 0:
                await clock.sleep(self.interval_s)
        if self.new.snapshot().warm == 0:
            self._shift("rollback", f"green {self.new.version}: no warm replica", None)
            return
        self._shift("switch", f"green {self.new.version}: all traffic", 100.0)
        self.switched = True
        self.old.drain()
        with anyio.move_on_after(self.drain_timeout_s):
            while (snap := self.old.snapshot()).in_flight + snap.queued > 0:
                await clock.sleep(self.interval_s)
        snap = self.old.snapshot()
        left = snap.in_flight + snap.queued
        detail = f"blue {self.old.version}: drained" + (f", {left} still in flight" if left else "")
        self._shift("drained", detail, None)
