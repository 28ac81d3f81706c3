from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from agentrt import current_clock
from agentrt.errors import RateLimited
from agentrt.substrate import InferenceRequest
from agentrt.testing import FixedLatencySubstrate
from substrates.emulated.engine import build_engine
from substrates.fleet.autoscale import (
    AUTOSCALER_KINDS,
    ForecastSpec,
    QueueLengthSpec,
    ScalingController,
    ScheduleSpec,
    SloSpec,
    TargetConcurrencySpec,
    UtilizationSpec,
    parse_autoscaler,
)
from substrates.fleet.ops import Completion, PoolSnapshot, ScalablePool, ScaleEvent
from substrates.fleet.pool import Pool
from substrates.fleet.scalers import ConcurrencyPolicy, Recommendation


@dataclass
class FakePool:
    """A pool whose load the test sets; scale_to applies at once."""

    name: str = "fake"
    version: str = "v1"
    replicas: int = 1
    min_replicas: int = 0
    max_replicas: int = 20
    slots: int = 4
    in_flight: int = 0
    queued: int = 0
    served: int = 0
    now: float = 0.0
    done: list[Completion] = field(default_factory=list)
    drained: bool = False

    def snapshot(self) -> PoolSnapshot:
        return PoolSnapshot(
            self.name, self.version, self.now, warm=self.replicas, in_flight=self.in_flight,
            queued=self.queued, served=self.served, desired=self.replicas,
            min_replicas=self.min_replicas, max_replicas=self.max_replicas,
            slots_per_replica=self.slots,
        )  # fmt: skip

    def completions_since(self, t_s: float) -> list[Completion]:
        return [c for c in self.done if c.t_s >= t_s]

    def scale_to(self, replicas: int, *, reason: str, policy: str = "") -> ScaleEvent | None:
        n = max(self.min_replicas, min(self.max_replicas, replicas))
        if n == self.replicas:
            return None
        kind = "scale_up" if n > self.replicas else "scale_down"
        event = ScaleEvent(self.now, self.name, kind, self.replicas, n, reason, policy)
        self.replicas = n
        return event

    def drain(self) -> None:
        self.drained = True


def drive(
    controller: ScalingController,
    pool: FakePool,
    load: Callable[[float], int],
    until: float,
    every: float = 5.0,
) -> list[tuple[float, int]]:
    """Tick the controller at 0, every, 2*every ... < until; the replicas after each tick."""
    seen = []
    t = 0.0
    while t < until:
        pool.now = t
        pool.in_flight = load(t)
        controller.step(t)
        seen.append((t, pool.replicas))
        t += every
    return seen


def test_fake_pool_is_a_scalable_pool() -> None:
    assert isinstance(FakePool(), ScalablePool)


def test_delays_and_cooldowns_are_honoured() -> None:
    pool = FakePool(replicas=1)
    spec = TargetConcurrencySpec(
        target=4, scale_up_delay_s=20, scale_down_delay_s=60,
        scale_up_cooldown_s=30, scale_down_cooldown_s=45,
    )  # fmt: skip
    controller = ScalingController(pool, spec)

    def load(t: float) -> int:  # 4 until t=100, then rising by 4 every 5 s until t=200, then 4
        if 100 <= t < 200:
            return 4 + 4 * int((t - 100) / 5)
        return 4

    drive(controller, pool, load, 500)
    ups = [e for e in controller.events if e.kind == "scale_up"]
    downs = [e for e in controller.events if e.kind == "scale_down"]
    assert ups
    assert downs
    assert ups[0].t_s >= 100 + 20  # the "more" condition held for the delay first
    changes = [e.t_s for e in controller.events]
    for before, after in itertools.pairwise(changes):
        assert after - before >= 30  # the up cooldown (and the down one, longer) after a change
    assert downs[0].t_s >= 200 + 60
    assert downs[0].t_s - ups[-1].t_s >= 45
    assert all(e.after > e.before for e in ups)
    assert all(e.after < e.before for e in downs)
    assert pool.replicas == 1  # back to what 4 in flight need


def test_scale_up_takes_the_smallest_count_that_held_for_the_delay() -> None:
    pool = FakePool(replicas=1)
    spec = TargetConcurrencySpec(target=4, scale_up_delay_s=10, scale_up_cooldown_s=0)
    controller = ScalingController(pool, spec)
    loads = iter([40, 12, 40, 40, 40])  # wants 10, 3, 10, 10, 10
    drive(controller, pool, lambda t: next(loads), 15)
    assert [(e.t_s, e.after) for e in controller.events] == [(10.0, 3)]


