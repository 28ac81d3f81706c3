"""Run a command's independent simulations on an executor, with a live progress bar.

``agentrt load --sweep``, ``compare``, ``check`` and ``tco`` split their work into module-level
tasks and hand them to `map_tasks` with the ``--executor`` value. The bar (on stderr) advances
as tasks finish, in completion order across the workers or the cluster; it is shown only on a
terminal and never with ``--json``.

Example:
    >>> from agentrt.cli_tasks import map_tasks
    >>> map_tasks("local", pow, [{"base": 2, "exp": 5}], description="powers", show=False)
    [32]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from agentrt.executors import Label, OnDone, Params, parse_executor

__all__ = ["map_tasks", "progress_bar", "wants_progress"]

R = TypeVar("R")


def wants_progress(*, as_json: bool) -> bool:
    """A bar only for a person watching: stdout and stderr are terminals and no ``--json``."""
    return not as_json and Console().is_terminal and Console(stderr=True).is_terminal


@contextmanager
def progress_bar(description: str, *, show: bool, unit: str = "tasks") -> Iterator[OnDone]:
    """A transient rich bar on stderr; yields the ``on_done(finished, total)`` that moves it.

    Example:
        >>> with progress_bar("sweep", show=False) as on_done:
        ...     on_done(1, 2)
    """
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not show,
    ) as progress:
        task = progress.add_task(description, total=None)

        def on_done(finished: int, total: int) -> None:
            progress.update(task, completed=finished, total=total)

        yield on_done


def map_tasks(
    executor: str | None,
    fn: Callable[..., R],
    params: Sequence[Params],
    *,
    description: str,
    show: bool,
    label: Label | None = None,
) -> list[R]:
    """``fn(**p)`` for every ``p`` on the executor ``executor`` names; results in input order.

    The executor is started here and shut down before returning (only what it started).

    Raises:
        ConfigError: a bad ``--executor`` value, or ``ray`` without Ray installed.
        TaskFailed: a task failed for good; names its parameters.
    """
    with parse_executor(executor) as ex, progress_bar(description, show=show) as on_done:
        on_done(0, len(params))
        return ex.map(fn, params, label=label, on_done=on_done)
