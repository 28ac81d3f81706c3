"""Fleet spec files: pools, routing, autoscalers, tenants, rollouts (``agentrt load FLEET``)."""

from __future__ import annotations

from collections.abc import Callable

from agentrt.errors import ConfigError
from substrates.fleet.targets import Target

__all__ = ["measure_fleet_spec"]


def measure_fleet_spec(
    path: str, virtual: bool, seed: int | None
) -> Callable[[Target], float | None]:
    """Run the fleet spec at ``path`` and return what each target measures."""
    raise ConfigError(f"{path}: fleet checks are not available yet")
