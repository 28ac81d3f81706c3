"""The one place tenacity retry policies are built: retryable errors only, back-off on the clock."""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from agentrt.errors import AgentrtError
from agentrt.plan import RetryPolicy

__all__ = ["backoff_s", "is_retryable", "retrying"]


def is_retryable(exc: BaseException) -> bool:
    """True for agentrt errors marked retryable; never for cancellation or programming errors."""
    return isinstance(exc, AgentrtError) and exc.retryable


def backoff_s(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based), jitter included.

    Example:
        >>> backoff_s(RetryPolicy(initial_backoff_s=1, jitter_s=0), 3, random.Random(0))
        4.0
    """
    base = policy.initial_backoff_s * policy.multiplier ** (attempt - 1)
    jitter = rng.uniform(0, policy.jitter_s) if policy.jitter_s > 0 else 0.0
    return min(policy.max_backoff_s, base) + jitter


class _Wait:
    """tenacity wait strategy: exponential back-off with seeded jitter, at least Retry-After."""

    __slots__ = ("_policy", "_rng")

    def __init__(self, policy: RetryPolicy, rng: random.Random) -> None:
        self._policy = policy
        self._rng = rng

    def __call__(self, state: RetryCallState) -> float:
        wait = backoff_s(self._policy, state.attempt_number, self._rng)
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        retry_after = getattr(exc, "retry_after_s", None)
        if isinstance(retry_after, int | float):
            wait = max(wait, float(retry_after))
        return wait


def retrying(
    policy: RetryPolicy,
    *,
    rng: random.Random,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """A tenacity ``AsyncRetrying`` for ``policy``.

    Retries only errors for which `is_retryable` is true, re-raises the last error when attempts
    run out, and sleeps with ``anyio.sleep`` so back-off follows the run's clock (virtual or real).

    Example:
        >>> async def call_with_retries() -> None:
        ...     async for attempt in retrying(RetryPolicy(), rng=random.Random(1)):
        ...         with attempt:
        ...             ...  # one attempt
    """
    return AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=_Wait(policy, rng),
        retry=retry_if_exception(is_retryable),
        sleep=anyio.sleep,
        reraise=True,
        before_sleep=before_sleep,
    )
