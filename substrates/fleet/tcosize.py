"""Fleet sizing by simulation: the fewest replicas whose pool meets ``p95(e2e) <= X`` at a load.

`Sizer` runs a plan's agents arriving open-loop as a Poisson process at the target rate on a
`Pool` of N warm replicas of one emulated preset (built with `build_engine`), for a fixed
simulated duration in virtual time, and measures the p95 of the runs' end-to-end times. An
arrival that does not complete (failed, shed, still running after the drain) counts as infinitely
slow, so a pool that drops more than 5% of its runs never meets a p95 target. `Sizer.size`
doubles N until the target is met, then bisects between the last miss and the first hit; every
measurement is cached, so sizing for several SLOs reuses the same runs. The search is capped,
and stops early when doubling no longer lowers the percentile (the latency floor of one run);
a `Sizing` whose ``met`` is False says which (``missed``).

Given the cache, the result is monotone: a tighter target never needs fewer replicas (every
count that meets it also meets a looser one, and the search visits the same counts).

Example:
    >>> from agentrt import Plan, Step
    >>> from substrates.fleet.targets import parse_target
    >>> plan = Plan(name="p", steps=[Step(id="a", max_output_tokens=50)])
    >>> sizer = Sizer(plan, "b200", load_per_s=2.0, duration_s=30.0,
    ...               options={"model": "llama-3.1-8b"})
    >>> sizing = sizer.size(parse_target("p95(e2e) <= 10s"))
    >>> sizing.met, sizing.replicas
    (True, 1)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentrt import VirtualClock, run
from agentrt.compare import percentile
from agentrt.errors import ConfigError
from agentrt.plan import Plan
from agentrt.substrate import Substrate
from agentrt.tool import Tool
from substrates.emulated.engine import EmulatedEngine, build_engine
from substrates.fleet.load import LoadReport, run_load
from substrates.fleet.pool import Pool
from substrates.fleet.targets import Target

__all__ = ["DEFAULT_CAP", "FLOOR_GAIN", "Measurement", "Sizer", "Sizing", "p95_target"]

#: The most replicas `Sizer.size` tries unless told otherwise.
DEFAULT_CAP = 256
#: Doubling stops (target missed, ``missed="floor"``) when the percentile falls by less than 5%.
FLOOR_GAIN = 0.95


def p95_target(target: Target) -> float:
    """The percentile of a ``pNN(e2e) <= X`` target, checking it is one.

    Raises:
        ConfigError: the target is not an upper bound on an end-to-end percentile.
    """
    q = target.percentile
    if q is None or target.quantity != "e2e" or target.op not in ("<=", "<") or target.scope:
        raise ConfigError(
            f"sizing needs an end-to-end percentile bound such as `p95(e2e) <= 10s`, "
            f"not {target.text!r}"
        )
    return q


@dataclass(frozen=True, slots=True)
class Measurement:
    """One simulated pool of ``replicas`` at the target load.

    ``e2e_by_q`` maps percentiles (50, 95, 99) to seconds (``inf`` when too many runs did not
    complete); ``busy_fraction`` is the replicas' mean share of the run spent computing.
    """

    replicas: int
    arrivals: int
    completed: int
    e2e_by_q: Mapping[float, float]
    output_tokens: int
    busy_fraction: float
    energy_j: float
    sim_s: float

    def e2e_s(self, q: float) -> float:
        """The ``q``-th percentile of run end-to-end time (incomplete runs are ``inf``)."""
        return self.e2e_by_q.get(q, math.inf)

    @property
    def tokens_per_task(self) -> float:
        """Output tokens per completed run."""
        return self.output_tokens / self.completed if self.completed else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``inf`` as None)."""
        return {
            "replicas": self.replicas,
            "arrivals": self.arrivals,
            "completed": self.completed,
            "e2e_s": {f"p{q:g}": _finite(v) for q, v in self.e2e_by_q.items()},
            "tokens_per_task": self.tokens_per_task,
            "busy_fraction": self.busy_fraction,
            "sim_s": self.sim_s,
        }


