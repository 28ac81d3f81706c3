"""The ownership data of a preset system and of a facility (pydantic), each number sourced.

The files: ``systems/NAME.toml`` (one per preset) and ``facility/NAME.toml`` beside this
module, or in a user profile directory (`substrates.emulated.tco`). Every number a file gives
has an entry in its ``[sources]`` table: a citation, or ``ESTIMATE: why``.
"""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from substrates.emulated.profiles.schema import _Frozen, _missing_sources

__all__ = ["ESTIMATE_PREFIX", "Facility", "SystemEconomics"]

#: How a ``[sources]`` entry marks an estimate (the rest of the entry says why).
ESTIMATE_PREFIX = "ESTIMATE:"


class SystemEconomics(_Frozen):
    """What one system of a preset costs to own or rent, draws and occupies.

    A *system* is the unit bought or rented: one CS-3, one 8-GPU DGX/HGX server, one TPU host.
    """

    profile: str = Field(pattern="^system$", description='Always "system".')
    name: str = Field(min_length=1, description="The preset it prices (``wse3``, ``h100``).")
    display_name: str = Field(min_length=1, description="What the system is.")
    chips_per_system: int = Field(ge=1, description="Accelerator chips (wafers) per system.")
    system_price_usd: float | None = Field(
        default=None, ge=0, description="Purchase price of one system, USD."
    )
    rental_usd_per_system_hour: float | None = Field(
        default=None, ge=0, description="Rental price of one system, USD per hour (cloud)."
    )
    power_idle_w: float = Field(gt=0, description="System wall power when idle, W.")
    power_full_w: float = Field(gt=0, description="System wall power at full load, W.")
    rack_units: int = Field(ge=1, description="Rack units one system occupies.")
    max_systems_per_rack: int | None = Field(
        default=None, ge=1, description="A physical cap per rack (a system that is a rack: 1)."
    )
    network_storage_share: float = Field(
        default=0.0, ge=0, le=1, description="Network and storage capex, as a share of price."
    )
    caveats: tuple[str, ...] = Field(default=(), description="What to keep in mind.")
    sources: dict[str, str] = Field(description="Where each number comes from, by field name.")

    @model_validator(mode="after")
    def _check(self) -> SystemEconomics:
        _missing_sources(self, self.sources)
        if self.power_idle_w > self.power_full_w:
            raise ValueError(
                f"power_idle_w {self.power_idle_w} exceeds power_full_w {self.power_full_w}"
            )
        if self.system_price_usd is None and self.rental_usd_per_system_hour is None:
            raise ValueError("give system_price_usd or rental_usd_per_system_hour (or both)")
        return self

    def systems_per_rack(self, *, rack_kw: float, rack_units: int) -> int:
        """Systems one rack holds: the fewest of its space, its power and any physical cap.

        A system drawing more than the rack's power budget still gets a rack of its own (1).
        """
        by_power = math.floor(rack_kw * 1000.0 / self.power_full_w)
        by_space = rack_units // self.rack_units
        fits = max(1, min(by_power, by_space))
        return fits if self.max_systems_per_rack is None else min(fits, self.max_systems_per_rack)

    def systems_for_chips(self, chips: int) -> int:
        """Systems a deployment of ``chips`` chips occupies (whole systems)."""
        return max(1, math.ceil(chips / self.chips_per_system))


class Facility(_Frozen):
    """Where the systems run and how their cost is spread over time."""

    profile: str = Field(pattern="^facility$", description='Always "facility".')
    name: str = Field(min_length=1, description="The facility's name (``default``).")
    pue: float = Field(ge=1, description="Power usage effectiveness: facility W per IT W.")
    usd_per_kwh: float = Field(ge=0, description="Electricity price, USD per kWh.")
    usd_per_kw_month: float = Field(
        ge=0, description="Data-centre capacity (space, cooling, power), USD per IT kW-month."
    )
    amortization_years: float = Field(gt=0, description="Years over which capex is spread.")
    utilization: float = Field(
        gt=0, le=1, description="Default busy fraction of the systems' time."
    )
    overhead_fraction_per_year: float = Field(
        ge=0, description="Engineering, support and licensing per year, as a share of capex."
    )
    overhead_usd_per_year: float = Field(
        ge=0, description="Fixed engineering and licensing per year for the fleet, USD."
    )
    rack_kw: float = Field(gt=0, description="Power budget of one rack, kW.")
    rack_units: int = Field(ge=1, description="Usable rack units per rack.")
    floor_m2_per_rack: float = Field(
        gt=0, description="Floor space per rack, aisles and clearances included, m^2."
    )
    sources: dict[str, str] = Field(description="Where each number comes from, by field name.")

    @model_validator(mode="after")
    def _check(self) -> Facility:
        _missing_sources(self, self.sources)
        return self
