"""What `agentrt tco` sizes for: a plan, a recorded trajectory or a fleet spec, told from the file.

`load_workload` reads the file and returns a `TcoWorkload`: the workload each arrival runs (a
`Plan`, whose agents run its steps, or a `Trajectory`, whose recorded conversations each arrival
replays turn by turn, as ``agentrt replay`` does) and the engine options it needs (a trajectory's
engines play its turns: ``trajectory=PATH``). A trajectory is JSON Lines (``.jsonl``, or any
file whose first character is ``{``); a fleet spec is YAML with ``pools:`` / ``tenants:``; a
plan is YAML with ``steps:``. Anything else is a `ConfigError` naming the three.

Example:
    >>> work = load_workload("docs/trajectories/research-h100.jsonl")
    >>> work.kind, sorted(work.options)
    ('trajectory', ['trajectory'])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentrt.errors import ConfigError
from agentrt.plan import Plan, load_plan
from agentrt.registry import default_registry
from agentrt.trajectory import Trajectory, read_trajectory
from substrates.fleet.fleetspec import FleetSpec, is_fleet_spec, load_fleet_spec

__all__ = ["TcoWorkload", "load_workload"]

_KINDS = "a plan (.yaml with steps:), a trajectory (.jsonl) or a fleet spec (.yaml with pools:)"


@dataclass(frozen=True, slots=True)
class TcoWorkload:
    """A workload file's content: ``plan``/``trajectory`` (with ``workload``) or ``fleet``."""

    kind: Literal["plan", "trajectory", "fleet"]
    name: str
    workload: Plan | Trajectory | None = None
    fleet: FleetSpec | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


def _first_char(path: Path) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.read(4096).lstrip()[:1]
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}; give {_KINDS}") from None


def load_workload(path: str | Path) -> TcoWorkload:
    """Read ``path`` as a plan, a trajectory or a fleet spec, whichever it is.

    Raises:
        ConfigError: the file is missing, unreadable, none of the three, or invalid as its kind.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file; give {_KINDS}")
    first = _first_char(p)
    if p.suffix.lower() == ".jsonl" or first == "{":
        trajectory = read_trajectory(p)
        name = trajectory.header.agent or p.stem
        return TcoWorkload("trajectory", name, trajectory, options={"trajectory": str(p)})
    if is_fleet_spec(p):
        spec = load_fleet_spec(p)
        return TcoWorkload("fleet", spec.name or p.stem, fleet=spec)
    if p.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"{p}: not {_KINDS}")
    plan = load_plan(p, tools=default_registry().tool_args_model)
    return TcoWorkload("plan", plan.name, plan)
