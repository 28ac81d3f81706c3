"""`ServiceStream`: a request being served, its tokens read as they arrive on the run's clock."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, final

import anyio

from agentrt import current_clock
from agentrt.errors import ConfigError
from substrates.emulated.scheduler.admission import _Request
from substrates.emulated.scheduler.records import (
    BurstRun,
    ServiceRecord,
    TokenArrivals,
    TokenRun,
    burst_runs,
)
from substrates.emulated.scheduler.segment import _EPS

if TYPE_CHECKING:
    from substrates.emulated.scheduler.scheduler import Scheduler

__all__ = ["ServiceStream"]


@final
class ServiceStream:
    """A request being served, whose tokens can be read as they arrive on the run's clock.

    Opened by `Scheduler.stream`; read with `arrivals`, then `wait` for the `ServiceRecord`.
    """

    __slots__ = ("_bursts", "_covered", "_cycles", "_rb", "_req", "_ri", "_sched")

    def __init__(self, sched: Scheduler, req: _Request) -> None:
        self._sched = sched
        self._req = req
        self._ri = 0  # cursor into the request's finished token runs
        self._rb = 0  # index of the first token of run _ri
        # Speculative decoding: the request's finished runs per token, the cycles and the
        # tokens they hold.
        self._bursts: list[TokenRun | BurstRun] = []
        self._cycles = 0
        self._covered = 0

    async def arrivals(self, *, max_tokens: int | None = 1) -> AsyncIterator[TokenArrivals]:
        """Yield tokens when they arrive: each chunk when its last token arrives.

        Args:
            max_tokens: the most tokens per chunk; None = as many as are planned in one go
                (one chunk per scheduler event: cheapest in virtual time). A chunk never waits
                for tokens the engine has not planned yet.

        Yields:
            `TokenArrivals` in order, covering every output token once.
        """
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1 or None, got {max_tokens}")
        req = self._req
        clock = current_clock()
        index = 0
        while index < req.output:
            if req.error is not None:
                raise req.error
            want = req.output - index if max_tokens is None else min(max_tokens, req.output - index)
            times = self._times(index, want)
            due = times[-1] if times else math.inf
            if due <= clock.current_time() + _EPS:
                yield TokenArrivals(index=index, times_s=tuple(times))
                index += len(times)
                continue
            watch = req.watch = anyio.Event()
            # Woken early when the plan changes (a batch change can make tokens come sooner).
            with anyio.CancelScope(deadline=due):
                await watch.wait()

    async def wait(self) -> ServiceRecord:
        """Wait until the request is complete and return its record."""
        req = self._req
        while req.record is None:
            if req.error is not None:
                raise req.error
            watch = req.watch = anyio.Event()
            await watch.wait()
        return req.record

    def _times(self, start: int, limit: int) -> list[float]:
        """Arrival times (finished or planned) of up to ``limit`` tokens from index ``start``.

        Only within the run holding token ``start``: a chunk never waits for a later event.
        """
        req = self._req
        runs: Sequence[TokenRun | BurstRun]
        if req.ends is None:
            runs = req.record.token_runs if req.record else req.runs
        else:  # runs of cycles, some in the engine's ledger: read them per token, each once
            runs = done = self._bursts
            if start >= self._covered:
                raw = self._sched._cycle_runs(req)
                if len(raw) > len(done):
                    more, self._cycles = burst_runs(
                        raw[len(done) :], req.ends, req.output - 1, self._cycles
                    )
                    done += more
                    self._covered += sum(run.tokens for run in more)
        i, base = self._ri, self._rb
        while i < len(runs) and base + runs[i].tokens <= start:
            base += runs[i].tokens
            i += 1
        self._ri, self._rb = i, base
        if i < len(runs):
            run = runs[i]
        else:
            for run in self._sched._planned_runs(req):
                if base + run.tokens > start:
                    break
                base += run.tokens
            else:
                return []  # not planned yet
        first = start - base + 1
        last = min(run.tokens, first + limit - 1)
        return [run.time_of(j) for j in range(first, last + 1)]
