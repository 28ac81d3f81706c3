from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentrt import (
    Agent,
    BadResponse,
    ConfigError,
    InferenceRequest,
    InferenceResult,
    Plan,
    Step,
    SubstrateUnavailable,
    current_clock,
)
from agentrt.registry import Registry
from agentrt.testing import FixedLatencySubstrate, FunctionSubstrate
from substrates.fleet.breaker import CircuitBreaker
from substrates.fleet.faults import FaultInjector
from substrates.fleet.router import Router
from substrates.fleet.spec import route


def req(**fields: Any) -> InferenceRequest:
    return InferenceRequest.from_prompt("hi", max_output_tokens=4, **fields)


def fixed(name: str, latency_s: float, **kw: Any) -> FixedLatencySubstrate:
    return FixedLatencySubstrate(latency_s=latency_s, name=name, **kw)


def test_slo_policy_routes_by_slo_then_kind_then_default(vrun: Callable[..., Any]) -> None:
    router = Router(
        {"h100": fixed("h100", 1.0), "wse3": fixed("wse3", 0.1)},
        policy="slo",
        by_slo={"interactive": "wse3"},
        by_kind={"answer": "wse3"},
        default="h100",
    )

    async def main() -> list[tuple[object, object]]:
        out = []
        for r in (
            req(slo="interactive"),
            req(step_kind="answer"),
            req(step_kind="think", slo="batch"),
            req(slo="batch", substrate_hint="wse3"),
        ):
            result = await router.infer(r)
            out.append((result.attributes["agentrt.route.substrate"], result.substrate))
            assert result.attributes["agentrt.route.failovers"] == 0
        return out

    assert vrun(main) == [("wse3", "wse3"), ("wse3", "wse3"), ("h100", "h100"), ("wse3", "wse3")]
    reasons = [router.choose(r)[1] for r in (req(slo="interactive"), req(substrate_hint="h100"))]
    assert reasons == ["slo: interactive", "hint: the step asks for h100"]


def test_plan_steps_hints_reach_the_router(vrun: Callable[..., Any]) -> None:
    wse3, h100 = fixed("wse3", 0.1), fixed("h100", 1.0)
    router = Router({"h100": h100, "wse3": wse3}, policy="slo", by_slo={"interactive": "wse3"})
    plan = Plan(
        name="p",
        steps=[
            Step(id="a", slo="interactive"),
            Step(id="b", depends_on=["a"]),
            Step(id="c", depends_on=["b"], substrate="wse3"),
        ],
    )
    result = vrun(Agent(router).run, plan)
    assert [s.substrate for s in result.steps] == ["wse3", "h100", "wse3"]


def test_first_policy_uses_the_primary() -> None:
    router = Router({"a": fixed("a", 1), "b": fixed("b", 1)})
    assert router.choose(req()) == (["a", "b"], "first: primary")


def test_least_time_prefers_the_faster_then_spreads_by_depth(vrun: Callable[..., Any]) -> None:
    router = Router({"slow": fixed("slow", 1.0), "fast": fixed("fast", 0.25)}, policy="least-time")

    async def main() -> Counter[str]:
        picks: Counter[str] = Counter()
        # Unobserved routes estimate 0 and are tried first, in order: both get observed.
        for _ in range(2):
            picks[(await router.infer(req())).substrate] += 1
        assert router.latency_s == {"slow": 1.0, "fast": 0.25}
        assert router.choose(req())[0][0] == "fast"

        async def one() -> None:
            picks[(await router.infer(req())).substrate] += 1

        # Six at once: fast's (1 + depth) * 0.25 is below slow's 1.0 for depth 0..2; at depth 3
        # they tie (declared order wins: slow), and then slow's own depth makes it 2.0.
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
        return picks

    picks = vrun(main)
    assert picks["fast"] == 1 + 5
    assert picks["slow"] == 1 + 1


@dataclass
class _Stats:
    queued: int
    running: int


class _Engine(FixedLatencySubstrate):
    pass


def test_least_time_uses_statistics_when_the_substrate_has_them() -> None:
    a, b = fixed("a", 1.0), fixed("b", 1.0)
    stats = {"a": _Stats(queued=30, running=10), "b": _Stats(queued=0, running=50)}
    a.statistics = lambda: stats["a"]  # type: ignore[attr-defined]
    b.statistics = lambda: stats["b"]  # type: ignore[attr-defined]
    router = Router({"a": a, "b": b}, policy="least-time")
    router.latency_s.update(a=1.0, b=1.5)
    # a: (1 + 30/10) * 1.0 = 4.0; b: (1 + 0) * 1.5 = 1.5
    assert router.estimate_s("a") == pytest.approx(4.0)
    assert router.choose(req())[0][0] == "b"
    # Behind a fault injector, the engine's statistics are still found.
    wrapped = Router({"a": FaultInjector(a, seed=0), "b": b}, policy="least-time")
    wrapped.latency_s.update(a=1.0, b=1.5)
    assert wrapped.estimate_s("a") == pytest.approx(4.0)


