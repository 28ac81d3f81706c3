"""The TCO model: sourced data files, monotone costs, conserved units."""

from __future__ import annotations

import itertools
import math
import tomllib
from pathlib import Path

import pytest

from agentrt.errors import ConfigError, UnknownNameError
from substrates.emulated.presets import PRESETS
from substrates.emulated.profiles import BUILTIN_PROFILE_DIR
from substrates.emulated.profiles.economics import ESTIMATE_PREFIX
from substrates.emulated.tco import (
    HOURS_PER_MONTH,
    SECONDS_PER_MONTH,
    Facility,
    SystemEconomics,
    default_facility,
    load_facility,
    load_system,
    per_unit,
    system_names,
    tco,
)

FACILITY = default_facility()


def _numbers(data: dict[str, object]) -> list[str]:
    return [k for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)]


def _check_sourced(path: Path) -> None:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    sources = data["sources"]
    assert isinstance(sources, dict)
    for field in _numbers(data):
        text = sources.get(field, "")
        assert isinstance(text, str)
        assert text, f"{path.name}: {field} has no source"
        if text.startswith(ESTIMATE_PREFIX):
            assert len(text) > len(ESTIMATE_PREFIX) + 20, f"{path.name}: {field}: say why"
        else:
            assert len(text) > 15, f"{path.name}: {field}: cite where it is published"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_has_a_system_file_whose_every_number_is_sourced(preset: str) -> None:
    system = load_system(preset)
    assert system.name == preset
    _check_sourced(BUILTIN_PROFILE_DIR / "systems" / f"{preset}.toml")


def test_the_default_facility_is_sourced() -> None:
    _check_sourced(BUILTIN_PROFILE_DIR / "facility" / "default.toml")
    assert FACILITY.pue >= 1


def test_system_names_cover_the_presets_and_aliases_resolve() -> None:
    assert set(system_names()) == set(PRESETS)
    assert load_system("cs3").name == "wse3"
    assert load_system("H100_SXM").name == "h100"


def test_the_wafer_file_carries_the_750_mw_framing_with_caveats() -> None:
    caveats = " ".join(load_system("wse3").caveats)
    assert "750 MW" in caveats
    assert "neither is a CS-3 price" in caveats


def test_unknown_system_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="wse3"):
        load_system("no-such-chip")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_more_systems_cost_more_draw_more_and_take_more_room(preset: str) -> None:
    system = load_system(preset)
    bills = [tco(system, n, facility=FACILITY, months=36, busy_fraction=0.6) for n in (1, 2, 7)]
    for small, big in itertools.pairwise(bills):
        assert big.total_usd > small.total_usd
        assert big.cost_usd_per_month > small.cost_usd_per_month
        assert big.facility_power_full_mw > small.facility_power_full_mw
        assert big.racks >= small.racks
        assert big.floor_m2 >= small.floor_m2


def test_longer_horizons_cost_more_in_cash_but_not_per_month() -> None:
    h100 = load_system("h100")
    by_months = [tco(h100, 4, facility=FACILITY, months=m, busy_fraction=0.5) for m in (12, 24, 36)]
    assert by_months[0].total_usd < by_months[1].total_usd < by_months[2].total_usd
    assert len({round(b.cost_usd_per_month, 6) for b in by_months}) == 1


def test_units_are_conserved() -> None:
    cs3 = load_system("wse3")
    bill = tco(cs3, 4, facility=FACILITY, months=24, busy_fraction=1.0)
    assert bill.it_power_full_mw == pytest.approx(4 * 23_000 / 1e6)
    assert bill.facility_power_full_mw == pytest.approx(bill.it_power_full_mw * FACILITY.pue)
    kwh = 4 * 23.0 * FACILITY.pue * HOURS_PER_MONTH
    assert bill.energy_usd_per_month == pytest.approx(kwh * FACILITY.usd_per_kwh)
    assert bill.capacity_usd_per_month == pytest.approx(4 * 23.0 * FACILITY.usd_per_kw_month)
    assert bill.opex_usd_per_month == pytest.approx(
        bill.energy_usd_per_month + bill.capacity_usd_per_month + bill.overhead_usd_per_month
    )
    assert bill.total_usd == pytest.approx(bill.capex_usd + 24 * bill.opex_usd_per_month)
    assert pytest.approx(8766.0) == HOURS_PER_MONTH * 12
    units = per_unit(bill, tasks_per_s=2.0, tokens_per_s=1000.0)
    usd_per_s = bill.cost_usd_per_month / SECONDS_PER_MONTH
    assert units["usd_per_task"] == pytest.approx(usd_per_s / 2.0)
    assert units["usd_per_mtok"] == pytest.approx(usd_per_s / 1000.0 * 1e6)
    assert units["j_per_token"] == pytest.approx(4 * 23_000 * FACILITY.pue / 1000.0)
    assert units["tasks_per_s_per_mw"] == pytest.approx(2.0 / bill.facility_power_full_mw)


