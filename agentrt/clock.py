"""The run's clock: real time, or virtual time in which sleeps and timeouts jump instead of wait.

The clock belongs to the event loop a run executes on, the way trio's clock belongs to
``trio.run()``: code never receives a clock it could mismatch, it asks `current_clock()`.
Everything in agentrt that reads or spends time (the agent loop, retries, substrates, span
timestamps) goes through anyio or `current_clock()`, so one code path runs in both kinds of time.

Virtual time is an asyncio event loop whose ``time()`` is a number we own. When the loop has no
ready callbacks and would block in ``select()`` until its next timer, the selector instead moves the
virtual time forward to that timer and returns at once (prior art: trio's
``MockClock(autojump_threshold=0)`` and the ``looptime`` package). I/O that is already ready is
still delivered; I/O that would need real waiting does not belong in a virtual-time run.
"""

from __future__ import annotations

import asyncio
import selectors
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sized
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, final, runtime_checkable

import anyio

from agentrt.errors import AgentrtError, ConfigError
from agentrt.interrupts import run_interruptible

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["Clock", "RealClock", "VirtualClock", "VirtualTimeStalled", "current_clock", "run"]


class VirtualTimeStalled(AgentrtError, RuntimeError):
    """A virtual-time run in which every task waits and nothing can ever wake one."""


T = TypeVar("T")


@runtime_checkable
class Clock(Protocol):
    """**Protocol:** the source of time for a run.

    ``current_time()`` is in seconds on the event loop's clock (monotonic, arbitrary origin).
    ``to_epoch_ns()`` turns such a time into Unix nanoseconds, for span timestamps.
    """

    @property
    def is_virtual(self) -> bool:
        """True when sleeping costs no wall time."""
        ...

    def current_time(self) -> float:
        """Seconds on the run's clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on the run's clock (a cancel point)."""
        ...

    def to_epoch_ns(self, t: float) -> int:
        """Unix time in nanoseconds for the clock reading ``t``."""
        ...


@final
class RealClock:
    """Wall-clock time, read from the running event loop (``anyio.current_time()``).

    Example:
        >>> clock = RealClock()
        >>> clock.is_virtual
        False
    """

    __slots__ = ("_epoch_offset_ns",)

    def __init__(self) -> None:
        # Anchor monotonic readings to Unix time once, so span timestamps never go backwards.
        self._epoch_offset_ns = time.time_ns() - time.monotonic_ns()

    @property
    def is_virtual(self) -> bool:
        """Always False."""
        return False

    def current_time(self) -> float:
        """Seconds on the event loop's monotonic clock."""
        try:
            # The asyncio loop's clock, read directly: anyio.current_time() returns the same
            # number after a backend lookup that costs more than the read.
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        await anyio.sleep(seconds)

    def to_epoch_ns(self, t: float) -> int:
        """Unix nanoseconds for loop time ``t`` (asyncio's loop time is ``time.monotonic()``)."""
        return int(t * 1e9) + self._epoch_offset_ns

    def __repr__(self) -> str:
        return "RealClock()"


