"""The `Executor` interface every executor implements, and `TaskFailed`."""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from agentrt.errors import AgentrtError, ConfigError
from agentrt.interrupts import Interrupted

__all__ = [
    "PASSTHROUGH",
    "Executor",
    "Label",
    "OnDone",
    "Params",
    "RemoteError",
    "TaskFailed",
    "call_portably",
    "task_label",
]

R = TypeVar("R")
Params = Mapping[str, Any]
#: Names one task for messages and progress (default ``#index``).
Label = Callable[[Params], str]
#: Called after each finished task, in completion order, with (finished, total).
OnDone = Callable[[int, int], None]
#: Raised by a task, these are re-raised as they are, not wrapped in `TaskFailed`: a bad input
#: is the caller's to fix (exit 2), and a signal cancels the whole study.
PASSTHROUGH: tuple[type[BaseException], ...] = (ConfigError, Interrupted)

_SHOWN_CHARS = 60


class TaskFailed(AgentrtError):
    """One task of a map failed for good; names its parameters and the cause.

    Example:
        >>> exc = TaskFailed("h100 rate=2", {"rate": 2.0}, ValueError("no"), attempts=3)
        >>> str(exc)
        'task h100 rate=2 (rate=2.0) failed after 3 attempts: ValueError: no'

    Args:
        label: the task's name.
        params: its keyword arguments.
        cause: the error (for a remote task, the error raised there).
        attempts: how many times it ran.
    """

    def __init__(
        self, label: str, params: Params, cause: BaseException, *, attempts: int = 1
    ) -> None:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        after = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"task {label} ({shown}) failed{after}: {type(cause).__name__}: {cause}")
        self.label = label
        self.params = dict(params)
        self.cause = cause
        self.attempts = attempts


def _short(value: object) -> str:
    if value is not None and not isinstance(value, str | int | float | bool):
        return f"<{type(value).__name__}>"  # a plan or an options dict: the label names the task
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


class RemoteError(Exception):
    """An error raised in a worker that could not be sent back as itself (it does not pickle).

    Carries the original type's name and message, so `TaskFailed` still says what happened.
    """


def call_portably(fn: Callable[..., Any], params: Mapping[str, Any]) -> Any:
    """``fn(**params)`` in a worker; an error that would not survive pickling is made one that does.

    An exception class whose ``__init__`` takes other arguments than its message cannot be
    unpickled by the parent: the process pool would break and Ray would report an unserialisable
    exception, losing the message. Such an error becomes a `ConfigError` (if it was one: the
    command still exits 2) with its message, or a `RemoteError` with ``Type: message``.
    """
    try:
        return fn(**params)
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            if isinstance(exc, ConfigError):
                raise ConfigError(str(exc)) from None
            raise RemoteError(f"{type(exc).__name__}: {exc}") from None
        raise


def task_label(label: Label | None, index: int, params: Params) -> str:
    """``label(params)``, or ``#index`` without a label function."""
    return label(params) if label is not None else f"#{index}"


class Executor(ABC):
    """Runs ``fn(**params)`` for every params mapping; results come back in input order.

    ``fn`` must be a module-level function and the params and results picklable (other executors
    send them to other processes). ``on_done`` is called as tasks finish, in completion order
    (for a progress bar). A task that fails for good raises `TaskFailed`; a `ConfigError` or an
    `Interrupted` raised by a task is re-raised as it is. Use an executor as a context manager:
    leaving it shuts down what it started (and only that).

    Example:
        >>> from agentrt.executors import LocalExecutor
        >>> with LocalExecutor() as ex:
        ...     ex.map(pow, [{"base": 2, "exp": 3}, {"base": 3, "exp": 2}])
        [8, 9]
    """

    name: str = "executor"

    @abstractmethod
    def map(
        self,
        fn: Callable[..., R],
        params: Sequence[Params],
        *,
        label: Label | None = None,
        on_done: OnDone | None = None,
    ) -> list[R]:
        """``[fn(**p) for p in params]``, possibly in parallel; raises `TaskFailed` on a failure."""

    def close(self) -> None:  # noqa: B027 - a no-op unless the executor started workers
        """Release what this executor started (nothing for the local executor)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
