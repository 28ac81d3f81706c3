"""Many engines over time: routing, fault injection, load generation and sweeps.

Routing policies and their spec files, seeded fault injection, agents arriving as a process,
latency-vs-load curves.

Example:
    >>> from substrates import build_engine
    >>> from substrates.fleet import Router
    >>> Router({"fast": build_engine("wse3"), "gpu": build_engine("h100")}, policy="slo").policy
    'slo'
"""

from __future__ import annotations

from substrates.fleet.breaker import CircuitBreaker
from substrates.fleet.faults import FaultInjector, parse_faults
from substrates.fleet.load import LoadReport, run_load
from substrates.fleet.router import Router
from substrates.fleet.spec import RouteSpec, load_route_spec
from substrates.fleet.sweep import sweep_rates

__all__ = [
    "CircuitBreaker",
    "FaultInjector",
    "LoadReport",
    "RouteSpec",
    "Router",
    "load_route_spec",
    "parse_faults",
    "run_load",
    "sweep_rates",
]
