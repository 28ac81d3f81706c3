"""Total cost of ownership of a fleet of systems: capex, opex per month, power and floor space.

Pure arithmetic over sourced data (`SystemEconomics` from ``profiles/systems/*.toml``,
`Facility` from ``profiles/facility/*.toml``): no clock, no simulation. Sizing (how many
systems meet an SLO) is the fleet simulator's job; this module prices the answer. The method
and its limits: docs/tco.md.

Example:
    >>> cs3 = load_system("wse3")
    >>> bill = tco(cs3, 4, facility=default_facility(), months=36, busy_fraction=0.6)
    >>> round(bill.it_power_full_mw, 3)
    0.092
"""

from __future__ import annotations

import contextlib
import math
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypedDict, TypeVar

from pydantic import Field, ValidationError

from agentrt.errors import ConfigError, UnknownNameError
from substrates.emulated.profiles import load_hardware, profile_search_path
from substrates.emulated.profiles.economics import Facility, SystemEconomics
from substrates.emulated.profiles.schema import _Frozen

__all__ = [
    "HOURS_PER_MONTH",
    "SECONDS_PER_MONTH",
    "Facility",
    "Ownership",
    "SystemEconomics",
    "TcoBreakdown",
    "UnitCosts",
    "default_facility",
    "load_facility",
    "load_system",
    "per_unit",
    "system_names",
    "tco",
]

#: A mean month (365.25 days / 12), in seconds and in hours.
SECONDS_PER_MONTH = 365.25 * 24 * 3600 / 12
HOURS_PER_MONTH = SECONDS_PER_MONTH / 3600

#: ``buy``: capex amortized plus energy, capacity and overhead; ``rent``: the hourly price.
Ownership = Literal["buy", "rent"]


class TcoBreakdown(_Frozen):
    """What ``systems`` systems cost over ``months``, and what they draw and occupy.

    Two views of money: cash (``total_usd`` = capex + opex x months) and a steady monthly cost
    (``cost_usd_per_month`` = capex / amortization months + opex), which per-unit prices use.
    """

    system: str = Field(description="The preset priced.")
    facility: str = Field(description="The facility's name.")
    ownership: Ownership = Field(description="Bought or rented.")
    systems: int = Field(ge=1, description="Systems in the fleet.")
    months: int = Field(ge=1, description="The horizon of total_usd.")
    busy_fraction: float = Field(ge=0, le=1, description="Share of time at full load.")
    capex_usd: float = Field(ge=0, description="Systems plus network and storage; 0 if rented.")
    amortization_usd_per_month: float = Field(ge=0, description="capex / amortization months.")
    energy_usd_per_month: float = Field(ge=0, description="Average facility power x USD/kWh.")
    capacity_usd_per_month: float = Field(ge=0, description="Provisioned IT kW x USD/kW-month.")
    overhead_usd_per_month: float = Field(ge=0, description="Engineering, support, licences.")
    rental_usd_per_month: float = Field(ge=0, description="Hourly rental, all hours; 0 if bought.")
    opex_usd_per_month: float = Field(ge=0, description="Energy + capacity + overhead + rental.")
    cost_usd_per_month: float = Field(ge=0, description="Amortization + opex.")
    total_usd: float = Field(ge=0, description="capex + opex x months (cash over the horizon).")
    racks: int = Field(ge=1, description="Racks at the facility's kW and rack units.")
    floor_m2: float = Field(ge=0, description="Floor space, aisles included.")
    it_power_full_mw: float = Field(ge=0, description="IT power at full load, MW.")
    facility_power_full_mw: float = Field(ge=0, description="IT power at full load x PUE, MW.")
    average_facility_power_mw: float = Field(ge=0, description="At busy_fraction, x PUE, MW.")
    sources: dict[str, str] = Field(description="'system.FIELD' / 'facility.FIELD' -> source.")

    @property
    def tco_usd(self) -> float:
        """Alias of ``total_usd``."""
        return self.total_usd


class UnitCosts(TypedDict):
    """Per-unit figures of a `TcoBreakdown` at a delivered load."""

    usd_per_task: float
    usd_per_mtok: float
    j_per_token: float
    tasks_per_s_per_mw: float


def _search_dirs(search_path: Sequence[str | os.PathLike[str]], sub: str) -> list[Path]:
    return [d / sub for d in profile_search_path(search_path) if (d / sub).is_dir()]


_Data = TypeVar("_Data", SystemEconomics, Facility)