def test_cost_policy_spends_the_budget_on_speed_then_goes_cheap(vrun: Callable[..., Any]) -> None:
    def priced(name: str, latency: float, cost: float) -> FunctionSubstrate:
        inner = fixed(name, latency)

        async def call(r: InferenceRequest) -> InferenceResult:
            result = await inner.infer(r)
            return result.model_copy(update={"cost_usd": cost})

        return FunctionSubstrate(call, name=name)

    router = Router(
        {"fast": priced("fast", 0.1, 1.0), "cheap": priced("cheap", 1.0, 0.01)},
        policy="cost",
        cost_budget_usd=3.0,
    )

    async def main() -> list[str]:
        return [(await router.infer(req())).substrate for _ in range(6)]

    picks = vrun(main)
    # Unobserved routes look free and instant, so each is tried once; then fast while its $1
    # fits what is left of $3 (spent 1.01 after two calls, 2.01 after three), then cheap.
    assert picks == ["fast", "cheap", "fast", "cheap", "cheap", "cheap"]
    assert router.choose(req()) == (["cheap", "fast"], "cost: fastest within $0.96 left")
    router.spent_usd = 3.0
    assert router.choose(req()) == (["cheap", "fast"], "cost: budget spent, cheapest")


def test_weighted_split_is_seeded_and_proportional() -> None:
    def picks(seed: int) -> Counter[str]:
        router = Router(
            {"main": fixed("main", 1), "canary": fixed("canary", 1)},
            policy="weighted",
            weights={"main": 0.9, "canary": 0.1},
            seed=seed,
        )
        return Counter(router.choose(req())[0][0] for _ in range(5000))

    assert picks(4) == picks(4)
    assert 400 < picks(4)["canary"] < 600


def test_failover_on_an_injected_outage(vrun: Callable[..., Any]) -> None:
    primary = FaultInjector(fixed("wse3", 0.1), seed=0, outages=[(0.0, 60.0)])
    router = Router({"wse3": primary, "h100": fixed("h100", 1.0)})

    async def main() -> InferenceResult:
        return await router.infer(req())

    result = vrun(main)
    assert result.substrate == "h100"
    assert result.attributes["agentrt.route.substrate"] == "h100"
    assert result.attributes["agentrt.route.failovers"] == 1
    assert router.failures["wse3"] == 1


def test_non_retryable_errors_do_not_fail_over(vrun: Callable[..., Any]) -> None:
    async def bad(r: InferenceRequest) -> InferenceResult:
        raise BadResponse("no")

    backup = fixed("b", 1.0)
    router = Router({"a": FunctionSubstrate(bad, name="a"), "b": backup})
    with pytest.raises(BadResponse):
        vrun(router.infer, req())
    assert backup.calls == 0
    assert router.breakers["a"].state == "closed"


def test_breaker_opens_half_opens_and_closes_on_the_run_clock(vrun: Callable[..., Any]) -> None:
    # The primary is down for [0, 25) s; calls come once a second.
    primary = FaultInjector(fixed("p", 0.0), seed=0, outages=[(0.0, 25.0)], origin_s=0.0)
    backup = fixed("b", 0.0)
    router = Router({"p": primary, "b": backup}, breaker_failures=3, breaker_cooldown_s=10.0)

    async def main() -> list[str]:
        served = []
        for _ in range(40):
            served.append((await router.infer(req())).substrate)
            await anyio.sleep(1.0)
        return served

    served = vrun(main)
    assert router.breakers["p"].transitions == [
        (2.0, "open"),  # third consecutive failure
        (12.0, "half-open"),  # cool-down over: one probe, still in the outage
        (12.0, "open"),
        (22.0, "half-open"),
        (22.0, "open"),
        (32.0, "half-open"),  # the outage ended at 25 s: the probe succeeds
        (32.0, "closed"),
    ]
    assert served[:32] == ["b"] * 32
    assert served[32:] == ["p"] * 8
    assert primary.injected["outage"] == 5  # 3 to open + 2 failed probes; no calls while open


