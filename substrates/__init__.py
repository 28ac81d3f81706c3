"""Built-in inference substrates for agentrt: emulated wafer-scale and GPU engines and friends.

The public nouns are importable from the package root::

    from substrates import EmulatedEngine, FaultInjector, Router, build_engine

Example:
    >>> from substrates import PRESETS, build_engine
    >>> "wse3" in PRESETS
    True
    >>> build_engine("wse3", model="llama-3.1-8b").deployment.describe()
    'wse3 x1 (bf16)'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from substrates.emulated import (
    PRESETS,
    Calibration,
    Deployment,
    EmulatedEngine,
    IterCost,
    Scheduler,
    build_engine,
    calibrate,
    size_deployment,
)
from substrates.fleet import FaultInjector, Router, RouteSpec, load_route_spec

if TYPE_CHECKING:
    from substrates.http import OpenAIHTTPSubstrate

__all__ = [
    "PRESETS",
    "Calibration",
    "Deployment",
    "EmulatedEngine",
    "FaultInjector",
    "IterCost",
    "OpenAIHTTPSubstrate",
    "RouteSpec",
    "Router",
    "Scheduler",
    "build_engine",
    "calibrate",
    "load_route_spec",
    "size_deployment",
]


def __getattr__(name: str) -> Any:
    # The HTTP client needs httpx (the `serve` extra): imported on first use, so that the
    # engines, fleets and `agentrt check` work on a plain `pip install agentrt`.
    if name == "OpenAIHTTPSubstrate":
        from substrates.http import OpenAIHTTPSubstrate

        return OpenAIHTTPSubstrate
    raise AttributeError(f"module 'substrates' has no attribute {name!r}")
