"""What a fleet meeting an SLO costs: sizing by simulation (`tcosize`) priced by the cost model.

`price_fleets` sizes each substrate (``wse3``, ``h100:vllm`` for a preset on a named stack)
with a `Sizer` at the target load, one `size_substrate` task per substrate on an `Executor`
(here by default; ``processes`` or ``ray`` run substrates side by side), converts replicas to
systems (each replica's chips, packed into systems of ``chips_per_system``), and prices them
with `substrates.emulated.tco`: capex, opex per month, TCO over each horizon, and per-unit
figures at the delivered load. ``sweep_factors`` re-sizes for looser and tighter targets in the
same task (the sizer's cache reuses the runs); `slo_points` prices them for the picture of cost
vs SLO tightness.

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
from agentrt.executors import Executor, LocalExecutor, OnDone
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
from substrates.fleet.study import tools_for
from substrates.fleet.targets import Target, parse_target
from substrates.fleet.tcorun import Workload
from substrates.fleet.tcosize import DEFAULT_CAP, Sizer, Sizing

__all__ = [
    "FleetCost",
    "SizedSubstrate",
    "SloPoint",
    "parse_load",
    "price_fleets",
    "price_sizing",
    "size_substrate",
    "slo_points",
]


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
    sweep: tuple[Sizing, ...] = ()
    simulations: int = 0

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
            "simulations": self.simulations,
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


@dataclass(frozen=True, slots=True)
class SizedSubstrate:
    """What `size_substrate` found for one substrate: the sizing, the sweep's, the effort."""

    substrate: str
    sizing: Sizing
    sweep: tuple[Sizing, ...]
    simulations: int


def size_substrate(
    *,
    workload: Workload,
    substrate: str,
    load_per_s: float,
    target: str,
    duration_s: float,
    seed: int,
    cap: int,
    options: Mapping[str, Any],
    tools: Sequence[Tool] | None = None,
    sweep_limits_s: Sequence[float] = (),
) -> SizedSubstrate:
    """Size one substrate for ``target`` (and each sweep limit): an `Executor` task.

    Module-level and picklable, so ``--executor processes`` can run one substrate per worker;
    ``tools`` None builds the plan's tool twins here (tools need not pickle).

    Example:
        >>> from agentrt import Plan, Step
        >>> plan = Plan(name="p", steps=[Step(id="a", max_output_tokens=50)])
        >>> sized = size_substrate(workload=plan, substrate="b200", load_per_s=2.0,
        ...     target="p95(e2e) <= 10s", duration_s=20.0, seed=1, cap=8,
        ...     options={"model": "llama-3.1-8b"})
        >>> sized.sizing.replicas, sized.sizing.met
        (1, True)
    """
    preset, extra = _split(substrate)
    if tools is None:
        tools = tools_for(workload, virtual=True) if isinstance(workload, Plan) else []
    sizer = Sizer(
        workload, preset, load_per_s=load_per_s, duration_s=duration_s, seed=seed,
        options={**options, **extra}, tools=tools,
    )  # fmt: skip
    parsed = parse_target(target)
    sizing = sizer.size(parsed, cap=cap)
    # Loosest first: a run stopped early on a loose limit also proves every tighter one missed.
    sweep = {
        limit: sizer.size(parse_target(f"{parsed.key} {parsed.op} {limit:.6g}s"), cap=cap)
        for limit in sorted(sweep_limits_s, reverse=True)
    }
    ordered = tuple(sweep[limit] for limit in sweep_limits_s)
    return SizedSubstrate(substrate, sizing, ordered, sizer.simulations)


