"""`Pool`: one `StreamingSubstrate` over replicas that start, serve, drain and stop over time.

A pool builds its replicas with a factory, ``make_replica(index) -> Substrate`` (an emulated
engine per replica, say), and walks each through `substrates.fleet.ops.ReplicaState` on the
run's clock:

- ``standby`` -> ``starting`` -> ``warm``: a warm-pool replica (weights loaded, engine built)
  serves after ``warm_start_s``;
- (new) -> ``starting`` -> ``warm``: a cold replica serves after its cold start, by default
  derived from its deployment (`substrates.emulated.coldstart.cold_start_s`);
- ``warm`` -> ``draining`` -> ``stopped``: a replica scaled down takes no new requests and stops
  when its in-flight ones have finished (nothing is dropped).

Transitions happen at their exact clock times when the pool is next looked at (no background
task); replica-seconds count from the pool's first use. A request goes to the least-loaded warm
replica (fewest in flight, then lowest index). With none warm, ``when_cold="wait"`` waits for
one (at most ``wait_timeout_s``), ``"reject"`` refuses at once. ``max_queue`` bounds the
requests waiting (in the pool or beyond the replicas' batch slots). A refused request raises
`agentrt.errors.RateLimited` (with ``retry_after_s``) and counts as rejected, never lost.

Why one module: admission, dispatch and scaling share the replica set, the waiting requests and
the counters; the replicas' own bookkeeping is in `substrates.fleet.replicas`.

Example:
    >>> from agentrt import VirtualClock, run
    >>> from agentrt.substrate import InferenceRequest
    >>> from agentrt.testing import FixedLatencySubstrate
    >>> pool = Pool(lambda i: FixedLatencySubstrate(latency_s=0.5), name="gpu", initial=0,
    ...             max_replicas=2, cold_start_s=30.0)
    >>> async def main() -> float:
    ...     pool.scale_to(1, reason="first request")
    ...     await pool.infer(InferenceRequest.from_prompt("hi"))
    ...     return pool.snapshot().t_s
    >>> run(main, clock=VirtualClock())
    30.5
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from itertools import takewhile
from typing import Literal, final

import anyio

from agentrt import current_clock
from agentrt.errors import ConfigError, RateLimited, SubstrateUnavailable
from agentrt.substrate import InferenceRequest, InferenceResult, Substrate
from substrates.emulated.coldstart import WARM_START_S, cold_start_s
from substrates.fleet.ops import Completion, PoolSnapshot, ScaleEvent
from substrates.fleet.replicas import (
    PoolStream,
    Replica,
    ReplicaSet,
    annotated,
    check_options,
    deployment_of,
)

__all__ = ["WhenCold", "Pool"]

#: What a request does when no replica is warm: wait for one, or be refused at once.
WhenCold = Literal["wait", "reject"]


@final
class Pool:
    """Replicas of one deployment behind one `StreamingSubstrate`; implements `ScalablePool`.

    Args:
        make_replica: builds replica ``index`` (0, 1, ...); build engines warm: the pool
            models the start.
        name: the pool's name (the substrate name in results).
        version: the version label on results and snapshots.
        min_replicas, max_replicas: the bounds `scale_to` clamps to.
        initial: replicas warm at the start (no cold start).
        standby: warm-pool replicas, loaded but not serving; `scale_to` starts them first.
        cold_start_s: a cold start's seconds; default from each replica's deployment.
        warm_start_s: a standby replica's start (s).
        when_cold: ``wait`` or ``reject`` when no replica is warm.
        wait_timeout_s: the longest a request waits for a warm replica.
        max_queue: requests that may wait (None = no bound).
        slots_per_replica: requests one replica serves at once; default its ``max_batch``.
        window: completions kept for `completions_since`.
    """

    def __init__(
        self,
        make_replica: Callable[[int], Substrate],
        *,
        name: str = "pool",
        version: str = "v1",
        min_replicas: int = 0,
        max_replicas: int = 4,
        initial: int = 1,
        standby: int = 0,
        cold_start_s: float | None = None,
        warm_start_s: float = WARM_START_S,
        when_cold: WhenCold = "wait",
        wait_timeout_s: float = 600.0,
        max_queue: int | None = None,
        slots_per_replica: int | None = None,
        window: int = 10_000,
    ) -> None:
        check_options(
            name,
            bounds=(min_replicas, initial, max_replicas),
            counts={"standby": standby, "max_queue": max_queue or 0},
            seconds={
                "cold_start_s": cold_start_s or 0.0,
                "warm_start_s": warm_start_s,
                "wait_timeout_s": wait_timeout_s,
            },
            when_cold=when_cold,
        )
        self.name = name
        self.version = version
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.when_cold: WhenCold = when_cold
        self.wait_timeout_s = wait_timeout_s
        self.max_queue = max_queue
        self.warm_start_s = warm_start_s
        self._cold_start_s = cold_start_s
        self._make = make_replica
        self.replicas = ReplicaSet(name, self._on_event)
        #: Scale and readiness events, in time order.
        self.events: list[ScaleEvent] = []
        self.desired = initial
        self.arrivals = self.served = self.failed = self.rejected = self.cancelled = 0
        self.draining = False
        self._waiting = 0
        self._completions: deque[Completion] = deque(maxlen=max(1, window))
        self._changed = anyio.Event()
        for _ in range(initial):
            self.replicas.add(self._build(), "warm", ready_at=0.0)
        for _ in range(standby):
            self.replicas.add(self._build(), "standby", ready_at=0.0)
        self._slots = slots_per_replica
        first = next(iter(self.replicas.all()), None)
        if cold_start_s is None and first is not None and deployment_of(first.substrate) is None:
            raise ConfigError(
                f"pool {name!r}: its replicas have no deployment to derive a cold start from; "
                "pass cold_start_s="
            )

    # -- the ScalablePool protocol ------------------------------------------------------------

    def snapshot(self) -> PoolSnapshot:
        """The pool's state now (advancing replicas whose start has finished)."""
        now = self._now()
        counts = self.replicas.counts()
        slots = self.slots_per_replica
        in_flight = sum(min(r.in_flight, slots) for r in self.replicas.busy())
        return PoolSnapshot(
            pool=self.name,
            version=self.version,
            t_s=now,
            warm=counts["warm"],
            starting=counts["starting"],
            standby=counts["standby"],
            draining=counts["draining"],
            in_flight=in_flight,
            queued=self._queued(),
            served=self.served,
            rejected=self.rejected,
            cold_starts=self.replicas.cold_starts,
            desired=self.desired,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            slots_per_replica=slots,
        )

    def completions_since(self, t_s: float) -> Sequence[Completion]:
        """Requests finished (or rejected) at or after ``t_s``, oldest first, from the window."""
        recent = takewhile(lambda done: done.t_s >= t_s, reversed(self._completions))
        return list(recent)[::-1]

    def scale_to(self, replicas: int, *, reason: str, policy: str = "") -> ScaleEvent | None:
        """Ask for ``replicas`` serving or starting, clamped to the bounds; None if unchanged.

        Up: standby replicas start first (warm start), then new ones cold. Down: the starting
        replicas that would be ready last are cancelled first, then the least-loaded warm ones
        drain. A drained pool (`drain`) does not scale.
        """
        now = self._now()
        if self.draining:
            return None
        target = max(self.min_replicas, min(self.max_replicas, replicas))
        self.desired = target
        counts = self.replicas.counts()
        before = counts["warm"] + counts["starting"]
        if target == before:
            return None
        kind: Literal["scale_up", "scale_down"] = "scale_up" if target > before else "scale_down"
        event = ScaleEvent(now, self.name, kind, before, target, reason, policy)
        self.events.append(event)  # before the "ready" of a zero-second start
        if target > before:
            for _ in range(target - before):
                spare = self.replicas.first("standby")
                if spare is not None:
                    self.replicas.start(spare, now, now + self.warm_start_s, cold=False)
                else:
                    replica = self.replicas.add(self._build(), "starting", ready_at=now)
                    self.replicas.start(replica, now, now + self._cold_s(replica), cold=True)
        else:
            for _ in range(before - target):
                self.replicas.remove_one(now)
        self._wake()
        return event

    def drain(self) -> None:
        """Take no new requests; in-flight ones finish, then every replica stops."""
        now = self._now()
        self.draining = True
        self.desired = 0
        self.replicas.drain_all(now)
        self._wake()

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Serve ``request`` on the least-loaded warm replica (waiting for one if allowed).

        Raises:
            RateLimited: shed by ``max_queue``, no warm replica (``reject``), or none became
                warm within ``wait_timeout_s``; counted as rejected.
            SubstrateUnavailable: the pool is drained; counted as rejected.
        """
        t0, replica = await self._admit()
        waited = self._now() - t0
        try:
            result = await replica.substrate.infer(request)
        except BaseException as exc:
            self._release(replica, t0, None, exc)
            raise
        result = self._annotate(result, replica, waited)
        self._release(replica, t0, result, None)
        return result

    def stream(self, request: InferenceRequest) -> AbstractAsyncContextManager[PoolStream]:
        """Stream ``request`` from the least-loaded warm replica (admission as `infer`)."""
        return self._stream(request)

    @asynccontextmanager
    async def _stream(self, request: InferenceRequest) -> AsyncIterator[PoolStream]:
        t0, replica = await self._admit()
        waited = self._now() - t0
        wrapped: PoolStream | None = None
        try:
            opener = getattr(replica.substrate, "stream", None)
            if opener is None:
                raise ConfigError(f"pool {self.name!r}: its replicas do not stream")
            async with opener(request) as inner:
                wrapped = PoolStream(inner, lambda r: self._annotate(r, replica, waited))
                yield wrapped
        except BaseException as exc:
            self._release(replica, t0, None, exc)
            raise
        self._release(replica, t0, wrapped.finished if wrapped else None, None)

    async def aclose(self) -> None:
        """Close every replica's substrate."""
        for replica in self.replicas.all():
            await replica.substrate.aclose()

    @property
    def replica_seconds(self) -> float:
        """Replica-seconds so far of replicas on hardware: starting, warm and draining."""
        self._now()
        return self.replicas.replica_s

    @property
    def standby_seconds(self) -> float:
        """Replica-seconds so far of standby (warm-pool) replicas."""
        self._now()
        return self.replicas.standby_s

    def __repr__(self) -> str:
        return f"Pool({self.name!r}, version={self.version!r}, {self.replicas.counts()})"

    # -- internals ----------------------------------------------------------------------------

    @property
    def slots_per_replica(self) -> int:
        """Requests one replica serves at once: as given, else its engine's ``max_batch``."""
        if self._slots is None:
            first = next(iter(self.replicas.all()), None)
            if first is None:
                return 1  # nothing built yet: decided by the first replica
            dep = deployment_of(first.substrate)
            self._slots = int(getattr(dep, "max_batch", 1) or 1)
        return self._slots

    def _now(self) -> float:
        try:
            now = current_clock().current_time()
        except RuntimeError:  # read after the run (a report): the last time the pool saw
            return self.replicas.last_t
        self.replicas.advance(now)
        return now

    def _build(self) -> Substrate:
        return self._make(self.replicas.next_index)

    def _cold_s(self, replica: Replica) -> float:
        if self._cold_start_s is not None:
            return self._cold_start_s
        dep = deployment_of(replica.substrate)
        if dep is None:
            raise ConfigError(
                f"pool {self.name!r}: replica {replica.index} has no deployment to derive a cold "
                "start from; pass cold_start_s="
            )
        return cold_start_s(dep).total_s

    def _queued(self) -> int:
        slots = self.slots_per_replica
        return self._waiting + sum(max(0, r.in_flight - slots) for r in self.replicas.busy())

    def _on_event(self, event: ScaleEvent) -> None:
        self.events.append(event)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _refuse(self, why: str, now: float, *, drained: bool = False) -> Exception:
        """Count a refused request as rejected; the error to raise for it."""
        self.rejected += 1
        self._completions.append(Completion(now, 0.0, 0.0, ok=False, rejected=True))
        message = f"pool {self.name!r}: {why}"
        if drained:
            return SubstrateUnavailable(message)
        ready = self.replicas.next_ready()
        retry = max(0.0, ready - now) if ready is not None else 1.0
        return RateLimited(message, retry_after_s=retry)

    def refuse_now(self) -> Exception | None:
        """The error a request arriving now would get at once at admission, counted; else None.

        For a server that must answer before it opens a stream (``agentrt serve`` sends 429 or
        503 with ``Retry-After`` rather than an error inside a started stream).
        """
        error = self._at_once(self._now(), cold=True)
        self.arrivals += error is not None
        return error

    def _at_once(self, now: float, *, cold: bool) -> Exception | None:
        """Refused without waiting: drained, the queue full, or (``cold``) nothing warm."""
        if self.draining:
            return self._refuse("drained, it takes no new requests", now, drained=True)
        would_wait = self._waiting > 0 or self.replicas.pick(self.slots_per_replica) is None
        if self.max_queue is not None and would_wait and self._queued() >= self.max_queue:
            return self._refuse(f"{self._queued()} requests wait (max_queue {self.max_queue})", now)
        if cold and self.when_cold == "reject" and self.replicas.pick() is None:
            return self._refuse("no replica is warm (when_cold='reject')", now)
        return None

    async def _admit(self) -> tuple[float, Replica]:
        t0 = self._now()
        self.arrivals += 1
        refused = self._at_once(t0, cold=True)
        if refused is not None:
            raise refused
        deadline = t0 + self.wait_timeout_s
        self._waiting += 1
        try:
            while True:
                now = self._now()
                replica = self.replicas.pick()
                if replica is not None:
                    break
                if self.draining:
                    raise self._refuse("drained while the request waited", now, drained=True)
                if now >= deadline:
                    raise self._refuse(
                        f"no replica became warm within wait_timeout_s={self.wait_timeout_s:g}",
                        now,
                    )
                ready = self.replicas.next_ready()
                until = deadline if ready is None else min(deadline, ready)
                with anyio.move_on_after(max(0.0, until - now)):
                    await self._changed.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self._waiting -= 1
        replica.in_flight += 1
        return t0, replica

    def _annotate(
        self, result: InferenceResult, replica: Replica, waited: float
    ) -> InferenceResult:
        labels = {"agentrt.pool": self.name, "agentrt.pool.version": self.version}
        return annotated(result, {**labels, "agentrt.pool.replica": replica.index}, waited)

    def _release(
        self,
        replica: Replica,
        t0: float,
        result: InferenceResult | None,
        error: BaseException | None,
    ) -> None:
        now = self._now()
        replica.in_flight -= 1
        if result is not None:
            self.served += 1
            self._completions.append(
                Completion(t_s=now, ttft_s=result.timing.ttft_s, e2e_s=now - t0)
            )
        elif isinstance(error, Exception):
            self.failed += 1
            self._completions.append(Completion(t_s=now, ttft_s=0.0, e2e_s=now - t0, ok=False))
        else:  # cancelled, or a stream closed before its end
            self.cancelled += 1
        self.replicas.finished(replica, now)
        self._wake()