def test_amortization_spreads_capex_over_its_years() -> None:
    h100 = load_system("h100")
    four = tco(h100, 3, facility=FACILITY, months=12, busy_fraction=0.5)
    eight = tco(
        h100,
        3,
        facility=FACILITY.model_copy(update={"amortization_years": 8.0}),
        months=12,
        busy_fraction=0.5,
    )
    assert four.capex_usd == eight.capex_usd
    expected = 3 * 300_000 * 1.15 / (FACILITY.amortization_years * 12)
    assert four.amortization_usd_per_month == pytest.approx(expected)
    assert eight.amortization_usd_per_month == pytest.approx(four.amortization_usd_per_month / 2)


def test_busy_fraction_moves_energy_between_idle_and_full_power() -> None:
    b200 = load_system("b200")
    idle, half, full = (
        tco(b200, 2, facility=FACILITY, months=12, busy_fraction=f) for f in (0.0, 0.5, 1.0)
    )
    assert idle.average_facility_power_mw == pytest.approx(2 * b200.power_idle_w * 1.3 / 1e6)
    assert full.average_facility_power_mw == pytest.approx(full.facility_power_full_mw)
    assert half.energy_usd_per_month == pytest.approx(
        (idle.energy_usd_per_month + full.energy_usd_per_month) / 2
    )
    assert idle.energy_usd_per_month < half.energy_usd_per_month < full.energy_usd_per_month
    assert idle.capacity_usd_per_month == full.capacity_usd_per_month  # provisioned, not used


def test_pue_scales_energy_and_nothing_else() -> None:
    cs3 = load_system("wse3")
    base = tco(cs3, 2, facility=FACILITY, months=12, busy_fraction=0.7)
    worse = tco(
        cs3, 2, facility=FACILITY.model_copy(update={"pue": 2.0}), months=12, busy_fraction=0.7
    )
    ratio = 2.0 / FACILITY.pue
    assert worse.energy_usd_per_month == pytest.approx(base.energy_usd_per_month * ratio)
    assert worse.facility_power_full_mw == pytest.approx(base.facility_power_full_mw * ratio)
    assert worse.capacity_usd_per_month == base.capacity_usd_per_month
    assert worse.capex_usd == base.capex_usd


def test_renting_pays_every_hour_and_no_energy() -> None:
    h100 = load_system("h100")
    rent = tco(h100, 2, facility=FACILITY, months=12, busy_fraction=0.1, ownership="rent")
    assert rent.capex_usd == 0
    assert rent.energy_usd_per_month == 0
    assert rent.rental_usd_per_month == pytest.approx(2 * 8 * 2.69 * HOURS_PER_MONTH)
    tpu = load_system("tpu-v5e")
    assert tco(tpu, 1, facility=FACILITY, months=12, busy_fraction=0.5).ownership == "rent"
    with pytest.raises(ConfigError, match="ownership='rent'"):
        tco(tpu, 1, facility=FACILITY, months=12, busy_fraction=0.5, ownership="buy")


def test_racks_follow_power_and_space() -> None:
    cs3, h100, sn40l = load_system("wse3"), load_system("h100"), load_system("sn40l")
    assert cs3.systems_per_rack(rack_kw=40.0, rack_units=42) == 1  # 23 kW each
    assert cs3.systems_per_rack(rack_kw=100.0, rack_units=42) == 2  # 15 RU each
    assert h100.systems_per_rack(rack_kw=41.0, rack_units=42) == 4
    assert sn40l.systems_per_rack(rack_kw=500.0, rack_units=84) == 1  # a rack of its own
    bill = tco(cs3, 5, facility=FACILITY, months=12, busy_fraction=0.5)
    assert bill.racks == 5
    assert bill.floor_m2 == pytest.approx(5 * FACILITY.floor_m2_per_rack)
    assert h100.systems_for_chips(70) == math.ceil(70 / 8)