def price_sizing(
    name: str,
    sizing: Sizing,
    *,
    months: Sequence[int] = (12, 24, 36),
    facility: Facility | None = None,
    ownership: Ownership | None = None,
    sweep: tuple[Sizing, ...] = (),
    simulations: int = 0,
) -> FleetCost:
    """Price one substrate's `Sizing` (as `price_fleets` does): systems, TCO, per-unit costs.

    Raises:
        ConfigError: the preset has no system data.
    """
    facility = facility if facility is not None else default_facility()
    economics = load_system(sizing.preset)
    m = sizing.measured
    delivered = sizing.load_per_s * (m.completed / m.arrivals if m.arrivals else 0.0)
    tokens = delivered * m.tokens_per_task
    if not sizing.met or delivered <= 0 or tokens <= 0:
        return FleetCost(name, sizing, economics, None, delivered, tokens, sweep=sweep,
                         simulations=simulations)  # fmt: skip
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
    return FleetCost(name, sizing, economics, systems, delivered, tokens, bills, units,
                     sweep=sweep, simulations=simulations)  # fmt: skip


def price_fleets(
    workload: Workload,
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
    tools: Iterable[Tool] | None = None,
    sweep_factors: Sequence[float] = (),
    executor: Executor | None = None,
    on_done: OnDone | None = None,
) -> list[FleetCost]:
    """Size and price a fleet per substrate at ``load_per_s`` tasks/s under ``target``.

    ``workload`` is a plan, or a trajectory (then ``options`` carries ``trajectory=PATH``).
    Each substrate is sized by one `size_substrate` task on ``executor`` (default: here, one
    after another); ``sweep_factors`` also sizes each for ``target``'s limit times each factor
    (`slo_points` prices them). ``tools`` None: the plan's registered tools' twins.
    ``on_done(finished, total)`` is called as each substrate is sized (a progress bar).

    Raises:
        ConfigError: a bad substrate, option, target, horizon or missing system data.
    """
    if not months or any(n < 1 for n in months):
        raise ConfigError(f"--months needs horizons >= 1, e.g. 12,24,36; got {list(months)}")
    if not substrates:
        raise ConfigError("no substrates to compare; e.g. --substrates wse3,h100,b200")
    facility = facility if facility is not None else default_facility()
    for name in substrates:  # fail on bad names and missing data before simulating anything
        preset, extra = _split(name)
        load_system(preset)
        Sizer(workload, preset, load_per_s=load_per_s, options={**(options or {}), **extra})
    shared = {
        "workload": workload, "load_per_s": load_per_s, "target": target.text,
        "duration_s": duration_s, "seed": seed, "cap": cap, "options": dict(options or {}),
        "tools": list(tools) if tools is not None else None,
        "sweep_limits_s": [target.limit * f for f in sweep_factors],
    }  # fmt: skip
    params = [{**shared, "substrate": name} for name in substrates]
    runner = executor if executor is not None else LocalExecutor()
    sized = runner.map(size_substrate, params, label=lambda p: str(p["substrate"]), on_done=on_done)
    return [
        price_sizing(
            s.substrate,
            s.sizing,
            months=months,
            facility=facility,
            ownership=ownership,
            sweep=s.sweep,
            simulations=s.simulations,
        )
        for s in sized
    ]


@dataclass(frozen=True, slots=True)
class SloPoint:
    """One substrate at one SLO of a sweep (None figures: the SLO was missed)."""

    substrate: str
    slo_s: float
    systems: int | None
    usd_per_task: float | None
    usd_per_month: float | None


def slo_points(
    costs: Sequence[FleetCost],
    *,
    facility: Facility | None = None,
    ownership: Ownership | None = None,
) -> list[SloPoint]:
    """Price each substrate's sweep sizings (`price_fleets` ``sweep_factors``): cost vs SLO."""
    facility = facility if facility is not None else default_facility()
    points: list[SloPoint] = []
    for cost in costs:
        for sizing in cost.sweep:
            priced = price_sizing(
                cost.substrate, sizing, months=(12,), facility=facility, ownership=ownership
            )
            steady = priced.steady
            points.append(
                SloPoint(
                    substrate=cost.substrate,
                    slo_s=sizing.target.limit,
                    systems=priced.systems,
                    usd_per_task=priced.units["usd_per_task"] if priced.units else None,
                    usd_per_month=steady.cost_usd_per_month if steady else None,
                )
            )
    return sorted(points, key=lambda p: p.slo_s)