@dataclass(frozen=True, slots=True)
class Sizing:
    """The fewest replicas meeting ``target`` (``met``), or where the search gave up.

    ``missed`` says why a target was not met: ``cap`` (even the cap missed) or ``floor``
    (doubling the pool no longer lowered the percentile: one run is too slow even unqueued).
    """

    preset: str
    target: Target
    load_per_s: float
    replicas: int
    met: bool
    measured: Measurement
    chips_per_replica: int
    deployment: str
    tried: tuple[int, ...]
    missed: str = ""

    @property
    def measured_s(self) -> float:
        """The target's percentile measured at the chosen count."""
        return self.measured.e2e_s(p95_target(self.target))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "preset": self.preset,
            "deployment": self.deployment,
            "target": self.target.text,
            "load_per_s": self.load_per_s,
            "replicas": self.replicas,
            "chips": self.replicas * self.chips_per_replica,
            "met": self.met,
            "measured_s": _finite(self.measured_s),
            "tried": list(self.tried),
            "missed": self.missed or None,
            "measurement": self.measured.to_dict(),
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _percentiles(e2e_s: list[float], missing: int) -> dict[float, float]:
    """Percentiles over all arrivals, the ``missing`` ones counting as infinitely slow."""
    out: dict[float, float] = {}
    total = len(e2e_s) + missing
    for q in (50.0, 95.0, 99.0):
        if total == 0:
            out[q] = math.inf
        elif missing == 0:
            out[q] = percentile(e2e_s, q)
        else:
            ordered = sorted(e2e_s) + [math.inf] * missing
            high = min(int((total - 1) * q / 100) + 1, total - 1)
            out[q] = math.inf if math.isinf(ordered[high]) else percentile(ordered, q)
    return out


