"""`ProcessExecutor`: tasks in a pool of local processes, retried when a worker dies."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar, final

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
from agentrt.log import get_logger

__all__ = ["ProcessExecutor"]

R = TypeVar("R")

_log = get_logger("agentrt.executors")

#: Seconds between checks while waiting for tasks (each wait is bounded; a signal gets through).
_POLL_S = 0.5


def _usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's), else all."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent decides, and closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@final
class ProcessExecutor(Executor):
    """Runs tasks in ``workers`` local processes (default: one per core).

    A worker that dies (killed, out of memory, ``os._exit``) breaks the pool: the tasks not yet
    finished run again in a fresh pool, up to ``max_retries`` times. After that the remaining
    tasks run one at a time, so a task that kills its worker every time is named in `TaskFailed`
    and none is dropped. An exception a task raises is not retried: the simulations are
    deterministic, so it would be raised again.

    Example:
        >>> with ProcessExecutor(2) as ex:
        ...     ex.map(pow, [{"base": 2, "exp": 10}, {"base": 10, "exp": 2}])
        [1024, 100]
    """

    name = "processes"

    def __init__(self, workers: int | None = None, *, max_retries: int = 2) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"--executor processes:N needs N >= 1, got {workers}")
        self.workers = workers or _usable_cores()
        self.max_retries = max_retries
        self._pool: ProcessPoolExecutor | None = None

    def _fresh_pool(self, workers: int) -> ProcessPoolExecutor:
        self._kill()
        # forkserver: no fork of a threaded parent (OTel exporters, Ray); the same on every OS.
        context = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_ignore_sigint
        )
        return self._pool

    def map(
        self,
        fn: Callable[..., R],
        params: Sequence[Params],
        *,
        label: Label | None = None,
        on_done: OnDone | None = None,
    ) -> list[R]:
        """Submit every task to the pool; results in input order, ``on_done`` as they finish."""
        results: dict[int, R] = {}
        todo = list(range(len(params)))
        pool = self._pool or self._fresh_pool(self.workers)
        breaks = 0
        while todo:
            isolate = breaks > self.max_retries
            batch = todo[:1] if isolate else todo
            try:
                self._run(pool, fn, params, batch, results, label, on_done)
            except BrokenProcessPool as exc:
                breaks += 1
                unfinished = len([i for i in todo if i not in results])
                _log.warning("executor_worker_died", executor=self.name, retry=breaks,
                             unfinished=unfinished, isolated=isolate)  # fmt: skip
                if isolate:  # it ran alone: it killed its worker every time
                    i = batch[0]
                    raise TaskFailed(
                        _label(label, i, params[i]), params[i], exc, attempts=breaks
                    ) from exc
                pool = self._fresh_pool(1 if breaks > self.max_retries else self.workers)
            todo = [i for i in todo if i not in results]
        if breaks:
            self._fresh_pool(self.workers)
        return [results[i] for i in range(len(params))]

    def _run(
        self,
        pool: ProcessPoolExecutor,
        fn: Callable[..., R],
        params: Sequence[Params],
        batch: list[int],
        results: dict[int, R],
        label: Label | None,
        on_done: OnDone | None,
    ) -> None:
        futures: dict[Future[R], int] = {
            pool.submit(call_portably, fn, dict(params[i])): i for i in batch
        }
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=_POLL_S, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=futures.__getitem__):
                    i = futures[future]
                    try:
                        results[i] = future.result()
                    except BrokenProcessPool:
                        raise
                    except PASSTHROUGH:
                        raise
                    except Exception as exc:
                        raise TaskFailed(_label(label, i, params[i]), params[i], exc) from exc
                    if on_done is not None:
                        on_done(len(results), len(params))
        finally:
            for future in pending:
                future.cancel()

    def _kill(self) -> None:
        """Stop the pool's workers now, running tasks included."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # ProcessPoolExecutor.terminate_workers() arrives in Python 3.14; until then its map.
        for process in list(getattr(pool, "_processes", {}).values()):
            if process.is_alive():
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker processes (a task still running is stopped too)."""
        self._kill()
