"""SIGINT and SIGTERM as cancellation: a signal cancels the run, which unwinds, then reports it.

``agentrt.run(fn, cancel_on=(signal.SIGINT, signal.SIGTERM))`` turns the first of those signals
into a cancellation of the whole run: every task group unwinds, every ``finally`` runs (tools
reap their processes and delete their temporary directories), and once the event loop is done,
`run` raises `Interrupted`. The caller (the CLI) then flushes its traces, prints one line and
exits ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM).

Unwinding is bounded. A second signal, or ``force_after_s`` seconds of real time without the
run having unwound, runs the callbacks registered with `on_forced_exit` (tools register what
kills their processes and removes their directories; each is short and synchronous), prints one
line and ends the process at once with the same exit status.

Why not ``KeyboardInterrupt``: asyncio's runner turns SIGINT into a cancellation of the main
task and re-raises ``KeyboardInterrupt`` afterwards, which click's standalone mode then turns into
"Aborted!" and exit 1, and SIGTERM has no handler at all (the process dies at once, orphaning
whatever it started).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Collection, Iterator
from types import FrameType
from typing import TypeVar, final

import anyio

from agentrt.errors import ConfigError

__all__ = ["Interrupted", "on_forced_exit", "raise_on_signals", "run_interruptible"]

T = TypeVar("T")
_Handler = Callable[[int, FrameType | None], object] | int | None

#: Real seconds a cancelled run gets to unwind before the process is ended anyway.
FORCE_AFTER_S = 20.0

# The one admitted global: what must happen even when the process is forced out.
_forced_exit_callbacks: dict[int, Callable[[], None]] = {}
_ids = itertools.count()
_lock = threading.Lock()


@final
class Interrupted(Exception):
    """A signal cancelled the run; raised by `agentrt.run` once everything has unwound.

    Example:
        >>> import signal
        >>> exc = Interrupted(signal.SIGTERM)
        >>> exc.signal_name, exc.exit_code
        ('SIGTERM', 143)

    Args:
        signum: the signal that cancelled the run.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {self.signal_name}")

    @property
    def signal_name(self) -> str:
        """``"SIGINT"``, ``"SIGTERM"``, ..."""
        return _name(self.signum)

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal: ``128 + signum``."""
        return 128 + self.signum


@contextlib.contextmanager
def on_forced_exit(callback: Callable[[], None]) -> Iterator[None]:
    """While inside, ``callback`` runs if the process is forced out before the run unwinds.

    The callback must be quick and synchronous (kill a process group, remove a directory) and
    may run in another thread; it is not called when the run unwinds normally, since the code
    inside the ``with`` block cleans up after itself then.

    Example:
        >>> with on_forced_exit(lambda: None):
        ...     pass
    """
    with _lock:
        key = next(_ids)
        _forced_exit_callbacks[key] = callback
    try:
        yield
    finally:
        with _lock:
            _forced_exit_callbacks.pop(key, None)


def raise_on_signals(signals: Collection[int]) -> Callable[[], None]:
    """Make ``signals`` raise `Interrupted` in the main thread, outside any run; returns an undo.

    For a command line around `agentrt.run`: a signal while the run is not active (loading the
    plan, flushing traces) becomes an exception too. A signal the process inherited as ignored
    (``nohup``, a shell's background job) stays ignored.
    """
    previous: dict[int, _Handler] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        del frame
        raise Interrupted(signum)

    for sig in signals:
        current = signal.getsignal(sig)
        if current is signal.SIG_IGN:
            continue
        previous[sig] = current
        signal.signal(sig, handler)

    def undo() -> None:
        for sig, old in previous.items():
            if old is not None:  # None: a handler installed from C; leave it
                signal.signal(sig, old)

    return undo


async def run_interruptible(
    fn: Callable[..., Awaitable[T]],
    args: tuple[object, ...],
    signals: Collection[int],
    force_after_s: float = FORCE_AFTER_S,
) -> T:
    """Await ``fn(*args)`` in a scope the first of ``signals`` cancels (used by `agentrt.run`).

    Raises:
        Interrupted: a signal arrived; the run has unwound.
        ConfigError: not in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        raise ConfigError("cancel_on needs the main thread (only it receives signals)")
    loop = asyncio.get_running_loop()
    received: list[int] = []
    watchdog: threading.Timer | None = None
    installed: dict[int, _Handler] = {}
    with anyio.CancelScope() as scope:

        def on_signal(signum: int) -> None:
            nonlocal watchdog
            received.append(signum)
            if len(received) > 1:
                _force_exit(signum, "a second signal")
            scope.cancel()
            watchdog = threading.Timer(
                force_after_s, _force_exit, (signum, f"{force_after_s:g} s without unwinding")
            )
            watchdog.daemon = True
            watchdog.start()

        for sig in signals:
            before = signal.getsignal(sig)
            if before is signal.SIG_IGN:
                continue  # inherited as ignored (nohup, a background job): keep it so
            installed[sig] = before
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            result = await fn(*args)
        except Exception as exc:
            if received:
                # An error while unwinding (a step reporting its cancellation) is not the news.
                raise Interrupted(received[0]) from exc
            raise
        finally:
            for sig, before in installed.items():
                loop.remove_signal_handler(sig)
                # remove_signal_handler() resets to the default, not to what was there before.
                if before is not None:
                    signal.signal(sig, before)
            if watchdog is not None:
                watchdog.cancel()
    if received:
        raise Interrupted(received[0])
    return result


def _force_exit(signum: int, why: str) -> None:
    """Run the forced-exit callbacks, say so on stderr, and end the process at once."""
    with _lock:
        callbacks = list(_forced_exit_callbacks.values())
    for callback in callbacks:
        with contextlib.suppress(Exception):
            callback()
    with contextlib.suppress(OSError):
        os.write(
            sys.stderr.fileno(),
            f"agentrt: {why} ({_name(signum)}); processes killed, exiting without "
            "finishing clean-up\n".encode(),
        )
    os._exit(128 + signum)


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
