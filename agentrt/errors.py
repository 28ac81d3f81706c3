"""agentrt's exceptions: one tree, rooted at `AgentrtError`, whose messages say what to do.

```
AgentrtError
├── ConfigError                 you can fix the input
│   ├── PlanError               the plan is not a valid DAG, or its file is malformed
│   ├── UnknownNameError        no substrate / tool of that name (also LookupError)
│   └── DoesNotFitError         model + KV cache exceed the deployment's memory
├── SubstrateError              an inference call failed
│   ├── RetryableError          transient: the retry policy may try again
│   │   ├── SubstrateUnavailable
│   │   ├── RateLimited         carries retry_after_s
│   │   └── SubstrateTimeout    also TimeoutError
│   └── BadResponse             the substrate answered something unusable
├── ToolError                   a tool call failed (RetryableToolError may be retried)
├── ToolLoopFailed              a tool-calling loop hit max_turns or too many failed tool calls
├── StepTimeout                 one attempt of a step ran past its timeout (retryable, TimeoutError)
├── StepFailed                  a step failed for good: carries step_id and the cause
├── RunFailed                   a run ended without success: raised by RunResult.raise_for_status()
└── VirtualTimeStalled          (agentrt.clock) every task waits and nothing can wake one
```

Cancellation is never an `AgentrtError`: it is anyio's cancellation exception and always propagates.
"""

from __future__ import annotations

import difflib

__all__ = [
    "AgentrtError",
    "BadResponse",
    "ConfigError",
    "DoesNotFitError",
    "PlanError",
    "RateLimited",
    "RetryableError",
    "RetryableToolError",
    "RunFailed",
    "StepFailed",
    "StepTimeout",
    "SubstrateError",
    "SubstrateTimeout",
    "SubstrateUnavailable",
    "ToolError",
    "ToolLoopFailed",
    "UnknownNameError",
]


class AgentrtError(Exception):
    """Root of every error agentrt raises on purpose."""

    #: Whether the retry policy may try the failed operation again.
    retryable: bool = False


class ConfigError(AgentrtError):
    """Bad input that the user can fix: a plan, a name, an option, a deployment."""


class PlanError(ConfigError):
    """A plan is not a valid DAG, names an unknown step, or its file cannot be read.

    Attributes:
        step_ids: the offending step ids, when the problem is about particular steps.
        path: the plan file, when the plan came from one.
        line: the 1-based line in that file, when it is known.
    """

    def __init__(
        self,
        message: str,
        *,
        step_ids: tuple[str, ...] = (),
        path: str | None = None,
        line: int | None = None,
    ) -> None:
        self.step_ids = step_ids
        self.path = path
        self.line = line
        if path is not None:
            where = f"{path}:{line}" if line is not None else path
            message = f"{where}: {message}"
        super().__init__(message)


class UnknownNameError(ConfigError, LookupError):
    """No substrate, tool or profile is registered under the given name."""

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]) -> None:
        self.kind = kind
        self.name = name
        self.known = tuple(sorted(known))
        listing = ", ".join(self.known) if self.known else "(none registered)"
        close = difflib.get_close_matches(name, self.known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(f"unknown {kind} {name!r}{hint}; known {kind}s: {listing}")

    def __str__(self) -> str:
        # LookupError's str() would quote the message like a KeyError; keep it readable.
        return str(self.args[0])


class DoesNotFitError(ConfigError):
    """A model (weights + KV cache) does not fit the deployment's memory."""


class SubstrateError(AgentrtError):
    """An inference call failed."""


class RetryableError(SubstrateError):
    """A transient failure: the retry policy may try again.

    Attributes:
        retry_after_s: the least time to wait before trying again, if the substrate said so.
    """

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SubstrateUnavailable(RetryableError):
    """The substrate cannot take requests right now (connection refused, outage, 503)."""


class RateLimited(RetryableError):
    """The substrate asked the caller to slow down (HTTP 429)."""


class SubstrateTimeout(RetryableError, TimeoutError):
    """The substrate did not answer in time."""


class BadResponse(SubstrateError):
    """The substrate answered, but with something that cannot be used."""


class ToolError(AgentrtError):
    """A tool call failed: bad arguments, or the tool itself reported an error."""


class RetryableToolError(ToolError):
    """A tool call failed transiently and may be retried."""

    retryable = True


class ToolLoopFailed(AgentrtError):
    """A tool-calling loop stopped without an answer.

    The model still asked for tools after ``max_turns`` model calls, or that many tool calls in a
    row failed (``Agent(max_tool_failures=...)``). Not retryable: the same conversation would end
    the same way.
    """


class StepTimeout(AgentrtError, TimeoutError):
    """One attempt of a step ran longer than the step's ``timeout_s``."""

    retryable = True


class StepFailed(AgentrtError):
    """A step failed for good (retries exhausted or a permanent error).

    Attributes:
        step_id: the step that failed.
        attempts: how many attempts were made.
    """

    def __init__(self, step_id: str, cause: BaseException, *, attempts: int) -> None:
        self.step_id = step_id
        self.attempts = attempts
        tries = "attempt" if attempts == 1 else "attempts"
        super().__init__(
            f"step {step_id!r} failed after {attempts} {tries}: {type(cause).__name__}: {cause}"
        )
        self.__cause__ = cause


class RunFailed(AgentrtError):
    """A run ended without success; raised by ``RunResult.raise_for_status()``.

    Attributes:
        run_id: the run.
        status: ``"failed"`` or ``"cancelled"``.
        step_id: the step that caused the failure, if one did.
    """

    def __init__(self, run_id: str, status: str, reason: str, *, step_id: str | None) -> None:
        self.run_id = run_id
        self.status = status
        self.step_id = step_id
        super().__init__(f"run {run_id} {status}: {reason}")