@final
class VirtualClock:
    """Simulated time that jumps to the next timer as soon as every task is waiting.

    Create one, then run your coroutine with ``agentrt.run(fn, clock=clock)``; inside, anyio's
    sleeps and timeouts, tenacity's back-off and `current_clock()` all use simulated time.

    Example:
        >>> import anyio, agentrt
        >>> async def main() -> float:
        ...     await anyio.sleep(3600)
        ...     return agentrt.current_clock().current_time()
        >>> agentrt.run(main, clock=VirtualClock())
        3600.0

    Args:
        start_s: the clock reading when the run starts.
        epoch_s: the Unix time that ``start_s`` corresponds to in span timestamps; defaults to the
            wall time when the clock is created, so traces of a virtual run land near "now".
        stall_timeout_s: real seconds to wait when every task is blocked and no timer is set
            (only real I/O or another thread could wake the loop) before raising
            `VirtualTimeStalled` instead of hanging; None waits forever.
    """

    __slots__ = ("_epoch_ns", "_jumps", "_now", "_start_s", "stall_timeout_s")

    def __init__(
        self,
        *,
        start_s: float = 0.0,
        epoch_s: float | None = None,
        stall_timeout_s: float | None = 30.0,
    ) -> None:
        self.stall_timeout_s = stall_timeout_s
        self._now = float(start_s)
        self._start_s = float(start_s)
        epoch_ns = time.time_ns() if epoch_s is None else int(epoch_s * 1e9)
        self._epoch_ns = epoch_ns - int(start_s * 1e9)
        self._jumps = 0

    @property
    def is_virtual(self) -> bool:
        """Always True."""
        return True

    def current_time(self) -> float:
        """The simulated time in seconds."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Sleep in simulated time (anyio's sleep follows the virtual loop)."""
        await anyio.sleep(seconds)

    def to_epoch_ns(self, t: float) -> int:
        """Unix nanoseconds for simulated time ``t``."""
        return int(t * 1e9) + self._epoch_ns

    @property
    def jumps(self) -> int:
        """How many times the clock jumped forward (a measure of simulation events)."""
        return self._jumps

    def advance(self, seconds: float) -> None:
        """Move the clock forward by hand (for tests that drive time explicitly)."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards (advance({seconds}))")
        self._now += seconds

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """An asyncio event loop whose time is this clock (pass to anyio as ``loop_factory``)."""
        return _VirtualEventLoop(self)

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now!r})"


#: The virtual loop polls for I/O on at least every this-many-th iteration.
_POLL_INTERVAL = 8


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that, instead of blocking until the next timer, jumps the clock to it."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock
        self._since_poll = 0  # iterations since the last poll
        self._fds = 0  # registered file objects
        self._own_fds = 0  # what the loop itself registers (its wake-up pipe), see `attach`
        self._ready: Sized = ()  # the loop's ready callbacks, see `attach`

    def attach(self, ready: Sized) -> None:
        """Called by the loop once it is set up: ``ready`` is its queue of ready callbacks."""
        self._own_fds = self._fds
        self._ready = ready

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        self._fds += 1
        return key

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        self._fds -= 1
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # The loop passes timeout 0 when callbacks are ready, the gap to its next timer when only
        # timers remain, and None when nothing at all is scheduled.
        if timeout is not None:
            if timeout > 0 and self._ready:
                # A callback came from another thread since the loop looked (its wake-up byte
                # may not be written yet): run it before time moves.
                return []
            # Most iterations skip the poll (a system call): while callbacks are ready, since
            # time cannot move; before a jump, when nothing but the loop's own wake-up pipe is
            # registered. Registered I/O is polled before every jump, so it arrives at the same
            # virtual time; the wake-up pipe (signals) at least every _POLL_INTERVAL iterations.
            self._since_poll += 1
            if self._since_poll < _POLL_INTERVAL and (timeout <= 0 or self._fds <= self._own_fds):
                if timeout > 0:
                    self._clock._now += timeout
                    self._clock._jumps += 1
                return []
        self._since_poll = 0
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout is None or timeout <= 0:
            if not ready and timeout is None:
                # Nothing scheduled: only real I/O (or another thread) can wake us. If nothing
                # does, every task waits for another: a deadlock, which must not hang.
                limit = self._clock.stall_timeout_s
                ready = super().select(limit)
                if not ready and limit is not None:
                    raise VirtualTimeStalled(
                        f"virtual time stalled at t={self._clock._now:g} s: every task is "
                        f"waiting, no timer is set, and no I/O arrived for {limit:g} s of real "
                        "time (a deadlock, or real I/O in a virtual-time run: use an emulated "
                        "twin)"
                    )
            return ready
        self._clock._now += timeout
        self._clock._jumps += 1
        return ready


class _VirtualEventLoop(asyncio.SelectorEventLoop):
    """An asyncio loop that reads time from a `VirtualClock`."""

    def __init__(self, clock: VirtualClock) -> None:
        selector = _JumpingSelector(clock)
        super().__init__(selector=selector)
        selector.attach(self._ready)  # type: ignore[attr-defined]
        self._agentrt_clock = clock
        # Timers due within this much of "now" run now; virtual time is exact, so keep it tiny.
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._agentrt_clock._now


_REAL_CLOCK = RealClock()


def current_clock() -> Clock:
    """The clock of the event loop this code runs on.

    Returns the `VirtualClock` when running under ``agentrt.run(..., clock=VirtualClock())``, and a
    `RealClock` otherwise (any asyncio loop, including pytest-asyncio's and ``anyio.run``'s).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return _REAL_CLOCK
    clock = getattr(loop, "_agentrt_clock", None)
    if isinstance(clock, VirtualClock):
        return clock
    return _REAL_CLOCK


def run(
    fn: Callable[..., Awaitable[T]],
    *args: object,
    clock: Clock | None = None,
    backend_options: Mapping[str, Any] | None = None,
    cancel_on: Collection[int] = (),
) -> T:
    """Run ``fn(*args)`` on a fresh event loop in real or virtual time and return its result.

    This is ``anyio.run`` on the asyncio backend, with the loop chosen by the clock.
    With ``cancel_on=(signal.SIGINT, signal.SIGTERM)`` the first such signal cancels the run:
    every task group unwinds and every ``finally`` runs (tools kill their processes), then
    `Interrupted` is raised; a second signal ends the process at once (see
    `agentrt.interrupts`).

    Example:
        >>> import agentrt
        >>> async def main() -> str:
        ...     return "done"
        >>> agentrt.run(main, clock=agentrt.VirtualClock())
        'done'

    Args:
        fn: the async function to run.
        *args: its positional arguments.
        clock: `VirtualClock` for simulated time; `RealClock` or None for wall time.
        backend_options: extra options for anyio's asyncio backend (``debug``, …).
        cancel_on: signals that cancel the run (default none: SIGINT raises
            ``KeyboardInterrupt`` as asyncio does, SIGTERM ends the process).

    Raises:
        ConfigError: when called from inside a running event loop.
        Interrupted: one of ``cancel_on`` arrived; the run has unwound.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise ConfigError(
            "agentrt.run() starts its own event loop and cannot be called from async code; "
            "await the coroutine directly instead"
        )
    options: dict[str, Any] = dict(backend_options or {})
    if isinstance(clock, VirtualClock):
        options["loop_factory"] = clock.new_event_loop
    if sys.platform == "win32" and isinstance(clock, VirtualClock):  # pragma: no cover
        raise ConfigError("virtual time needs a selector event loop, which Windows lacks here")
    if cancel_on:
        return anyio.run(
            run_interruptible, fn, args, cancel_on, backend="asyncio", backend_options=options
        )
    return anyio.run(fn, *args, backend="asyncio", backend_options=options)
