from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import pytest

from agentrt import Plan, RetryPolicy, Step, StepDefaults, current_clock
from agentrt.errors import RateLimited
from agentrt.substrate import InferenceRequest, InferenceResult
from agentrt.testing import FixedLatencySubstrate, FunctionSubstrate
from substrates.fleet.arrivals import PoissonArrivals, StepArrivals
from substrates.fleet.faults import FaultInjector
from substrates.fleet.fleetrun import run_fleet
from substrates.fleet.ops import PoolSnapshot, RolloutEvent, ScaleEvent
from substrates.fleet.router import Router
from substrates.fleet.tenants import Tenant

ONE = Plan(
    name="one",
    steps=[Step(id="a"), Step(id="b", depends_on=["a"])],
    defaults=StepDefaults(retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.1, jitter_s=0.0)),
)


class FakePool:
    """A pool of ``replicas`` slots over a fixed-latency engine; sheds beyond ``max_queue``."""

    def __init__(self, name: str, *, latency_s: float, replicas: int, max_queue: int) -> None:
        self.name = name
        self.version = "v1"
        self.inner = FixedLatencySubstrate(latency_s=latency_s, output_tokens=4, name=name)
        self.replicas = replicas
        self.max_queue = max_queue
        self.in_flight = 0
        self.shed = 0
        self.events: list[ScaleEvent] = [ScaleEvent(0.0, name, "scale_up", 0, replicas, "init")]
        self.limiter = anyio.CapacityLimiter(replicas)

    def snapshot(self) -> PoolSnapshot:
        busy = min(self.in_flight, self.replicas)
        return PoolSnapshot(
            pool=self.name,
            version=self.version,
            t_s=current_clock().current_time(),
            warm=self.replicas,
            in_flight=busy,
            queued=self.in_flight - busy,
            rejected=self.shed,
        )

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        if self.in_flight - self.replicas >= self.max_queue:
            self.shed += 1
            raise RateLimited(f"{self.name}: queue full")
        self.in_flight += 1
        try:
            async with self.limiter:
                return await self.inner.infer(request)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        pass


def tenant(name: str = "chat", rate: float = 2.0, **kw: Any) -> Tenant:
    return Tenant(name=name, plan=kw.pop("plan", ONE), arrivals=PoissonArrivals(rate=rate), **kw)


def test_conservation_with_shedding_and_failures(vrun: Callable[..., Any]) -> None:
    pool = FakePool("gpu", latency_s=1.0, replicas=2, max_queue=3)
    flaky = FaultInjector(pool, seed=3, error_rate=0.2)
    tenants = [tenant("chat", 3.0, e2e_s=5.0), tenant("batch", 1.0, slo="batch")]
    report = vrun(partial(run_fleet, tenants, flaky, duration_s=60.0, seed=1, pools=[pool]))
    assert report.arrivals > 150
    assert report.rejected > 0
    assert report.failed > 0
    assert report.completed > 0
    assert report.arrivals == report.completed + report.failed + report.rejected
    assert report.lost == 0
    for entry in report.tenants.values():
        assert entry.arrivals == entry.completed + entry.failed + entry.rejected
    assert sum(s.arrivals for s in report.samples) == report.arrivals
    assert report.pools["gpu"].rejected == pool.shed > 0


def test_open_loop_arrivals_do_not_wait_for_a_slow_substrate(vrun: Callable[..., Any]) -> None:
    slow = FakePool("slow", latency_s=50.0, replicas=5, max_queue=10_000)
    patient = ONE.model_copy(update={"defaults": StepDefaults(timeout_s=1e6)})
    chat = tenant(rate=2.0, plan=patient)
    report = vrun(partial(run_fleet, [chat], slow, duration_s=30.0, seed=2))
    # Nothing finishes within the arrival window, yet arrivals keep coming at their rate.
    during = [s for s in report.samples if s.t_s <= 30.0]
    assert sum(s.completed for s in during) == 0
    assert 35 < sum(s.arrivals for s in during) < 90
    in_flight = [s.in_flight for s in during]
    assert in_flight == sorted(in_flight)
    assert in_flight[-1] == sum(s.arrivals for s in during)
    queued = [s.pools["slow"]["queued"] for s in during]
    assert queued[-1] > queued[0]
    assert report.completed == report.arrivals  # the drain lets every run finish


def test_drain_timeout_cancels_and_counts_as_failed(vrun: Callable[..., Any]) -> None:
    slow = FixedLatencySubstrate(latency_s=100.0)
    report = vrun(
        partial(run_fleet, [tenant(rate=1.0)], slow, duration_s=20.0, seed=2, drain_timeout_s=5.0)
    )
    assert report.arrivals > 5
    assert report.failed == report.arrivals
    assert report.lost == 0


def test_requests_carry_tenant_priority_and_slo(vrun: Callable[..., Any]) -> None:
    seen: list[tuple[str | None, int, str]] = []

    def answer(request: InferenceRequest) -> str:
        seen.append((request.slo, request.priority, request.run_id or ""))
        return "ok"

    sub = FunctionSubstrate(answer)
    tenants = [tenant("chat", 1.0, priority=10), tenant("batch", 1.0, slo="batch", priority=-1)]
    vrun(partial(run_fleet, tenants, sub, duration_s=20.0, seed=4))
    by_tenant = {run_id.split("-")[0]: (slo, prio) for slo, prio, run_id in seen}
    assert by_tenant == {"chat": ("interactive", 10), "batch": ("batch", -1)}


