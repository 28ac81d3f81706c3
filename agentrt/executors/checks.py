"""`check_executor`: what every executor must do, checked with tasks that misbehave on purpose.

The probe tasks live here, in an installed module, so a worker process or a Ray node can import
them (a test module often cannot be imported there).

Example:
    >>> import tempfile
    >>> from agentrt.executors import LocalExecutor
    >>> with tempfile.TemporaryDirectory() as tmp, LocalExecutor() as ex:
    ...     check_executor(ex, tmp, dies=False)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from agentrt.errors import ConfigError
from agentrt.executors.base import Executor, Label, Params, TaskFailed

__all__ = ["bad_input", "check_executor", "die", "die_once", "echo", "fail"]

#: The exit status of a probe that kills its own worker.
DIE_STATUS = 17


def echo(*, value: object) -> object:
    """Return ``value``."""
    return value


def fail(*, value: object) -> object:
    """Raise ``ValueError`` naming ``value``."""
    raise ValueError(f"probe failure at {value!r}")


def bad_input(*, value: object) -> object:
    """Raise `ConfigError` (a bad input is re-raised as it is, never wrapped)."""
    raise ConfigError(f"probe: bad input {value!r}")


def die_once(*, value: object, marker: str) -> object:
    """End the worker process the first time any task with this ``marker`` runs; then echo."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return value
    os._exit(DIE_STATUS)


def die(*, value: object) -> object:
    """End the worker process, every time."""
    del value
    os._exit(DIE_STATUS)


def _raised(
    executor: Executor, fn: Callable[..., object], params: list[Params], label: Label | None = None
) -> Exception | None:
    try:
        executor.map(fn, params, label=label)
    except Exception as exc:
        return exc
    return None


def check_executor(executor: Executor, tmp_dir: str | Path, *, dies: bool = True) -> None:
    """Check ``executor``: order, progress, failures named, bad input re-raised, dead workers.

    ``dies=False`` skips the probes that end a worker process (for the local executor, whose
    worker is this process).

    Raises:
        AssertionError: the executor broke the `Executor` contract.
    """
    params = [{"value": i} for i in range(12)]
    seen: list[tuple[int, int]] = []
    assert executor.map(echo, params, on_done=lambda d, n: seen.append((d, n))) == list(range(12))
    assert [d for d, _ in seen] == list(range(1, 13)), seen
    assert {n for _, n in seen} == {12}, seen
    assert executor.map(echo, []) == []

    failed = _raised(
        executor, fail, [{"value": 0}, {"value": 1}], label=lambda p: f"point {p['value']}"
    )
    assert isinstance(failed, TaskFailed), f"a failing task raised {failed!r}, not TaskFailed"
    assert failed.params["value"] in (0, 1), failed.params
    assert f"point {failed.params['value']}" in str(failed), str(failed)
    assert isinstance(failed.cause, ValueError), repr(failed.cause)
    assert "probe failure" in str(failed), str(failed)
    bad = _raised(executor, bad_input, [{"value": "x"}])
    assert isinstance(bad, ConfigError), f"a task's ConfigError came back as {bad!r}"
    assert not isinstance(bad, TaskFailed), repr(bad)
    assert "probe: bad input" in str(bad), repr(bad)
    assert executor.map(echo, params) == list(range(12)), "no longer usable after failures"
    if not dies:
        return

    marker = str(Path(tmp_dir) / f"die-once-{executor.name}")
    once = [{"value": i, "marker": marker} for i in range(6)]
    assert executor.map(die_once, once) == list(range(6)), "a dead worker's tasks were lost"
    assert Path(marker).exists(), "the probe never ran"
    doomed: list[Params] = [{"value": 0}, {"value": "doomed"}]
    dead = _raised(executor, die, doomed, label=lambda p: f"task {p['value']}")
    assert isinstance(dead, TaskFailed), f"a task killing its worker raised {dead!r}"
    assert dead.attempts > 1, f"not retried: {dead}"
    assert dead.params["value"] in (0, "doomed"), dead.params
    assert executor.map(echo, params) == list(range(12)), "no longer usable after a dead worker"
