"""Where independent simulations run: in this process, in local processes, or on a Ray cluster.

A capacity study is many deterministic, independent simulations (fleet sizes x stacks x SLOs x
arrival patterns x seeds). An `Executor` maps a module-level function over a list of keyword
arguments and returns the results in input order, whatever ran where. ``parse_executor`` turns
the command-line value ``local``, ``processes[:N]`` or ``ray[:N|ADDRESS]`` into one.

* `LocalExecutor` (``local``): in this process, one after another; the default.
* `ProcessExecutor` (``processes[:N]``): N local processes; a dead worker's tasks run again.
* `RayExecutor` (``ray``: a local Ray cluster, ``ray:N``: one of N CPUs, ``ray:ADDRESS``: a
  running cluster, e.g. ``ray:auto`` or ``ray:10.0.0.5:6379``); the ``agentrt[ray]`` extra.

`check_executor` checks an executor against this contract (order, progress, failures named,
dead workers retried), as `agentrt.testing.check_substrate` does for substrates.

Example:
    >>> from agentrt.executors import parse_executor
    >>> with parse_executor("local") as ex:
    ...     ex.map(round, [{"number": 2.567, "ndigits": 1}, {"number": 9.25, "ndigits": 0}])
    [2.6, 9.0]
"""

from __future__ import annotations

from agentrt.errors import ConfigError
from agentrt.executors.base import Executor, Label, OnDone, Params, TaskFailed
from agentrt.executors.checks import check_executor
from agentrt.executors.local import LocalExecutor
from agentrt.executors.processes import ProcessExecutor
from agentrt.executors.raycluster import RAY_MISSING, RayExecutor

__all__ = [
    "RAY_MISSING",
    "Executor",
    "Label",
    "LocalExecutor",
    "OnDone",
    "Params",
    "ProcessExecutor",
    "RayExecutor",
    "TaskFailed",
    "check_executor",
    "parse_executor",
]

_CHOICES = "local, processes, processes:N, ray, ray:N or ray:ADDRESS (e.g. ray:auto)"


def parse_executor(text: str | None) -> Executor:
    """``local`` (default), ``processes`` / ``processes:N``, ``ray`` / ``ray:N`` / ``ray:ADDRESS``.

    Nothing starts until the first `Executor.map`.

    Example:
        >>> parse_executor("processes:2").workers
        2

    Raises:
        ConfigError: an unknown executor (the message lists the choices), or ``ray`` without
            Ray installed (the message says ``pip install 'agentrt[ray]'``).
    """
    raw = (text or "local").strip()
    kind, _, arg = raw.partition(":")
    if kind == "local" and not arg:
        return LocalExecutor()
    if kind == "processes":
        if not arg:
            return ProcessExecutor()
        if arg.isdigit():
            return ProcessExecutor(int(arg))
    if kind == "ray":
        if not arg:
            return RayExecutor()
        if arg.isdigit():
            return RayExecutor(num_cpus=int(arg))
        return RayExecutor(arg)
    raise ConfigError(f"--executor {raw!r} is not an executor; use {_CHOICES}")