def test_every_breaker_open_raises_unavailable_with_retry_after(vrun: Callable[..., Any]) -> None:
    down = FaultInjector(fixed("a", 0.0), seed=0, outages=[(0.0, 100.0)], origin_s=0.0)
    router = Router({"a": down}, breaker_failures=1, breaker_cooldown_s=10.0)

    async def main() -> float | None:
        with pytest.raises(SubstrateUnavailable):
            await router.infer(req())
        await anyio.sleep(4.0)
        with pytest.raises(SubstrateUnavailable, match="circuit is open") as info:
            await router.infer(req())
        return info.value.retry_after_s

    assert vrun(main) == pytest.approx(6.0)


def test_breaker_unit() -> None:
    b = CircuitBreaker(failures=2, cooldown_s=5)
    b.record_failure(0.0)
    assert b.state == "closed"
    b.record_success(1.0)
    b.record_failure(2.0)
    assert b.state == "closed"  # success reset the count
    b.record_failure(3.0)
    assert b.state == "open"
    assert not b.allow(7.9)
    assert b.allow(8.0)
    assert b.state == "half-open"
    assert not b.allow(8.0)  # one probe at a time
    b.release()
    assert b.allow(8.1)


def test_hedging_takes_the_faster_and_cancels_the_other(vrun: Callable[..., Any]) -> None:
    slow, fast = fixed("slow", 5.0), fixed("fast", 1.0)
    router = Router({"slow": slow, "fast": fast}, hedge_after_s=0.5)

    async def main() -> tuple[InferenceResult, float, int, int]:
        before = len(anyio.get_running_tasks())
        t0 = current_clock().current_time()
        result = await router.infer(req())
        elapsed = current_clock().current_time() - t0
        await anyio.sleep(10)  # nothing left to finish later
        return result, elapsed, before, len(anyio.get_running_tasks())

    result, elapsed, before, after = vrun(main)
    assert result.substrate == "fast"
    assert elapsed == pytest.approx(1.5)
    assert result.attributes["agentrt.route.hedged"] is True
    assert result.attributes["agentrt.route.failovers"] == 0
    assert after == before
    assert slow.calls == 1
    assert router.served == Counter({"fast": 1})
    assert router.inflight["slow"] == 0
    assert router.breakers["slow"].state == "closed"
    assert router.failures["slow"] == 0


def test_hedge_starts_at_once_when_the_primary_fails(vrun: Callable[..., Any]) -> None:
    down = FaultInjector(fixed("a", 0.0), seed=0, outages=[(0.0, 100.0)])
    router = Router({"a": down, "b": fixed("b", 1.0)}, hedge_after_s=30.0)

    async def main() -> tuple[InferenceResult, float]:
        t0 = current_clock().current_time()
        result = await router.infer(req())
        return result, current_clock().current_time() - t0

    result, elapsed = vrun(main)
    assert (result.substrate, elapsed) == ("b", pytest.approx(1.0))
    assert result.attributes["agentrt.route.failovers"] == 1


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown route"):
        Router({"a": fixed("a", 1)}, policy="slo", by_slo={"x": "nope"})
    with pytest.raises(ConfigError, match="unknown routing policy"):
        Router({"a": fixed("a", 1)}, policy="fastest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cost_budget_usd"):
        Router({"a": fixed("a", 1)}, policy="cost")


SPEC = """\
policy: slo
routes:
  fast: {substrate: fixed, options: {latency_ms: 100}}
  bulk: {substrate: fixed, options: {latency_ms: 1000}, faults: "errors=0.5"}
by_slo: {interactive: fast}
default: bulk
breaker: {failures: 2, cooldown_s: 5}
"""


def test_route_spec_file_builds_a_router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(SPEC)
    router = route(spec=str(path), seed=1)
    assert list(router.routes) == ["fast", "bulk"]
    assert isinstance(router.routes["bulk"], FaultInjector)
    assert router.breakers["fast"].threshold == 2
    # Through the registry: NAME:ARG passes ARG as spec=.
    from importlib.metadata import EntryPoint

    reg = Registry()
    ep = EntryPoint(name="route", value="substrates.fleet.spec:route", group="agentrt.substrates")
    monkeypatch.setattr(reg, "_tables", {"agentrt.substrates": {"route": ep}})
    assert isinstance(reg.substrate(f"route:{path}", seed=2), Router)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("routes: {}", "routes"),
        ("routes: {a: {substrate: fixed}}\npolicy: fastest", "policy"),
        ("routes: {a: {substrate: fixed, colour: red}}", "routes.a.colour"),
        ("routes: [", "not valid YAML"),
        ("routes: {a: {substrate: nope}}", "unknown substrate 'nope'"),
    ],
)
def test_bad_route_specs(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        route(spec=str(path))
