"""Routing spec files: a `Router` over registered substrates, for ``--substrate route:FILE.yaml``.

A spec names each route's registered substrate, its options and optional faults, and the policy::

    policy: slo                 # first | slo | least-time | cost | weighted
    routes:                     # in fail-over order
      wse3: {substrate: wse3}
      h100: {substrate: h100, options: {max_batch: 64, stack: trtllm}, faults: "errors=0.1"}
    by_slo: {interactive: wse3}
    by_kind: {answer: wse3}
    default: h100
    breaker: {failures: 5, cooldown_s: 30}
    hedge_after_s: 2.0          # optional

Other keys: ``weights`` (route -> weight), ``cost_budget_usd``, ``failover``, ``ewma_alpha``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentrt.errors import ConfigError
from agentrt.registry import Registry, default_registry
from agentrt.substrate import Substrate
from substrates.fleet.faults import wrap
from substrates.fleet.router import Policy, Router

__all__ = ["RouteSpec", "load_route_spec", "route"]

_STRICT = ConfigDict(extra="forbid", frozen=True)


class RouteEntry(BaseModel):
    """One route: a registered substrate, its options, and faults to inject."""

    model_config = _STRICT

    substrate: str
    options: dict[str, Any] = Field(default_factory=dict)
    faults: str | None = None


class BreakerSpec(BaseModel):
    """Circuit-breaker settings shared by every route."""

    model_config = _STRICT

    failures: int = Field(default=5, ge=1)
    cooldown_s: float = Field(default=30.0, ge=0)


class RouteSpec(BaseModel):
    """A routing spec file's content."""

    model_config = _STRICT

    policy: Policy = "first"
    routes: dict[str, RouteEntry] = Field(min_length=1)
    by_slo: dict[str, str] = Field(default_factory=dict)
    by_kind: dict[str, str] = Field(default_factory=dict)
    default: str | None = None
    weights: dict[str, float] = Field(default_factory=dict)
    cost_budget_usd: float | None = None
    failover: bool = True
    breaker: BreakerSpec = Field(default_factory=BreakerSpec)
    hedge_after_s: float | None = None
    ewma_alpha: float = Field(default=0.2, gt=0, le=1)


def load_route_spec(path: str | Path) -> RouteSpec:
    """Read and validate a routing spec file.

    Raises:
        ConfigError: the file cannot be read, is not YAML, or does not match the schema.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read routing spec {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"routing spec {path} is not valid YAML: {exc}") from exc
    try:
        return RouteSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"routing spec {path}: {where}: {first['msg']}") from exc


def route(*, spec: str, seed: int | None = None, trajectory: str | None = None) -> Router:
    """Build the `Router` a spec file describes (substrate entry point ``route``).

    Each route's substrate is built through `agentrt.registry.default_registry`, seeded from
    ``seed`` plus its position so routes do not share random streams. ``trajectory`` (a
    recorded trajectory file) is given to every route whose substrate can play one (the
    emulated engines), so the fleet answers with the recorded turns (`agentrt replay`).
    """
    parsed = load_route_spec(spec)
    registry = default_registry()
    routes: dict[str, Substrate] = {}
    for i, (name, entry) in enumerate(parsed.routes.items()):
        sub_seed = None if seed is None else seed + i
        options = dict(entry.options)
        if trajectory is not None and _takes(registry, entry.substrate, "trajectory"):
            options["trajectory"] = trajectory
        sub = registry.substrate(entry.substrate, seed=sub_seed, **options)
        if entry.faults:
            sub = wrap(sub, entry.faults, seed=sub_seed)
        routes[name] = sub
    return Router(
        routes,
        policy=parsed.policy,
        by_slo=parsed.by_slo,
        by_kind=parsed.by_kind,
        default=parsed.default,
        weights=parsed.weights,
        cost_budget_usd=parsed.cost_budget_usd,
        failover=parsed.failover,
        breaker_failures=parsed.breaker.failures,
        breaker_cooldown_s=parsed.breaker.cooldown_s,
        hedge_after_s=parsed.hedge_after_s,
        ewma_alpha=parsed.ewma_alpha,
        seed=seed,
    )


def _takes(registry: Registry, substrate: str, option: str) -> bool:
    """Whether the factory registered as ``substrate`` has the keyword ``option``."""
    factory = registry.factory("agentrt.substrates", substrate.partition(":")[0])
    try:
        return option in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