class Sizer:
    """Simulates pools of one preset at one load; caches a `Measurement` per replica count.

    Args:
        plan: what each arriving agent runs.
        preset: the emulated hardware preset (``wse3``, ``h100``, ...).
        load_per_s: agent runs arriving per second (Poisson).
        duration_s: simulated seconds of arrivals.
        seed: seeds the arrivals and the replicas (replica ``i`` gets ``seed + i``).
        options: `build_engine` keywords (``model``, ``stack``, ``precision``, ...).
        tools: the tools the plan's steps use (their twins, in virtual time).
        drain_timeout_s: how long runs in flight may take after the last arrival.

    Raises:
        ConfigError: an unknown preset, option or a non-positive load/duration.
    """

    def __init__(
        self,
        plan: Plan,
        preset: str,
        *,
        load_per_s: float,
        duration_s: float = 120.0,
        seed: int = 1,
        options: Mapping[str, Any] | None = None,
        tools: Iterable[Tool] = (),
        drain_timeout_s: float = 600.0,
    ) -> None:
        if not load_per_s > 0 or not duration_s > 0:
            raise ConfigError(
                f"sizing needs a load > 0 per second and a duration > 0 s, got {load_per_s} "
                f"and {duration_s}"
            )
        self.plan = plan
        self.preset = preset
        self.load_per_s = load_per_s
        self.duration_s = duration_s
        self.seed = seed
        self.options = dict(options or {})
        self.tools = list(tools)
        self.drain_timeout_s = drain_timeout_s
        probe = self._engine(0)  # fail early on a bad preset or option
        self.deployment = probe.deployment.describe()
        self.chips_per_replica = int(probe.deployment.chips)
        self._cache: dict[int, Measurement] = {}

    def _engine(self, index: int) -> EmulatedEngine:
        try:
            return build_engine(self.preset, seed=self.seed + index, **self.options)
        except TypeError as exc:
            hint = "see `agentrt predict --help` for the options"
            raise ConfigError(f"{self.preset}: bad option ({exc}); {hint}") from None

    def measure(self, replicas: int) -> Measurement:
        """Simulate a pool of ``replicas`` warm replicas at the load (cached per count)."""
        if replicas < 1:
            raise ConfigError(f"a pool needs at least 1 replica, got {replicas}")
        if replicas not in self._cache:
            self._cache[replicas] = self._simulate(replicas)
        return self._cache[replicas]

    def _simulate(self, replicas: int) -> Measurement:
        engines: list[EmulatedEngine] = []

        def make(index: int) -> Substrate:
            engine = self._engine(index)
            engines.append(engine)
            return engine

        pool = Pool(
            make,
            name=self.preset,
            min_replicas=replicas,
            max_replicas=replicas,
            initial=replicas,
            wait_timeout_s=self.drain_timeout_s,
        )
        # Enough agents that the duration, not the count, ends the arrivals.
        agents = max(1, math.ceil(self.load_per_s * self.duration_s * 2 + 50))

        async def main() -> LoadReport:
            try:
                return await run_load(
                    self.plan,
                    pool,
                    agents=agents,
                    arrival_rate=self.load_per_s,
                    duration_s=self.duration_s,
                    seed=self.seed,
                    tools=self.tools,
                    drain_timeout_s=self.drain_timeout_s,
                )
            finally:
                await pool.aclose()

        report = run(main, clock=VirtualClock())
        span = max(report.sim_s, self.duration_s)
        busy = sum(e.statistics().busy_s for e in engines)
        return Measurement(
            replicas=replicas,
            arrivals=report.arrivals,
            completed=report.completed,
            e2e_by_q=_percentiles(report.e2e_s, report.arrivals - report.completed),
            output_tokens=report.output_tokens,
            busy_fraction=min(1.0, busy / (replicas * span)) if span > 0 else 0.0,
            energy_j=report.energy_j,
            sim_s=report.sim_s,
        )

    def meets(self, replicas: int, target: Target) -> bool:
        """Whether a pool of ``replicas`` meets ``target`` at the load."""
        return target.met_by(self.measure(replicas).e2e_s(p95_target(target)))

    def size(self, target: Target, *, cap: int = DEFAULT_CAP) -> Sizing:
        """The fewest replicas meeting ``target``: double from 1, then bisect; at most ``cap``.

        Raises:
            ConfigError: the target is not a ``pNN(e2e) <= X`` bound, or ``cap`` < 1.
        """
        p95_target(target)
        if cap < 1:
            raise ConfigError(f"the replica cap must be >= 1, got {cap}")
        tried: list[int] = []

        def ok(n: int) -> bool:
            tried.append(n)
            return self.meets(n, target)

        q = p95_target(target)
        lo, hi = 0, 1  # lo misses (0 always does), hi is the candidate
        while not ok(hi):
            if hi >= cap:
                return self._sizing(target, hi, met=False, tried=tried, missed="cap")
            before, now = self.measure(lo).e2e_s(q) if lo else math.inf, self.measure(hi).e2e_s(q)
            if math.isfinite(before) and now >= FLOOR_GAIN * before:
                # Doubling bought (almost) nothing: the latency floor of one replica, not
                # queueing, is what misses the target.
                return self._sizing(target, hi, met=False, tried=tried, missed="floor")
            lo, hi = hi, min(hi * 2, cap)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid
        return self._sizing(target, hi, met=True, tried=tried)

    def _sizing(
        self, target: Target, replicas: int, *, met: bool, tried: list[int], missed: str = ""
    ) -> Sizing:
        return Sizing(
            missed=missed,
            preset=self.preset,
            target=target,
            load_per_s=self.load_per_s,
            replicas=replicas,
            met=met,
            measured=self.measure(replicas),
            chips_per_replica=self.chips_per_replica,
            deployment=self.deployment,
            tried=tuple(tried),
        )
