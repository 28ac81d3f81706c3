"""Per-attempt timeouts for one run, enforced by a single event-loop timer.

``anyio.move_on_after`` schedules a timer when an attempt starts and cancels it when the attempt
ends. Nearly every attempt ends long before its timeout, so a run of short steps spends more on
that timer churn (a heap push, a cancel, a heap pop of the dead handle) than on the rest of the
step. Here each attempt registers its cancel scope and deadline in a dict; one timer, armed for
the earliest deadline it knows of, wakes, cancels the scopes that are due and re-arms for the
next. An attempt that ends early only removes itself; the timer may then wake once for nothing.

Cancellation goes through ``CancelScope.cancel()``, exactly as anyio's own deadline does, so
shielded cleanup inside a step (a sandbox killing its process group) still runs to completion.
Unlike ``move_on_after``, the scope carries no deadline of its own: inside a step,
``anyio.current_effective_deadline()`` shows the run's deadline, not the attempt's.
"""

from __future__ import annotations

import asyncio
import math

import anyio

__all__ = ["AttemptTimeouts"]


_SCOPE_CLASS: list[type[anyio.CancelScope]] = []


def _asyncio_scope_class() -> type[anyio.CancelScope]:
    if not _SCOPE_CLASS:
        _SCOPE_CLASS.append(type(anyio.CancelScope()))
    return _SCOPE_CLASS[0]


class AttemptTimeouts:
    """Cancel scopes with deadlines on one event loop, sharing one timer.

    Create it on the loop that runs the attempts; call `close` when the run ends.
    """

    __slots__ = ("_armed_for", "_due", "_handle", "_loop", "_scope_class")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        # anyio.CancelScope() looks up the running backend on every call to pick its class; on
        # an asyncio loop it is always the same class, so look it up once (the backend builds
        # its scopes by calling that class, as `scope` does).
        self._scope_class = _asyncio_scope_class()
        self._due: dict[anyio.CancelScope, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def scope(self) -> anyio.CancelScope:
        """A new cancel scope of the running backend (what ``anyio.CancelScope()`` returns)."""
        return self._scope_class()

    def add(self, scope: anyio.CancelScope, timeout_s: float) -> None:
        """Cancel ``scope`` ``timeout_s`` seconds from now (loop time) unless it is removed."""
        if timeout_s == math.inf:
            return
        deadline = self._loop.time() + timeout_s
        self._due[scope] = deadline
        if deadline < self._armed_for:
            self._arm(deadline)

    def remove(self, scope: anyio.CancelScope) -> None:
        """Forget ``scope`` (its attempt ended); the timer stays armed for reuse."""
        self._due.pop(scope, None)

    def close(self) -> None:
        """Cancel the timer and forget every scope: the run is over."""
        self._due.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_for = math.inf

    def _arm(self, deadline: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(deadline, self._fire)
        self._armed_for = deadline

    def _fire(self) -> None:
        self._handle = None
        self._armed_for = math.inf
        if not self._due:
            return
        now = self._loop.time()
        due = [scope for scope, deadline in self._due.items() if deadline <= now]
        for scope in due:
            del self._due[scope]
            scope.cancel()
        if self._due:
            self._arm(min(self._due.values()))
