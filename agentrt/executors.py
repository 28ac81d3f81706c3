"""Where independent simulations run: in this process, in local processes, or on a Ray cluster.

A capacity study is many deterministic, independent simulations (fleet sizes x stacks x SLOs x
arrival patterns x seeds). An `Executor` maps a module-level function over a list of keyword
arguments and returns the results in input order, whatever ran where. ``parse_executor`` turns
the command-line value ``local``, ``processes[:N]`` or ``ray[:ADDRESS]`` into one.

Example:
    >>> from agentrt.executors import parse_executor
    >>> with parse_executor("local") as ex:
    ...     ex.map(round, [{"number": 2.567, "ndigits": 1}, {"number": 9.25, "ndigits": 0}])
    [2.6, 9.0]
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

from agentrt.errors import AgentrtError, ConfigError

__all__ = [
    "Executor",
    "LocalExecutor",
    "ProcessExecutor",
    "TaskFailed",
    "parse_executor",
]

R = TypeVar("R")
Params = Mapping[str, Any]
#: Called after each finished task with (finished, total).
OnDone = Callable[[int, int], None]


class TaskFailed(AgentrtError):
    """One task of a map failed for good; names its parameters and the cause."""

    def __init__(self, label: str, params: Params, cause: BaseException) -> None:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        super().__init__(f"task {label} ({shown}) failed: {type(cause).__name__}: {cause}")
        self.label = label
        self.params = dict(params)
        self.cause = cause


class Executor(ABC):
    """Runs ``fn(**params)`` for every params mapping; results come back in input order.

    ``fn`` must be a module-level function and the params and results picklable (other executors
    send them to other processes). Use an executor as a context manager: leaving it shuts down
    what it started.
    """

    name: str = "executor"

    @abstractmethod
    def map(
        self,
        fn: Callable[..., R],
        params: Sequence[Params],
        *,
        label: Callable[[Params], str] | None = None,
        on_done: OnDone | None = None,
    ) -> list[R]:
        """``[fn(**p) for p in params]``, possibly in parallel; raises `TaskFailed` on a failure."""

    def close(self) -> None:  # noqa: B027 - a no-op unless the executor started workers
        """Release workers (nothing for the local executor)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _label(label: Callable[[Params], str] | None, index: int, params: Params) -> str:
    return label(params) if label is not None else f"#{index}"


class LocalExecutor(Executor):
    """Runs every task in this process, one after another (the default)."""

    name = "local"

    def map(
        self,
        fn: Callable[..., R],
        params: Sequence[Params],
        *,
        label: Callable[[Params], str] | None = None,
        on_done: OnDone | None = None,
    ) -> list[R]:
        """Run the tasks here, in order."""
        out: list[R] = []
        for i, p in enumerate(params):
            try:
                out.append(fn(**p))
            except (ConfigError, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise TaskFailed(_label(label, i, p), p, exc) from exc
            if on_done is not None:
                on_done(i + 1, len(params))
        return out


class ProcessExecutor(Executor):
    """Runs tasks in ``workers`` local processes (default: one per core)."""

    name = "processes"

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"--executor processes:N needs N >= 1, got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    def map(
        self,
        fn: Callable[..., R],
        params: Sequence[Params],
        *,
        label: Callable[[Params], str] | None = None,
        on_done: OnDone | None = None,
    ) -> list[R]:
        """Submit every task to the process pool; collect the results in input order."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers)
        futures = [self._pool.submit(fn, **p) for p in params]
        out: list[R] = []
        for i, (p, future) in enumerate(zip(params, futures, strict=True)):
            try:
                out.append(future.result())
            except ConfigError:
                raise
            except Exception as exc:
                raise TaskFailed(_label(label, i, p), p, exc) from exc
            if on_done is not None:
                on_done(i + 1, len(params))
        return out

    def close(self) -> None:
        """Shut the worker processes down."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def parse_executor(text: str | None) -> Executor:
    """``local`` (default), ``processes`` / ``processes:N`` or ``ray`` / ``ray:ADDRESS``.

    Raises:
        ConfigError: an unknown executor; the message lists the choices.
    """
    raw = (text or "local").strip()
    kind, _, arg = raw.partition(":")
    if kind == "local" and not arg:
        return LocalExecutor()
    if kind == "processes":
        try:
            return ProcessExecutor(int(arg) if arg else None)
        except ValueError:
            pass
    raise ConfigError(
        f"--executor {raw!r} is not an executor; use local, processes, processes:N, ray or "
        "ray:ADDRESS"
    )
