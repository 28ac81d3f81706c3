from __future__ import annotations

from pathlib import Path

import pytest

from agentrt.errors import ConfigError
from substrates.fleet.fleetbuild import build_fleet, measure_fleet, run_fleet_spec
from substrates.fleet.fleetspec import FleetSpec, is_fleet_spec, load_fleet_spec
from substrates.fleet.router import Router
from substrates.fleet.targets import parse_target

ROOT = Path(__file__).resolve().parents[3]
PLAN = ROOT / "examples" / "plans" / "research.yaml"

SMALL = f"""\
duration_s: 60
sample_s: 5
pools:
  fast:
    preset: fixed
    options: {{latency_ms: 200}}
    min: 1
    max: 3
    cold_start_s: 20
    autoscaler: {{kind: target_concurrency, target: 2, interval_s: 2, scale_down_delay_s: 10}}
  slow:
    preset: fixed
    options: {{latency_ms: 800}}
    max: 2
    cold_start_s: 5
routing: {{policy: slo, by_slo: {{interactive: fast, batch: slow}}, default: slow}}
tenants:
  chat:
    plan: {PLAN}
    arrivals: {{kind: step, base_rate: 0.5, peak_rate: 4, at_s: 20, until_s: 40}}
    priority: 10
    e2e_s: 5
  bulk:
    plan: {PLAN}
    slo: batch
    arrivals: {{kind: poisson, rate: 0.5}}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_examples_are_valid_fleet_specs() -> None:
    found = sorted((ROOT / "examples" / "fleets").glob("*.yaml"))
    fleets = [p for p in found if is_fleet_spec(p)]
    assert fleets
    for path in fleets:
        spec = load_fleet_spec(path)
        for tenant in spec.tenants.values():
            assert Path(tenant.plan).is_file()
    assert not is_fleet_spec(PLAN)


def test_build_fleet_makes_pools_a_router_and_controllers(tmp_path: Path) -> None:
    spec = load_fleet_spec(_write(tmp_path, SMALL))
    fleet = build_fleet(spec)
    assert list(fleet.pools) == ["fast", "slow"]
    assert isinstance(fleet.substrate, Router)
    assert [c.pool.name for c in fleet.controllers] == ["fast"]
    assert [t.name for t in fleet.tenants] == ["chat", "bulk"]
    snap = fleet.pools["fast"].snapshot()
    assert (snap.min_replicas, snap.max_replicas, snap.warm) == (1, 3, 1)


def test_a_fleet_run_accounts_for_every_arrival_and_repeats(tmp_path: Path) -> None:
    spec = load_fleet_spec(_write(tmp_path, SMALL))
    first, second = run_fleet_spec(spec), run_fleet_spec(spec)
    assert first.arrivals > 0
    assert first.lost == 0
    assert first.completed + first.failed + first.rejected == first.arrivals
    assert first.to_dict()["tenants"] == second.to_dict()["tenants"]
    ups = [e for e in first.scale_events if e.kind == "scale_up"]
    assert ups
    assert all(e.pool == "fast" for e in ups)
    assert max(e.after for e in ups) <= 3
    # the batch tenant is routed to the slow pool, the interactive one to the fast pool
    assert first.pools["slow"].calls > 0
    assert first.pools["fast"].calls > 0


def test_targets_measure_tenants_pools_and_the_fleet(tmp_path: Path) -> None:
    report = run_fleet_spec(load_fleet_spec(_write(tmp_path, SMALL)))

    def measured(text: str) -> float | None:
        return measure_fleet(report, parse_target(text))

    assert measured("lost == 0") == 0
    chat, bulk = report.tenants["chat"], report.tenants["bulk"]
    assert measured("rejected(tenant=chat) == 0") == chat.rejected
    p50, p99 = measured("p50(e2e) <= 1s"), measured("p99(e2e) <= 1s")
    assert p50 is not None
    assert p99 is not None
    assert p50 <= p99
    assert measured("p99(e2e, tenant=chat) <= 1s") == pytest.approx(max(chat.e2e_s), rel=0.2)
    assert measured("p50(ttft, pool=slow) <= 1s") is not None
    assert measured("p50(ttft, pool=nonesuch) <= 1s") is None
    assert measured("p50(ttft, tenant=nonesuch) <= 1s") is None
    attainment = measured("slo_attainment(tenant=chat) >= 0.5")
    assert attainment is not None
    assert 0 <= attainment <= 1
    cost = measured("cost_per_task <= $1")
    assert cost == pytest.approx((chat.cost_usd + bulk.cost_usd) / report.completed)


@pytest.mark.parametrize(
    ("change", "at", "says"),
    [
        (("    max: 3\n", "    max: 0\n"), "max: 0", "pools.fast.max"),
        (("    min: 1\n", "    min: 5\n"), "fast:", "min 5 is above max 3"),
        (("kind: target_concurrency", "kind: magic"), "kind: magic", "autoscaler"),
        (("kind: step", "kind: burst"), "kind: burst", "arrivals"),
        (("default: slow", "default: medium"), None, "names pool 'medium'"),
        (("    priority: 10\n", "    priorty: 10\n"), "priorty", "unknown key"),
        (("duration_s: 60\n", ""), None, "duration_s: missing"),
        (("sample_s: 5", "sample_s: 500"), None, "sample more often"),
    ],
)
def test_bad_fleet_specs_name_file_and_line(
    tmp_path: Path, change: tuple[str, str], at: str | None, says: str
) -> None:
    old, new = change
    assert old in SMALL
    text = SMALL.replace(old, new)
    path = _write(tmp_path, text)
    lines = text.splitlines()
    line = next((i + 1 for i, s in enumerate(lines) if at and at in s), None)
    with pytest.raises(ConfigError) as info:
        load_fleet_spec(path)
    message = str(info.value)
    assert says in message
    assert "\n" not in message
    assert message.startswith(f"{path}:")
    if line:
        assert message.startswith(f"{path}:{line}:")


def test_an_unknown_preset_or_option_names_its_pool_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, SMALL.replace("preset: fixed", "preset: nonesuch", 1))
    with pytest.raises(ConfigError, match="nonesuch") as info:
        build_fleet(load_fleet_spec(path))
    assert str(info.value).startswith(f"{path}:4: pools.fast: ")
    path = _write(tmp_path, SMALL.replace("{latency_ms: 800}", "{latency: 800}"))
    with pytest.raises(ConfigError, match="latency") as info:
        build_fleet(load_fleet_spec(path))
    assert str(info.value).startswith(f"{path}:11: pools.slow: ")


def test_fleet_spec_schema_has_no_defaults_for_what_matters() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        FleetSpec.model_validate({"pools": {}, "tenants": {}})