def test_slo_attainment_follows_the_targets(vrun: Callable[..., Any]) -> None:
    sub = FixedLatencySubstrate(latency_s=1.0, ttft_s=0.2)  # two steps: 2 s per run
    tenants = [
        tenant("loose", 2.0, e2e_s=3.0, ttft_s=0.5),
        tenant("tight", 2.0, e2e_s=1.5),
        tenant("ttft", 2.0, ttft_s=0.1),
    ]
    report = vrun(partial(run_fleet, tenants, sub, duration_s=20.0, seed=5))
    assert report.tenants["loose"].slo_attainment == 1.0
    assert report.tenants["tight"].slo_attainment == 0.0
    assert report.tenants["ttft"].slo_attainment == 0.0
    assert report.tenants["loose"].to_dict()["e2e_p50_s"] == pytest.approx(2.0)


def test_background_runs_alongside_and_is_cancelled_after_the_drain(
    vrun: Callable[..., Any],
) -> None:
    ticks: list[float] = []
    stopped: list[str] = []
    rollout = [RolloutEvent(5.0, "start", "canary 10%", {"v1": 0.9, "v2": 0.1})]

    async def controller() -> None:
        try:
            while True:
                ticks.append(current_clock().current_time())
                await anyio.sleep(1.0)
        finally:
            stopped.append("controller")

    @asynccontextmanager
    async def rollout_cm() -> AsyncIterator[None]:
        stopped.append("entered")
        yield
        stopped.append("exited")

    class Controller:
        def __init__(self) -> None:
            self.events = [ScaleEvent(3.0, "gpu", "scale_up", 2, 4, "queue", "queue")]

    pool = FakePool("gpu", latency_s=2.0, replicas=2, max_queue=100)
    report = vrun(
        partial(
            run_fleet,
            [tenant(rate=1.0)],
            Router({"gpu": pool}),
            duration_s=10.0,
            seed=6,
            background=[controller, rollout_cm()],
            events=[Controller(), rollout],
        )
    )
    assert ticks[0] == 0.0
    assert len(ticks) >= 10
    assert stopped == ["entered", "controller", "exited"]
    assert [e.reason for e in report.scale_events] == [
        "init",
        "queue",
    ]  # the pool's and the controller's
    assert report.rollout_events == rollout
    assert report.pools["gpu"].calls == 2 * report.completed  # found through the router


def test_report_json_shape_and_determinism(vrun: Callable[..., Any]) -> None:
    def once() -> dict[str, Any]:
        pool = FakePool("gpu", latency_s=0.5, replicas=2, max_queue=50)
        spike = Tenant(
            name="spiky",
            plan=ONE,
            arrivals=StepArrivals(base_rate=1.0, peak_rate=8.0, at_s=10.0),
            e2e_s=4.0,
        )
        report = vrun(partial(run_fleet, [spike], pool, duration_s=20.0, seed=9, sample_s=2.0))
        return json.loads(json.dumps(report.to_dict()))

    data = once()
    for key in (
        "arrivals",
        "completed",
        "failed",
        "rejected",
        "lost",
        "slo_attainment",
        "e2e_p95_s",
        "ttft_p99_s",
        "cost_usd",
        "energy_j",
        "tenants",
        "pools",
        "scale_events",
        "rollout_events",
        "timeline",
    ):
        assert key in data
    assert data["lost"] == 0
    assert set(data["tenants"]["spiky"]) >= {
        "e2e_p50_s",
        "e2e_p99_s",
        "ttft_p95_s",
        "slo_attainment",
        "rejected",
        "cost_usd",
    }
    assert set(data["pools"]["gpu"]) >= {"ttft_p50_s", "e2e_p99_s", "replica_s", "cold_starts"}
    end_s = data["timeline"][-1]["t_s"]
    assert end_s > 20.0  # overloaded in the spike: the drain goes on after the arrivals
    assert data["pools"]["gpu"]["replica_s"] == pytest.approx(2 * end_s)
    assert len(data["timeline"]) >= 10
    first, last = data["timeline"][0], data["timeline"][4]
    assert set(first["pools"]["gpu"]) == {"replicas", "warm", "starting", "queued", "in_flight"}
    assert last["arrivals"] < data["timeline"][7]["arrivals"]  # the spike at 10 s
    again = once()
    for volatile in ("wall_s",):
        data.pop(volatile), again.pop(volatile)
    assert data == again


def test_bad_arguments_fail_fast(vrun: Callable[..., Any]) -> None:
    sub = FixedLatencySubstrate()
    with pytest.raises(ValueError, match="distinct"):
        vrun(partial(run_fleet, [tenant(), tenant()], sub, duration_s=1.0))
    with pytest.raises(ValueError, match="distinct"):
        vrun(partial(run_fleet, [], sub, duration_s=1.0))
    with pytest.raises(ValueError, match="> 0"):
        vrun(partial(run_fleet, [tenant()], sub, duration_s=0.0))
