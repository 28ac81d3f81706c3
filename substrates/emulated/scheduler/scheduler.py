"""`Scheduler`: iteration-level continuous batching of requests on the run's clock.

The public face of the layers below it, each in its own module: `admission` (queue, batch,
KV), `segment` (pricing and drawing what runs between two events), `driver` (the events on the
clock). This module validates the settings, sets up their state and opens requests and streams.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict
from typing import final

import anyio

from agentrt.errors import ConfigError
from substrates.emulated.scheduler.admission import _Request
from substrates.emulated.scheduler.bursts import Bursts, Ledger
from substrates.emulated.scheduler.driver import _Counters, _Driver
from substrates.emulated.scheduler.records import (
    PrefillPolicy,
    SchedulerStatistics,
    ServiceModel,
    ServiceRecord,
)
from substrates.emulated.scheduler.stream import ServiceStream

__all__ = ["Scheduler"]


@final
class Scheduler(_Driver):
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

    A model with a ``speculation`` attribute (`Speculation`) decodes speculatively: each
    iteration is a verification cycle, and each request gains 1 .. k + 1 tokens in it, drawn
    from the seed and the request's number; a cycle's tokens arrive together at its end.

    Example:
        >>> from collections.abc import Sequence
        >>> import agentrt
        >>> from substrates.emulated.scheduler import IterCost, ServiceRecord
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
        seed: seeds jitter, stalls and speculative bursts; the same seed and arrivals give
            identical timings.
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
        # The layers' state; what each attribute holds is said where its layer declares it.
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
        speculation = getattr(model, "speculation", None)
        self._bursts = None if speculation is None else Bursts(speculation, seed)
        self._ledger = Ledger()
        self._heap = []
        self._seq = 0
        self._queued = 0
        self._running = []
        self._kv_used = 0
        self._seg = None
        self._replan = False
        self._free_at = -math.inf
        self._leader = None
        self._alarm = None
        self._alarm_timer = None
        self._wait_scope = None
        self._watchers = 0
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