def test_no_flapping_with_delays_but_flapping_without() -> None:
    def alternating(t: float) -> int:
        return 6 if int(t / 5) % 2 else 3  # wants 2, then 1, then 2 ...

    calm = FakePool(replicas=1)
    drive(
        ScalingController(calm, TargetConcurrencySpec(target=4, scale_up_delay_s=15)),
        calm, alternating, 600,
    )  # fmt: skip
    assert calm.replicas == 1

    eager = FakePool(replicas=1)
    bare = TargetConcurrencySpec(
        target=4, scale_up_delay_s=0, scale_down_delay_s=0,
        scale_up_cooldown_s=0, scale_down_cooldown_s=0,
    )  # fmt: skip
    controller = ScalingController(eager, bare)
    drive(controller, eager, alternating, 600)
    assert len(controller.events) > 50  # what the delays prevent


def test_tolerance_keeps_the_count_near_the_target() -> None:
    policy = ConcurrencyPolicy(target=10, tolerance=0.1)
    near = PoolSnapshot("p", "v1", 0.0, warm=2, in_flight=21, slots_per_replica=10)
    assert policy.desired(near, [], 0.0).replicas == 2  # 21 / 20 is within 10 %
    far = PoolSnapshot("p", "v1", 0.0, warm=2, in_flight=23, slots_per_replica=10)
    assert policy.desired(far, [], 0.0).replicas == 3


def test_utilization_and_queue_length_policies() -> None:
    util = UtilizationSpec(target=0.5).build()
    snap = PoolSnapshot("p", "v1", 0.0, warm=1, in_flight=8, queued=4, slots_per_replica=8)
    assert util.desired(snap, [], 0.0).replicas == 3  # 12 busy / (8 slots x 0.5)
    queue = QueueLengthSpec(target=2).build()
    assert queue.desired(snap, [], 0.0).replicas == 2  # 4 queued on 1 replica > 2
    calm = PoolSnapshot("p", "v1", 0.0, warm=3, in_flight=4, slots_per_replica=8)
    assert queue.desired(calm, [], 0.0).replicas == 2  # 4 fit on 2 at half load
    idle = PoolSnapshot("p", "v1", 0.0, warm=3, slots_per_replica=8)
    assert queue.desired(idle, [], 0.0).replicas == 0


def done(t: float, e2e: float, n: int, **kw: Any) -> list[Completion]:
    return [Completion(t, e2e / 4, e2e, **kw) for _ in range(n)]


def test_slo_policy_reacts_to_a_latency_breach() -> None:
    pool = FakePool(replicas=3, in_flight=6)
    spec = SloSpec(
        target_s=8.0, window_s=30, min_samples=5,
        scale_up_cooldown_s=0, scale_down_delay_s=0, scale_down_cooldown_s=0,
    )  # fmt: skip
    controller = ScalingController(pool, spec)
    pool.done = done(0.0, 6.0, 20)  # within the target: hold
    assert controller.step(0.0) is None
    assert pool.replicas == 3
    pool.now, pool.done = 10.0, done(10.0, 12.0, 20)  # p95 12 s > 8 s
    event = controller.step(10.0)
    assert event is not None
    assert event.kind == "scale_up"
    assert event.after == 5
    assert "p95(e2e) 12 s > 8 s" in event.reason
    assert event.policy == "slo"
    pool.now, pool.done = 60.0, done(60.0, 1.0, 20)  # far below: one fewer
    assert (event := controller.step(60.0)) is not None
    assert event.after == 4
    pool.now, pool.done = 70.0, done(70.0, 1.0, 2)  # too few samples: hold
    assert controller.step(70.0) is None
    pool.now, pool.done = 80.0, done(80.0, 0.0, 8, ok=False, rejected=True)  # shedding: more
    assert (event := controller.step(80.0)) is not None
    assert event.after == 5
    ttft = SloSpec(metric="ttft", quantile=99, target_s=0.5, min_samples=1).build()
    snap = pool.snapshot()
    assert ttft.desired(snap, done(0.0, 4.0, 3), 0.0).replicas > 5  # ttft 1 s > 0.5 s


