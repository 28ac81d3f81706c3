"""Serving scheduler: iteration-level continuous batching of requests on the run's clock."""

from __future__ import annotations

import asyncio
import heapq
import math
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Literal, NamedTuple, Protocol, final

import anyio

from agentrt import current_clock
from agentrt.errors import ConfigError, DoesNotFitError

__all__ = [
    "IterCost",
    "PrefillPolicy",
    "Scheduler",
    "SchedulerStatistics",
    "ServiceModel",
    "ServiceRecord",
    "ServiceStream",
    "TokenArrivals",
    "TokenRun",
]

#: How prefill is scheduled against decode (see docs/scheduler.md for why this one).
PrefillPolicy = Literal["prefill_first"]

# Two clock readings this close are the same instant: the virtual loop runs a timer up to its
# clock resolution (1e-9 s) early, and float sums differ in the last bits.
_EPS = 1e-9

# Request states.
_QUEUED, _RUNNING, _DONE, _CANCELLED = range(4)


class IterCost(NamedTuple):
    """The cost of one engine pass: compute time and inter-chip communication time, in seconds.

    The two are kept apart so that communication (tensor-parallel all-reduce, pipeline and
    inter-wafer hops) is attributed as ``comm_s`` rather than folded into prefill or decode.
    The pass takes ``compute_s + comm_s`` (any overlap is already netted out by the model).
    A named tuple: one is built per pass priced, several times cheaper than a dataclass.
    """

    compute_s: float
    comm_s: float = 0.0

    @property
    def total_s(self) -> float:
        """Wall time of the pass."""
        return self.compute_s + self.comm_s


class ServiceModel(Protocol):
    """**Protocol:** what one engine deployment costs per pass; pure, no clock, no I/O.

    The scheduler calls it to price each prefill pass and each decode iteration. Concurrency of
    any kind is expressed here, not in the scheduler: a GPU deployment's ``decode_iter`` grows
    with batch and context; a wafer-scale layer pipeline sets ``max_batch`` to the pipeline depth
    and keeps ``decode_iter`` nearly flat up to it.

    Example:
        >>> @dataclass(frozen=True)
        ... class Linear:
        ...     max_batch: int = 8
        ...     kv_capacity_tokens: int = 100_000
        ...     def prefill(self, prompt_tokens: Sequence[int]) -> IterCost:
        ...         return IterCost(compute_s=1e-4 * sum(prompt_tokens))
        ...     def decode_iter(self, contexts: Sequence[int]) -> IterCost:
        ...         return IterCost(compute_s=0.02 + 1e-7 * sum(contexts), comm_s=0.002)
        >>> Scheduler(Linear(), seed=1).statistics().kv_capacity_tokens
        100000
    """

    @property
    def max_batch(self) -> int:
        """Most requests decoding together."""
        ...

    @property
    def kv_capacity_tokens(self) -> int:
        """KV-cache budget in tokens (prompt + output of every admitted request)."""
        ...

    def prefill(self, prompt_tokens: Sequence[int]) -> IterCost:
        """One prefill pass over these prompts (one entry per request, in tokens)."""
        ...

    def decode_iter(self, contexts: Sequence[int]) -> IterCost:
        """One decode iteration for a batch with these context lengths (one token each)."""
        ...


