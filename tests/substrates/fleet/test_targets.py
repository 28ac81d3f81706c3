from __future__ import annotations

import pytest

from substrates.fleet.targets import TargetError, parse_target


@pytest.mark.parametrize(
    ("text", "metric", "quantity", "limit"),
    [
        ("p95(e2e) <= 8s", "p95", "e2e", 8.0),
        ("p99(ttft) <= 500ms", "p99", "ttft", 0.5),
        ("p99.9( ttft )<1.5s", "p99.9", "ttft", 1.5),
        ("slo_attainment >= 0.99", "slo_attainment", None, 0.99),
        ("slo_attainment >= 99%", "slo_attainment", None, 0.99),
        ("cost_per_task <= $0.01", "cost_per_task", None, 0.01),
        ("cost_per_task <= 0.01", "cost_per_task", None, 0.01),
        ("error_rate < 1%", "error_rate", None, 0.01),
        ("rejected == 0", "rejected", None, 0.0),
        ("throughput >= 5/s", "throughput", None, 5.0),
    ],
)
def test_targets_parse_into_base_units(
    text: str, metric: str, quantity: str | None, limit: float
) -> None:
    target = parse_target(text)
    assert (target.metric, target.quantity) == (metric, quantity)
    assert target.limit == pytest.approx(limit)


def test_scopes_name_a_tenant_or_a_pool() -> None:
    target = parse_target("p99(e2e, tenant=interactive) <= 30s")
    assert target.scope == {"tenant": "interactive"}
    assert target.key == "p99(e2e, tenant=interactive)"
    assert parse_target("rejected(pool=h100) == 0").scope == {"pool": "h100"}


@pytest.mark.parametrize(
    ("op", "inside", "edge", "outside"),
    [("<=", 7.0, 8.0, 9.0), ("<", 7.0, None, 8.0), (">=", 9.0, 8.0, 7.0), (">", 9.0, None, 8.0)],
)
def test_verdicts_follow_the_operator(
    op: str, inside: float, edge: float | None, outside: float
) -> None:
    target = parse_target(f"p95(e2e) {op} 8s")
    assert target.met_by(inside)
    assert not target.met_by(outside)
    if edge is not None:
        assert target.met_by(edge)


def test_no_measurement_never_meets_a_target() -> None:
    target = parse_target("p95(e2e) <= 8s")
    assert not target.met_by(None)
    assert not target.met_by(float("nan"))
    assert target.describe(None) == "no data"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("p95(e2e) <= 8", "with its unit"),
        ("p95(e2e) <= 8h", "with its unit"),
        ("p95(latency) <= 8s", "takes e2e or ttft"),
        ("p95 <= 8s", "takes e2e or ttft"),
        ("p0(e2e) <= 8s", "between p0 and p100"),
        ("latency <= 8s", "unknown metric 'latency'"),
        ("cost_per_task <= 5ms", "US dollars"),
        ("slo_attainment >= $1", "a fraction"),
        ("rejected == 0.5", "a whole number"),
        ("p95(e2e, region=eu) <= 8s", "tenant=NAME or pool=NAME"),
        ("p95(e2e) is small", "METRIC OP VALUE"),
        ("", "METRIC OP VALUE"),
    ],
)
def test_bad_targets_say_what_to_write(text: str, says: str) -> None:
    with pytest.raises(TargetError, match=None) as info:
        parse_target(text)
    assert says in str(info.value)
    assert "\n" not in str(info.value)
