"""The `Policy` protocol: decide the next step(s) from the results so far (dynamic agent loops)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from agentrt.plan import Step
from agentrt.result import StepResult

__all__ = ["Policy", "RunState"]


@dataclass(frozen=True, slots=True)
class RunState:
    """What a policy sees: the finished steps so far, in completion order.

    Attributes:
        results: finished steps, oldest first.
        elapsed_s: seconds since the run started, on the run's clock.
        steps_run: how many steps have been started.
        max_steps: the run's step budget.
        index: the same steps by id, if the caller keeps them so (``by_id`` is then free).
    """

    results: Sequence[StepResult]
    elapsed_s: float
    steps_run: int
    max_steps: int
    index: Mapping[str, StepResult] | None = None

    @property
    def last(self) -> StepResult | None:
        """The most recently finished step, if any."""
        return self.results[-1] if self.results else None

    @property
    def by_id(self) -> Mapping[str, StepResult]:
        """Finished steps by id (the agent keeps this map as steps finish: no cost per call)."""
        if self.index is not None:
            return self.index
        return {r.id: r for r in self.results}


@runtime_checkable
class Policy(Protocol):
    """**Protocol:** chooses the next step(s) of a dynamic run (think → search → debug → answer).

    ``next_steps`` is called when the previous batch has finished. Returning several steps runs
    them concurrently; returning none ends the run. The run also ends when a step of kind
    ``answer`` succeeds, and fails when ``max_steps`` is reached first or the deadline passes.
    Steps may depend on, and refer by template to, any step already finished.

    Example:
        >>> class OneShot:
        ...     name = "one-shot"
        ...     async def next_steps(self, state: RunState) -> list[Step]:
        ...         if state.results:
        ...             return []
        ...         return [Step(id="answer", kind="answer", prompt="Say hi.")]
        >>> isinstance(OneShot(), Policy)
        True
    """

    name: str

    async def next_steps(self, state: RunState) -> Sequence[Step]:
        """The steps to run next; an empty sequence ends the run."""
        ...
