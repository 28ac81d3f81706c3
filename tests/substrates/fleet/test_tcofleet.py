"""Sizing a fleet spec's pool ceilings: proved by a hit at N and a miss at N - 1."""

from __future__ import annotations

from pathlib import Path

from substrates.fleet.fleetbuild import run_fleet_spec
from substrates.fleet.fleetspec import load_fleet_spec
from substrates.fleet.targets import parse_target
from substrates.fleet.tcofleet import _with_ceilings, fleet_e2e_s, price_fleet, size_fleet

SPEC = Path(__file__).parents[3] / "examples" / "fleets" / "autoscale-h100.yaml"


def test_the_ceiling_meets_and_one_fewer_misses() -> None:
    spec = load_fleet_spec(SPEC)
    target = parse_target("p95(e2e) <= 120s")
    sized = size_fleet(spec, target, cap=16)
    assert sized.met
    n = sized.ceilings["h100"]
    assert fleet_e2e_s(sized.report, 95.0) <= 120
    if n > 1:
        fewer = run_fleet_spec(_with_ceilings(spec, {"h100": n - 1}))
        assert fleet_e2e_s(fewer, 95.0) > 120


def test_a_looser_slo_never_needs_a_higher_ceiling() -> None:
    spec = load_fleet_spec(SPEC)
    ceilings = [
        size_fleet(spec, parse_target(f"p95(e2e) <= {x}"), cap=16).ceilings["h100"]
        for x in ("100s", "150s", "400s")
    ]
    assert ceilings == sorted(ceilings, reverse=True)


def test_price_owns_the_peak_and_rents_the_mean() -> None:
    spec = load_fleet_spec(SPEC)
    sized = size_fleet(spec, parse_target("p95(e2e) <= 120s"), cap=16)
    [pool] = price_fleet(spec, sized, months=(12,))
    assert pool.peak_replicas <= pool.ceiling
    assert 0 < pool.mean_replicas <= pool.peak_replicas
    assert pool.rent_usd_per_month is not None
    assert pool.owned[12].capex_usd > 0
