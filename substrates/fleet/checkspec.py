"""The check spec of ``agentrt check``: what to run and the SLO targets its measurements must meet.

A check spec lists checks; each runs a plan on a substrate under Poisson load (the
`run_load_study` of ``agentrt load``) or runs a fleet spec (``fleet: FILE.yaml``), in virtual time
unless ``--real``, and compares the measurements with its targets::

    checks:
      - name: research-on-wse3
        plan: ../plans/research.yaml     # paths are relative to this file
        substrate: wse3                  # a registered substrate or route:FILE.yaml
        # trajectory: run.json           # play a recorded trajectory's turns (emulated engines)
        options: {max_batch: 64}         # the substrate's options
        agents: 40
        arrival_rate: 2.0                # arrivals per second (Poisson)
        slo_s: 60                        # end-to-end SLO of slo_attainment
        targets:
          - p95(e2e) <= 8s
          - p99(ttft) <= 500ms
          - slo_attainment >= 0.99
          - cost_per_task <= $0.01
      - name: spike
        fleet: spike.yaml
        targets: [p99(e2e, tenant=interactive) <= 30s, lost == 0]

How each metric is measured: `measure_load` (a plan on a substrate) and
``substrates.fleet.fleetspec`` (a fleet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from agentrt.compare import percentile
from substrates.fleet.load import LoadReport
from substrates.fleet.targets import Target, TargetError, parse_target

__all__ = ["Check", "CheckSpec", "TargetExpr", "measure_load", "measure_samples"]

_STRICT = ConfigDict(extra="forbid", frozen=True)


def _target(value: Any) -> Target:
    if isinstance(value, Target):
        return value
    if not isinstance(value, str):
        raise ValueError(f'a target is a string like "p95(e2e) <= 8s", not {value!r}')
    try:
        return parse_target(value)
    except TargetError as exc:
        raise ValueError(str(exc)) from None


#: A target expression in a spec: a string parsed by `parse_target` (errors name its line).
TargetExpr = Annotated[Target, BeforeValidator(_target)]


class Check(BaseModel):
    """One check: a plan on a substrate (or a fleet spec) and the targets it must meet."""

    model_config = _STRICT

    name: str | None = None
    plan: str | None = None
    substrate: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    faults: str | None = None
    trajectory: str | None = None
    fleet: str | None = None
    agents: int = Field(default=100, ge=1, le=1_000_000)
    arrival_rate: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    duration_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    slo_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    seed: int | None = None
    targets: list[TargetExpr] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_subject(self) -> Check:
        if self.fleet is None and (self.plan is None or self.substrate is None):
            raise ValueError(
                "a check runs `plan:` on `substrate:`, or a `fleet:` spec; add the missing key"
            )
        if self.fleet is not None and (self.plan is not None or self.substrate is not None):
            raise ValueError("a check runs either `fleet:` or `plan:` + `substrate:`, not both")
        if self.fleet is not None and self.trajectory is not None:
            raise ValueError("`trajectory:` plays recorded turns on `substrate:`; a fleet has none")
        if self.fleet is None:
            scoped = next((t for t in self.targets if t.scope), None)
            if scoped is not None:
                raise ValueError(
                    f"target {scoped.text!r} names a tenant or pool; only a `fleet:` check "
                    "has those"
                )
            if self.slo_s is None and any(t.metric == "slo_attainment" for t in self.targets):
                raise ValueError("slo_attainment needs the SLO: add `slo_s:` (seconds, e2e)")
        return self

    def label(self, index: int) -> str:
        """The check's name, or one made from what it runs."""
        if self.name:
            return self.name
        if self.fleet is not None:
            return Path(self.fleet).stem
        return f"{Path(self.plan or 'plan').stem}@{self.substrate}#{index + 1}"

    def resolve(self, base: Path) -> Check:
        """This check with its file paths relative to ``base`` (the spec's folder)."""

        def rel(p: str | None) -> str | None:
            return None if p is None else str(base / p)

        substrate = self.substrate
        if substrate is not None and substrate.startswith("route:"):
            substrate = "route:" + str(base / substrate.removeprefix("route:"))
        options = dict(self.options)
        if self.trajectory is not None:
            options["trajectory"] = rel(self.trajectory)
        return self.model_copy(
            update={
                "plan": rel(self.plan),
                "fleet": rel(self.fleet),
                "trajectory": rel(self.trajectory),
                "substrate": substrate,
                "options": options,
            }
        )


class CheckSpec(BaseModel):
    """A check spec file's content: its checks, run in order."""

    model_config = _STRICT

    checks: list[Check] = Field(min_length=1)
    seed: int = 0


def measure_samples(target: Target, e2e_s: list[float], ttft_s: list[float]) -> float | None:
    """A percentile target's value over latency samples (None when there are none)."""
    q = target.percentile
    values = e2e_s if target.quantity == "e2e" else ttft_s
    return percentile(values, q) if q is not None and values else None


def measure_load(report: LoadReport, target: Target) -> float | None:
    """What ``target`` measures in a finished load run (a plan on a substrate).

    ``cost_per_task`` is the whole cost over the completed runs (failed runs' cost counts);
    ``error_rate`` is failed over arrivals; ``rejected`` counts runs failed by admission
    control (``RateLimited``); ``throughput`` is completed runs per simulated second.
    """
    if target.percentile is not None:
        return measure_samples(target, report.e2e_s, report.ttft_s)
    arrivals = report.arrivals or None
    match target.metric:
        case "slo_attainment":
            return report.within_slo / arrivals if arrivals else None
        case "error_rate":
            return report.failed / arrivals if arrivals else None
        case "cost_per_task":
            return report.cost_usd / report.completed if report.completed else None
        case "rejected":
            return float(
                sum(n for why, n in report.failure_reasons.items() if "RateLimited" in why)
            )
        case "lost":
            return float(report.lost)
        case "throughput":
            return report.completed / report.sim_s if report.sim_s > 0 else None
    return None
