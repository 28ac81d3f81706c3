"""run_fleet on real `Pool`s behind a `Router`, with a toy scaler alongside."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import anyio

from agentrt import Plan, RetryPolicy, Step, StepDefaults
from agentrt.testing import FixedLatencySubstrate
from substrates.fleet.arrivals import StepArrivals
from substrates.fleet.fleetrun import run_fleet
from substrates.fleet.pool import Pool
from substrates.fleet.router import Router
from substrates.fleet.tenants import Tenant

PLAN = Plan(
    name="p",
    steps=[Step(id="a"), Step(id="b", depends_on=["a"])],
    defaults=StepDefaults(retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.5, jitter_s=0.0)),
)


def run_spike(vrun: Callable[..., Any], seed: int) -> dict[str, Any]:
    def pool(name: str, latency_s: float) -> Pool:
        return Pool(
            lambda i: FixedLatencySubstrate(latency_s=latency_s, name=f"{name}-{i}"),
            name=name,
            initial=1,
            max_replicas=6,
            cold_start_s=20.0,
            slots_per_replica=4,
            max_queue=30,
        )

    fast, slow = pool("fast", 0.5), pool("slow", 1.5)

    async def scaler() -> None:
        while True:
            await anyio.sleep(5.0)
            for p in (fast, slow):
                snap = p.snapshot()
                if snap.queued > 2:
                    p.scale_to(snap.replicas + 1, reason=f"queue {snap.queued}", policy="toy")

    tenant = Tenant(
        name="chat",
        plan=PLAN,
        arrivals=StepArrivals(base_rate=0.5, peak_rate=8.0, at_s=30.0, until_s=90.0),
        e2e_s=10.0,
    )
    report = vrun(
        partial(
            run_fleet,
            [tenant],
            Router({"fast": fast, "slow": slow}, policy="least-time"),
            duration_s=150.0,
            seed=seed,
            sample_s=5.0,
            background=[scaler],
        )
    )
    data: dict[str, Any] = report.to_dict()
    data.pop("wall_s")
    return data


def test_spike_on_pools_conserves_and_reports_pools(vrun: Callable[..., Any]) -> None:
    data = run_spike(vrun, seed=11)
    assert data["lost"] == 0
    assert data["arrivals"] == data["completed"] + data["failed"] + data["rejected"]
    assert data["arrivals"] > 300
    pools = data["pools"]
    assert set(pools) == {"fast", "slow"}
    assert sum(p["calls"] for p in pools.values()) >= 2 * data["completed"]
    for p in pools.values():
        assert p["replica_s"] > 0
    assert sum(p["cold_starts"] for p in pools.values()) > 0
    kinds = {e["kind"] for e in data["scale_events"]}
    assert {"scale_up", "ready"} <= kinds
    replicas = [s["pools"]["fast"]["replicas"] for s in data["timeline"]]
    assert max(replicas) > replicas[0]  # the spike made the scaler add replicas
    ready = [e["t_s"] for e in data["scale_events"] if e["kind"] == "ready"]
    up = [e["t_s"] for e in data["scale_events"] if e["kind"] == "scale_up"]
    assert min(ready) >= min(up) + 20.0  # capacity lags the decision by the cold start


def test_spike_on_pools_is_deterministic(vrun: Callable[..., Any]) -> None:
    assert run_spike(vrun, seed=12) == run_spike(vrun, seed=12)


def test_slow_canary_is_rolled_back_alongside_an_autoscaler(vrun: Callable[..., Any]) -> None:
    from substrates.fleet.autoscale import QueueLengthSpec, ScalingController
    from substrates.fleet.rollout import Canary, CanarySlo

    def pool(version: str, latency_s: float) -> Pool:
        return Pool(
            lambda i: FixedLatencySubstrate(latency_s=latency_s, name=f"{version}-{i}"),
            name=version,
            version=version,
            initial=2,
            max_replicas=4,
            cold_start_s=10.0,
            slots_per_replica=8,
        )

    stable, slower = pool("v1", 0.5), pool("v2", 3.0)
    router = Router({"v1": stable, "v2": slower}, policy="weighted", weights={"v1": 1, "v2": 0})
    canary = Canary(
        router, stable, slower, percent=20, slo=CanarySlo(p95_e2e_s=1.5), window_s=30,
        min_requests=10,
    )  # fmt: skip
    scaler = ScalingController(stable, QueueLengthSpec(target=2, interval_s=5.0))
    tenant = Tenant(name="chat", plan=PLAN, arrivals=StepArrivals(base_rate=3, peak_rate=3, at_s=0))
    report = vrun(
        partial(
            run_fleet,
            [tenant],
            router,
            duration_s=120.0,
            seed=5,
            background=[partial(canary.run, 120.0), scaler.running()],
            events=[canary, scaler],
        )
    )
    assert report.lost == 0
    assert [e.kind for e in report.rollout_events] == ["start", "rollback"]
    rollback = report.rollout_events[-1].t_s - report.start_s
    assert report.pools["v2"].version == "v2"
    assert report.pools["v2"].calls > 0
    # After the rollback no new agent runs reach the canary: its in-flight count falls to 0.
    late = [s.pools["v2"]["in_flight"] for s in report.samples if s.t_s > rollback + 10]
    assert late
    assert max(late) == 0
