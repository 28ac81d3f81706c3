"""Fleet operations' shared vocabulary: pool snapshots, scale and rollout events, the protocols.

A fleet is pools of replicas (`substrates.fleet.pool.Pool`), each changed over time by an
autoscaler (`substrates.fleet.autoscale`), routed between by the existing `Router`, fed by
tenants' arrival processes (`substrates.fleet.arrivals`) and rolled out with canaries and
blue-green switches (`substrates.fleet.rollout`). This module holds only the data those parts
exchange, so that each can be built and tested on its own.

Example:
    >>> snap = PoolSnapshot(pool="wse3", version="v1", t_s=12.0, warm=2, starting=1,
    ...                     in_flight=5, queued=3)
    >>> snap.replicas, snap.serving_capacity
    (3, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "Completion",
    "PoolSnapshot",
    "ReplicaState",
    "RolloutEvent",
    "ScaleEvent",
    "ScalablePool",
]

#: A replica's life: ``starting`` (cold start: loading weights, building the engine) -> ``warm``
#: (serving) -> ``draining`` (finishing in-flight requests, taking no new ones) -> ``stopped``.
#: A ``standby`` replica is a warm-pool replica kept loaded but not serving: it becomes ``warm``
#: after the pool's (short) warm-start time instead of a full cold start.
ReplicaState = Literal["standby", "starting", "warm", "draining", "stopped"]


@dataclass(frozen=True, slots=True)
class Completion:
    """One finished request on a pool, for windowed latency statistics.

    ``ok`` is False for a request that failed; ``rejected`` for one shed at admission (it never
    ran: its latencies are 0).
    """

    t_s: float
    ttft_s: float
    e2e_s: float
    ok: bool = True
    rejected: bool = False


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """A pool's state at one instant (what an autoscaler decides from).

    Attributes:
        pool: the pool's name.
        version: the version label of the pool's replicas (``v1``, ``canary`` ...).
        t_s: the clock time of the snapshot.
        warm: replicas serving.
        starting: replicas in their cold (or warm) start, not serving yet.
        standby: warm-pool replicas, loaded but not serving.
        draining: replicas finishing in-flight requests before they stop.
        in_flight: requests being served.
        queued: requests admitted and waiting for a slot (in the engines or the pool).
        served: requests finished since the start.
        rejected: requests shed at admission since the start.
        cold_starts: replicas started cold since the start.
        desired: the replica count last asked for.
        min_replicas, max_replicas: the pool's bounds.
        slots_per_replica: concurrent requests one replica serves at full batch (its engine's
            ``max_batch``), the unit of a concurrency target.
    """

    pool: str
    version: str
    t_s: float
    warm: int = 0
    starting: int = 0
    standby: int = 0
    draining: int = 0
    in_flight: int = 0
    queued: int = 0
    served: int = 0
    rejected: int = 0
    cold_starts: int = 0
    desired: int = 0
    min_replicas: int = 0
    max_replicas: int = 1
    slots_per_replica: int = 1

    @property
    def replicas(self) -> int:
        """Replicas that serve or will: warm plus starting."""
        return self.warm + self.starting

    @property
    def serving_capacity(self) -> int:
        """Replicas serving now."""
        return self.warm


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """One scaling decision applied to a pool (a row of the report, a span event, a metric).

    ``kind``: ``scale_up`` / ``scale_down`` (the count changed), ``ready`` (a started replica
    began serving), ``stopped`` (a drained replica stopped).
    """

    t_s: float
    pool: str
    kind: Literal["scale_up", "scale_down", "ready", "stopped"]
    before: int
    after: int
    reason: str
    policy: str = ""


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    """One step of a rollout: traffic shifted, a canary promoted or rolled back, a drain done."""

    t_s: float
    kind: Literal["start", "shift", "promote", "rollback", "switch", "drained"]
    detail: str
    weights: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class ScalablePool(Protocol):
    """**Protocol:** what an autoscaler and a rollout need of a pool.

    `substrates.fleet.pool.Pool` implements it; tests may use a small fake.
    """

    name: str
    version: str

    def snapshot(self) -> PoolSnapshot:
        """The pool's state now."""
        ...

    def completions_since(self, t_s: float) -> Sequence[Completion]:
        """Requests finished at or after ``t_s`` (a window the pool keeps bounded)."""
        ...

    def scale_to(self, replicas: int, *, reason: str, policy: str = "") -> ScaleEvent | None:
        """Ask for ``replicas`` (clamped to the bounds); None when nothing changes.

        Up: standby replicas start first (warm start), then cold ones. Down: the replicas
        that would start last are cancelled first, then warm ones drain (in-flight requests
        finish; nothing is dropped).
        """
        ...

    def drain(self) -> None:
        """Take no new requests; in-flight ones finish (blue-green's old pool)."""
        ...
