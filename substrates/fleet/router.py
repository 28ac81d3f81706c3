"""`Router`: one `Substrate` that spreads calls over named substrates, with fail-over.

Per call the router orders the routes it may use, most wanted first, and tries them in that
order until one answers:

1. a step's ``substrate`` hint (``InferenceRequest.substrate_hint``) naming a route comes first;
2. then the **policy** picks:

   - ``first``: the routes in their declared order (a primary and its stand-bys);
   - ``slo``: ``by_slo[request.slo]``, else ``by_kind[request.step_kind]``, else ``default``
     (e.g. ``interactive`` -> a wafer-scale engine, everything else -> a GPU cluster);
   - ``least-time``: the least estimated completion time, ``(1 + depth) * service_s`` where
     ``depth`` is the queue per running request from the substrate's ``statistics()`` when it has
     one, else the router's own in-flight calls to it, and ``service_s`` an EWMA of its observed
     latencies (a route never observed yet is tried first);
   - ``cost``: the fastest route (by latency EWMA) whose expected cost still fits what is left of
     ``cost_budget_usd``; once the budget is spent, the cheapest;
   - ``weighted``: a seeded random pick by ``weights`` (a canary is a small weight);

3. the other routes follow in declared order, for fail-over.

A route whose **circuit breaker** (`substrates.fleet.breaker.CircuitBreaker`) is open is
skipped. The breaker opens after ``breaker_failures`` consecutive retryable failures, lets one
probe through (half-open) after ``breaker_cooldown_s`` on the run's clock, and closes when a probe
succeeds (a failed probe opens it again). Only retryable errors fail over; others (a bad request)
are raised at once. With ``hedge_after_s``, a call that
has not finished after that delay (or failed sooner) is also sent to the next route; the first
answer wins and the other call is cancelled.

The decision lands on the chat span through ``InferenceResult.attributes``:
``agentrt.route.substrate``, ``agentrt.route.reason``, ``agentrt.route.failovers`` (and
``agentrt.route.hedged`` when a hedge was sent).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal, final

import anyio

from agentrt import current_clock
from agentrt.errors import ConfigError, RetryableError, SubstrateUnavailable
from agentrt.substrate import InferenceRequest, InferenceResult, Substrate
from substrates.fleet.breaker import CircuitBreaker

__all__ = ["POLICIES", "Policy", "Router", "statistics_of"]

Policy = Literal["first", "slo", "least-time", "cost", "weighted"]
POLICIES: tuple[Policy, ...] = ("first", "slo", "least-time", "cost", "weighted")


def statistics_of(substrate: Substrate) -> Any | None:
    """The ``statistics()`` snapshot of ``substrate`` or of what it wraps (``.inner``), or None."""
    seen = 0
    current: Any = substrate
    while current is not None and seen < 8:
        stats = getattr(current, "statistics", None)
        if callable(stats):
            return stats()
        current = getattr(current, "inner", None)
        seen += 1
    return None


def _check_weights(weights: Mapping[str, float]) -> None:
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ConfigError("the weighted policy needs non-negative weights with a positive sum")


@final
class Router:
    """A `Substrate` that routes each call to one of ``routes`` by a policy, with fail-over.

    Example:
        >>> from agentrt.testing import FixedLatencySubstrate
        >>> fast = FixedLatencySubstrate(latency_s=0.1, name="wse3")
        >>> bulk = FixedLatencySubstrate(latency_s=1.0, name="h100")
        >>> router = Router({"wse3": fast, "h100": bulk}, policy="slo",
        ...                 by_slo={"interactive": "wse3"}, default="h100")

    Args:
        routes: name -> substrate, in fail-over order.
        policy: how the first choice is made (see the module docs).
        by_slo: SLO class -> route, for ``slo``.
        by_kind: step kind -> route, for ``slo`` (after ``by_slo``).
        default: the ``slo`` policy's route when neither table matches; default the first route.
        weights: route -> weight, for ``weighted``.
        cost_budget_usd: total spend allowed, for ``cost``.
        failover: try the other routes after a retryable failure.
        breaker_failures: consecutive failures that open a route's breaker.
        breaker_cooldown_s: how long a breaker stays open before a probe.
        hedge_after_s: send a second call to the next route after this delay; None = never.
        ewma_alpha: weight of the newest observation in the latency and cost averages.
        seed: seeds the weighted split.
        name: this substrate's name.
    """

    def __init__(
        self,
        routes: Mapping[str, Substrate],
        *,
        policy: Policy = "first",
        by_slo: Mapping[str, str] | None = None,
        by_kind: Mapping[str, str] | None = None,
        default: str | None = None,
        weights: Mapping[str, float] | None = None,
        cost_budget_usd: float | None = None,
        failover: bool = True,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 30.0,
        hedge_after_s: float | None = None,
        ewma_alpha: float = 0.2,
        seed: int | None = None,
        name: str = "router",
    ) -> None:
        if not routes:
            raise ConfigError("a router needs at least one route")
        if policy not in POLICIES:
            raise ConfigError(f"unknown routing policy {policy!r}; known: {', '.join(POLICIES)}")
        self.routes = dict(routes)
        self.by_slo = dict(by_slo or {})
        self.by_kind = dict(by_kind or {})
        self.default = default if default is not None else next(iter(self.routes))
        self.weights = dict(weights or {})
        named = [*self.by_slo.values(), *self.by_kind.values(), self.default, *self.weights]
        unknown = sorted({n for n in named if n not in self.routes})
        if unknown:
            raise ConfigError(
                f"the router names unknown route(s) {', '.join(unknown)}; "
                f"routes: {', '.join(self.routes)}"
            )
        if policy == "weighted":
            _check_weights(self.weights)
        if policy == "cost" and cost_budget_usd is None:
            raise ConfigError("the cost policy needs cost_budget_usd")
        if hedge_after_s is not None and hedge_after_s < 0:
            raise ConfigError(f"hedge_after_s must be >= 0, got {hedge_after_s}")
        self.policy: Policy = policy
        self.cost_budget_usd = cost_budget_usd
        self.failover = failover
        self.hedge_after_s = hedge_after_s
        self.alpha = ewma_alpha
        self.name = name
        self.breakers = {
            n: CircuitBreaker(failures=breaker_failures, cooldown_s=breaker_cooldown_s)
            for n in self.routes
        }
        self.latency_s: dict[str, float | None] = dict.fromkeys(self.routes)
        self.cost_per_call: dict[str, float | None] = dict.fromkeys(self.routes)
        self.inflight: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.failovers = 0
        self.hedges = 0
        self.spent_usd = 0.0
        self._rng = random.Random(seed)

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the ``weighted`` policy's weights at run time (a canary shift, a switch).

        Calls already routed keep their route; the next pick uses the new weights.

        Raises:
            ConfigError: a weight names an unknown route, is negative, or they sum to 0.
        """
        unknown = sorted(n for n in weights if n not in self.routes)
        if unknown:
            raise ConfigError(
                f"weights name unknown route(s) {', '.join(unknown)}; "
                f"routes: {', '.join(self.routes)}"
            )
        _check_weights(weights)
        self.weights = dict(weights)

    # -- choosing --------------------------------------------------------------------------------

    def estimate_s(self, name: str) -> float:
        """Estimated completion time of a new call on route ``name`` (``least-time``)."""
        service = self.latency_s[name]
        if service is None:
            return 0.0
        stats = statistics_of(self.routes[name])
        if stats is not None:
            depth = float(stats.queued) / max(1, int(stats.running))
        else:
            depth = float(self.inflight[name])
        return (1.0 + depth) * service

    def choose(self, request: InferenceRequest) -> tuple[list[str], str]:
        """The routes to try for ``request``, in order, and why the first one."""
        names = list(self.routes)
        first, reason = self._pick(request, names)
        order = [first, *(n for n in names if n != first)]
        return order, reason

    def _pick(self, request: InferenceRequest, names: list[str]) -> tuple[str, str]:
        hint = request.substrate_hint
        if hint is not None and hint in self.routes:
            return hint, f"hint: the step asks for {hint}"
        policy = self.policy
        if policy == "slo":
            if request.slo is not None and request.slo in self.by_slo:
                return self.by_slo[request.slo], f"slo: {request.slo}"
            if request.step_kind is not None and request.step_kind in self.by_kind:
                return self.by_kind[request.step_kind], f"kind: {request.step_kind}"
            return self.default, "slo: default"
        if policy == "least-time":
            best = min(names, key=self.estimate_s)
            return best, f"least-time: {self.estimate_s(best):.4g} s estimated"
        if policy == "cost":
            return self._pick_by_cost(names)
        if policy == "weighted":
            pool = [n for n in names if self.weights.get(n, 0) > 0]
            pick = self._rng.choices(pool, weights=[self.weights[n] for n in pool])[0]
            return pick, f"weighted: {self.weights[pick]:g} of {sum(self.weights.values()):g}"
        return names[0], "first: primary"

    def _pick_by_cost(self, names: list[str]) -> tuple[str, str]:
        assert self.cost_budget_usd is not None
        left = self.cost_budget_usd - self.spent_usd

        def speed(n: str) -> float:
            latency = self.latency_s[n]
            return 0.0 if latency is None else latency

        def cost(n: str) -> float:
            per_call = self.cost_per_call[n]
            return 0.0 if per_call is None else per_call

        fitting = [n for n in names if cost(n) <= left]
        if fitting:
            best = min(fitting, key=speed)
            return best, f"cost: fastest within ${left:.4g} left"
        cheapest = min(names, key=cost)
        return cheapest, "cost: budget spent, cheapest"

    # -- calling ---------------------------------------------------------------------------------

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Route ``request``; fail over on retryable errors.

        Raises:
            RetryableError: every usable route failed (the last error), or every breaker is open
                (`SubstrateUnavailable` with ``retry_after_s`` until the first probe).
        """
        order, reason = self.choose(request)
        clock = current_clock()
        pending = list(order) if self.failover else order[:1]
        failovers = 0
        hedged = False
        tried = False
        last: RetryableError | None = None

        def next_allowed() -> str | None:
            while pending:
                name = pending.pop(0)
                if self.breakers[name].allow(clock.current_time()):
                    return name
            return None

        while (name := next_allowed()) is not None:
            if not tried and name != order[0]:
                reason += f"; {order[0]} circuit open"
            tried = True
            backup = next_allowed() if self.hedge_after_s is not None else None
            if backup is not None:
                hedged = True
                winner, result, errors = await self._hedged(request, (name, backup))
                failovers += len(errors)
                if result is not None:
                    return self._annotate(result, winner, reason, failovers, hedged)
                last = errors[-1]
                continue
            try:
                result = await self._call(name, request)
            except RetryableError as exc:
                last = exc
                failovers += 1
                continue
            return self._annotate(result, name, reason, failovers, hedged)
        if last is None:
            now = clock.current_time()
            wait = min(self.breakers[n].reopens_at() for n in order) - now
            raise SubstrateUnavailable(
                f"{self.name}: every route's circuit is open ({', '.join(order)})",
                retry_after_s=max(0.0, wait),
            )
        self.failovers += failovers
        raise last

    async def _call(self, name: str, request: InferenceRequest) -> InferenceResult:
        clock = current_clock()
        t0 = clock.current_time()
        breaker = self.breakers[name]
        self.inflight[name] += 1
        settled = False
        try:
            result = await self.routes[name].infer(request)
            settled = True
        except RetryableError:
            settled = True
            self.failures[name] += 1
            breaker.record_failure(clock.current_time())
            raise
        finally:
            self.inflight[name] -= 1
            if not settled:  # cancelled, or a non-retryable error: no verdict on the route
                breaker.release()
        t1 = clock.current_time()
        breaker.record_success(t1)
        self.served[name] += 1
        self._observe(name, t1 - t0, result.cost_usd)
        return result

    def _observe(self, name: str, latency_s: float, cost_usd: float) -> None:
        a = self.alpha
        old = self.latency_s[name]
        self.latency_s[name] = latency_s if old is None else (1 - a) * old + a * latency_s
        old_cost = self.cost_per_call[name]
        self.cost_per_call[name] = (
            cost_usd if old_cost is None else (1 - a) * old_cost + a * cost_usd
        )
        self.spent_usd += cost_usd

    async def _hedged(
        self, request: InferenceRequest, pair: tuple[str, str]
    ) -> tuple[str, InferenceResult | None, list[RetryableError]]:
        """Call ``pair[0]``; after ``hedge_after_s`` (or its failure) also ``pair[1]``.

        The first success wins and the other call is cancelled; if both fail, the last error.
        """
        assert self.hedge_after_s is not None
        delay = self.hedge_after_s
        won: list[tuple[str, InferenceResult]] = []
        errors: list[RetryableError] = []
        primary_failed = anyio.Event()
        self.hedges += 1

        async with anyio.create_task_group() as tg:

            async def attempt(name: str, wait_s: float) -> None:
                if wait_s > 0:
                    with anyio.move_on_after(wait_s):
                        await primary_failed.wait()
                try:
                    result = await self._call(name, request)
                except RetryableError as exc:
                    errors.append(exc)
                    if name == pair[0]:
                        primary_failed.set()
                    return
                if not won:
                    won.append((name, result))
                    tg.cancel_scope.cancel()

            tg.start_soon(attempt, pair[0], 0.0)
            tg.start_soon(attempt, pair[1], delay)
        if won:
            return won[0][0], won[0][1], errors
        return pair[1], None, errors

    def _annotate(
        self, result: InferenceResult, name: str, reason: str, failovers: int, hedged: bool
    ) -> InferenceResult:
        self.failovers += failovers
        attributes: dict[str, str | int | float | bool] = {
            **result.attributes,
            "agentrt.route.substrate": name,
            "agentrt.route.reason": reason,
            "agentrt.route.failovers": failovers,
            "agentrt.route.policy": self.policy,
        }
        if hedged:
            attributes["agentrt.route.hedged"] = True
        return result.model_copy(update={"attributes": attributes})

    async def aclose(self) -> None:
        """Close every route."""
        for substrate in self.routes.values():
            await substrate.aclose()

    def __repr__(self) -> str:
        return f"Router({list(self.routes)}, policy={self.policy!r})"
