"""What a fleet meeting an SLO costs: sizing by simulation (`tcosize`) priced by the cost model.

`price_fleets` sizes each substrate (``wse3``, ``h100:vllm`` for a preset on a named stack) with
a `Sizer` at the target load, converts replicas to systems (each replica's chips, packed into
systems of ``chips_per_system``), and prices them with `substrates.emulated.tco`: capex, opex
per month, TCO over each horizon, and per-unit figures at the delivered load. `sweep_slos`
re-sizes for looser and tighter targets (the sizer's cache reuses the runs) for the picture of
cost vs SLO tightness.

Example:
    >>> from agentrt import Plan, Step
    >>> from substrates.fleet.targets import parse_target
    >>> plan = Plan(name="p", steps=[Step(id="a", max_output_tokens=50)])
    >>> [row] = price_fleets(plan, ["wse3"], load_per_s=1.0, target=parse_target(
    ...     "p95(e2e) <= 10s"), duration_s=30.0, options={"model": "llama-3.1-8b"})
    >>> row.systems, row.sizing.met
    (1, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrt.errors import ConfigError
from agentrt.plan import Plan
from agentrt.tool import Tool
from substrates.emulated.tco import (
    Facility,
    Ownership,
    SystemEconomics,
    TcoBreakdown,
    UnitCosts,
    default_facility,
    load_system,
    per_unit,
    tco,
)
from substrates.fleet.targets import Target, parse_target
from substrates.fleet.tcosize import DEFAULT_CAP, Sizer, Sizing

__all__ = ["FleetCost", "SloPoint", "parse_load", "price_fleets", "sweep_slos"]


def parse_load(text: str) -> tuple[float, str]:
    """``5/s`` or ``5`` -> (5.0, ``tasks``); ``2000tok/s`` -> (2000.0, ``tokens``).

    Raises:
        ConfigError: not a positive rate; the message shows what to write.
    """
    raw = text.strip().lower().replace(" ", "")
    unit = "tasks"
    for suffix, kind in (
        ("tokens/s", "tokens"), ("tok/s", "tokens"), ("tasks/s", "tasks"), ("/s", "tasks"),
    ):  # fmt: skip
        if raw.endswith(suffix):
            raw, unit = raw.removesuffix(suffix), kind
            break
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise ConfigError(
            f"--load {text!r} is not a positive rate; write tasks per second (`5/s`) or "
            "output tokens per second (`2000tok/s`)"
        )
    return value, unit


@dataclass(frozen=True, slots=True)
class FleetCost:
    """One substrate's sized fleet and its price (``systems`` None: the target was missed)."""

    substrate: str
    sizing: Sizing
    economics: SystemEconomics
    systems: int | None
    tasks_per_s: float
    tokens_per_s: float
    bills: Mapping[int, TcoBreakdown] = field(default_factory=dict)
    units: UnitCosts | None = None

    @property
    def steady(self) -> TcoBreakdown | None:
        """The breakdown at the shortest horizon (its monthly figures are the same for all)."""
        return self.bills[min(self.bills)] if self.bills else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with the sources every figure used."""
        steady = self.steady
        return {
            "substrate": self.substrate,
            "system": self.economics.display_name,
            "sizing": self.sizing.to_dict(),
            "systems": self.systems,
            "tasks_per_s": self.tasks_per_s,
            "tokens_per_s": self.tokens_per_s,
            "capex_usd": steady.capex_usd if steady else None,
            "opex_usd_per_month": steady.opex_usd_per_month if steady else None,
            "tco_usd": {str(m): b.total_usd for m, b in sorted(self.bills.items())},
            "racks": steady.racks if steady else None,
            "floor_m2": steady.floor_m2 if steady else None,
            "facility_power_full_mw": steady.facility_power_full_mw if steady else None,
            "per_unit": dict(self.units) if self.units else None,
            "breakdown": steady.model_dump(exclude={"sources"}) if steady else None,
            "sources": steady.sources if steady else {},
            "caveats": list(self.economics.caveats),
        }


def _split(substrate: str) -> tuple[str, dict[str, Any]]:
    preset, _, stack = substrate.partition(":")
    if not preset:
        raise ConfigError(f"substrate {substrate!r}: write PRESET or PRESET:STACK, e.g. h100:vllm")
    return preset, ({"stack": stack} if stack else {})


def _sizers(
    plan: Plan,
    substrates: Sequence[str],
    *,
    load_per_s: float,
    duration_s: float,
    seed: int,
    options: Mapping[str, Any],
    tools: Iterable[Tool],
) -> dict[str, Sizer]:
    if not substrates:
        raise ConfigError("no substrates to compare; e.g. --substrates wse3,h100,b200")
    tool_list = list(tools)
    sizers: dict[str, Sizer] = {}
    for name in substrates:
        preset, extra = _split(name)
        sizers[name] = Sizer(
            plan,
            preset,
            load_per_s=load_per_s,
            duration_s=duration_s,
            seed=seed,
            options={**options, **extra},
            tools=tool_list,
        )
    return sizers


def _price(
    name: str,
    sizing: Sizing,
    *,
    months: Sequence[int],
    facility: Facility,
    ownership: Ownership | None,
) -> FleetCost:
    economics = load_system(sizing.preset)
    m = sizing.measured
    delivered = sizing.load_per_s * (m.completed / m.arrivals if m.arrivals else 0.0)
    tokens = delivered * m.tokens_per_task
    if not sizing.met or delivered <= 0 or tokens <= 0:
        return FleetCost(name, sizing, economics, None, delivered, tokens)
    systems = economics.systems_for_chips(sizing.replicas * sizing.chips_per_replica)
    bills = {
        n: tco(
            economics,
            systems,
            facility=facility,
            months=n,
            busy_fraction=m.busy_fraction,
            ownership=ownership,
        )
        for n in months
    }
    units = per_unit(bills[min(bills)], tasks_per_s=delivered, tokens_per_s=tokens)
    return FleetCost(name, sizing, economics, systems, delivered, tokens, bills, units)


def price_fleets(
    plan: Plan,
    substrates: Sequence[str],
    *,
    load_per_s: float,
    target: Target,
    months: Sequence[int] = (12, 24, 36),
    duration_s: float = 120.0,
    seed: int = 1,
    cap: int = DEFAULT_CAP,
    options: Mapping[str, Any] | None = None,
    facility: Facility | None = None,
    ownership: Ownership | None = None,
    tools: Iterable[Tool] = (),
    sizers: dict[str, Sizer] | None = None,
) -> list[FleetCost]:
    """Size and price a fleet per substrate at ``load_per_s`` tasks/s under ``target``.

    ``sizers`` (filled if given, keyed by substrate) keeps the simulations for `sweep_slos`.

    Raises:
        ConfigError: a bad substrate, option, target, horizon or missing system data.
    """
    if not months or any(n < 1 for n in months):
        raise ConfigError(f"--months needs horizons >= 1, e.g. 12,24,36; got {list(months)}")
    facility = facility if facility is not None else default_facility()
    for name in substrates:  # fail on missing ownership data before simulating anything
        load_system(_split(name)[0])
    built = _sizers(
        plan,
        substrates,
        load_per_s=load_per_s,
        duration_s=duration_s,
        seed=seed,
        options=options or {},
        tools=tools,
    )
    if sizers is not None:
        sizers.update(built)
    return [
        _price(
            name,
            sizer.size(target, cap=cap),
            months=months,
            facility=facility,
            ownership=ownership,
        )
        for name, sizer in built.items()
    ]


@dataclass(frozen=True, slots=True)
class SloPoint:
    """One substrate at one SLO of a sweep (None figures: the SLO was missed)."""

    substrate: str
    slo_s: float
    systems: int | None
    usd_per_task: float | None
    usd_per_month: float | None


def sweep_slos(
    sizers: Mapping[str, Sizer],
    target: Target,
    factors: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0),
    *,
    cap: int = DEFAULT_CAP,
    facility: Facility | None = None,
    ownership: Ownership | None = None,
) -> list[SloPoint]:
    """Re-size each substrate for ``target``'s limit times each factor: cost vs SLO tightness."""
    facility = facility if facility is not None else default_facility()
    points: list[SloPoint] = []
    for factor in sorted(factors):
        limit = target.limit * factor
        slo = parse_target(f"{target.key} {target.op} {limit:.6g}s")
        for name, sizer in sizers.items():
            cost = _price(
                name, sizer.size(slo, cap=cap), months=(12,), facility=facility,
                ownership=ownership,
            )  # fmt: skip
            steady = cost.steady
            points.append(
                SloPoint(
                    substrate=name,
                    slo_s=limit,
                    systems=cost.systems,
                    usd_per_task=cost.units["usd_per_task"] if cost.units else None,
                    usd_per_month=steady.cost_usd_per_month if steady else None,
                )
            )
    return points
