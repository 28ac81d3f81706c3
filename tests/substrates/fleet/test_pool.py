from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from agentrt import ConfigError, InferenceRequest, RateLimited, SubstrateUnavailable, current_clock
from agentrt.errors import RetryableError
from agentrt.testing import FixedLatencySubstrate
from substrates.emulated.coldstart import cold_start_s
from substrates.emulated.engine import build_engine
from substrates.fleet.ops import ScalablePool
from substrates.fleet.pool import Pool

Vrun = Callable[..., Any]


def req() -> InferenceRequest:
    return InferenceRequest.from_prompt("hi", max_output_tokens=4)


def fixed_pool(latency_s: float = 1.0, **options: Any) -> Pool:
    options.setdefault("cold_start_s", 30.0)
    return Pool(lambda i: FixedLatencySubstrate(latency_s=latency_s), name="p", **options)


def test_pool_is_a_streaming_scalable_pool() -> None:
    pool = fixed_pool()
    assert isinstance(pool, ScalablePool)
    assert callable(pool.stream)
    assert callable(pool.infer)
    assert callable(pool.aclose)


def test_states_cold_warm_standby_drain_stop(vrun: Vrun) -> None:
    pool = fixed_pool(initial=1, standby=1, max_replicas=3, warm_start_s=5.0)

    async def main() -> list[tuple[float, int, int, int, int]]:
        seen = []

        def look() -> None:
            s = pool.snapshot()
            seen.append((s.t_s, s.warm, s.starting, s.standby, s.draining))

        look()
        pool.scale_to(3, reason="up")  # the standby warm-starts, one more starts cold
        look()
        await anyio.sleep(5.0)
        look()
        await anyio.sleep(25.0)
        look()
        pool.scale_to(1, reason="down")
        look()
        return seen

    seen = vrun(main)
    assert seen[0] == (0.0, 1, 0, 1, 0)
    assert seen[1] == (0.0, 1, 2, 0, 0)
    assert seen[2] == (5.0, 2, 1, 0, 0)  # warm start: faster than cold
    assert seen[3] == (30.0, 3, 0, 0, 0)
    assert seen[4] == (30.0, 1, 0, 0, 0)  # idle replicas drain at once
    kinds = [e.kind for e in pool.events]
    assert kinds == ["scale_up", "ready", "ready", "scale_down", "stopped", "stopped"]
    assert pool.snapshot().cold_starts == 1
    assert [e.t_s for e in pool.events if e.kind == "ready"] == [5.0, 30.0]


def test_scale_down_cancels_starting_first_then_drains_least_loaded(vrun: Vrun) -> None:
    pool = fixed_pool(latency_s=10.0, initial=2, max_replicas=4)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(3):  # replica 0 gets 2, replica 1 gets 1 (least loaded)
                tg.start_soon(pool.infer, req())
            await anyio.sleep(1.0)
            pool.scale_to(4, reason="up")
            assert pool.snapshot().starting == 2
            pool.scale_to(3, reason="down")  # cancels a starting replica
            s = pool.snapshot()
            assert (s.warm, s.starting) == (2, 1)
            pool.scale_to(1, reason="down")  # the other starting one, then drain replica 1
            s = pool.snapshot()
            assert (s.warm, s.starting, s.draining) == (1, 0, 1)
            states = {r.index: r.state for r in pool.replicas.all()}
            assert states[1] == "draining"
            assert states[0] == "warm"
        s = pool.snapshot()
        assert (s.warm, s.draining, s.served) == (1, 0, 3)  # in-flight finished, none dropped
        assert s.cold_starts == 2

    vrun(main)


def test_least_loaded_dispatch(vrun: Vrun) -> None:
    pool = fixed_pool(latency_s=10.0, initial=3, max_replicas=3)

    async def main() -> list[int]:
        replicas: list[int] = []

        async def one() -> None:
            result = await pool.infer(req())
            replicas.append(int(result.attributes["agentrt.pool.replica"]))

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
                await anyio.sleep(0.1)
        return replicas

    replicas = vrun(main)
    assert sorted(replicas) == [0, 0, 1, 1, 2, 2]


