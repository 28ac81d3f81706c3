from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from agentrt import VirtualClock, current_clock, run
from agentrt.errors import ConfigError
from agentrt.substrate import InferenceRequest
from agentrt.testing import FixedLatencySubstrate
from substrates.emulated.engine import build_engine
from substrates.fleet.ops import Completion
from substrates.fleet.pool import Pool
from substrates.fleet.rollout import BlueGreen, Canary, CanarySlo, cohort_stats
from substrates.fleet.router import Router

Sent = list[tuple[float, float, str]]  # (sent at, finished at, route)


def pool(name: str, latency_s: float, *, version: str = "v1", **kw: Any) -> Pool:
    options: dict[str, Any] = {"initial": 2, "max_replicas": 4, "slots_per_replica": 8, **kw}
    return Pool(
        lambda i: FixedLatencySubstrate(latency_s=latency_s, name=name),
        name=name, version=version, cold_start_s=10.0, **options,
    )  # fmt: skip


def weighted(*pools: Pool, seed: int = 1) -> Router:
    weights = {p.name: 100.0 if i == 0 else 0.0 for i, p in enumerate(pools)}
    return Router({p.name: p for p in pools}, policy="weighted", weights=weights, seed=seed)


async def traffic(
    router: Router, *, rate: float, until: float, seed: int, sent: Sent, tokens: int = 4
) -> None:
    """Poisson arrivals through ``router``, open loop; every request must finish."""
    clock = current_clock()
    rng = random.Random(seed)

    async def one() -> None:
        t0 = clock.current_time()
        with anyio.fail_after(600):
            result = await router.infer(
                InferenceRequest.from_prompt("hi", max_output_tokens=tokens)
            )
        route = str(result.attributes["agentrt.route.substrate"])
        sent.append((t0, clock.current_time(), route))

    async with anyio.create_task_group() as tg:
        while (gap := rng.expovariate(rate)) + clock.current_time() < until:
            await clock.sleep(gap)
            tg.start_soon(one)


def canary_run(
    seed: int, canary_latency_s: float, **options: Any
) -> tuple[Canary, Sent, Pool, Pool]:
    stable, canary = pool("v1", 1.0), pool("v2", canary_latency_s, version="v2")
    router = weighted(stable, canary, seed=seed)
    settings: dict[str, Any] = {"window_s": 30, "min_requests": 5, "interval_s": 5, **options}
    rollout = Canary(router, stable, canary, percent=20, slo=CanarySlo(p95_e2e_s=3.0), **settings)
    sent: Sent = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(rollout.run, 300.0)
            await traffic(router, rate=2.0, until=300.0, seed=seed, sent=sent)

    run(main, clock=VirtualClock())
    return rollout, sent, stable, canary


def test_a_slower_canary_is_rolled_back() -> None:
    rollout, sent, stable, canary = canary_run(5, canary_latency_s=6.0)
    assert rollout.state == "rolled_back"
    kinds = [e.kind for e in rollout.events]
    assert kinds == ["start", "rollback"]
    start, back = rollout.events
    assert start.weights == {"v1": 80.0, "v2": 20.0}
    assert back.weights == {"v1": 100.0, "v2": 0.0}
    assert "p95(e2e) 6 s > 3 s" in back.detail
    assert back.t_s >= 6.0  # the canary needed requests finished before a verdict
    after = [route for t0, _, route in sent if t0 > back.t_s]
    assert after
    assert set(after) == {"v1"}  # no new request reaches the canary
    assert any(route == "v2" for _, _, route in sent)
    assert stable.served + canary.served == len(sent)  # every request finished: none lost
    assert stable.rejected == canary.rejected == 0
    assert canary.draining


def test_a_healthy_canary_steps_up_and_is_promoted() -> None:
    rollout, sent, stable, canary = canary_run(6, canary_latency_s=1.0, steps=(50.0,), promote=True)
    assert [e.kind for e in rollout.events] == ["start", "shift", "promote"]
    start, shift, promote = rollout.events
    assert shift.weights == {"v1": 50.0, "v2": 50.0}
    assert promote.weights == {"v1": 0.0, "v2": 100.0}
    assert shift.t_s - start.t_s >= 30
    assert promote.t_s - shift.t_s >= 30  # a clean window at each share
    assert {route for t0, _, route in sent if t0 > promote.t_s} == {"v2"}
    assert stable.draining
    assert stable.served + canary.served == len(sent)


def test_a_canary_without_enough_requests_decides_nothing() -> None:
    rollout, sent, _, canary = canary_run(7, canary_latency_s=6.0, min_requests=1000)
    assert rollout.state == "running"
    assert [e.kind for e in rollout.events] == ["start"]
    assert not canary.draining
    assert any(route == "v2" for _, _, route in sent)


