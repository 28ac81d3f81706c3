"""One sizing simulation: the seeded schedule, and an early stop that never changes a verdict."""

from __future__ import annotations

from functools import partial

from agentrt import VirtualClock, run
from agentrt.compare import percentile
from agentrt.plan import Plan, Step
from substrates.emulated.engine import EmulatedEngine, build_engine
from substrates.fleet.load import run_load
from substrates.fleet.pool import Pool
from substrates.fleet.tcorun import arrival_count, simulate, sure_miss_count

PLAN = Plan(
    name="tiny",
    steps=(
        Step(id="a", kind="think", prompt="plan", max_output_tokens=60),
        Step(id="b", kind="answer", prompt="answer", depends_on=("a",), max_output_tokens=120),
    ),
)


def make(index: int) -> EmulatedEngine:
    return build_engine("b200", seed=3 + index)


def test_the_arrival_count_is_run_loads() -> None:
    pool = Pool(make, name="p", min_replicas=4, max_replicas=4, initial=4)
    report = run(
        partial(run_load, PLAN, pool, agents=500, arrival_rate=6.0, duration_s=20.0, seed=3),
        clock=VirtualClock(),
    )
    assert arrival_count(load_per_s=6.0, duration_s=20.0, agents=500, seed=3) == report.arrivals


def test_a_full_run_matches_run_load() -> None:
    pool = Pool(make, name="p", min_replicas=3, max_replicas=3, initial=3)
    report = run(
        partial(run_load, PLAN, pool, agents=500, arrival_rate=6.0, duration_s=20.0, seed=3),
        clock=VirtualClock(),
    )
    m = simulate(PLAN, make, replicas=3, load_per_s=6.0, duration_s=20.0, seed=3)
    assert (m.arrivals, m.completed, m.output_tokens) == (
        report.arrivals,
        report.completed,
        report.output_tokens,
    )
    assert m.e2e_by_q[95.0] == percentile(report.e2e_s, 95.0)


def test_sure_miss_count_is_the_least_that_lifts_the_percentile() -> None:
    assert sure_miss_count(100, 95) == 6
    assert sure_miss_count(1, 95) == 1
    assert sure_miss_count(20, 50) == 11


def test_an_early_stop_only_happens_on_a_miss_the_full_run_confirms() -> None:
    for replicas, limit in ((1, 8.0), (2, 8.0), (3, 6.0), (6, 6.0), (6, 60.0)):
        full = simulate(PLAN, make, replicas=replicas, load_per_s=6.0, duration_s=30.0, seed=3)
        quick = simulate(
            PLAN, make, replicas=replicas, load_per_s=6.0, duration_s=30.0, seed=3,
            abort=(95.0, limit),
        )  # fmt: skip
        missed = not full.e2e_s(95.0) <= limit
        assert quick.aborted <= missed  # never stops a run that meets the target
        if quick.aborted:
            assert quick.sim_s < full.sim_s
            assert quick.misses(95.0, limit) is True
            assert quick.misses(95.0, limit * 2) is None  # proves nothing looser
        else:
            assert quick.e2e_by_q == full.e2e_by_q
    overloaded = simulate(
        PLAN, make, replicas=1, load_per_s=6.0, duration_s=30.0, seed=3, abort=(95.0, 8.0)
    )
    assert overloaded.aborted
    assert overloaded.sim_s < 30.0
