from __future__ import annotations

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
