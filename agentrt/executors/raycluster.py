"""`RayExecutor`: each task a Ray task, on a local Ray cluster or a running one.

Ray is an optional extra (``pip install 'agentrt[ray]'``); it is imported when a `RayExecutor`
is made, never by importing agentrt.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar, final

from agentrt.errors import ConfigError
from agentrt.executors.base import (
    PASSTHROUGH,
    Executor,
    Label,
    OnDone,
    Params,
    TaskFailed,
    call_portably,
)
from agentrt.executors.base import task_label as _label

__all__ = ["RAY_MISSING", "RayExecutor"]

R = TypeVar("R")

#: The one line a command prints when Ray is not installed.
RAY_MISSING = "--executor ray needs Ray, an optional extra: pip install 'agentrt[ray]'"
#: Seconds between checks while waiting for tasks (each wait is bounded; a signal gets through).
_POLL_S = 0.5
#: Seconds to fetch a result Ray already reported ready.
_GET_TIMEOUT_S = 60.0


def _call(fn: Callable[..., Any], params: dict[str, Any]) -> Any:
    """What each Ray task runs: ``fn(**params)`` (module-level, so Ray can ship it)."""
    return call_portably(fn, params)


def _signal_handlers() -> dict[signal.Signals, Any]:
    """The Python-level SIGINT and SIGTERM handlers now (none outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    found = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    return {sig: handler for sig, handler in found.items() if handler is not None}


class _Received:
    """Signals that arrived while Ray's C++ code ran; `check` runs their handlers."""

    def __init__(self, handlers: dict[signal.Signals, Any]) -> None:
        self.handlers = handlers
        self.signals: list[signal.Signals] = []

    def note(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signals.append(signal.Signals(signum))

    def check(self) -> None:
        """Run the handler of the first signal received (the command's raises `Interrupted`)."""
        if self.signals:
            sig = self.signals.pop(0)
            self.handlers[sig](sig, None)


@contextmanager
def _deferred_signals() -> Iterator[_Received]:
    """Hold the command's SIGINT/SIGTERM handlers back while Ray waits, run them between waits.

    A Python handler that raises inside ``ray.wait`` (Cython) comes out as a ``SystemError``
    ("returned a result with an exception set"), not as the exception it raised.
    """
    handlers = {sig: handler for sig, handler in _signal_handlers().items() if callable(handler)}
    received = _Received(handlers)
    for sig in handlers:
        signal.signal(sig, received.note)
    try:
        yield received
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


#: Seconds to wait for a cluster's head to accept a connection (Ray itself retries for minutes).
_CONNECT_TIMEOUT_S = 5.0


def _check_reachable(address: str) -> None:
    """Fail fast, with the fix, when ``HOST:PORT`` does not accept connections.

    Raises:
        ConfigError: nothing listens there.
    """
    if "://" in address or address == "auto":
        return  # Ray Client, or the cluster this machine belongs to: Ray says it quickly
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"--executor ray:{address}: give the head node as HOST:PORT (e.g. ray:10.0.0.5:6379) "
            "or ray:auto"
        )
    try:
        socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(
            f"--executor ray:{address}: no Ray cluster there ({exc}); start one with "
            f"`ray start --head --port={port}` on {host}, or use --executor ray for a local one"
        ) from None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


@final
class RayExecutor(Executor):
    """Runs each task as a Ray task; results in input order, ``on_done`` as they finish.

    Without ``address`` it starts a local Ray cluster of ``num_cpus`` CPUs (default: all) on
    first use and stops it on `close`; with ``address`` (``"auto"``, ``"HEAD:6379"``,
    ``"ray://HEAD:10001"``) it connects to a running cluster and only disconnects on `close`.
    If Ray is already initialised in this process, it uses that and leaves it alone.

    A task whose worker dies (node lost, out of memory) is run again by Ray, up to
    ``max_retries`` times; an exception a task raises is not retried (the simulations are
    deterministic). A task that fails for good raises `TaskFailed` with its parameters and the
    remote error, and the tasks still running are cancelled.

    Example:
        >>> with RayExecutor(num_cpus=2) as ex:  # doctest: +SKIP
        ...     ex.map(pow, [{"base": 2, "exp": 10}])
        [1024]

    Raises:
        ConfigError: Ray is not installed (the message says ``pip install 'agentrt[ray]'``).
    """

    name = "ray"

    def __init__(
        self, address: str | None = None, *, num_cpus: int | None = None, max_retries: int = 3
    ) -> None:
        if num_cpus is not None and num_cpus < 1:
            raise ConfigError(f"--executor ray:N needs N >= 1 CPUs, got {num_cpus}")
        self._ray = _import_ray()
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self._started = False

    def _ensure_started(self) -> None:
        ray = self._ray
        if self._started or ray.is_initialized():
            return
        if self.address is not None:
            _check_reachable(self.address)
        ray_log = logging.getLogger("ray")
        level = ray_log.level
        # ray.init() logs, at WARNING, that a local cluster has token authentication on: news
        # to nobody running a sweep, and a second line on a command that prints one.
        ray_log.setLevel(logging.ERROR)
        handlers = _signal_handlers()
        try:
            ray.init(
                address=self.address,
                num_cpus=self.num_cpus if self.address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
        except ConnectionError as exc:
            raise ConfigError(
                f"--executor ray:{self.address}: no Ray cluster there ({exc}); start one with "
                "`ray start --head` or use --executor ray for a local one"
            ) from None
        finally:
            ray_log.setLevel(level)
            # ray.init() installs its own SIGTERM handler (it dies on the spot): put back the
            # command's, which cancels the study, shuts the cluster down and exits 143.
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        self._started = True

    def map(
        self,
        fn: Callable[..., R],
        params: Sequence[Params],
        *,
        label: Label | None = None,
        on_done: OnDone | None = None,
    ) -> list[R]:
        """Submit every task to the cluster and collect the results as they finish."""
        ray = self._ray
        self._ensure_started()
        remote = ray.remote(max_retries=self.max_retries, retry_exceptions=False)(_call)
        fn_ref = ray.put(fn)
        refs = [remote.remote(fn_ref, dict(p)) for p in params]
        index = {ref: i for i, ref in enumerate(refs)}
        results: dict[int, R] = {}
        pending = list(refs)
        with _deferred_signals() as received:
            try:
                while pending:
                    received.check()
                    ready, pending = ray.wait(pending, num_returns=1, timeout=_POLL_S)
                    if ready:  # and every other task finished meanwhile
                        more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                        ready += more
                    for ref in sorted(ready, key=index.__getitem__):
                        i = index[ref]
                        results[i] = self._get(ref, label, i, params[i])
                        if on_done is not None:
                            on_done(len(results), len(params))
            finally:
                for ref in pending:
                    ray.cancel(ref, force=True)
        return [results[i] for i in range(len(params))]

    def _get(self, ref: Any, label: Label | None, i: int, params: Params) -> Any:
        ray = self._ray
        try:
            return ray.get(ref, timeout=_GET_TIMEOUT_S)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            if isinstance(cause, PASSTHROUGH):
                raise cause from None
            raise TaskFailed(_label(label, i, params), params, cause) from exc
        except ray.exceptions.RayError as exc:  # worker or node died more than max_retries times
            attempts = self.max_retries + 1
            raise TaskFailed(_label(label, i, params), params, exc, attempts=attempts) from exc

    def close(self) -> None:
        """Stop the local cluster this executor started, or disconnect from a running one."""
        if self._started:
            self._started = False
            self._ray.shutdown()
