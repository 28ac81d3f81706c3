"""The TCO model against published numbers: implied token prices and J/token, as ratios.

A check, not a fit: nothing here changes a figure. For each published output-token price in
the calibration table (wafer rows, GPU clouds, the rest of the zoo) it prices the deployment
the row names at full utilization with `substrates.emulated.tco`, and for each published energy
measurement it computes the facility J/token of the same deployment. docs/tco.md shows the
table `sanity_table()` prints.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Literal

from agentrt.errors import ConfigError
from substrates.emulated.calibration import DATA_FILE
from substrates.emulated.profiles import ProfileCatalog, load_catalog
from substrates.emulated.scenario import _deployment, parse_scenario, predict_point
from substrates.emulated.tco import Facility, default_facility, load_system, per_unit, tco

__all__ = ["SanityRow", "sanity_rows", "sanity_table"]

#: The chip column of a row -> the hardware profile, for rows without a scenario.
_CHIPS = {"WSE-3": "wse3", "LPU": "groq-lpu", "SN40L": "sn40l"}


@dataclass(frozen=True, slots=True)
class SanityRow:
    """One published number beside what the TCO model implies for the same deployment.

    ``ratio_*`` is published / implied: above 1, the list price is above the owner's cost
    (margin, idle time); for energy, below 1 means the measurement (a GPU's board power) is
    below the model's wall power times PUE, as it should be.
    """

    row: int
    kind: Literal["price", "energy"]
    provider: str
    model: str
    scenario: str
    published: float
    unit: str
    implied_buy: float | None
    implied_rent: float | None
    implied_chips: float | None

    @property
    def ratio_buy(self) -> float | None:
        """Published / implied when bought (None if the system has no price)."""
        return None if self.implied_buy is None else self.published / self.implied_buy

    @property
    def ratio_rent(self) -> float | None:
        """Published / implied when rented (None if the system has no rental price)."""
        return None if self.implied_rent is None else self.published / self.implied_rent


def _scenario(record: dict[str, str]) -> str | None:
    if record["agentrt_scenario"]:
        return record["agentrt_scenario"]
    hw = _CHIPS.get(record["chip"])
    if hw is None:
        return None
    model = "-".join(record["model"].lower().split())
    return f"hw={hw} model={model} in=1000 out=500 c=max"


def _implied(
    record: dict[str, str], scenario: str, catalog: ProfileCatalog, facility: Facility
) -> SanityRow:
    spec = parse_scenario(scenario)
    dep = _deployment(spec, catalog)
    tokens_per_s = predict_point("throughput_tokens_per_s", scenario, catalog)
    system = load_system(spec["hw"])
    share = dep.chips / system.chips_per_system  # a provider packs replicas into systems
    energy = record["metric"] == "energy_j_per_token"
    implied: dict[str, float | None] = {"buy": None, "rent": None}
    for own in ("buy", "rent"):
        has = system.system_price_usd if own == "buy" else system.rental_usd_per_system_hour
        if has is None or (energy and own == "rent"):
            continue
        bill = tco(system, 1, facility=facility, months=12, busy_fraction=1.0, ownership=own)
        units = per_unit(bill, tasks_per_s=1.0, tokens_per_s=tokens_per_s / share)
        implied[own] = units["j_per_token"] if energy else units["usd_per_mtok"]
    chips = predict_point("energy_j_per_token", scenario, catalog) if energy else None
    return SanityRow(
        row=int(record["row"]),
        kind="energy" if energy else "price",
        provider=record["system"],
        model=record["model"],
        scenario=scenario,
        published=float(record["value"]),
        unit=record["unit"],
        implied_buy=implied["buy"],
        implied_rent=implied["rent"],
        implied_chips=chips,
    )


def sanity_rows(
    *, facility: Facility | None = None, catalog: ProfileCatalog | None = None
) -> list[SanityRow]:
    """Every published output-token price and energy measurement that names a deployment.

    Rows whose deployment the model cannot build (no hardware named, the model does not fit)
    are left out.

    Args:
        facility: default `default_facility()`.
        catalog: default the built-in profiles.

    Returns:
        The rows, in the calibration table's order.
    """
    facility = facility or default_facility()
    catalog = catalog or load_catalog()
    rows: list[SanityRow] = []
    with DATA_FILE.open(encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle):
            if record["metric"] not in ("price_usd_per_mtok_output", "energy_j_per_token"):
                continue
            scenario = _scenario(record)
            if scenario is None:
                continue
            try:
                rows.append(_implied(record, scenario, catalog, facility))
            except ConfigError:
                continue
    return rows


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def sanity_table(rows: list[SanityRow] | None = None) -> str:
    """The rows as a Markdown table (docs/tco.md)."""
    rows = sanity_rows() if rows is None else rows
    lines = [
        "| row | provider | model | published | implied (buy) | ratio | implied (rent) "
        "| ratio | chips only |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        unit = "$/Mtok" if r.kind == "price" else "J/tok"
        lines.append(
            f"| {r.row} | {r.provider} | {r.model} | {_num(r.published)} {unit} "
            f"| {_num(r.implied_buy)} | {_num(r.ratio_buy)} | {_num(r.implied_rent)} "
            f"| {_num(r.ratio_rent)} | {_num(r.implied_chips)} |"
        )
    return "\n".join(lines)
