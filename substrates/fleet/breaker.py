"""`CircuitBreaker`: closed, open and half-open states of one route, on the run's clock."""

from __future__ import annotations

import math
from typing import Literal, final

from agentrt.errors import ConfigError

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half-open"]


@final
class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures -> half-open after ``cooldown_s``.

    Half-open lets one probe call through: its success closes the breaker, its failure opens it
    again for another cool-down. Times are readings of the run's clock.

    Example:
        >>> b = CircuitBreaker(failures=2, cooldown_s=10)
        >>> b.record_failure(0.0); b.record_failure(1.0); b.state
        'open'
        >>> b.allow(5.0), b.allow(11.0), b.state
        (False, True, 'half-open')
    """

    def __init__(self, *, failures: int = 5, cooldown_s: float = 30.0) -> None:
        if failures < 1 or cooldown_s < 0:
            raise ConfigError("a breaker needs failures >= 1 and cooldown_s >= 0")
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.state: BreakerState = "closed"
        self.failures = 0
        self.opened_at = -math.inf
        self.transitions: list[tuple[float, BreakerState]] = []
        self._probing = False

    def _move(self, state: BreakerState, t: float) -> None:
        if state != self.state:
            self.state = state
            self.transitions.append((t, state))

    def allow(self, t: float) -> bool:
        """Whether a call may go through at ``t`` (taking the half-open probe slot if so)."""
        if self.state == "open" and t >= self.opened_at + self.cooldown_s:
            self._move("half-open", t)
            self._probing = False
        if self.state == "closed":
            return True
        if self.state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def reopens_at(self) -> float:
        """When an open breaker will let a probe through."""
        return self.opened_at + self.cooldown_s

    def release(self) -> None:
        """A call let through ended without a verdict (cancelled): free the probe slot."""
        self._probing = False

    def record_success(self, t: float) -> None:
        """A call succeeded: close."""
        self.failures = 0
        self._probing = False
        self._move("closed", t)

    def record_failure(self, t: float) -> None:
        """A call failed retryably: count it, and open on the threshold or a failed probe."""
        self.failures += 1
        self._probing = False
        if self.state == "half-open" or self.failures >= self.threshold:
            self.opened_at = t
            self._move("open", t)
