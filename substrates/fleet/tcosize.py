"""Fleet sizing by simulation: the fewest replicas whose pool meets ``p95(e2e) <= X`` at a load.

`Sizer` plays a workload (a plan's agents, or a recorded trajectory) arriving open-loop as a
seeded Poisson process at the target rate on a `Pool` of N warm replicas of one emulated preset
(built with `build_engine`), for a fixed simulated duration in virtual time (`tcorun.simulate`),
and measures the p95 of the runs' end-to-end times. An arrival that does not complete counts as
infinitely slow, so a pool that drops more than 5% of its runs never meets a p95 target.

`Sizer.size` first plays one arrival alone (the floor: an SLO below it is missed at once, with
``missed="floor"``), then one replica at the load; from that replica's overloaded throughput it
and the target's slack over the floor it guesses a count; a hit walks down 1, 2, 4, ... below
it to a miss, a miss grows it by a quarter until a hit; then it bisects between the last miss
and the first hit, so the answer N is proved by simulation: N meets the target and N - 1 does not. A
simulation that is sure to miss stops early (see `tcorun`), so misses cost little; hits run to
the end. The search stops at ``cap`` (``missed="cap"``) or when a pool with about two replicas
per run in flight still misses (``missed="floor"``). What each count proved is cached, so sizing
for several SLOs reuses the runs.

As long as more replicas never hurt at a given load (true of these pools, up to the seeded
noise), the answer is the least count meeting the target, so a tighter target never needs
fewer replicas.

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

from agentrt.errors import ConfigError
from agentrt.tool import Tool
from substrates.emulated.engine import EmulatedEngine, build_engine
from substrates.fleet.targets import Target
from substrates.fleet.tcorun import Measurement, Workload, simulate

__all__ = ["DEFAULT_CAP", "GROWTH", "SLACK_C", "Sizer", "Sizing", "p95_target"]

#: The most replicas `Sizer.size` tries unless told otherwise.
DEFAULT_CAP = 256
#: Until a hit, each next count is this times the last miss.
GROWTH = 1.25
#: The first count tried is ``n0 * (1 + SLACK_C / slack)``: ``n0`` replicas saturate at the load
#: and ``slack`` is the target's margin over the floor (``limit / floor - 1``).
SLACK_C = 0.3


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


class Sizer:
    """Simulates pools of one preset at one load; caches what each replica count proved.

    Args:
        workload: what each arrival runs: a plan, or a trajectory (then ``options`` carries
            ``trajectory=PATH`` so the engines play its turns).
        preset: the emulated hardware preset (``wse3``, ``h100``, ...).
        load_per_s: arrivals per second (Poisson).
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
        workload: Workload,
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
        self.workload = workload
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
        self._complete: dict[int, Measurement] = {}
        self._aborted: dict[int, list[Measurement]] = {}
        self._floor: Measurement | None = None
        #: Simulations run so far (floor probe included), for benchmarks.
        self.simulations = 0

    def _engine(self, index: int) -> EmulatedEngine:
        try:
            return build_engine(self.preset, seed=self.seed + index, **self.options)
        except TypeError as exc:
            hint = "see `agentrt predict --help` for the options"
            raise ConfigError(f"{self.preset}: bad option ({exc}); {hint}") from None

    def _run(self, replicas: int, load_per_s: float, duration_s: float,
             abort: tuple[float, float] | None) -> Measurement:  # fmt: skip
        self.simulations += 1
        return simulate(
            self.workload, self._engine, replicas=replicas, load_per_s=load_per_s,
            duration_s=duration_s, seed=self.seed, tools=self.tools,
            drain_timeout_s=self.drain_timeout_s, abort=abort,
        )  # fmt: skip

    def floor(self) -> Measurement:
        """One arrival alone on one replica: the latency no number of replicas goes below."""
        if self._floor is None:
            self._floor = self._run(1, self.load_per_s, 1e-9, None)
        return self._floor

    def measure(self, replicas: int) -> Measurement:
        """Simulate a pool of ``replicas`` warm replicas at the load to the end (cached)."""
        if replicas < 1:
            raise ConfigError(f"a pool needs at least 1 replica, got {replicas}")
        if replicas not in self._complete:
            self._complete[replicas] = self._run(replicas, self.load_per_s, self.duration_s, None)
        return self._complete[replicas]

    def _known(self, replicas: int, q: float, limit_s: float) -> Measurement | None:
        """A cached measurement deciding ``pq <= limit_s`` at ``replicas``, if any."""
        if replicas in self._complete:
            return self._complete[replicas]
        return next(
            (m for m in self._aborted.get(replicas, ()) if m.misses(q, limit_s) is not None), None
        )

    def probe(self, replicas: int, target: Target) -> Measurement:
        """A measurement deciding ``target`` at ``replicas``: stopped early on a sure miss."""
        if replicas < 1:
            raise ConfigError(f"a pool needs at least 1 replica, got {replicas}")
        q = p95_target(target)
        known = self._known(replicas, q, target.limit)
        if known is not None:
            return known
        m = self._run(replicas, self.load_per_s, self.duration_s, (q, target.limit))
        if m.aborted:
            self._aborted.setdefault(replicas, []).append(m)
        else:
            self._complete[replicas] = m
        return m

    def meets(self, replicas: int, target: Target) -> bool:
        """Whether a pool of ``replicas`` meets ``target`` at the load."""
        m = self.probe(replicas, target)
        return not m.aborted and target.met_by(m.e2e_s(p95_target(target)))

    def size(self, target: Target, *, cap: int = DEFAULT_CAP) -> Sizing:
        """The fewest replicas meeting ``target``, proved by a hit at N and a miss at N - 1.

        Probes the floor (one arrival alone), then 1 replica, then a guess from its saturated
        throughput (walking down from a hit, or growing by `GROWTH` from a miss), then bisects
        between the last miss and the first hit; at most ``cap``.

        Raises:
            ConfigError: the target is not a ``pNN(e2e) <= X`` bound, or ``cap`` < 1.
        """
        q = p95_target(target)
        if cap < 1:
            raise ConfigError(f"the replica cap must be >= 1, got {cap}")
        tried: list[int] = []

        def ok(n: int) -> bool:
            tried.append(n)
            return self.meets(n, target)

        floor = self.floor()
        if not target.met_by(floor.e2e_s(q)):
            return self._sizing(target, 1, met=False, tried=tried, missed="floor", at=floor)
        # Enough replicas that every run nearly has one to itself: more cannot beat the floor.
        free = math.ceil(2 * self.load_per_s * floor.e2e_s(q)) + 1
        if ok(1):
            return self._sizing(target, 1, met=True, tried=tried)
        # A first guess from one overloaded replica's throughput and the target's slack over
        # the floor; it only picks the counts to try: hits and misses prove the answer.
        slack = max(target.limit / floor.e2e_s(q) - 1, 1e-3)
        n0 = self.saturation(target)
        lo, hi = 1, min(max(2, math.ceil(n0 * (1 + SLACK_C / slack))), cap)
        while not ok(hi):
            if hi >= cap or hi >= free:
                missed = "cap" if hi >= cap else "floor"
                return self._sizing(target, hi, met=False, tried=tried, missed=missed)
            lo, hi = hi, min(max(hi + 1, math.ceil(hi * GROWTH)), cap)
        if lo == 1:  # the first guess hit: it is often close, so walk down 1, 2, 4, ... below
            step = 1
            while hi - step > lo:
                if not ok(hi - step):
                    lo = hi - step
                    break
                hi, step = hi - step, step * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid
        return self._sizing(target, hi, met=True, tried=tried)

    def saturation(self, target: Target) -> float:
        """Replicas the load needs at one overloaded replica's throughput (a lower bound)."""
        one = self.probe(1, target)
        per_task = self.floor().tokens_per_task
        if one.tokens_per_s <= 0 or per_task <= 0:
            return 1.0
        return max(1.0, self.load_per_s * per_task / one.tokens_per_s)

    def _sizing(
        self,
        target: Target,
        replicas: int,
        *,
        met: bool,
        tried: list[int],
        missed: str = "",
        at: Measurement | None = None,
    ) -> Sizing:
        return Sizing(
            missed=missed,
            preset=self.preset,
            target=target,
            load_per_s=self.load_per_s,
            replicas=replicas,
            met=met,
            measured=at if at is not None else self.probe(replicas, target),
            chips_per_replica=self.chips_per_replica,
            deployment=self.deployment,
            tried=tuple(tried),
        )
