"""Admission: the waiting queue, the running batch and the KV cache they share.

A request waits in a heap (higher priority first, FIFO within) and is admitted at a pass
boundary while a batch slot is free and its prompt + output fit in the KV budget left (strict
head-of-line order). KV is reserved whole at admission and freed when the request completes
or is withdrawn; there is no paging and no preemption.

KV accounting lives here rather than in a module of its own: it *is* the admission test plus
integer updates written inline in `_Admission._admit`, `_Admission._unadmit` and the driver's
completion and withdrawal. A KV object or helper module would add a call or an attribute hop
per request on the simulator's hot path.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from substrates.emulated.scheduler.records import ServiceRecord, TokenRun

if TYPE_CHECKING:
    from substrates.emulated.scheduler.segment import _Segment

# Request states.
_QUEUED, _RUNNING, _DONE, _CANCELLED = range(4)


@dataclass(slots=True, eq=False)
class _Request:
    prompt: int
    output: int
    priority: int
    seq: int
    kv: int  # prompt + output: the KV tokens it reserves while admitted
    submitted: float
    state: int = _QUEUED
    generated: int = 0
    started: float = 0.0
    first_token: float = 0.0
    prefill_s: float = 0.0
    comm_s: float = 0.0
    busy_s: float = 0.0
    runs: list[TokenRun] = field(default_factory=list)  # decode runs count cycles if speculating
    # Speculative decoding: decode tokens after each of its cycles (drawn at admission) and the
    # cycles it needs (None on a plain engine: one token per iteration); where the engine's
    # cycles, runs of cycles, communication and busy sums stood when it joined (see Ledger).
    ends: list[int] | None = None
    need: int = 0
    base: int = 0
    run0: int = 0
    comm0: float = 0.0
    busy0: float = 0.0
    seg: _Segment | None = None
    record: ServiceRecord | None = None
    error: Exception | None = None  # why a streamed request failed (raised to its reader)
    wake: anyio.Event | None = None  # its waiting coroutine sleeps on this (None until it parks)
    watch: anyio.Event | None = None  # a stream consumer sleeps on this until the plan changes


class _Admission:
    """The queue and the batch: the bottom layer of `Scheduler` (state set by its __init__)."""

    _max_batch: int
    _kv_cap: int
    _max_prefill: int | None
    _heap: list[tuple[int, int, _Request]]  # (-priority, arrival order, request)
    _seq: int
    _queued: int
    _running: list[_Request]
    _kv_used: int

    def _peek(self) -> _Request | None:
        heap = self._heap
        while heap and heap[0][2].state != _QUEUED:
            heapq.heappop(heap)  # withdrawn while queued
        return heap[0][2] if heap else None

    def _admissible(self) -> bool:
        """Whether the head of the queue could be admitted at the next pass boundary."""
        head = self._peek()
        return (
            head is not None
            and len(self._running) < self._max_batch
            and self._kv_used + head.kv <= self._kv_cap
        )

    def _admit(self) -> list[_Request]:
        new: list[_Request] = []
        budget = self._max_prefill
        tokens = 0
        running = self._running
        while (head := self._peek()) is not None:
            if len(running) >= self._max_batch or self._kv_used + head.kv > self._kv_cap:
                break
            if budget is not None and new and tokens + head.prompt > budget:
                break
            heapq.heappop(self._heap)
            self._queued -= 1
            head.state = _RUNNING
            self._kv_used += head.kv
            running.append(head)
            new.append(head)
            tokens += head.prompt
        return new

    def _unadmit(self, new: list[_Request]) -> None:
        for r in new:
            r.state = _QUEUED
            self._running.remove(r)
            self._kv_used -= r.kv
            self._queued += 1
            heapq.heappush(self._heap, (-r.priority, r.seq, r))