def test_schedule_policy_follows_its_schedule() -> None:
    pool = FakePool(replicas=1, in_flight=2)
    spec = ScheduleSpec(
        entries=[
            {"at_s": 0, "replicas": 1},
            {"at_s": 60, "replicas": 4},
            {"at_s": 120, "replicas": 2},
        ],
        period_s=150,
    )  # fmt: skip
    seen = dict(drive(ScalingController(pool, spec), pool, lambda t: 2, 300))
    for t, replicas in seen.items():
        phase = t % 150
        assert replicas == (1 if phase < 60 else 4 if phase < 120 else 2), t
    with pytest.raises(ValidationError, match="time order"):
        ScheduleSpec(entries=[{"at_s": 60, "replicas": 4}, {"at_s": 0, "replicas": 1}])


def test_forecast_provisions_ahead_of_a_rising_arrival_rate() -> None:
    forecast = ForecastSpec(horizon_s=30, history_s=60, target=1.0, service_s=2.0).build()
    reactive = TargetConcurrencySpec(target=4, tolerance=0).build()
    arrived = 0.0
    snap = PoolSnapshot("p", "v1", 0.0, warm=1, slots_per_replica=4)
    for t in range(0, 65, 5):  # the rate rises by 0.1/s every second: 0 -> 6.4/s
        arrived += 0.1 * t * 5
        in_flight = int(0.1 * t * 2.0)  # Little: rate x service
        snap = PoolSnapshot(
            "p", "v1", t, warm=1, served=int(arrived) - in_flight, in_flight=in_flight,
            slots_per_replica=4,
        )  # fmt: skip
        ahead = forecast.desired(snap, [], float(t))
    now = reactive.desired(snap, [], 60.0)
    assert ahead.replicas > now.replicas  # it sees the rate 30 s on
    assert "forecast" in ahead.reason


def test_specs_parse_by_kind_and_reject_bad_input() -> None:
    for kind in AUTOSCALER_KINDS:
        data: dict[str, object] = {"kind": kind}
        if kind == "slo":
            data["target_s"] = 8
        if kind == "schedule":
            data["entries"] = [{"at_s": 0, "replicas": 1}]
        assert parse_autoscaler(data).build().name == kind
    with pytest.raises(ValidationError, match="target_s"):
        parse_autoscaler({"kind": "slo"})
    with pytest.raises(ValidationError):
        parse_autoscaler({"kind": "guess"})
    with pytest.raises(ValidationError):
        parse_autoscaler({"kind": "utilization", "interval_s": 0})
    with pytest.raises(ValidationError, match="min_replicas 3 > max_replicas 2"):
        parse_autoscaler({"kind": "queue_length", "min_replicas": 3, "max_replicas": 2})


def test_a_custom_policy_object_runs_with_default_timing() -> None:
    class Three:
        name = "three"

        def desired(self, snapshot: PoolSnapshot, window: Any, now: float) -> Recommendation:
            return Recommendation(3, "always three")

    pool = FakePool(replicas=1, in_flight=1)
    event = ScalingController(pool, Three()).step(0.0)
    assert event is not None
    assert (event.after, event.policy) == (3, "three")


# -- with real pools in virtual time ------------------------------------------------------------


async def _serve(pool: Pool, at: list[float], out: list[float], tokens: int = 8) -> None:
    """Send one request at each clock time in ``at``; collect e2e (or -1 when refused)."""
    clock = current_clock()

    async def one(t: float) -> None:
        await clock.sleep(max(0.0, t - clock.current_time()))
        t0 = clock.current_time()
        try:
            with anyio.fail_after(900):
                await pool.infer(InferenceRequest.from_prompt("hi", max_output_tokens=tokens))
        except RateLimited:
            out.append(-1.0)
            return
        out.append(clock.current_time() - t0)

    async with anyio.create_task_group() as tg:
        for t in at:
            tg.start_soon(one, t)


def test_scale_to_zero_and_back_pays_the_cold_start(vrun: Callable[..., Any]) -> None:
    pool = Pool(
        lambda i: FixedLatencySubstrate(latency_s=1.0), name="gpu", min_replicas=0,
        max_replicas=3, initial=1, cold_start_s=30.0, slots_per_replica=4,
    )  # fmt: skip
    spec = TargetConcurrencySpec(interval_s=5, window_s=20, scale_down_delay_s=30)
    controller = ScalingController(pool, spec)
    latencies: list[float] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(controller.run, 400.0)
            await _serve(pool, [0.0, 0.5, 1.0, 250.0], latencies)

    vrun(main)
    kinds = [(e.kind, e.before, e.after) for e in controller.events]
    assert ("scale_down", 1, 0) in kinds
    assert ("scale_up", 0, 1) in kinds
    assert kinds.index(("scale_down", 1, 0)) < kinds.index(("scale_up", 0, 1))
    woke = next(e for e in controller.events if e.before == 0)
    assert 250.0 <= woke.t_s <= 255.0  # at the next tick, no delay
    assert latencies[:3] == [1.0, 1.0, 1.0]
    assert latencies[3] >= 30.0 + 1.0  # the cold start, paid by the arrival
    assert pool.served == 4
    assert pool.rejected == 0


