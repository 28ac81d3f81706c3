"""Fleet spec files: pools, routing, autoscalers, tenants and rollouts (``agentrt load FLEET``).

A fleet spec is YAML, validated with ``file:line`` errors::

    duration_s: 600               # arrivals stop after this (simulated) time
    sample_s: 5                   # the time series' interval
    pools:                        # each a `Pool` of replicas of one registered substrate
      wse3:
        preset: wse3              # a registered substrate (an emulated preset)
        options: {max_batch: 32}  # its deployment options, stack included
        min: 1                    # replica bounds and the count warm at the start
        max: 4
        initial: 1
        standby: 1                # warm-pool replicas (loaded, not serving)
        cold_start_s: 45          # default: derived from the deployment
        autoscaler: {kind: queue_length, target: 2, interval_s: 5}
      h100: {preset: h100, max: 8, autoscaler: {kind: target_concurrency}}
    routing: {policy: least-time} # the `Router` between pools (any of its policies)
    tenants:
      chat:
        plan: ../plans/research.yaml
        arrivals: {kind: step, base_rate: 1, peak_rate: 20, at_s: 120}
        slo: interactive
        priority: 10
        e2e_s: 8                  # its SLO: end to end per run, and TTFT per call
        ttft_s: 0.5
    rollouts:                     # need `routing: {policy: weighted}`
      - kind: canary              # percent of traffic to `canary`; rolled back on a breach
        stable: h100
        canary: h100-vllm
        percent: 10
        slo: {p95_e2e_s: 30, max_error_rate: 0.01}
      - {kind: blue_green, blue: h100, green: h100-v2, switch_at_s: 300}

Paths are relative to the spec file. `substrates.fleet.fleetbuild.build_fleet` builds the
objects; this module holds only the schema and `load_fleet_spec`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from substrates.fleet.arrivals import ArrivalProcess
from substrates.fleet.autoscale import AutoscalerSpec
from substrates.fleet.rollout import CanarySlo
from substrates.fleet.router import Policy
from substrates.fleet.specfile import SpecSource, read_spec_source

__all__ = [
    "BlueGreenSpec",
    "CanarySpec",
    "FleetSpec",
    "PoolSpec",
    "RolloutSpec",
    "RoutingSpec",
    "TenantSpec",
    "is_fleet_spec",
    "load_fleet_spec",
]

_STRICT = ConfigDict(extra="forbid", frozen=True)
_FLEET_KEYS = frozenset({"pools", "tenants"})


class PoolSpec(BaseModel):
    """One pool: replicas of a registered substrate, their bounds, starts and autoscaler."""

    model_config = _STRICT

    preset: str = Field(min_length=1, description="A registered substrate, e.g. wse3 or h100.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="The substrate's options (model, max_batch, stack...)."
    )
    version: str = Field(default="v1", min_length=1, description="The version label.")
    min: int = Field(default=0, ge=0, description="Fewest replicas (0 = may scale to zero).")
    max: int = Field(default=4, ge=1, le=10_000, description="Most replicas.")
    initial: int | None = Field(
        default=None, ge=0, description="Replicas warm at the start; default `min`, at least 1."
    )
    standby: int = Field(default=0, ge=0, le=10_000, description="Warm-pool replicas.")
    cold_start_s: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Default: from the deployment."
    )
    warm_start_s: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="A standby replica's start."
    )
    when_cold: Literal["wait", "reject"] = "wait"
    wait_timeout_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    max_queue: int | None = Field(default=None, ge=0, description="Admission control bound.")
    autoscaler: AutoscalerSpec | None = None

    @model_validator(mode="after")
    def _bounds(self) -> PoolSpec:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}; lower min or raise max")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError(
                f"initial {self.initial} must lie within min..max ({self.min}..{self.max})"
            )
        return self

    @property
    def initial_replicas(self) -> int:
        """Replicas warm at the start: ``initial``, else ``min`` (at least one)."""
        return self.initial if self.initial is not None else max(self.min, 1)


class RoutingSpec(BaseModel):
    """How calls are spread over the pools: the `Router`'s policy and its settings."""

    model_config = _STRICT

    policy: Policy = "least-time"
    by_slo: dict[str, str] = Field(default_factory=dict)
    by_kind: dict[str, str] = Field(default_factory=dict)
    default: str | None = None
    weights: dict[str, float] = Field(default_factory=dict)
    failover: bool = True
    hedge_after_s: float | None = Field(default=None, gt=0)
    ewma_alpha: float = Field(default=0.2, gt=0, le=1)

    def names(self) -> list[tuple[str, str]]:
        """Every pool name this routing refers to, with the key that names it."""
        named = [(f"by_slo.{k}", v) for k, v in self.by_slo.items()]
        named += [(f"by_kind.{k}", v) for k, v in self.by_kind.items()]
        named += [(f"weights.{k}", k) for k in self.weights]
        if self.default is not None:
            named.append(("default", self.default))
        return named


