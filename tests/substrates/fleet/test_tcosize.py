"""Sizing by simulation: monotone in the SLO and the load, deterministic, capped honestly."""

from __future__ import annotations

import math

import pytest

from agentrt.errors import ConfigError
from agentrt.plan import Plan, Step
from substrates.fleet.targets import parse_target
from substrates.fleet.tcosize import Sizer, Sizing

PLAN = Plan(
    name="tiny",
    steps=(
        Step(id="a", kind="think", prompt="plan", max_output_tokens=60),
        Step(id="b", kind="answer", prompt="answer", depends_on=("a",), max_output_tokens=120),
    ),
)
OPTIONS: dict[str, str] = {}  # llama-3.1-70b: a B200 serves one run in about 5 s unloaded


def sizer(load: float, preset: str = "b200") -> Sizer:
    return Sizer(PLAN, preset, load_per_s=load, duration_s=60.0, seed=3, options=OPTIONS)


def needed(sizing: Sizing) -> float:
    return sizing.replicas if sizing.met else math.inf


def test_a_tighter_slo_never_needs_fewer_replicas() -> None:
    s = sizer(10.0)
    slos = ["60s", "13s", "8s", "6s", "5.5s", "4s"]
    counts = [needed(s.size(parse_target(f"p95(e2e) <= {x}"), cap=64)) for x in slos]
    assert counts == sorted(counts)
    assert counts[0] < counts[-1]  # the sweep really spans a trade-off
    assert all(n >= 1 for n in counts)


def test_more_load_never_needs_fewer_replicas() -> None:
    target = parse_target("p95(e2e) <= 8s")
    counts = [needed(sizer(load).size(target, cap=64)) for load in (2.0, 8.0, 24.0)]
    assert counts == sorted(counts)
    assert counts[0] < counts[-1]


def test_the_chosen_count_meets_the_target_and_one_fewer_does_not() -> None:
    s = sizer(10.0)
    target = parse_target("p95(e2e) <= 8s")
    sizing = s.size(target, cap=64)
    assert sizing.met
    assert sizing.replicas > 1
    assert sizing.measured_s <= 8.0
    assert sizing.measured.completed == sizing.measured.arrivals > 0
    assert not s.meets(sizing.replicas - 1, target)
    assert sizing.tried[0] == 1
    assert sizing.to_dict()["chips"] == sizing.replicas * sizing.chips_per_replica


def test_sizing_is_deterministic() -> None:
    target = parse_target("p95(e2e) <= 8s")
    first = sizer(10.0).size(target, cap=64).to_dict()
    assert sizer(10.0).size(target, cap=64).to_dict() == first


def test_a_missed_target_says_why() -> None:
    s = sizer(10.0)
    capped = s.size(parse_target("p95(e2e) <= 6s"), cap=2)
    assert (capped.met, capped.missed, capped.replicas) == (False, "cap", 2)
    alone = sizer(10.0)
    floor = alone.size(parse_target("p95(e2e) <= 10ms"), cap=256)
    assert (floor.met, floor.missed) == (False, "floor")
    assert floor.replicas < 256  # stopped early: more replicas cannot help
    assert alone.simulations == 1  # the floor probe alone decided it
    assert floor.measured_s > 0.01  # the floor: one run alone


@pytest.mark.parametrize(
    "text", ["p95(ttft) <= 1s", "p95(e2e) >= 1s", "throughput >= 5/s", "p95(e2e, pool=a) <= 1s"]
)
def test_only_an_e2e_percentile_bound_sizes(text: str) -> None:
    with pytest.raises(ConfigError, match=r"p95\(e2e\) <= 10s"):
        sizer(1.0).size(parse_target(text))


def test_bad_inputs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="load > 0"):
        Sizer(PLAN, "h100", load_per_s=0.0)
    with pytest.raises(ConfigError):
        Sizer(PLAN, "no-such-chip", load_per_s=1.0)


def test_misses_stop_early_and_a_looser_target_reuses_complete_runs() -> None:
    s = sizer(10.0)
    tight = s.size(parse_target("p95(e2e) <= 6s"), cap=64)
    stopped = [n for n in tight.tried if s.probe(n, tight.target).aborted]
    assert stopped  # at least one miss was proved before the end of its run
    runs = s.simulations
    assert s.meets(tight.replicas, parse_target("p95(e2e) <= 7s"))  # a complete hit: reused
    assert s.simulations == runs