def _spike(
    seed: int, meter: Any = None, tracer: Any = None
) -> tuple[list[ScaleEvent], Pool, list[float]]:
    """1 -> 8 arrivals/s at t=60 for 60 s on emulated H100s, a concurrency autoscaler."""
    from agentrt import VirtualClock, run

    rng = random.Random(seed)
    times, t = [], 0.0
    while t < 180.0:
        t += rng.expovariate(8.0 if 60 <= t < 120 else 1.0)
        times.append(t)

    def make(index: int) -> Any:
        return build_engine("h100", model="llama-3.1-8b", seed=seed + index, jitter=0.1)

    pool = Pool(make, name="h100", initial=1, min_replicas=1, max_replicas=6, slots_per_replica=4,
                cold_start_s=20.0)  # fmt: skip
    spec = TargetConcurrencySpec(interval_s=5, scale_down_delay_s=30)
    controller = ScalingController(pool, spec, tracer=tracer, meter=meter)
    latencies: list[float] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(controller.run, 400.0)
            await _serve(pool, times, latencies, tokens=100)

    run(main, clock=VirtualClock())
    return controller.events, pool, latencies


def test_a_spike_on_emulated_engines_scales_up_then_down_losing_nothing() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    events, pool, latencies = _spike(7, meter=meter, tracer=provider.get_tracer("test"))
    ups = [e for e in events if e.kind == "scale_up"]
    downs = [e for e in events if e.kind == "scale_down"]
    assert ups
    assert downs
    assert ups[0].t_s >= 60.0
    assert downs[-1].t_s > ups[-1].t_s
    assert max(e.after for e in events) <= 6
    assert pool.served + pool.rejected == len(latencies) == pool.arrivals  # none lost
    assert pool.rejected == 0
    spans = exporter.get_finished_spans()
    scale_events = [ev for s in spans for ev in s.events if ev.name == "agentrt.fleet.scale"]
    assert len(scale_events) == len(events)
    assert {ev.attributes["agentrt.fleet.pool"] for ev in scale_events} == {"h100"}  # type: ignore[index]
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"agentrt.fleet.scale.events", "agentrt.fleet.replicas"} <= names


def test_the_same_seed_gives_the_same_decisions() -> None:
    first, _, lat1 = _spike(3)
    second, _, lat2 = _spike(3)
    assert first == second
    assert lat1 == lat2


def test_running_in_the_background_stops_with_the_block(vrun: Callable[..., Any]) -> None:
    pool = Pool(
        lambda i: FixedLatencySubstrate(latency_s=1.0), name="gpu", min_replicas=0,
        max_replicas=2, initial=1, cold_start_s=5.0,
    )  # fmt: skip
    controller = ScalingController(pool, UtilizationSpec(interval_s=2, scale_down_delay_s=10))

    async def main() -> float:
        async with controller.running():
            await current_clock().sleep(100.0)
        return current_clock().current_time()

    assert vrun(main) == 100.0
    assert 50 <= controller.ticks <= 51  # at 0, 2, ... (100: as the block ends)
    assert [(e.before, e.after) for e in controller.events] == [(1, 0)]  # idle: to zero


def test_a_refusing_pool_at_zero_wakes_on_refused_arrivals(vrun: Callable[..., Any]) -> None:
    pool = Pool(
        lambda i: FixedLatencySubstrate(latency_s=1.0), name="gpu", min_replicas=0,
        max_replicas=2, initial=0, cold_start_s=20.0, when_cold="reject",
    )  # fmt: skip
    controller = ScalingController(pool, TargetConcurrencySpec(interval_s=5))
    latencies: list[float] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(controller.run, 100.0)
            await _serve(pool, [1.0, 2.0, 60.0], latencies)

    vrun(main)
    assert latencies == [-1.0, -1.0, 1.0]  # refused while cold, served once warm
    assert next((e.before, e.after, e.t_s) for e in controller.events) == (0, 1, 5.0)
    assert pool.served + pool.rejected == pool.arrivals == 3