def _read(path: Path, cls: type[_Data]) -> _Data:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return cls.model_validate(data)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(map(str, e['loc']))}': {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(f"{path}: invalid {cls.__name__} file: {problems}") from exc


def _systems(search_path: Sequence[str | os.PathLike[str]]) -> dict[str, SystemEconomics]:
    found: dict[str, SystemEconomics] = {}
    for directory in _search_dirs(search_path, "systems"):
        for path in sorted(directory.glob("*.toml")):
            system = _read(path, SystemEconomics)
            found.setdefault(system.name.lower(), system)  # earlier directories shadow later
    return found


def system_names(search_path: Sequence[str | os.PathLike[str]] = ()) -> tuple[str, ...]:
    """Presets that have a system file on the search path, sorted."""
    return tuple(sorted(_systems(search_path)))


def load_system(
    preset: str, *, search_path: Sequence[str | os.PathLike[str]] = ()
) -> SystemEconomics:
    """The ownership data of a preset's system (``wse3``, ``h100``, an alias like ``cs3``).

    Files are ``systems/NAME.toml`` in each profile directory (`profile_search_path`: the
    ``extra`` directories, ``$AGENTRT_PROFILE_PATH``, then the built-ins); the first found wins.

    Raises:
        UnknownNameError: no system file for that preset; the message lists those there are.
        ConfigError: a system file is malformed (the message names the file and field).
    """
    table = _systems(search_path)
    key = preset.strip().lower()
    if key not in table:
        with contextlib.suppress(UnknownNameError):
            key = load_hardware(preset, search_path=search_path).name.lower()
    if key not in table:
        raise UnknownNameError("system", preset, sorted(table))
    return table[key]


def load_facility(
    name: str = "default", *, search_path: Sequence[str | os.PathLike[str]] = ()
) -> Facility:
    """A facility file, ``facility/NAME.toml``, the first on the search path.

    Raises:
        UnknownNameError: no such facility file.
        ConfigError: the file is malformed.
    """
    known: set[str] = set()
    for directory in _search_dirs(search_path, "facility"):
        path = directory / f"{name}.toml"
        if path.is_file():
            return _read(path, Facility)
        known.update(p.stem for p in directory.glob("*.toml"))
    raise UnknownNameError("facility", name, sorted(known))


def default_facility(*, search_path: Sequence[str | os.PathLike[str]] = ()) -> Facility:
    """The ``default`` facility (a user directory's ``facility/default.toml`` shadows ours)."""
    return load_facility("default", search_path=search_path)


def _ownership(system: SystemEconomics, ownership: Ownership | None) -> Ownership:
    if ownership is None:
        return "buy" if system.system_price_usd is not None else "rent"
    if ownership == "buy" and system.system_price_usd is None:
        raise ConfigError(
            f"system {system.name!r} has no system_price_usd (it is rented only); "
            "use ownership='rent' or add a price to its systems/*.toml"
        )
    if ownership == "rent" and system.rental_usd_per_system_hour is None:
        raise ConfigError(
            f"system {system.name!r} has no rental_usd_per_system_hour; "
            "use ownership='buy' or add a rental price to its systems/*.toml"
        )
    return ownership


