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