class TokenRun(NamedTuple):
    """Arrival times of ``tokens`` consecutive tokens, in closed form.

    Token ``j`` (1-based) of the run arrives at ``start_s + j * step_s + j * (j - 1) / 2 *
    accel_s``: iterations whose time grows linearly as the contexts grow. A run with ``step_s ==
    0`` and ``tokens == 1`` is a single token at ``start_s`` (the first token, at prefill's end).
    """

    start_s: float
    tokens: int
    step_s: float
    accel_s: float

    def time_of(self, j: int) -> float:
        """Arrival time of token ``j`` of the run (1-based)."""
        return self.start_s + j * self.step_s + 0.5 * j * (j - 1) * self.accel_s

    def times(self) -> list[float]:
        """All arrival times of the run, in order."""
        return [self.time_of(j) for j in range(1, self.tokens + 1)]


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """How the engine served one request; times are seconds on the run's clock.

    ``queue_s + prefill_s + decode_s + comm_s == e2e_s`` (to rounding). ``queue_s`` runs from
    submission to the start of the request's prefill pass; ``prefill_s`` is that pass's compute;
    ``decode_s`` everything after it except communication (including decode paused by other
    requests' prefill passes); ``comm_s`` is the communication share of every pass the request
    sat in. ``busy_share_s`` is the request's share of engine busy time (its part of each pass:
    by prompt tokens in prefill, equal per request in decode), for energy accounting.
    """

    prompt_tokens: int
    output_tokens: int
    submitted_s: float
    started_s: float
    first_token_s: float
    finished_s: float
    queue_s: float
    prefill_s: float
    decode_s: float
    comm_s: float
    busy_share_s: float
    token_runs: tuple[TokenRun, ...] = field(repr=False)

    @property
    def e2e_s(self) -> float:
        """Submission to last token."""
        return self.finished_s - self.submitted_s

    @property
    def ttft_s(self) -> float:
        """Submission to first token."""
        return self.first_token_s - self.submitted_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first."""
        n = self.output_tokens - 1
        return (self.finished_s - self.first_token_s) / n if n > 0 else 0.0

    def token_times(self) -> list[float]:
        """Arrival time of every output token, computed on demand from ``token_runs``.

        The first is at ``first_token_s``, the last at ``finished_s``.
        """
        out: list[float] = []
        for run in self.token_runs:
            out.extend(run.times())
        return out


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    """A snapshot of the scheduler's state and counters.

    ``events`` counts what a discrete-event simulation of the server must handle (arrivals,
    completions, cancellations); ``waits`` counts the clock waits the scheduler made for them.
    Both grow with events, not with tokens.
    """

    queued: int
    running: int
    kv_tokens_used: int
    kv_capacity_tokens: int
    busy_s: float
    prefill_passes: int
    decode_iterations: int
    tokens_generated: int
    completed: int
    cancelled: int
    events: int
    waits: int


@dataclass(frozen=True, slots=True)
class TokenArrivals:
    """Tokens ``index .. index + len(times_s) - 1`` of a stream and when each arrived."""

    index: int
    times_s: tuple[float, ...]


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
    runs: list[TokenRun] = field(default_factory=list)
    seg: _Segment | None = None
    record: ServiceRecord | None = None
    error: Exception | None = None  # why a streamed request failed (raised to its reader)
    wake: anyio.Event | None = None  # its waiting coroutine sleeps on this (None until it parks)
    watch: anyio.Event | None = None  # a stream consumer sleeps on this until the plan changes


@dataclass(slots=True, eq=False)
class _Segment:
    """What the engine does between two events, priced and drawn at once.

    An optional prefill pass (``head``), then k decode iterations over a steady batch.
    Decode iteration i (0-based) has base cost ``b0 + db * i`` (of which communication
    ``m0 + dm * i``): exact when the model is affine in the contexts, which grow by one per
    iteration. Realized time is the base time scaled by ``f`` (jitter and stalls) and
    communication is scaled by ``g`` (jitter only), spread over the iterations in proportion
    to their base cost.
    """

    t0: float
    batch: list[_Request]
    t_dec0: float
    end: float
    head: list[_Request] = field(default_factory=list)
    head_tokens: int = 0
    head_s: float = 0.0
    head_comm_s: float = 0.0
    k: int = 0
    b0: float = 0.0
    db: float = 0.0
    m0: float = 0.0
    dm: float = 0.0
    f: float = 1.0
    g: float = 1.0

    def base(self, j: int) -> float:
        """Base (undrawn) time of the first j decode iterations."""
        return j * self.b0 + 0.5 * j * (j - 1) * self.db

    def truncate(self, t: float) -> bool:
        """End after the pass in flight at time t (or at t, if a pass ends then); True if moved."""
        if t >= self.end - _EPS:
            return False
        k = 0  # during the prefill pass, decode waits for the next segment
        if t >= self.t_dec0 - _EPS:
            j = self._done_by(t + _EPS)
            in_flight = self.t_dec0 + self.f * self.base(j) < t - _EPS
            k = min(self.k, j + in_flight)
        if k == self.k:
            return False
        self.k = k
        self.end = self.t_dec0 + self.f * self.base(k)
        return True

    def _done_by(self, t: float) -> int:
        """Decode iterations of this segment complete by time t."""
        x = (t - self.t_dec0) / self.f
        if x <= 0.0:
            return 0
        b0, db = self.b0, self.db
        if abs(db) <= 1e-12 * b0:
            j = int(x / b0)
        else:
            # Solve j * b0 + db * j * (j - 1) / 2 = x for j, then correct for rounding.
            lin = b0 - 0.5 * db
            disc = lin * lin + 2.0 * db * x
            j = int((math.sqrt(disc) - lin) / db) if disc > 0.0 else self.k
        j = max(0, min(j, self.k))
        while j < self.k and self.base(j + 1) <= x:
            j += 1
        while j > 0 and self.base(j) > x:
            j -= 1
        return j

    def planned_runs(self, req: _Request) -> list[TokenRun]:
        """Token runs of ``req`` (a member) in this segment, before it is accounted."""
        runs: list[TokenRun] = []
        if self.head and req.generated == 0:
            runs.append(TokenRun(self.t_dec0, 1, 0.0, 0.0))
        if self.k:
            runs.append(TokenRun(self.t_dec0, self.k, self.f * self.b0, self.f * self.db))
        return runs


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


@final
class ServiceStream:
    """A request being served, whose tokens can be read as they arrive on the run's clock.

    Opened by `Scheduler.stream`; read with `arrivals`, then `wait` for the `ServiceRecord`.
    """

    __slots__ = ("_rb", "_req", "_ri", "_sched")

    def __init__(self, sched: Scheduler, req: _Request) -> None:
        self._sched = sched
        self._req = req
        self._ri = 0  # cursor into the request's finished token runs
        self._rb = 0  # index of the first token of run _ri

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
        runs: Sequence[TokenRun] = req.record.token_runs if req.record else req.runs
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


@final
class Scheduler:
    """Iteration-level continuous batching of requests on one engine, on the run's clock.

    Many concurrent `submit` calls share the engine: FIFO within priority classes (higher first,
    no preemption), at most ``model.max_batch`` decoding together, and a request is admitted
    only when its prompt + output fit in the KV budget left (strict head-of-line order, so a big
    request is never starved). Prefill is *prefill-first*: newly admitted prompts are prefilled
    together in one pass that pauses decode, and their first tokens arrive at its end.

    Time advances by events, not tokens: between two events (an arrival that can be admitted,
    a completion, a cancellation) the batch is steady, so all its iterations are priced and
    waited for at once. There is no background task: whichever caller is waiting drives the
    engine (leader/followers), and hands over when it leaves. See docs/scheduler.md.

    Example:
        >>> import agentrt
        >>> class Linear:
        ...     max_batch, kv_capacity_tokens = 8, 100_000
        ...     def prefill(self, prompt_tokens: Sequence[int]) -> IterCost:
        ...         return IterCost(compute_s=1e-4 * sum(prompt_tokens))
        ...     def decode_iter(self, contexts: Sequence[int]) -> IterCost:
        ...         return IterCost(compute_s=0.02)
        >>> async def main() -> ServiceRecord:
        ...     return await Scheduler(Linear(), seed=0).submit(1000, 11)
        >>> rec = agentrt.run(main, clock=agentrt.VirtualClock())
        >>> round(rec.ttft_s, 6), round(rec.e2e_s, 6)
        (0.1, 0.3)

    Args:
        model: the per-pass cost model of the deployment.
        seed: seeds jitter and stalls; the same seed and arrivals give identical timings.
        jitter: sigma of the lognormal factor (mean 1) on each pass's time; 0 = none.
        stall_prob: probability that a pass stalls.
        stall_s: extra seconds a stalled pass takes.
        prefill_policy: how prefill shares the engine with decode (``"prefill_first"``).
        max_prefill_tokens: most prompt tokens per prefill pass (more admitted prompts wait for
            the next pass, decode still paused); None = no limit. One prompt always fits.

    Raises:
        ConfigError: for a bad parameter or a model with ``max_batch`` / ``kv_capacity_tokens``
            below 1.
    """

    def __init__(
        self,
        model: ServiceModel,
        *,
        seed: int,
        jitter: float = 0.0,
        stall_prob: float = 0.0,
        stall_s: float = 0.0,
        prefill_policy: PrefillPolicy = "prefill_first",
        max_prefill_tokens: int | None = None,
    ) -> None:
        if prefill_policy != "prefill_first":
            raise ConfigError(f"unknown prefill_policy {prefill_policy!r}; use 'prefill_first'")
        if not (jitter >= 0 and math.isfinite(jitter)):
            raise ConfigError(f"jitter must be a finite sigma >= 0, got {jitter}")
        if not 0 <= stall_prob <= 1:
            raise ConfigError(f"stall_prob must lie in [0, 1], got {stall_prob}")
        if not (stall_s >= 0 and math.isfinite(stall_s)):
            raise ConfigError(f"stall_s must be finite and >= 0, got {stall_s}")
        if max_prefill_tokens is not None and max_prefill_tokens < 1:
            raise ConfigError(f"max_prefill_tokens must be >= 1 or None, got {max_prefill_tokens}")
        max_batch, kv_cap = int(model.max_batch), int(model.kv_capacity_tokens)
        if max_batch < 1 or kv_cap < 1:
            raise ConfigError(
                f"the service model needs max_batch >= 1 and kv_capacity_tokens >= 1, got "
                f"{max_batch} and {kv_cap}"
            )
        self._model = model
        self._max_batch = max_batch
        self._kv_cap = kv_cap
        self._max_prefill = max_prefill_tokens
        self._rng = random.Random(seed)
        self._sigma = float(jitter)
        self._jit_var = math.expm1(self._sigma**2)
        self._stall_p = float(stall_prob)
        self._stall_s = float(stall_s)
        self._stall_log_q = math.log1p(-self._stall_p) if self._stall_p < 1.0 else -math.inf
        self._heap: list[tuple[int, int, _Request]] = []  # (-priority, arrival order, request)
        self._seq = 0
        self._queued = 0
        self._running: list[_Request] = []
        self._kv_used = 0
        self._seg: _Segment | None = None  # what the engine is doing now
        self._replan = False  # an arrival at the instant the segment was planned joins it
        self._free_at = -math.inf  # when the last segment ended
        self._leader: _Request | None = None  # whose waiting coroutine drives the engine
        # The driver's wait and its timer, to interrupt it.
        self._alarm: asyncio.Future[None] | None = None
        self._alarm_timer: asyncio.TimerHandle | None = None
        self._wait_scope: anyio.CancelScope | None = None  # the same, off asyncio
        self._watchers = 0  # open streams
        self._n = _Counters()

    # -- public API -------------------------------------------------------------------------

    async def submit(
        self, prompt_tokens: int, output_tokens: int, *, priority: int = 0
    ) -> ServiceRecord:
        """Serve one request and return how it was served, once its last token is out.

        Cancelling the caller removes the request (queued or mid-decode) and frees its KV.

        Args:
            prompt_tokens: prompt length (>= 1).
            output_tokens: tokens to generate (>= 1).
            priority: higher is admitted first; FIFO within a priority.

        Returns:
            The request's `ServiceRecord`.

        Raises:
            DoesNotFitError: prompt + output can never fit the KV budget.
            ConfigError: a length below 1.
        """
        req = self._enqueue(prompt_tokens, output_tokens, priority)
        return await self._serve(req)

    def stream(
        self, prompt_tokens: int, output_tokens: int, *, priority: int = 0
    ) -> AbstractAsyncContextManager[ServiceStream]:
        """Submit a request whose tokens are read as they arrive.

        The request is submitted on entering; leaving the block before it completes cancels it.

        Example:
            >>> async def show(sched: Scheduler) -> None:
            ...     async with sched.stream(100, 50) as s:
            ...         async for chunk in s.arrivals(max_tokens=8):
            ...             print(chunk.index, chunk.times_s[-1])
            ...         print((await s.wait()).ttft_s)

        Args:
            prompt_tokens: prompt length (>= 1).
            output_tokens: tokens to generate (>= 1).
            priority: as for `submit`.

        Returns:
            An async context manager yielding a `ServiceStream`.
        """
        return self._stream(prompt_tokens, output_tokens, priority)

    def statistics(self) -> SchedulerStatistics:
        """A frozen snapshot of queue, batch, KV and counters."""
        return SchedulerStatistics(
            queued=self._queued,
            running=len(self._running),
            kv_tokens_used=self._kv_used,
            kv_capacity_tokens=self._kv_cap,
            **asdict(self._n),
        )

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

    @asynccontextmanager
    async def _stream(
        self, prompt: int, output: int, priority: int
    ) -> AsyncIterator[ServiceStream]:
        req = self._enqueue(prompt, output, priority)
        self._watchers += 1
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._serve_stream, req, name=f"scheduler stream {req.seq}")
                yield ServiceStream(self, req)
                tg.cancel_scope.cancel()  # a no-op once served; else withdraws the request
        except BaseExceptionGroup as group:
            # The serving task never raises, so an error comes from the block: raise it as is.
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
                raise group.exceptions[0] from None
            raise
        finally:
            self._watchers -= 1
            self._release(req)  # in case the serving task never got to run

    async def _serve_stream(self, req: _Request) -> None:
        try:
            await self._serve(req)
        except Exception as exc:
            # Raised to the reader as is, rather than wrapped in the task group's ExceptionGroup.
            req.error = exc
            self._notify((req,))

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

    def _price(self, t0: float, new: list[_Request]) -> _Segment:
        """Price and draw a segment: a prefill pass for ``new``, then steady decode iterations."""
        model = self._model
        batch = self._running[:]
        seg = _Segment(t0, batch, t0, t0)
        if new:
            prompts = [r.prompt for r in new]
            cost = model.prefill(prompts)
            compute, comm = cost
            base = compute + comm
            if not (compute >= 0.0 and comm >= 0.0 and 0.0 < base < math.inf):
                raise _bad_cost("prefill", prompts, cost)
            jit = self._draw(base, base * base) if self._sigma else base
            stall = self._stall_s if self._stall_p and self._rng.random() < self._stall_p else 0.0
            seg.head = new
            seg.head_tokens = sum(prompts)
            seg.head_s = jit + stall
            seg.head_comm_s = comm * jit / base
            seg.t_dec0 = seg.end = t0 + jit + stall
            # Prefill-first: while more prompts can be admitted, the next pass prefills them.
            if self._max_prefill is not None and self._admissible():
                return seg
        # Decode until the first member is done: k iterations over the same batch.
        ctx: list[int] = []
        k = 1 << 62
        for r in batch:
            done = r.generated or 1  # a member of the prefill pass has its first token then
            ctx.append(r.prompt + done)
            if r.output - done < k:
                k = r.output - done
        if k == 0:
            return seg
        c0 = model.decode_iter(ctx)
        b0, m0 = c0[0] + c0[1], c0[1]
        if not (c0[0] >= 0.0 and m0 >= 0.0 and 0.0 < b0 < math.inf):
            raise _bad_cost("decode_iter", ctx, c0)
        db = dm = 0.0
        if k > 1:
            ctx = [c + k - 1 for c in ctx]
            c1 = model.decode_iter(ctx)
            b1 = c1[0] + c1[1]
            if not (c1[0] >= 0.0 and c1[1] >= 0.0 and 0.0 < b1 < math.inf):
                raise _bad_cost("decode_iter", ctx, c1)
            db = (b1 - b0) / (k - 1)
            dm = (c1[1] - m0) / (k - 1)
        seg.k, seg.b0, seg.db, seg.m0, seg.dm = k, b0, db, m0, dm
        base = seg.base(k)
        jit = base
        if self._sigma:
            # Sum of squared per-iteration costs, for the variance of the jitter sum.
            sq = k * b0 * b0 + b0 * db * k * (k - 1) + db * db * (k - 1) * k * (2 * k - 1) / 6
            jit = self._draw(base, sq)
        stalls = self._stall_s * self._stalls(k) if self._stall_p else 0.0
        seg.f = (jit + stalls) / base
        seg.g = jit / base
        seg.end = seg.t_dec0 + jit + stalls
        return seg

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
        for r in seg.batch:
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
        )
        if r.wake is not None:
            r.wake.set()
        if r.watch is not None:
            self._notify((r,))

    def _planned_runs(self, req: _Request) -> list[TokenRun]:
        """Token runs of ``req`` in the segment in progress (not yet accounted)."""
        seg = self._seg
        if seg is None or req.seg is not seg or req.state != _RUNNING:
            return []
        return seg.planned_runs(req)

    # -- randomness -------------------------------------------------------------------------

    def _draw(self, mean: float, sum_sq: float) -> float:
        """Drawn time of passes with base costs c_i, each scaled by a lognormal factor of mean 1.

        ``mean`` is the sum of the c_i and ``sum_sq`` the sum of their squares. The sum of
        lognormals is drawn as one lognormal with the same mean and variance
        (Fenton-Wilkinson); exact for a single pass.
        """
        s2 = math.log1p(self._jit_var * sum_sq / (mean * mean))
        return mean * math.exp(self._rng.gauss(-0.5 * s2, math.sqrt(s2)))

    def _stalls(self, k: int) -> int:
        """How many of k passes stall: a Binomial(k, stall_prob) draw."""
        p = self._stall_p
        if p >= 1.0:
            return k
        rng = self._rng
        if k * p > 30.0:  # normal approximation; exact enough this far from 0 and k
            n = round(rng.gauss(k * p, math.sqrt(k * p * (1.0 - p))))
            return min(k, max(0, n))
        # Exact: skip geometrically distributed gaps between stalled passes.
        log_q = self._stall_log_q
        count, i = 0, 0
        while True:
            i += int(math.log(1.0 - rng.random()) / log_q) + 1
            if i > k:
                return count
            count += 1


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None on another anyio backend."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _ring(alarm: asyncio.Future[None]) -> None:
    if not alarm.done():
        alarm.set_result(None)


def _bad_cost(what: str, arg: Sequence[int], cost: IterCost) -> ConfigError:
    shown = ", ".join(map(str, arg[:4])) + (", ..." if len(arg) > 4 else "")
    return ConfigError(
        f"service model {what}([{shown}]) returned {cost!r}; a pass must take a positive, finite "
        "time with compute_s >= 0 and comm_s >= 0"
    )
