"""Tenants: who sends the load, with a priority class and SLO targets (interactive vs batch).

A `Tenant` names a plan, its arrival process and what it was promised. Its runs carry the tenant
to the substrate: each step's ``slo`` becomes the tenant's class (where the plan leaves it unset),
so a `Router` with the ``slo`` policy routes interactive and batch apart, and `TenantSubstrate`
stamps the tenant's ``priority`` on every request, which emulated engines serve first.

Example:
    >>> from agentrt import Plan, Step
    >>> from substrates.fleet.arrivals import PoissonArrivals
    >>> chat = Tenant(name="chat", plan=Plan(name="p", steps=[Step(id="a")]),
    ...               arrivals=PoissonArrivals(rate=2.0), priority=10, e2e_s=8.0)
    >>> chat.slo, chat.tagged_plan().steps[0].slo, chat.meets_slo(e2e_s=3.0, ttft_s=0.4)
    ('interactive', 'interactive', True)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from agentrt.plan import Plan
from agentrt.substrate import InferenceRequest, InferenceResult, Substrate
from substrates.fleet.arrivals import ArrivalProcess

__all__ = ["Tenant", "TenantSubstrate"]


class Tenant(BaseModel):
    """One source of agent runs: a plan, when its runs arrive, its priority and SLO.

    Attributes:
        name: the tenant's label in reports.
        plan: what each of its agents runs.
        arrivals: when its agents arrive.
        slo: the SLO class its requests carry (``interactive``, ``batch``, ...).
        priority: higher is served first by engines that honour ``InferenceRequest.priority``.
        e2e_s: target end-to-end time of one agent run; None = no target.
        ttft_s: target time to first token of every model call in a run; None = no target.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    plan: Plan
    arrivals: ArrivalProcess
    slo: Literal["interactive", "batch"] | str = "interactive"
    priority: int = 0
    e2e_s: PositiveFloat | None = None
    ttft_s: PositiveFloat | None = None

    def tagged_plan(self) -> Plan:
        """The plan with this tenant's SLO class on every step that has none."""
        steps = [s if s.slo else s.model_copy(update={"slo": self.slo}) for s in self.plan.steps]
        return self.plan.model_copy(update={"steps": steps})

    def meets_slo(self, *, e2e_s: float, ttft_s: float | None) -> bool:
        """Whether a successful run with these latencies met the tenant's targets.

        ``ttft_s`` is the run's worst call's time to first token (None: it made no call).
        """
        if self.e2e_s is not None and e2e_s > self.e2e_s:
            return False
        return self.ttft_s is None or ttft_s is None or ttft_s <= self.ttft_s


class TenantSubstrate:
    """Wraps a shared substrate: stamps a tenant's ``priority`` (and SLO class) on each request.

    Closing it does not close the shared substrate: its owner does.

    Example:
        >>> from agentrt.testing import FixedLatencySubstrate
        >>> TenantSubstrate(FixedLatencySubstrate(), priority=5, slo="batch").name
        'fixed'
    """

    def __init__(self, inner: Substrate, *, priority: int, slo: str | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.priority = priority
        self.slo = slo
        self.remote = bool(getattr(inner, "remote", False))

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Forward ``request`` with the tenant's priority (and class, where it has none)."""
        update: dict[str, object] = {"priority": self.priority}
        if request.slo is None and self.slo is not None:
            update["slo"] = self.slo
        return await self.inner.infer(request.model_copy(update=update))

    async def aclose(self) -> None:
        """Nothing: the shared substrate is closed by whoever built it."""
