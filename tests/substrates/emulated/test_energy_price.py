"""Energy per output token and price per million tokens: physics invariants and the table rows."""

from __future__ import annotations

import csv
import math

import pytest

from agentrt.errors import ConfigError
from substrates.emulated import PRESETS
from substrates.emulated.calibration import DATA_FILE, predict_point
from substrates.emulated.predict import closed_loop
from substrates.emulated.profiles import ProfileCatalog, load_catalog
from substrates.emulated.sizing import build_deployment

WORKLOAD = "in=1000 out=500"
GPUS = ("h100", "h200", "b200")


@pytest.fixture(scope="module")
def catalog() -> ProfileCatalog:
    return load_catalog()


def _scenario(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split()]
    assert all(len(p) == 2 for p in pairs), text
    return dict(pairs)


def _energy(catalog: ProfileCatalog, scenario: str) -> float:
    return predict_point("energy_j_per_token", scenario, catalog)


@pytest.mark.parametrize("hw", GPUS)
@pytest.mark.parametrize("model", ["llama-3.1-8b", "llama-3.1-70b"])
def test_a_large_batch_spends_less_energy_per_token_than_batch_one_on_gpus(catalog, hw, model):
    base = f"hw={hw} model={model} {WORKLOAD}"
    alone = _energy(catalog, f"{base} c=1")
    batched = _energy(catalog, f"{base} c=max")
    assert 0 < batched < alone


def test_energy_per_token_falls_as_the_batch_grows(catalog):
    base = f"hw=h100 model=llama-3.1-8b {WORKLOAD}"
    energies = [_energy(catalog, f"{base} c={c}") for c in (1, 4, 16, 64, 256)]
    assert energies == sorted(energies, reverse=True)


def test_wafer_energy_is_the_cs3_system_power_over_its_throughput(catalog):
    wse3 = catalog.get_hardware("wse3")
    base = f"hw=wse3 model=llama-3.1-70b {WORKLOAD} c=1"
    throughput = predict_point("throughput_tokens_per_s", base, catalog)
    joules = _energy(catalog, base)
    wafers = 4  # 141 GB of bf16 weights on 44 GB wafers (the vendor's "70B on four CS-3")
    assert joules == pytest.approx(wafers * wse3.power_w / throughput)
    assert wse3.power_w >= 20_000  # a whole CS-3 system, not a chip
    # The wafer's power is already the system's: asking for system power changes nothing.
    assert _energy(catalog, f"{base} power=system") == pytest.approx(joules)


def test_system_power_charges_gpus_their_share_of_the_node(catalog):
    h100 = catalog.get_hardware("h100")
    assert h100.node_power_w is not None
    base = f"hw=h100 model=llama-3.1-8b {WORKLOAD} c=max"
    board, system = _energy(catalog, base), _energy(catalog, f"{base} power=system")
    share = h100.node_power_w / h100.chips_per_node
    assert system == pytest.approx(board * share / h100.power_w)
    assert system > board


def test_system_power_without_a_node_power_is_refused(catalog):
    assert catalog.get_hardware("tpu-v6e").node_power_w is None
    with pytest.raises(ConfigError, match="node_power_w"):
        _energy(catalog, f"hw=tpu-v6e model=llama-3.1-8b {WORKLOAD} c=1 power=system")


def test_energy_scales_with_chip_power(catalog):
    h100 = catalog.hardware["h100"]
    hotter = h100.model_copy(update={"power_w": 2 * h100.power_w})
    doubled = catalog.model_copy(update={"hardware": {**catalog.hardware, "h100": hotter}})
    base = f"hw=h100 model=llama-3.1-8b {WORKLOAD} c=8"
    assert _energy(doubled, base) == pytest.approx(2 * _energy(catalog, base))


def test_chip_hour_price_of_output_tokens_is_the_machine_time_they_take(catalog):
    h100 = catalog.get_hardware("h100")
    assert h100.price_usd_per_chip_hour is not None
    base = f"hw=h100 model=llama-3.1-8b tp=1 {WORKLOAD} c=max"
    throughput = predict_point("throughput_tokens_per_s", base, catalog)
    usd = predict_point("price_usd_per_mtok_output", base, catalog)
    assert usd == pytest.approx(h100.price_usd_per_chip_hour / 3600 * 1e6 / throughput)
    # A busier machine (a bigger batch) makes each token cheaper.
    assert predict_point("price_usd_per_mtok_output", base.replace("c=max", "c=1"), catalog) > usd


def test_a_published_token_price_is_returned_as_is(catalog):
    price = catalog.get_hardware("wse3").prices["llama-3.3-70b"]
    base = f"hw=wse3 model=llama-3.3-70b {WORKLOAD} c=max"
    assert predict_point("price_usd_per_mtok_output", base, catalog) == price.output_usd_per_mtok
    assert predict_point("price_usd_per_mtok_input", base, catalog) == price.input_usd_per_mtok


def test_an_unpriced_deployment_names_the_fix(catalog):
    with pytest.raises(ConfigError, match="price_usd_per_chip_hour"):
        predict_point("price_usd_per_mtok_output", "hw=gaudi3 model=llama-3.1-8b c=1", catalog)


def _new_rows() -> list[dict[str, str]]:
    with DATA_FILE.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if 140 <= int(r["row"]) <= 179]
    assert rows
    return rows


def test_every_new_row_is_sourced_dated_and_explained():
    for row in _new_rows():
        assert row["source_url"].startswith("https://"), row["row"]
        assert row["date"], row["row"]
        assert row["notes"], row["row"]
        assert len(row["agentrt_note"]) > 20, row["row"]
        assert float(row["value"]) > 0, row["row"]


def test_every_new_row_has_a_scenario_the_model_can_play(catalog):
    for row in _new_rows():
        scenario = row["agentrt_scenario"]
        if not scenario:
            # Only a stated modelling gap may leave the scenario out.
            assert row["agentrt_use"] == "excluded", row["row"]
            assert "modelling gap" in row["agentrt_note"], row["row"]
            continue
        spec = _scenario(scenario)
        hardware = catalog.get_hardware(spec["hw"])
        catalog.get_model(spec["model"])
        priced = hardware.price_usd_per_chip_hour is not None or spec["model"] in hardware.prices
        if row["metric"].startswith("price") and not priced:
            assert row["agentrt_use"] == "input", row["row"]
            continue
        value = predict_point(row["metric"], scenario, catalog)
        assert math.isfinite(value), row["row"]
        assert value > 0, row["row"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_calibration_plays_the_deployment_a_user_gets_by_default(catalog, preset):
    # benchmarks/energy_price.py prices each preset through predict_point; what it reports
    # must be the default deployment (`build_deployment`), not another configuration.
    dep = build_deployment(preset, model="llama-3.1-8b")
    expected = closed_loop(dep, 1000, 500, None).throughput_tokens_per_s
    scenario = f"hw={PRESETS[preset]} model=llama-3.1-8b {WORKLOAD} c=max"
    assert predict_point("throughput_tokens_per_s", scenario, catalog) == pytest.approx(expected)