def test_the_same_seed_gives_the_same_rollout() -> None:
    first, sent1, _, _ = canary_run(8, canary_latency_s=6.0)
    second, sent2, _, _ = canary_run(8, canary_latency_s=6.0)
    assert first.events == second.events
    assert sent1 == sent2


def test_cohort_stats_count_errors_and_percentiles() -> None:
    class Done:
        name, version = "p", "v9"

        def completions_since(self, t_s: float) -> list[Completion]:
            ok = [Completion(10.0 + i, 0.1 * i, 1.0 * i) for i in range(1, 11)]
            return [*ok, Completion(20.0, 0, 0, ok=False), Completion(21.0, 0, 0, rejected=True)]

    stats = cohort_stats(Done(), 0.0)  # type: ignore[arg-type]
    assert (stats.requests, stats.errors, stats.version) == (12, 2, "v9")
    assert stats.p50_e2e_s == pytest.approx(5.5)
    assert stats.p99_e2e_s is not None
    assert stats.p95_e2e_s is not None
    assert stats.p50_e2e_s < stats.p95_e2e_s < stats.p99_e2e_s <= 10.0
    assert stats.breaches(CanarySlo(p99_e2e_s=20, max_error_rate=0.1)) == ["error rate 0.167 > 0.1"]
    assert stats.breaches(CanarySlo(p95_ttft_s=2.0)) == ["error rate 0.167 > 0.05"]


def test_rollouts_check_their_router() -> None:
    a, b = pool("a", 1.0), pool("b", 1.0)
    first = Router({"a": a, "b": b}, policy="first")
    with pytest.raises(ConfigError, match="policy='weighted'"):
        Canary(first, a, b, percent=10, slo=CanarySlo())
    with pytest.raises(ConfigError, match="not routes"):
        BlueGreen(weighted(a), a, b, switch_at_s=10)
    with pytest.raises(ConfigError, match="rise"):
        Canary(weighted(a, b), a, b, percent=50, steps=(10,), slo=CanarySlo())
    with pytest.raises(ConfigError, match="unknown route"):
        weighted(a, b).set_weights({"c": 1.0})


def test_blue_green_switches_then_drains_without_dropping_in_flight(
    vrun: Callable[..., Any],
) -> None:
    blue = pool("blue", 20.0)
    green = pool("green", 20.0, version="v2", initial=0, min_replicas=0)
    router = weighted(blue, green)
    rollout = BlueGreen(router, blue, green, switch_at_s=60.0)
    sent: Sent = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(rollout.run)
            await traffic(router, rate=1.0, until=150.0, seed=2, sent=sent)

    vrun(main)
    assert [e.kind for e in rollout.events] == ["start", "switch", "drained"]
    start, switch, drained = rollout.events
    assert start.weights == {"blue": 100.0, "green": 0.0}
    assert switch.weights == {"blue": 0.0, "green": 100.0}
    assert switch.t_s >= 60.0 + 10.0  # green's cold start came first
    assert green.snapshot().cold_starts >= 1
    on_blue = [(t0, t1) for t0, t1, route in sent if route == "blue"]
    assert all(t0 <= switch.t_s for t0, _ in on_blue)
    assert max(t1 for _, t1 in on_blue) > switch.t_s  # in flight at the switch, and finished
    assert drained.t_s >= max(t1 for _, t1 in on_blue)
    assert "still in flight" not in drained.detail
    assert blue.served == len(on_blue)
    assert blue.served + green.served == len(sent)  # nothing dropped
    assert blue.rejected == green.rejected == 0


def test_a_canary_on_a_slower_stack_of_emulated_engines_is_rolled_back(
    vrun: Callable[..., Any],
) -> None:
    def wse3(stack: str, version: str) -> Pool:
        return Pool(
            lambda i: build_engine("wse3", model="llama-3.1-8b", stack=stack, seed=10 + i),
            name=version, version=version, initial=1, max_replicas=1, cold_start_s=60.0,
        )  # fmt: skip

    stable, canary = wse3("cs-current", "current"), wse3("cs-2024-08", "older")
    router = weighted(stable, canary, seed=4)
    slo = CanarySlo(p95_e2e_s=0.5)
    rollout = Canary(router, stable, canary, percent=10, slo=slo, window_s=60, min_requests=10)
    sent: Sent = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(rollout.run, 600.0)
            await traffic(router, rate=2.0, until=600.0, seed=4, sent=sent, tokens=1000)

    vrun(main)
    assert [e.kind for e in rollout.events] == ["start", "rollback"]
    fast, slow = cohort_stats(stable, 0.0), cohort_stats(canary, 0.0)
    assert fast.p95_e2e_s is not None
    assert slow.p95_e2e_s is not None
    assert fast.p95_e2e_s < 0.5 < slow.p95_e2e_s  # the stack alone makes the difference
    assert fast.requests + slow.requests == len(sent)
