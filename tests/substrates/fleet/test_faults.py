from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from agentrt import (
    ConfigError,
    InferenceRequest,
    SubstrateTimeout,
    SubstrateUnavailable,
    current_clock,
)
from agentrt.registry import Registry
from agentrt.testing import FixedLatencySubstrate
from substrates.fleet.faults import FaultInjector, parse_duration, parse_faults, wrap

REQ = InferenceRequest.from_prompt("hi", max_output_tokens=4)


def test_spec_parses_every_item() -> None:
    spec = parse_faults(
        "errors=10%,timeouts=0.02:5s,spike=0.01:2s,outage=2m+30s,outage=600s+1m,"
        "slowdown=3x@10m,seed=7"
    )
    assert spec.error_rate == pytest.approx(0.1)
    assert (spec.timeout_rate, spec.timeout_s) == (0.02, 5.0)
    assert (spec.spike_rate, spec.spike_s) == (0.01, 2.0)
    assert spec.outages == ((120.0, 30.0), (600.0, 60.0))
    assert spec.slowdown == (3.0, 600.0)
    assert spec.seed == 7
    assert parse_duration("250ms") == 0.25


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("errors=2", "must lie in [0, 1]"),
        ("errors", "expected KEY=VALUE"),
        ("outage=120s", "START+DURATION"),
        ("outage=soon+30s", "is not a duration"),
        ("spike=0.1", "RATE:DURATION"),
        ("slowdown=0.5x@10s", "FACTOR >= 1"),
        ("bogus=1", "unknown key 'bogus'"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("+", r"\+")):
        parse_faults(spec)


def test_outage_window_is_relative_to_first_use(vrun: Callable[..., Any]) -> None:
    inner = FixedLatencySubstrate(latency_s=1.0)
    sub = FaultInjector(inner, seed=0, outages=[(10.0, 5.0)])
    seen: list[tuple[float, str]] = []

    async def main() -> None:
        clock = current_clock()
        await anyio.sleep(100)  # the origin is the first call, not the loop start
        for _ in range(20):
            t = clock.current_time() - 100
            try:
                await sub.infer(REQ)
                seen.append((t, "ok"))
            except SubstrateUnavailable:
                seen.append((t, "down"))
                await anyio.sleep(1.0)

    vrun(main)
    down = [t for t, what in seen if what == "down"]
    assert down == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert sub.injected["outage"] == 5
    assert inner.calls == 15


def test_error_rate_is_seeded_and_close_to_the_rate(vrun: Callable[..., Any]) -> None:
    def count(seed: int) -> int:
        sub = FaultInjector(FixedLatencySubstrate(), seed=seed, error_rate=0.1)

        async def main() -> int:
            errors = 0
            for _ in range(2000):
                try:
                    await sub.infer(REQ)
                except SubstrateUnavailable:
                    errors += 1
            return errors

        return int(vrun(main))

    assert count(3) == count(3)
    assert 150 < count(3) < 250


def test_timeouts_spikes_and_slowdown_are_timed_and_recorded(vrun: Callable[..., Any]) -> None:
    async def main() -> None:
        clock = current_clock()
        timeouts = FaultInjector(FixedLatencySubstrate(0.1), seed=1, timeout_rate=1, timeout_s=7)
        t0 = clock.current_time()
        with pytest.raises(SubstrateTimeout):
            await timeouts.infer(REQ)
        assert clock.current_time() - t0 == pytest.approx(7)

        spikes = FaultInjector(FixedLatencySubstrate(0.1), seed=1, spike_rate=1, spike_s=2)
        result = await spikes.infer(REQ)
        assert result.timing.e2e_s == pytest.approx(2.1)
        assert result.attributes["agentrt.fault.spike_s"] == 2

        slow = FaultInjector(FixedLatencySubstrate(1.0), seed=1, slowdown=(3.0, 100.0))
        first = await slow.infer(REQ)  # at the origin: no slow-down yet
        await anyio.sleep(49)
        t1 = clock.current_time()
        later = await slow.infer(REQ)  # 50 s in: halfway to 3x -> 2x
        assert first.timing.e2e_s == pytest.approx(1.0)
        assert clock.current_time() - t1 == pytest.approx(2.0)
        assert later.attributes["agentrt.fault.slowdown_s"] == pytest.approx(1.0)

    vrun(main)


def test_registry_wrap_finds_the_wrapper_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    reg = Registry()
    ep = EntryPoint(name="faults", value="substrates.fleet.faults:wrap", group="agentrt.wrappers")
    monkeypatch.setattr(reg, "_tables", {"agentrt.wrappers": {"faults": ep}})
    wrapped = reg.wrap("faults", FixedLatencySubstrate(), "errors=0.5", seed=1)
    assert isinstance(wrapped, FaultInjector)
    assert wrapped.error_rate == 0.5
    assert wrapped.name == "fixed"


def test_wrap_seed_in_spec_wins() -> None:
    a = wrap(FixedLatencySubstrate(), "errors=0.5,seed=3", seed=99)
    b = FaultInjector(FixedLatencySubstrate(), seed=3, error_rate=0.5)
    assert [a._rng.random() for _ in range(3)] == [b._rng.random() for _ in range(3)]