def test_request_waits_for_a_cold_start_and_carries_the_wait(vrun: Vrun) -> None:
    pool = fixed_pool(latency_s=1.0, initial=0, cold_start_s=30.0, version="v2")

    async def main() -> tuple[float, Any]:
        pool.scale_to(1, reason="scale from zero")
        result = await pool.infer(req())
        return current_clock().current_time(), result

    t, result = vrun(main)
    assert t == pytest.approx(31.0)
    assert result.timing.ttft_s >= 30.0
    assert result.timing.queue_s >= 30.0
    assert result.attributes["agentrt.pool"] == "p"
    assert result.attributes["agentrt.pool.version"] == "v2"
    (done,) = pool.completions_since(0.0)
    assert done.e2e_s == pytest.approx(31.0)
    assert done.ttft_s >= 30.0


def test_wait_is_bounded_then_rejected(vrun: Vrun) -> None:
    pool = fixed_pool(initial=0, wait_timeout_s=20.0)

    async def main() -> float:
        with pytest.raises(RateLimited, match="wait_timeout_s=20"):
            await pool.infer(req())
        return current_clock().current_time()

    assert vrun(main) == pytest.approx(20.0)
    assert pool.snapshot().rejected == 1
    (done,) = pool.completions_since(0.0)
    assert done.rejected
    assert not done.ok


def test_reject_when_cold_refuses_at_once_with_retry_after(vrun: Vrun) -> None:
    pool = fixed_pool(initial=0, when_cold="reject", cold_start_s=30.0)

    async def main() -> None:
        pool.scale_to(1, reason="up")
        await anyio.sleep(10.0)
        with pytest.raises(RateLimited) as caught:
            await pool.infer(req())
        assert caught.value.retry_after_s == pytest.approx(20.0)
        assert current_clock().current_time() == pytest.approx(10.0)

    vrun(main)


def test_max_queue_sheds_and_counts_rejected(vrun: Vrun) -> None:
    pool = fixed_pool(latency_s=5.0, initial=1, slots_per_replica=2, max_queue=3)
    outcomes: list[str] = []

    async def main() -> None:
        async def one() -> None:
            try:
                await pool.infer(req())
                outcomes.append("ok")
            except RateLimited as exc:
                outcomes.append("shed" if exc.retry_after_s is not None else "no retry_after")

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one)
            await anyio.sleep(0.1)
            assert pool.snapshot().queued == 3
            assert pool.snapshot().in_flight == 2

    vrun(main)
    assert outcomes.count("ok") == 5
    assert outcomes.count("shed") == 3
    assert pool.snapshot().rejected == 3


def test_conservation_under_random_scaling(vrun: Vrun) -> None:
    rng = random.Random(7)
    pool = fixed_pool(
        latency_s=2.0, initial=1, max_replicas=4, standby=1, max_queue=6, wait_timeout_s=15.0
    )
    failures: list[str] = []

    async def one() -> None:
        try:
            await pool.infer(req())
        except RetryableError as exc:
            failures.append(type(exc).__name__)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for step in range(300):
                tg.start_soon(one)
                if step % 20 == 0:
                    pool.scale_to(rng.randint(0, 4), reason="random")
                await anyio.sleep(rng.expovariate(2.0))
            pool.scale_to(2, reason="end")

    vrun(main)
    s = pool.snapshot()
    assert pool.arrivals == 300
    assert s.served + pool.failed + s.rejected == 300  # nothing lost
    assert s.rejected == len(failures)
    assert pool.cancelled == 0
    assert s.in_flight == 0
    assert s.queued == 0
    assert 0 <= s.warm <= 4
    assert s.warm + s.starting == pool.desired
    served = [c for c in pool.completions_since(0.0) if c.ok]
    assert len(served) == s.served


def test_bounds_clamp_and_unchanged_is_none(vrun: Vrun) -> None:
    pool = fixed_pool(initial=1, min_replicas=1, max_replicas=3)

    async def main() -> None:
        assert pool.scale_to(1, reason="same") is None
        up = pool.scale_to(10, reason="too many")
        assert up is not None
        assert (up.before, up.after) == (1, 3)
        down = pool.scale_to(0, reason="too few")
        assert down is not None
        assert down.after == 1

    vrun(main)


def test_bad_options_are_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="initial=5"):
        fixed_pool(initial=5, max_replicas=2)
    with pytest.raises(ConfigError, match="when_cold"):
        fixed_pool(when_cold="maybe")
    with pytest.raises(ConfigError, match="cold_start_s="):
        Pool(lambda i: FixedLatencySubstrate(latency_s=1.0), initial=1)


