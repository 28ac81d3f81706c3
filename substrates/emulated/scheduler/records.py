"""The scheduler's data: the service model it prices passes with, and the records it returns."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

__all__ = [
    "BurstRun",
    "IterCost",
    "PrefillPolicy",
    "SchedulerStatistics",
    "ServiceModel",
    "ServiceRecord",
    "Speculation",
    "TokenArrivals",
    "TokenRun",
    "burst_runs",
]

#: How prefill is scheduled against decode (see docs/scheduler.md for why this one).
PrefillPolicy = Literal["prefill_first"]


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

    A model of a speculative deployment also has a ``speculation`` attribute (a `Speculation`;
    optional, read with ``getattr``): its ``decode_iter`` then prices one verification cycle,
    and the scheduler draws how many tokens each request gains in it.

    Example:
        >>> @dataclass(frozen=True)
        ... class Linear:
        ...     max_batch: int = 8
        ...     kv_capacity_tokens: int = 100_000
        ...     def prefill(self, prompt_tokens: Sequence[int]) -> IterCost:
        ...         return IterCost(compute_s=1e-4 * sum(prompt_tokens))
        ...     def decode_iter(self, contexts: Sequence[int]) -> IterCost:
        ...         return IterCost(compute_s=0.02 + 1e-7 * sum(contexts), comm_s=0.002)
        >>> from substrates.emulated.scheduler import Scheduler
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


class Speculation(NamedTuple):
    """Speculative decoding as the scheduler sees it: draft length and acceptance rate.

    Each cycle proposes ``draft_tokens`` (k) tokens, each accepted with probability
    ``acceptance_rate`` (a) until the first rejection, and delivers ``min(first rejection, k)
    + 1`` tokens (the accepted drafts plus the target's own token): 1 .. k + 1, a truncated
    geometric with mean ``(1 - a**(k+1)) / (1 - a)`` (`expected_tokens`).
    """

    draft_tokens: int
    acceptance_rate: float

    @property
    def expected_tokens(self) -> float:
        """Mean tokens per cycle, E = (1 - a^(k+1)) / (1 - a)."""
        a, k = self.acceptance_rate, self.draft_tokens
        return float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)

    def probabilities(self) -> list[float]:
        """P(a cycle delivers j tokens) for j = 1 .. k + 1."""
        a, k = self.acceptance_rate, self.draft_tokens
        return [a ** (j - 1) * (1.0 - a) for j in range(1, k + 1)] + [a**k]


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


class BurstRun(NamedTuple):
    """Arrival times of ``tokens`` consecutive tokens delivered in bursts, one per cycle.

    Speculative decoding: cycle ``i`` (1-based) of the run ends at ``start_s + i * step_s +
    i * (i - 1) / 2 * accel_s`` (as token ``i`` of a `TokenRun`), and every token it accepted
    arrives then. ``ends[c]`` is the request's decode tokens after its ``c``-th cycle (``ends[0]
    == 0``; shared by all the request's runs, never copied); the run starts after cycle
    ``cycle0``. The same interface as `TokenRun`.
    """

    start_s: float
    tokens: int
    step_s: float
    accel_s: float
    ends: Sequence[int]
    cycle0: int

    def cycle_of(self, j: int) -> int:
        """The cycle of the run (1-based) that delivers token ``j`` of the run (1-based)."""
        c0 = self.cycle0
        return bisect_left(self.ends, self.ends[c0] + j, c0 + 1) - c0

    def time_of(self, j: int) -> float:
        """Arrival time of token ``j`` of the run (1-based): the end of its cycle."""
        i = self.cycle_of(j)
        return self.start_s + i * self.step_s + 0.5 * i * (i - 1) * self.accel_s

    def times(self) -> list[float]:
        """All arrival times of the run, in order (a burst's tokens share one time)."""
        return [self.time_of(j) for j in range(1, self.tokens + 1)]

    @property
    def cycles(self) -> int:
        """Cycles of the run (its bursts)."""
        return self.cycle_of(self.tokens) if self.tokens else 0


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """How the engine served one request; times are seconds on the run's clock.

    ``queue_s + prefill_s + decode_s + comm_s == e2e_s`` (to rounding). ``queue_s`` runs from
    submission to the start of the request's prefill pass; ``prefill_s`` is that pass's compute;
    ``decode_s`` everything after it except communication (including decode paused by other
    requests' prefill passes); ``comm_s`` is the communication share of every pass the request
    sat in. ``busy_share_s`` is the request's share of engine busy time (its part of each pass:
    by prompt tokens in prefill, equal per request in decode), for energy accounting.

    ``token_runs`` are kept as the scheduler ran them: with speculative decoding each decode
    run counts verification cycles, and ``cycle_ends`` (decode tokens after each cycle) maps
    them to tokens; `runs` gives them per token either way.
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
    cycle_ends: Sequence[int] | None = field(default=None, repr=False)

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

    @property
    def bursts(self) -> int:
        """Deliveries of tokens after the first: decode iterations, or speculative cycles.

        Plain decoding delivers one token per iteration (``output_tokens - 1`` bursts of one);
        speculative decoding delivers each cycle's accepted tokens together.
        """
        if self.cycle_ends is None:
            return self.output_tokens - 1
        return bisect_left(self.cycle_ends, self.output_tokens - 1)

    def runs(self) -> list[TokenRun | BurstRun]:
        """``token_runs`` per token: each speculative run of cycles as a `BurstRun`."""
        if self.cycle_ends is None:
            return list(self.token_runs)
        return burst_runs(self.token_runs, self.cycle_ends, self.output_tokens - 1)[0]

    def token_times(self) -> list[float]:
        """Arrival time of every output token, computed on demand from ``token_runs``.

        The first is at ``first_token_s``, the last at ``finished_s``; the tokens of one
        speculative cycle share its end.
        """
        out: list[float] = []
        for run in self.runs():
            out.extend(run.times())
        return out


def burst_runs(
    runs: Iterable[TokenRun], ends: Sequence[int], tokens: int, cycle0: int = 0
) -> tuple[list[TokenRun | BurstRun], int]:
    """A speculative request's runs of cycles as runs of tokens, from its cycle ``cycle0`` on.

    Args:
        runs: the request's token runs (the first token's, then runs of cycles).
        ends: its decode tokens after each cycle.
        tokens: its decode tokens (output - 1): a last cycle's extra tokens are not emitted.
        cycle0: the cycles before ``runs``.

    Returns:
        The runs (the first token's run as is, each run of cycles as a `BurstRun`) and the
        cycles after them.
    """
    out: list[TokenRun | BurstRun] = []
    c = cycle0
    for run in runs:
        if not (run.step_s or run.accel_s):
            out.append(run)  # the first token, at the end of the prefill pass
            continue
        k = run.tokens
        got = min(ends[c + k], tokens) - ends[c]
        out.append(BurstRun(run.start_s, got, run.step_s, run.accel_s, ends, c))
        c += k
    return out, c


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    """A snapshot of the scheduler's state and counters.

    ``events`` counts what a discrete-event simulation of the server must handle (arrivals,
    completions, cancellations); ``waits`` counts the clock waits the scheduler made for them.
    Both grow with events, not with tokens. On a speculative engine ``decode_iterations`` counts
    verification cycles, and a request's tokens count in ``tokens_generated`` when it completes
    or is withdrawn (its first token when it is prefilled).
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
