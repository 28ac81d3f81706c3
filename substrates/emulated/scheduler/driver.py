"""The event driver: arrivals, cancellations and completions, and the waits on the clock between.

There is no background task: whichever caller is waiting drives the engine (leader/followers)
and hands over when it leaves. Between two events the batch is steady, so the driver plans a
segment, waits once for its end (or until an arrival or a cancellation interrupts the wait),
then accounts it: tokens, time categories, completions.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from agentrt import current_clock
from agentrt.errors import ConfigError, DoesNotFitError
from substrates.emulated.scheduler.admission import (
    _CANCELLED,
    _DONE,
    _QUEUED,
    _RUNNING,
    _Request,
)
from substrates.emulated.scheduler.records import BurstRun, ServiceRecord, TokenRun
from substrates.emulated.scheduler.segment import _EPS, _Pricing, _Segment


@dataclass(slots=True)
class _Counters:
    busy_s: float = 0.0
    prefill_passes: int = 0
    decode_iterations: int = 0
    tokens_generated: int = 0
    completed: int = 0
    cancelled: int = 0
    events: int = 0
    waits: int = 0


class _Driver(_Pricing):
    """Drives the engine through its events: the layer of `Scheduler` above pricing."""

    _seg: _Segment | None  # what the engine is doing now
    _replan: bool  # an arrival at the instant the segment was planned joins it
    _free_at: float  # when the last segment ended
    _leader: _Request | None  # whose waiting coroutine drives the engine
    # The driver's wait and its timer, to interrupt it.
    _alarm: asyncio.Future[None] | None
    _alarm_timer: asyncio.TimerHandle | None
    _wait_scope: anyio.CancelScope | None  # the same, off asyncio
    _watchers: int  # open streams
    _n: _Counters

    # -- requests coming and going ----------------------------------------------------------

    def _enqueue(self, prompt: int, output: int, priority: int) -> _Request:
        if prompt < 1 or output < 1:
            raise ConfigError(
                f"a request needs prompt_tokens >= 1 and output_tokens >= 1, got {prompt} "
                f"and {output}"
            )
        if prompt + output > self._kv_cap:
            raise DoesNotFitError(
                f"request needs {prompt + output:,} KV tokens (prompt {prompt:,} + output "
                f"{output:,}) but the KV cache holds {self._kv_cap:,} tokens; shorten the prompt "
                "or the output, or use a deployment with more memory for KV cache"
            )
        now = current_clock().current_time()
        self._seq += 1
        req = _Request(prompt, output, priority, self._seq, prompt + output, now)
        heapq.heappush(self._heap, (-priority, self._seq, req))
        self._queued += 1
        self._n.events += 1
        if self._seg is not None:
            self._poke(now)
        return req

    async def _serve(self, req: _Request) -> ServiceRecord:
        try:
            while req.record is None:
                if self._leader is None:
                    self._leader = req
                if self._leader is req:
                    await self._drive(req)
                else:
                    wake = req.wake = anyio.Event()
                    await wake.wait()  # set when req completes or becomes the leader
            return req.record
        finally:
            self._release(req)

    def _release(self, req: _Request) -> None:
        """The waiting coroutine of ``req`` leaves: withdraw an unfinished request, hand over."""
        if req.state == _QUEUED or req.state == _RUNNING:
            self._withdraw(req)
        if self._leader is req:
            self._handoff()

    def _withdraw(self, req: _Request) -> None:
        now = current_clock().current_time()
        was_running = req.state == _RUNNING
        req.state = _CANCELLED
        self._n.cancelled += 1
        self._n.events += 1
        if was_running:
            self._running.remove(req)
            self._kv_used -= req.kv
            if req.ends is not None and req.generated:  # its cycles accounted so far
                cycles = self._ledger.cycles - req.base
                self._n.tokens_generated += min(req.ends[cycles], req.output - 1)
            seg = self._seg
            if seg is not None and req.seg is seg and seg.truncate(now):
                self._replanned(seg)  # the batch shrank: iterations after the one in flight change
        else:
            self._queued -= 1
        if self._seg is not None:
            self._poke(now)

    def _handoff(self) -> None:
        """Make another waiting request's coroutine the driver, if any request is left."""
        self._leader = None
        nxt = self._running[0] if self._running else self._peek()
        if nxt is not None:
            self._leader = nxt
            if nxt.wake is not None:
                nxt.wake.set()

    def _poke(self, now: float) -> None:
        """A request arrived or left: end the segment early if the queue head can get in."""
        seg = self._seg
        if seg is None:
            return
        if now <= seg.t0 + _EPS:
            # Planned at this very instant: plan it again with the newcomer, as an engine that
            # saw both arrivals before its next step would (the newcomer may outrank others).
            if not self._replan and (seg.head or self._admissible()):
                self._replan = True
                self._interrupt()
        elif self._admissible() and seg.truncate(now):
            self._replanned(seg)

    def _interrupt(self) -> None:
        # The driver wakes and plans or waits again.
        alarm, timer = self._alarm, self._alarm_timer
        if alarm is not None and timer is not None:
            timer.cancel()
            _ring(alarm)
        elif self._wait_scope is not None:
            self._wait_scope.cancel()

    def _replanned(self, seg: _Segment) -> None:
        self._interrupt()
        if self._watchers:
            self._notify(seg.batch)

    @staticmethod
    def _notify(reqs: Sequence[_Request]) -> None:
        for r in reqs:
            watch = r.watch
            if watch is not None:
                r.watch = None
                watch.set()

    # -- the driver -------------------------------------------------------------------------

    async def _drive(self, me: _Request) -> None:
        """Run the engine until ``me`` is served (cancellation leaves the state consistent)."""
        clock = current_clock()
        while me.record is None:
            seg = self._seg
            if seg is None or self._replan:
                if seg is not None:
                    self._unplan(seg)
                self._plan(clock.current_time())
                continue
            now = clock.current_time()
            if now < seg.end - _EPS:
                await self._wait(seg.end - now)
                self._n.waits += 1
                continue
            self._finish(seg)

    async def _wait(self, delay: float) -> None:
        """Sleep ``delay`` seconds on the run's clock, or until `_interrupt` wakes the driver."""
        loop = _asyncio_loop()
        if loop is None:  # another anyio backend: a cancel scope does the same, slower
            scope = self._wait_scope = anyio.CancelScope()
            try:
                with scope:
                    await anyio.sleep(delay)
            finally:
                self._wait_scope = None
            return
        # What anyio.sleep does on asyncio (a future and a timer), ended early by resolving the
        # future rather than by cancelling a scope, which costs more: the driver waits once
        # per event.
        alarm = self._alarm = loop.create_future()
        timer = self._alarm_timer = loop.call_later(delay, _ring, alarm)
        try:
            await alarm
        except BaseException:
            timer.cancel()  # cancelled: no timer may outlive the wait (it would move time on)
            raise
        finally:
            self._alarm = self._alarm_timer = None

    def _plan(self, now: float) -> None:
        """Admit what fits and plan the next segment, from the last boundary (or now, if idle)."""
        t0 = self._free_at if now - self._free_at <= _EPS else now
        new = self._admit()
        if not self._running:
            raise RuntimeError("scheduler invariant broken: a driver with nothing to run")
        try:
            seg = self._price(t0, new)
        except Exception:
            self._unadmit(new)  # a broken service model: leave the queue as it was
            raise
        for r in new:
            r.started = t0
        for r in seg.batch:
            r.seg = seg
        self._seg = seg
        if self._watchers:
            self._notify(seg.batch)

    def _unplan(self, seg: _Segment) -> None:
        """Drop a segment that has not started, so that it can be planned again."""
        self._replan = False
        self._seg = None
        self._unadmit([r for r in seg.head if r.state == _RUNNING])

    def _finish(self, seg: _Segment) -> None:
        """Account a segment that has ended: tokens, time categories, completions."""
        t_end, k, n = seg.end, seg.k, self._n
        n.busy_s += t_end - seg.t0
        n.decode_iterations += k
        head, head_s, head_comm = seg.head, seg.head_s, seg.head_comm_s
        if head:
            n.prefill_passes += 1
            n.tokens_generated += len(head)
            first = TokenRun(seg.t_dec0, 1, 0.0, 0.0)
            prefill_s = head_s - head_comm
            per_token = head_s / seg.head_tokens
        if k:
            comm = seg.g * (k * seg.m0 + 0.5 * k * (k - 1) * seg.dm)
            share = (t_end - seg.t_dec0) / len(seg.batch)
            run = TokenRun(seg.t_dec0, k, seg.f * seg.b0, seg.f * seg.db)
        finished = False
        batch: list[_Request] = seg.batch
        if self._bursts is not None:
            finished = self._account_cycles(seg, t_end, comm if k else 0.0, share if k else 0.0)
            batch = []  # accounted: nothing left for the loop below
        for r in batch:
            if r.state != _RUNNING:
                continue  # withdrawn mid-segment: its passes ran, but it has no record to fill
            if head:
                if r.generated == 0:
                    r.generated = 1
                    r.first_token = seg.t_dec0
                    r.prefill_s += prefill_s
                    r.busy_s += per_token * r.prompt
                    r.runs.append(first)
                r.comm_s += head_comm
            if k:
                r.generated += k
                r.comm_s += comm
                r.busy_s += share
                r.runs.append(run)
                n.tokens_generated += k
            if r.generated >= r.output:
                self._complete(r, t_end)
                finished = True
        if finished:
            self._running = [r for r in self._running if r.state == _RUNNING]
        self._seg = None
        self._free_at = t_end

    def _account_cycles(self, seg: _Segment, t_end: float, comm: float, share: float) -> bool:
        """Account a speculative segment: its new members, its cycles, the requests it ends.

        Members of the batch are not visited: the `Ledger` holds what they all share.
        """
        ledger, k = self._ledger, seg.k
        head = seg.head
        if head:
            first = TokenRun(seg.t_dec0, 1, 0.0, 0.0)
            prefill_s = seg.head_s - seg.head_comm_s
            per_token = seg.head_s / seg.head_tokens
            for r in head:
                if r.state == _RUNNING:
                    r.generated = 1
                    r.first_token = seg.t_dec0
                    r.prefill_s += prefill_s
                    r.busy_s += per_token * r.prompt
                    r.runs.append(first)
        ledger.comm += seg.head_comm_s + comm
        if k:
            ledger.busy += share
            ledger.runs.append(TokenRun(seg.t_dec0, k, seg.f * seg.b0, seg.f * seg.db))
            ledger.cycles += k
        done = ledger.done()
        for r in done:
            r.generated = r.output
            r.comm_s += ledger.comm - r.comm0
            r.busy_s += ledger.busy - r.busy0
            r.runs += ledger.runs_of(r)  # runs of cycles: `burst_runs` reads them per token
            self._n.tokens_generated += r.output - 1
            self._complete(r, t_end)
        if len(ledger.runs) > ledger.keep:
            ledger.trim([r for r in self._running if r.state == _RUNNING])
        return bool(done)

    def _complete(self, r: _Request, t_end: float) -> None:
        r.state = _DONE
        self._kv_used -= r.kv
        self._n.completed += 1
        self._n.events += 1
        queue_s = r.started - r.submitted if r.started > r.submitted else 0.0
        e2e = t_end - r.submitted
        decode_s = e2e - queue_s - r.prefill_s - r.comm_s  # the rest: disjoint by construction
        r.record = ServiceRecord(
            prompt_tokens=r.prompt,
            output_tokens=r.output,
            submitted_s=r.submitted,
            started_s=r.started,
            first_token_s=r.first_token,
            finished_s=t_end,
            queue_s=queue_s,
            prefill_s=r.prefill_s,
            decode_s=decode_s if decode_s > 0.0 else 0.0,
            comm_s=r.comm_s,
            busy_share_s=r.busy_s,
            token_runs=tuple(r.runs),
            cycle_ends=r.ends,
        )
        if r.wake is not None:
            r.wake.set()
        if r.watch is not None:
            self._notify((r,))

    def _cycle_runs(self, req: _Request) -> list[TokenRun]:
        """A speculative request's accounted runs (its first token's, then runs of cycles)."""
        if req.record is not None:
            return list(req.record.token_runs)
        if req.state != _RUNNING:
            return []
        return req.runs + self._ledger.runs_of(req)

    def _planned_runs(self, req: _Request) -> list[TokenRun | BurstRun]:
        """Token runs of ``req`` in the segment in progress (not yet accounted)."""
        seg = self._seg
        if seg is None or req.seg is not seg or req.state != _RUNNING:
            return []
        return seg.planned_runs(req)


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None on another anyio backend."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _ring(alarm: asyncio.Future[None]) -> None:
    if not alarm.done():
        alarm.set_result(None)
