"""`LocalExecutor`: every task in this process, one after another."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar, final

from agentrt.executors.base import PASSTHROUGH, Executor, Label, OnDone, Params, TaskFailed
from agentrt.executors.base import task_label as _label

__all__ = ["LocalExecutor"]

R = TypeVar("R")


@final
class LocalExecutor(Executor):
    """Runs every task in this process, in input order (the default executor).

    Example:
        >>> LocalExecutor().map(round, [{"number": 2.567, "ndigits": 1}])
        [2.6]
    """

    name = "local"

    def map(
        self,
        fn: Callable[..., R],
        params: Sequence[Params],
        *,
        label: Label | None = None,
        on_done: OnDone | None = None,
    ) -> list[R]:
        """Run the tasks here, in order."""
        out: list[R] = []
        for i, p in enumerate(params):
            try:
                out.append(fn(**p))
            except PASSTHROUGH:
                raise
            except Exception as exc:
                raise TaskFailed(_label(label, i, p), p, exc) from exc
            if on_done is not None:
                on_done(i + 1, len(params))
        return out