def test_drain_finishes_in_flight_and_refuses_new(vrun: Vrun) -> None:
    pool = fixed_pool(latency_s=10.0, initial=2)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.infer, req())
            tg.start_soon(pool.infer, req())
            await anyio.sleep(1.0)
            pool.drain()
            assert pool.snapshot().draining == 2
            with pytest.raises(SubstrateUnavailable, match="drained"):
                await pool.infer(req())
        s = pool.snapshot()
        assert (s.served, s.rejected, s.warm, s.draining) == (2, 1, 0, 0)
        assert pool.scale_to(2, reason="after drain") is None

    vrun(main)


def test_replica_seconds_count_starting_and_warm_not_standby(vrun: Vrun) -> None:
    pool = fixed_pool(initial=1, standby=1, cold_start_s=30.0)

    async def main() -> None:
        pool.snapshot()  # accounting starts at the first use
        await anyio.sleep(10.0)
        pool.scale_to(2, reason="up")  # the standby starts; occupies hardware from now
        await anyio.sleep(10.0)
        pool.scale_to(3, reason="up")  # a cold one, starting for 30 s
        await anyio.sleep(40.0)
        pool.snapshot()  # accounting runs up to the last look

    vrun(main)
    assert pool.replica_seconds == pytest.approx(10 * 1 + 10 * 2 + 40 * 3)
    assert pool.standby_seconds == pytest.approx(10.0)


def test_streams_through_the_pool(vrun: Vrun) -> None:
    pool = fixed_pool(latency_s=1.0, initial=1)

    async def main() -> Any:
        async with pool.stream(req()) as chunks:
            async for _ in chunks:
                pass
            return chunks.result()

    result = vrun(main)
    assert result.attributes["agentrt.pool.replica"] == 0
    assert pool.snapshot().served == 1


def run_engine_pool(seed: int) -> tuple[list[tuple[float, float]], float, int]:
    from agentrt import VirtualClock, run

    def make(index: int) -> Any:
        return build_engine("h100", model="llama-3.1-8b", seed=seed + index, jitter=0.1)

    pool = Pool(make, name="h100", initial=1, max_replicas=3)

    async def main() -> None:
        rng = random.Random(seed)
        async with anyio.create_task_group() as tg:
            for step in range(40):
                tg.start_soon(pool.infer, req())
                if step == 10:
                    pool.scale_to(3, reason="spike")
                await anyio.sleep(rng.expovariate(1.0))

    run(main, clock=VirtualClock())
    done = [(c.t_s, c.e2e_s) for c in pool.completions_since(0.0)]
    return done, pool.replica_seconds, pool.snapshot().cold_starts


def test_engine_pool_is_deterministic_in_virtual_time_and_uses_the_derived_cold_start() -> None:
    first, second = run_engine_pool(3), run_engine_pool(3)
    assert first == second
    done, _, cold_starts = first
    assert len(done) == 40
    assert cold_starts == 2
    engine = build_engine("h100", model="llama-3.1-8b")
    derived = cold_start_s(engine.deployment).total_s
    pool = Pool(lambda i: build_engine("h100", model="llama-3.1-8b"), initial=1, max_replicas=2)

    async def main() -> float | None:
        pool.scale_to(2, reason="up")
        return pool.replicas.next_ready()

    from agentrt import VirtualClock, run

    assert run(main, clock=VirtualClock()) == pytest.approx(derived)


def test_slots_come_from_the_first_replica_built(vrun: Vrun) -> None:
    pool = Pool(lambda i: build_engine("h100", model="llama-3.1-8b", max_batch=16), initial=0)

    async def main() -> int:
        pool.scale_to(1, reason="from zero")
        return pool.snapshot().slots_per_replica

    assert vrun(main) == 16


def test_a_cancelled_waiter_is_counted_and_leaves_no_trace(vrun: Vrun) -> None:
    pool = fixed_pool(initial=0)

    async def main() -> None:
        with anyio.move_on_after(5.0):
            await pool.infer(req())
        s = pool.snapshot()
        assert (pool.arrivals, pool.cancelled, s.queued, s.rejected) == (1, 1, 0, 0)

    vrun(main)


def test_a_router_fails_over_from_a_cold_pool(vrun: Vrun) -> None:
    from substrates.fleet.router import Router

    cold = fixed_pool(initial=0, when_cold="reject")
    warm = Pool(lambda i: FixedLatencySubstrate(latency_s=1.0), name="warm", cold_start_s=1.0)
    router = Router({"cold": cold, "warm": warm}, policy="first")

    async def main() -> Any:
        return await router.infer(req())

    result = vrun(main)
    assert result.attributes["agentrt.pool"] == "warm"
    assert result.attributes["agentrt.route.failovers"] == 1
    assert cold.snapshot().rejected == 1
