"""Many engines over time: routing, fault injection, load, pools, autoscaling, rollouts, SLO gates.

Routing policies and their spec files, seeded fault injection, agents arriving as a process,
latency-vs-load curves; pools of replicas with cold and warm starts (`Pool`), autoscalers
(`ScalingController`), canary and blue-green rollouts (`Canary`, `BlueGreen`), tenants and their
arrival processes, the open-loop fleet run (`run_fleet`, `FleetReport`) and fleet spec files
(`load_fleet_spec`, `run_fleet_spec`).

Example:
    >>> from substrates import build_engine
    >>> from substrates.fleet import Router
    >>> Router({"fast": build_engine("wse3"), "gpu": build_engine("h100")}, policy="slo").policy
    'slo'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from substrates.fleet.breaker import CircuitBreaker
from substrates.fleet.faults import FaultInjector, parse_faults
from substrates.fleet.load import LoadReport, run_load
from substrates.fleet.router import Router
from substrates.fleet.spec import RouteSpec, load_route_spec
from substrates.fleet.sweep import sweep_rates

if TYPE_CHECKING:
    from substrates.fleet.arrivals import parse_arrivals
    from substrates.fleet.autoscale import ScalingController, parse_autoscaler
    from substrates.fleet.fleetbuild import build_fleet, run_fleet_spec
    from substrates.fleet.fleetreport import FleetReport
    from substrates.fleet.fleetrun import run_fleet
    from substrates.fleet.fleetspec import FleetSpec, load_fleet_spec
    from substrates.fleet.pool import Pool
    from substrates.fleet.rollout import BlueGreen, Canary
    from substrates.fleet.tenants import Tenant

#: Fleet operations, imported on first use: every command that imports `substrates` (every
#: emulated preset) would otherwise pay for their pydantic models at start-up (~60 ms).
_LAZY = {
    "parse_arrivals": "arrivals",
    "ScalingController": "autoscale",
    "parse_autoscaler": "autoscale",
    "build_fleet": "fleetbuild",
    "run_fleet_spec": "fleetbuild",
    "FleetReport": "fleetreport",
    "run_fleet": "fleetrun",
    "FleetSpec": "fleetspec",
    "load_fleet_spec": "fleetspec",
    "Pool": "pool",
    "BlueGreen": "rollout",
    "Canary": "rollout",
    "Tenant": "tenants",
}

__all__ = [
    "BlueGreen",
    "Canary",
    "CircuitBreaker",
    "FaultInjector",
    "FleetReport",
    "FleetSpec",
    "LoadReport",
    "Pool",
    "RouteSpec",
    "Router",
    "ScalingController",
    "Tenant",
    "build_fleet",
    "load_fleet_spec",
    "load_route_spec",
    "parse_arrivals",
    "parse_autoscaler",
    "parse_faults",
    "run_fleet",
    "run_fleet_spec",
    "run_load",
    "sweep_rates",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'substrates.fleet' has no attribute {name!r}")
    return getattr(importlib.import_module(f"substrates.fleet.{module}"), name)