def test_every_figure_lists_its_sources() -> None:
    bill = tco(load_system("wse3"), 1, facility=FACILITY, months=12, busy_fraction=0.5)
    assert bill.sources["system.power_full_w"].startswith("~23 kW")
    assert bill.sources["system.system_price_usd"].startswith(ESTIMATE_PREFIX)
    assert "facility.pue" in bill.sources
    assert "facility.usd_per_kwh" in bill.sources


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"systems": 0}, "systems must be >= 1"),
        ({"months": 0}, "months must be >= 1"),
        ({"busy_fraction": 1.5}, "busy_fraction"),
    ],
)
def test_bad_input_says_what_to_fix(kwargs: dict[str, float], match: str) -> None:
    args: dict[str, float] = {"systems": 1, "months": 12, "busy_fraction": 0.5} | kwargs
    with pytest.raises(ConfigError, match=match):
        tco(
            load_system("h100"),
            int(args["systems"]),
            facility=FACILITY,
            months=int(args["months"]),
            busy_fraction=args["busy_fraction"],
        )
    bill = tco(load_system("h100"), 1, facility=FACILITY, months=12, busy_fraction=0.5)
    with pytest.raises(ConfigError, match="must be > 0"):
        per_unit(bill, tasks_per_s=0.0, tokens_per_s=1.0)


def test_a_user_directory_shadows_the_built_in_prices(tmp_path: Path) -> None:
    (tmp_path / "systems").mkdir()
    (tmp_path / "facility").mkdir()
    text = (BUILTIN_PROFILE_DIR / "systems" / "h100.toml").read_text(encoding="utf-8")
    (tmp_path / "systems" / "h100.toml").write_text(
        text.replace("system_price_usd = 300000.0", "system_price_usd = 250000.0")
    )
    text = (BUILTIN_PROFILE_DIR / "facility" / "default.toml").read_text(encoding="utf-8")
    (tmp_path / "facility" / "default.toml").write_text(
        text.replace("usd_per_kwh = 0.08", "usd_per_kwh = 0.12")
    )
    assert load_system("h100", search_path=[tmp_path]).system_price_usd == 250_000
    assert default_facility(search_path=[tmp_path]).usd_per_kwh == 0.12
    assert load_system("wse3", search_path=[tmp_path]).name == "wse3"  # the rest still built in


def test_a_number_without_a_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "systems").mkdir()
    (tmp_path / "systems" / "x.toml").write_text(
        'profile = "system"\nname = "x"\ndisplay_name = "X"\nchips_per_system = 1\n'
        "system_price_usd = 1.0\npower_idle_w = 1.0\npower_full_w = 2.0\nrack_units = 1\n"
        '[sources]\nchips_per_system = "a"\n'
    )
    with pytest.raises(ConfigError, match=r"x\.toml.*no entry in \[sources\] for: power_full_w"):
        load_system("x", search_path=[tmp_path])
    with pytest.raises(UnknownNameError):
        load_facility("nowhere")


def test_models_are_frozen_data() -> None:
    assert SystemEconomics.model_config.get("frozen")
    assert Facility.model_config.get("frozen")


def test_sanity_rows_cover_wafer_gpu_cloud_and_energy_rows() -> None:
    from substrates.emulated.tcocheck import sanity_rows, sanity_table

    rows = sanity_rows()
    by_row = {r.row: r for r in rows}
    assert {85, 87, 89, 96, 97} <= set(by_row)  # Cerebras list prices (wafer rows)
    assert {150, 151, 152, 154} <= set(by_row)  # GPU cloud list prices
    assert {81, 140, 143} <= set(by_row)  # ML.ENERGY measurements
    for r in rows:
        assert r.ratio_buy is not None or r.ratio_rent is not None
        ratios = [x for x in (r.ratio_buy, r.ratio_rent) if x is not None]
        assert all(x > 0 and math.isfinite(x) for x in ratios)
    gpu = by_row[150]
    assert gpu.implied_rent is not None
    assert gpu.implied_buy is not None
    # wall power x PUE per token is above the chip-only (TDP) figure of the same deployment
    energy = by_row[143]
    assert energy.implied_chips is not None
    assert energy.implied_buy is not None
    assert energy.implied_buy > energy.implied_chips
    assert "| 85 |" in sanity_table(rows)


def test_the_docs_show_what_the_model_computes() -> None:
    from substrates.emulated.tcocheck import sanity_table

    text = (Path(__file__).resolve().parents[3] / "docs" / "tco.md").read_text(encoding="utf-8")
    assert sanity_table() in text  # regenerate the table in docs/tco.md if this fails
    cs3, h100 = load_system("wse3"), load_system("h100")
    budget_w = 750e6 / FACILITY.pue
    systems = math.floor(budget_w / cs3.power_full_w)
    assert f"| {systems:,} |" in text
    gpus = tco(
        h100,
        math.floor(budget_w / h100.power_full_w),
        facility=FACILITY,
        months=36,
        busy_fraction=FACILITY.utilization,
    )
    assert f"| {gpus.racks:,} |" in text