class TenantSpec(BaseModel):
    """One tenant: a plan, its arrivals, its priority class and SLO targets."""

    model_config = _STRICT

    plan: str = Field(min_length=1, description="A plan file, relative to the spec.")
    arrivals: ArrivalProcess
    slo: str = Field(default="interactive", min_length=1)
    priority: int = 0
    e2e_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    ttft_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class CanarySpec(BaseModel):
    """A canary: ``percent`` of traffic to ``canary``, judged against ``slo`` every window."""

    model_config = _STRICT

    kind: Literal["canary"] = "canary"
    stable: str
    canary: str
    percent: float = Field(gt=0, le=100)
    slo: CanarySlo
    steps: list[float] = Field(default_factory=list)
    promote: bool = False
    drain: bool = True
    window_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    min_requests: int = Field(default=20, ge=1)
    interval_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)

    def pools(self) -> tuple[str, str]:
        """(old, new)."""
        return self.stable, self.canary


class BlueGreenSpec(BaseModel):
    """Blue-green: all traffic on ``blue`` until ``switch_at_s``, then on ``green``."""

    model_config = _STRICT

    kind: Literal["blue_green"] = "blue_green"
    blue: str
    green: str
    switch_at_s: float = Field(ge=0, allow_inf_nan=False)
    ready_timeout_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    drain_timeout_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    interval_s: float = Field(default=1.0, gt=0, allow_inf_nan=False)

    def pools(self) -> tuple[str, str]:
        """(old, new)."""
        return self.blue, self.green


#: One rollout of a fleet spec, told apart by ``kind``.
RolloutSpec = Annotated[CanarySpec | BlueGreenSpec, Field(discriminator="kind")]


class FleetSpec(BaseModel):
    """A fleet spec file's content (see the module docstring)."""

    model_config = _STRICT

    name: str | None = None
    duration_s: float = Field(gt=0, le=30 * 86_400, allow_inf_nan=False)
    sample_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    seed: int = 0
    pools: dict[str, PoolSpec] = Field(min_length=1)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    tenants: dict[str, TenantSpec] = Field(min_length=1)
    rollouts: list[RolloutSpec] = Field(default_factory=list)
    drain_timeout_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    _source: SpecSource | None = PrivateAttr(default=None)

    def where(self, *loc: str | int) -> str:
        """``file:line: a.b`` of the value at ``loc`` when the spec came from a file."""
        if self._source is None:
            return ".".join(str(p) for p in loc)
        return self._source.where(loc)

    @model_validator(mode="after")
    def _names_exist(self) -> FleetSpec:
        known = ", ".join(self.pools)
        for where, name in self.routing.names():
            if name not in self.pools:
                raise ValueError(f"routing.{where} names pool {name!r}; the pools are {known}")
        for i, rollout in enumerate(self.rollouts):
            for named in rollout.pools():
                if named not in self.pools:
                    raise ValueError(f"rollouts.{i} names pool {named!r}; the pools are {known}")
        if self.rollouts and self.routing.policy != "weighted":
            raise ValueError(
                "a rollout shifts the router's weights: set `routing: {policy: weighted}`"
            )
        if self.sample_s > self.duration_s:
            raise ValueError(
                f"sample_s {self.sample_s:g} is longer than duration_s {self.duration_s:g}; "
                "sample more often"
            )
        return self

    def resolve(self, base: Path) -> FleetSpec:
        """This spec with the tenants' plan paths relative to ``base`` (the spec's folder)."""
        tenants = {
            name: t.model_copy(update={"plan": str(base / t.plan)})
            for name, t in self.tenants.items()
        }
        return self.model_copy(update={"tenants": tenants})


def is_fleet_spec(path: Path) -> bool:
    """Whether the YAML file at ``path`` looks like a fleet spec (``pools:`` or ``tenants:``).

    A cheap sniff for ``agentrt load FILE``: plans have ``steps``, fleet specs ``pools``; a
    fleet spec missing one of the two is still one (and its error says what is missing).
    """
    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:65_536]
    except OSError:
        return False
    keys = {line.partition(":")[0].strip() for line in head.splitlines() if line[:1].isalpha()}
    return bool(keys & _FLEET_KEYS)


def load_fleet_spec(path: str | Path) -> FleetSpec:
    """Read and validate the fleet spec at ``path``; plan paths resolved against its folder.

    Raises:
        ConfigError: the file cannot be read or does not match the schema (``file:line``).
    """
    p = Path(path)
    spec, source = read_spec_source(p, FleetSpec, what="fleet spec")
    resolved = spec.resolve(p.parent)
    resolved._source = source
    return resolved