def tco(
    system: SystemEconomics,
    systems: int,
    *,
    facility: Facility,
    months: int,
    busy_fraction: float,
    ownership: Ownership | None = None,
) -> TcoBreakdown:
    """Price ``systems`` systems at ``facility`` over ``months``.

    Energy is the average wall power (idle, plus the idle-to-full span times ``busy_fraction``)
    times PUE times USD/kWh; capacity is charged on the provisioned full-load IT kW; overhead is
    a share of capex a year plus a fixed USD a year. A rented system pays its hourly price for
    every hour (busy or not) and nothing for energy or capacity, which that price includes.

    Args:
        system: the system's data (`load_system`).
        systems: how many, >= 1.
        facility: where they run (`default_facility`).
        months: the horizon of ``total_usd``, >= 1.
        busy_fraction: share of time at full load, 0..1.
        ownership: ``buy`` or ``rent``; default buy if the system has a price, else rent.

    Returns:
        The breakdown, with the sources of every input it used.

    Raises:
        ConfigError: a count, horizon or fraction out of range, or no price for ``ownership``.
    """
    if systems < 1:
        raise ConfigError(f"systems must be >= 1, got {systems}; size the fleet first")
    if months < 1:
        raise ConfigError(f"months must be >= 1, got {months}; e.g. 12, 24 or 36")
    if not 0.0 <= busy_fraction <= 1.0:
        raise ConfigError(f"busy_fraction must be within 0..1, got {busy_fraction}")
    own = _ownership(system, ownership)
    used = ["chips_per_system", "power_idle_w", "power_full_w", "rack_units"]
    used += ["max_systems_per_rack"] if system.max_systems_per_rack is not None else []
    fac = ["pue", "rack_kw", "rack_units", "floor_m2_per_rack", "overhead_usd_per_year"]
    capex = amortization = energy = capacity = rental = 0.0
    it_full_w = systems * system.power_full_w
    average_w = systems * (
        system.power_idle_w + busy_fraction * (system.power_full_w - system.power_idle_w)
    )
    if own == "buy":
        assert system.system_price_usd is not None
        capex = systems * system.system_price_usd * (1.0 + system.network_storage_share)
        amortization = capex / (facility.amortization_years * 12.0)
        energy = average_w * facility.pue / 1000.0 * HOURS_PER_MONTH * facility.usd_per_kwh
        capacity = it_full_w / 1000.0 * facility.usd_per_kw_month
        used += ["system_price_usd", "network_storage_share"]
        fac += ["amortization_years", "usd_per_kwh", "usd_per_kw_month"]
        fac += ["overhead_fraction_per_year"]
    else:
        assert system.rental_usd_per_system_hour is not None
        rental = systems * system.rental_usd_per_system_hour * HOURS_PER_MONTH
        used += ["rental_usd_per_system_hour"]
    overhead = (capex * facility.overhead_fraction_per_year + facility.overhead_usd_per_year) / 12
    opex = energy + capacity + overhead + rental
    per_rack = system.systems_per_rack(rack_kw=facility.rack_kw, rack_units=facility.rack_units)
    racks = math.ceil(systems / per_rack)
    sources = {f"system.{k}": system.sources.get(k, "default") for k in used}
    sources |= {f"facility.{k}": facility.sources.get(k, "default") for k in fac}
    return TcoBreakdown(
        system=system.name,
        facility=facility.name,
        ownership=own,
        systems=systems,
        months=months,
        busy_fraction=busy_fraction,
        capex_usd=capex,
        amortization_usd_per_month=amortization,
        energy_usd_per_month=energy,
        capacity_usd_per_month=capacity,
        overhead_usd_per_month=overhead,
        rental_usd_per_month=rental,
        opex_usd_per_month=opex,
        cost_usd_per_month=amortization + opex,
        total_usd=capex + opex * months,
        racks=racks,
        floor_m2=racks * facility.floor_m2_per_rack,
        it_power_full_mw=it_full_w / 1e6,
        facility_power_full_mw=it_full_w * facility.pue / 1e6,
        average_facility_power_mw=average_w * facility.pue / 1e6,
        sources=sources,
    )


def per_unit(breakdown: TcoBreakdown, *, tasks_per_s: float, tokens_per_s: float) -> UnitCosts:
    """Cost and energy per unit of work the fleet delivers at a steady load.

    Money uses the steady monthly cost (amortized capex + opex); energy the average facility
    power at the breakdown's busy fraction; tasks/s per MW the full-load facility power (the
    budget a site must provision).

    Args:
        breakdown: from `tco`.
        tasks_per_s: tasks completed per second (at the SLO), > 0.
        tokens_per_s: output tokens per second, > 0.

    Returns:
        ``usd_per_task``, ``usd_per_mtok`` (per million output tokens), ``j_per_token``
        (facility joules per output token) and ``tasks_per_s_per_mw``.

    Raises:
        ConfigError: a rate is not positive.
    """
    if tasks_per_s <= 0 or tokens_per_s <= 0:
        raise ConfigError(
            f"tasks_per_s and tokens_per_s must be > 0, got {tasks_per_s} and {tokens_per_s}; "
            "pass the load the fleet delivers"
        )
    usd_per_s = breakdown.cost_usd_per_month / SECONDS_PER_MONTH
    return UnitCosts(
        usd_per_task=usd_per_s / tasks_per_s,
        usd_per_mtok=usd_per_s / tokens_per_s * 1e6,
        j_per_token=breakdown.average_facility_power_mw * 1e6 / tokens_per_s,
        tasks_per_s_per_mw=tasks_per_s / breakdown.facility_power_full_mw,
    )
