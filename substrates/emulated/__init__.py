"""The emulated engines: the performance model and the engine that plays it on a clock.

The model: profiles, deployments and sizing, the pass model (perfmodel, comm, predict),
calibration. The engine: scheduler, content sources (a recorded trajectory among them),
`EmulatedEngine`, presets.

Example:
    >>> from substrates.emulated import build_engine
    >>> build_engine("h100", model="llama-3.1-8b").deployment.describe()
    'h100 x1 (--tp 1 --pp 1, bf16)'
"""

from __future__ import annotations

from substrates.emulated.calibration import Calibration, calibrate
from substrates.emulated.content import (
    ContentSource,
    ReplayContent,
    ScriptedContent,
    SyntheticContent,
)
from substrates.emulated.deployment import Deployment, SpecDecode
from substrates.emulated.engine import EmulatedEngine, build_engine
from substrates.emulated.predict import predict_request
from substrates.emulated.presets import PRESETS
from substrates.emulated.profiles import HardwareProfile, ModelProfile, load_hardware, load_model
from substrates.emulated.scheduler import IterCost, Scheduler
from substrates.emulated.sizing import (
    DEFAULT_MODEL,
    ContextLengthExceeded,
    build_deployment,
    check_fits,
    size_deployment,
)
from substrates.emulated.trajectory import TrajectoryContent

__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "Calibration",
    "ContentSource",
    "ContextLengthExceeded",
    "Deployment",
    "EmulatedEngine",
    "HardwareProfile",
    "IterCost",
    "ModelProfile",
    "ReplayContent",
    "Scheduler",
    "ScriptedContent",
    "SpecDecode",
    "SyntheticContent",
    "TrajectoryContent",
    "build_deployment",
    "build_engine",
    "calibrate",
    "check_fits",
    "load_hardware",
    "load_model",
    "predict_request",
    "size_deployment",
]
