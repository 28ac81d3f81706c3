from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from agentrt import VirtualClock, run

T = TypeVar("T")


@pytest.fixture
def vrun() -> Callable[..., Any]:
    """Run an async function on a fresh virtual-time event loop and return its result."""

    def runner(fn: Callable[..., Awaitable[T]], *args: object) -> T:
        return run(fn, *args, clock=VirtualClock())

    return runner


@pytest.fixture
def agentrt_command() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m agentrt ARGS`` in a subprocess (the command a user types), text output."""

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agentrt", *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    return command
