"""`ReplicaSet`: a pool's replicas, their states over time, and the replica-seconds they used.

Also the small pieces `substrates.fleet.pool.Pool` wraps its replicas with: `deployment_of`
(where a replica's cold start comes from) and `PoolStream` (a replica's stream, annotated).

The bookkeeping half of `substrates.fleet.pool.Pool`: no clock of its own and no waiting.
Every change is given the clock time it happens at; `ReplicaSet.advance` turns the replicas
whose start has finished warm at their exact ready time, integrating the replica count over
time on the way (replica-seconds: starting, warm and draining replicas occupy hardware;
standby ones are counted apart).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, final

from agentrt.errors import ConfigError
from agentrt.substrate import InferenceResult, Substrate, TokenChunk
from substrates.fleet.ops import ReplicaState, ScaleEvent

__all__ = [
    "PoolStream",
    "Replica",
    "ReplicaSet",
    "annotated",
    "check_options",
    "deployment_of",
]

_ON_HARDWARE: tuple[ReplicaState, ...] = ("starting", "warm", "draining")
_STATES: tuple[ReplicaState, ...] = ("standby", "starting", "warm", "draining", "stopped")


@dataclass(slots=True, eq=False)
class Replica:
    """One replica: its substrate, its state, when it is (or was) ready, requests in flight.

    ``cold`` is True while a cold start is under way (False for a standby's warm start).
    """

    index: int
    substrate: Substrate
    state: ReplicaState
    ready_at: float
    in_flight: int = 0
    cold: bool = False


@final
class ReplicaSet:
    """The replicas of one pool (see the module docs).

    Args:
        pool: the pool's name, for the events.
        on_event: called with each ``ready`` and ``stopped`` `ScaleEvent`.
    """

    def __init__(self, pool: str, on_event: Callable[[ScaleEvent], None]) -> None:
        self.pool = pool
        self._on_event = on_event
        self._replicas: list[Replica] = []
        self.cold_starts = 0
        #: Integrated replica-seconds of replicas on hardware, and of standby ones.
        self.replica_s = 0.0
        self.standby_s = 0.0
        self._last_t: float | None = None

    @property
    def next_index(self) -> int:
        """The index the next replica built gets."""
        return len(self._replicas)

    @property
    def last_t(self) -> float:
        """The latest clock time the set was told of (0 before any)."""
        return self._last_t or 0.0

    def all(self) -> Iterator[Replica]:
        """Every replica ever built, stopped ones included, by index."""
        return iter(self._replicas)

    def counts(self) -> dict[ReplicaState, int]:
        """Replicas in each state."""
        counts: dict[ReplicaState, int] = dict.fromkeys(_STATES, 0)
        for replica in self._replicas:
            counts[replica.state] += 1
        return counts

    def busy(self) -> Iterator[Replica]:
        """Replicas that may hold requests: warm and draining."""
        return (r for r in self._replicas if r.state in ("warm", "draining"))

    def first(self, state: ReplicaState) -> Replica | None:
        """The lowest-indexed replica in ``state``."""
        return next((r for r in self._replicas if r.state == state), None)

    def pick(self, free_below: int | None = None) -> Replica | None:
        """The least-loaded warm replica (then the lowest index), or None.

        With ``free_below``, only a replica with fewer requests in flight than that.
        """
        warm = [r for r in self._replicas if r.state == "warm"]
        if free_below is not None:
            warm = [r for r in warm if r.in_flight < free_below]
        return min(warm, key=lambda r: (r.in_flight, r.index), default=None)

    def next_ready(self) -> float | None:
        """When the next starting replica becomes warm; None when none is starting."""
        return min((r.ready_at for r in self._replicas if r.state == "starting"), default=None)

    # -- changes -------------------------------------------------------------------------------

    def add(self, substrate: Substrate, state: ReplicaState, *, ready_at: float) -> Replica:
        """A new replica in ``state``."""
        replica = Replica(len(self._replicas), substrate, state, ready_at)
        self._replicas.append(replica)
        return replica

    def start(self, replica: Replica, now: float, ready_at: float, *, cold: bool) -> None:
        """Start ``replica`` at ``now``: warm at ``ready_at``."""
        self._integrate(now)
        replica.state, replica.ready_at, replica.cold = "starting", ready_at, cold
        if cold:
            self.cold_starts += 1
        self.advance(now)  # a zero-second start is warm at once

    def advance(self, now: float) -> None:
        """Turn warm every replica whose start finished by ``now``, each at its ready time."""
        due = sorted(
            (r for r in self._replicas if r.state == "starting" and r.ready_at <= now),
            key=lambda r: (r.ready_at, r.index),
        )
        for replica in due:
            self._integrate(replica.ready_at)
            warm = self.counts()["warm"]
            replica.state, replica.cold = "warm", False
            self._emit(replica.ready_at, "ready", warm, warm + 1, f"replica {replica.index}")
        self._integrate(now)

    def remove_one(self, now: float) -> None:
        """One fewer replica: cancel the starting one ready last, else drain the least loaded."""
        self._integrate(now)
        starting = [r for r in self._replicas if r.state == "starting"]
        if starting:
            last = max(starting, key=lambda r: (r.ready_at, r.index))
            last.state = "stopped" if last.cold else "standby"  # a warm start goes back
            last.cold = False
            return
        warm = [r for r in self._replicas if r.state == "warm"]
        if warm:
            victim = min(warm, key=lambda r: (r.in_flight, -r.index))
            victim.state = "draining"
            self.finished(victim, now)

    def drain_all(self, now: float) -> None:
        """Stop every standby and starting replica; drain every warm one."""
        self._integrate(now)
        for replica in self._replicas:
            if replica.state in ("standby", "starting"):
                replica.state, replica.cold = "stopped", False
            elif replica.state == "warm":
                replica.state = "draining"
                self.finished(replica, now)

    def finished(self, replica: Replica, now: float) -> None:
        """A request of ``replica`` ended (or it began draining): stop it once drained."""
        if replica.state == "draining" and replica.in_flight == 0:
            self._integrate(now)
            draining = self.counts()["draining"]
            replica.state = "stopped"
            self._emit(now, "stopped", draining, draining - 1, f"replica {replica.index} drained")

    # -- internals -------------------------------------------------------------------------------

    def _integrate(self, t: float) -> None:
        last = self._last_t
        self._last_t = t if last is None else max(last, t)
        if last is None or t <= last:
            return
        counts = self.counts()
        self.replica_s += (t - last) * sum(counts[s] for s in _ON_HARDWARE)
        self.standby_s += (t - last) * counts["standby"]

    def _emit(
        self, t: float, kind: Literal["ready", "stopped"], before: int, after: int, why: str
    ) -> None:
        self._on_event(ScaleEvent(t, self.pool, kind, before, after, why))


def deployment_of(substrate: Substrate) -> Any | None:
    """The ``deployment`` of ``substrate`` or of what it wraps (``.inner``), or None."""
    current: Any = substrate
    for _ in range(8):
        dep = getattr(current, "deployment", None)
        if dep is not None:
            return dep
        current = getattr(current, "inner", None)
        if current is None:
            break
    return None


@final
class PoolStream:
    """A replica's `TokenStream` whose result a pool annotates (its name, version, replica)."""

    def __init__(self, inner: Any, annotate: Callable[[InferenceResult], InferenceResult]) -> None:
        self._inner = inner
        self._annotate = annotate
        self.finished: InferenceResult | None = None

    def __aiter__(self) -> AsyncIterator[TokenChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TokenChunk]:
        async for chunk in self._inner:
            yield chunk
        self.finished = self._annotate(self._inner.result())

    def result(self) -> InferenceResult:
        """The complete result; only valid after the stream was read to the end."""
        if self.finished is None:
            return self._annotate(self._inner.result())  # raises the replica's own error
        return self.finished


def check_options(
    name: str,
    *,
    bounds: tuple[int, int, int],
    counts: dict[str, int],
    seconds: dict[str, float],
    when_cold: str,
) -> None:
    """Check a pool's options; a `ConfigError` names the first bad one and the fix.

    Args:
        name: the pool.
        bounds: ``(min_replicas, initial, max_replicas)``.
        counts: options that must be >= 0.
        seconds: durations that must be >= 0.
        when_cold: ``wait`` or ``reject``.
    """
    low, initial, high = bounds
    if not 0 <= low <= high or high < 1:
        raise ConfigError(
            f"pool {name!r}: need 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
            f"got min {low}, max {high}"
        )
    if not low <= initial <= high:
        raise ConfigError(
            f"pool {name!r}: initial={initial} must lie within min_replicas..max_replicas "
            f"({low}..{high})"
        )
    for label, value in (*counts.items(), *seconds.items()):
        if value < 0:
            raise ConfigError(f"pool {name!r}: {label} must be >= 0, got {value}")
    if when_cold not in ("wait", "reject"):
        raise ConfigError(f"pool {name!r}: when_cold is 'wait' or 'reject', not {when_cold!r}")


def annotated(
    result: InferenceResult, labels: dict[str, str | int], waited_s: float
) -> InferenceResult:
    """``result`` with ``labels`` among its span attributes, and ``waited_s`` added.

    ``waited_s`` (time spent in a pool waiting for a warm replica) joins the result's queueing
    time and time to first token.
    """
    update: dict[str, Any] = {"attributes": {**result.attributes, **labels}}
    if waited_s > 0:
        timing = result.timing
        update["timing"] = timing.model_copy(
            update={"queue_s": timing.queue_s + waited_s, "ttft_s": timing.ttft_s + waited_s}
        )
    return result.model_copy(update=update)
