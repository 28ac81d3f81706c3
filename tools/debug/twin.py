"""The debug tool's emulated twin for virtual-time runs, and the latency model it plays."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, final

import anyio
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from agentrt.errors import ConfigError
from agentrt.tool import ToolResult
from tools._twin_script import read_script
from tools.debug.args import DebugArgs, SandboxLimits
from tools.debug.report import DebugReport, ExceptionInfo, FailedTest, LimitName, TestSummary
from tools.debug.tool import DebugTool

__all__ = [
    "DEBUG_LATENCY",
    "DebugLatency",
    "DebugOutcome",
    "DebugTwin",
    "make_debug_twin",
    "measure_debug_latency",
]


@dataclass(frozen=True, slots=True)
class DebugLatency:
    """Latency of one debug call: ``(base + per_test_s * tests) * lognormal(0, sigma)``.

    ``base`` is ``start_s`` for code and scripts and ``pytest_start_s`` for pytest targets.

    Attributes:
        start_s: a trivial code or script run: temporary directory, supervisor and interpreter
            start, clean-up.
        pytest_start_s: a pytest run of one trivial test, minus ``per_test_s``: the above plus
            pytest's start-up (plugins), collection and report.
        per_test_s: each further trivial test.
        sigma: standard deviation of log(latency / median); 0 for no jitter.
    """

    start_s: float
    pytest_start_s: float
    per_test_s: float
    sigma: float = 0.0

    def median_s(self, mode: str, tests: int = 0) -> float:
        """The median latency of a run in ``mode`` (``code``/``script``/``pytest``)."""
        if mode != "pytest":
            return self.start_s
        return self.pytest_start_s + self.per_test_s * tests

    def sample_s(self, rng: random.Random, mode: str, tests: int = 0) -> float:
        """One latency draw."""
        jitter = rng.lognormvariate(0.0, self.sigma) if self.sigma > 0 else 1.0
        return self.median_s(mode, tests) * jitter


#: Measured on the real tool with `measure_debug_latency()` (command, machine and all three runs
#: in docs/tools.md, "debug" > "In virtual time: the twin"): medians 0.107-0.122 s for trivial
#: code; 1.73-2.59 s for a one-test pytest run (1.45 s of it is importing the auto-loaded
#: hypothesis plugin); 1.6-3.3 ms per further trivial test; log-spread 0.13-0.20. The constants
#: are the typical run.
DEBUG_LATENCY: Final = DebugLatency(
    start_s=0.11, pytest_start_s=1.75, per_test_s=2.4e-3, sigma=0.19
)


class DebugOutcome(BaseModel):
    """One scripted result of the `DebugTwin` (the defaults: a clean, passing run).

    Example:
        >>> DebugOutcome(failing=["tests/test_calc.py::test_add"], passed=3).failing[0].name
        'tests/test_calc.py::test_add'

    Attributes:
        exit_code: None derives it: 1 if anything failed, 0 otherwise (none when a limit hit).
        stdout: the output; for pytest targets, empty means a pytest-like summary.
        stderr: the error output; empty with an ``exception`` means a matching traceback.
        exception: the exception the run ended with (code and scripts).
        passed: tests that passed (pytest targets).
        skipped: tests skipped (pytest targets).
        failing: failing tests: node ids, or `FailedTest` with a message.
        limit: a limit that stopped the run.
        duration_s: the run's latency, instead of a draw from the latency model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    exception: ExceptionInfo | None = None
    passed: int = Field(default=1, ge=0)
    skipped: int = Field(default=0, ge=0)
    failing: list[FailedTest] = Field(default_factory=list)
    limit: LimitName | None = None
    duration_s: float | None = Field(default=None, ge=0)

    @field_validator("failing", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value


_OUTCOMES: Final = TypeAdapter(dict[str, list[DebugOutcome]])
_SIGNAL_OF_LIMIT: Final = {"timeout": "SIGINT", "processes": "SIGKILL", "cpu": "SIGXCPU"}


@final
class DebugTwin:
    """The debug tool's emulated twin: measured latency on the run's clock, scripted results.

    Same name (``debug``), description and `DebugArgs` as `tools.debug.DebugTool`, and the same
    ``data`` shape (a `DebugReport`), so a plan runs unchanged; nothing is executed. Each call
    sleeps a latency drawn from ``latency`` (default `DEBUG_LATENCY`, measured on the real
    tool) with ``anyio.sleep``, so in virtual time it costs no wall time, and reports it as
    ``duration_s``. A latency past the call's ``timeout_s`` becomes a timeout, as it would be.

    Results come from ``script``: target (the pytest target, the script path, or ``"<code>"``)
    -> outcomes in call order; the last one repeats. Unscripted targets get ``default``.

    Example:
        >>> import agentrt
        >>> twin = DebugTwin(script={"tests/": [DebugOutcome(failing=["tests/test_a.py::test_x"]),
        ...                                     DebugOutcome(passed=2)]})
        >>> async def twice() -> list[bool]:
        ...     return [(await twin.call(DebugArgs(pytest="tests/"))).ok for _ in range(2)]
        >>> agentrt.run(twice, clock=agentrt.VirtualClock())
        [False, True]

    Args:
        script: target -> outcomes (`DebugOutcome` or dicts of its fields).
        default: the outcome of unscripted targets (default: a clean run, one test passing).
        latency: the latency model.
        limits: the default limits, as the real tool's (only ``timeout_s`` matters here).
        seed: seeds the latency jitter (None means 0: runs are reproducible by default).

    Raises:
        ConfigError: a malformed script.
    """

    name = DebugTool.name
    description = DebugTool.description
    args_model = DebugArgs

    def __init__(
        self,
        *,
        script: Mapping[str, Sequence[DebugOutcome | Mapping[str, object]]] | None = None,
        default: DebugOutcome | None = None,
        latency: DebugLatency = DEBUG_LATENCY,
        limits: SandboxLimits | None = None,
        seed: int | None = None,
    ) -> None:
        try:
            self._script = _OUTCOMES.validate_python(
                {str(k): [_plain(o) for o in v] for k, v in (script or {}).items()}
            )
        except ValidationError as exc:
            error = exc.errors()[0]
            raise ConfigError(
                f"bad debug-twin script: {error['msg']} at {error['loc']}; map each target to "
                "a list of outcomes (fields: exit_code, stdout, stderr, exception, passed, "
                "skipped, failing, limit, duration_s)"
            ) from exc
        self.default = default or DebugOutcome()
        self.latency = latency
        self.limits = limits or SandboxLimits()
        self._rng = random.Random(seed or 0)
        self._calls: dict[str, int] = {}

    async def call(self, args: DebugArgs) -> ToolResult:
        """Sleep the modelled latency on the run's clock, then return the scripted outcome."""
        outcome = self._next(args.target)
        limits = args.effective_limits(self.limits)
        tests = outcome.passed + len(outcome.failing) if args.mode == "pytest" else 0
        latency_s = outcome.duration_s
        if latency_s is None:
            latency_s = self.latency.sample_s(self._rng, args.mode, tests)
        if latency_s > limits.timeout_s:
            outcome = outcome.model_copy(update={"limit": "timeout", "exit_code": None})
            latency_s = limits.timeout_s
        await anyio.sleep(latency_s)
        report = _twin_report(args, outcome, latency_s, limits)
        return ToolResult(
            ok=report.ok,
            output=report.summary(),
            data=report.model_dump(mode="json"),
            duration_s=latency_s,
        )

    async def aclose(self) -> None:
        """Nothing to release."""

    def _next(self, target: str) -> DebugOutcome:
        outcomes = self._script.get(target)
        if not outcomes:
            return self.default
        n = self._calls.get(target, 0)
        self._calls[target] = n + 1
        return outcomes[min(n, len(outcomes) - 1)]


def _plain(outcome: DebugOutcome | Mapping[str, object]) -> object:
    return outcome if isinstance(outcome, DebugOutcome) else dict(outcome)


def _twin_report(
    args: DebugArgs, outcome: DebugOutcome, duration_s: float, limits: SandboxLimits
) -> DebugReport:
    """The `DebugReport` the real tool would have produced for ``outcome``."""
    failed = bool(outcome.failing or outcome.exception or outcome.limit)
    exit_code = outcome.exit_code
    if exit_code is None and outcome.limit not in _SIGNAL_OF_LIMIT:
        exit_code = 1 if failed else 0
    tests = None
    stdout, stderr = outcome.stdout, outcome.stderr
    if args.mode == "pytest":
        tests = TestSummary(
            passed=outcome.passed,
            failed=len(outcome.failing),
            skipped=outcome.skipped,
            failing=outcome.failing,
        )
        if not stdout:
            lines = [f"FAILED {t.name} - {t.message}".rstrip(" -") for t in outcome.failing]
            stdout = "\n".join([*lines, f"{tests.counts()} in {duration_s:.2f}s", ""])
    exc = outcome.exception
    if exc is not None and not stderr:
        where = f'  File "{exc.file}", line {exc.line}, in {exc.function}\n' if exc.file else ""
        stderr = f"Traceback (most recent call last):\n{where}{exc.type}: {exc.message}\n"
    command = {
        "code": ["python", "-s", "-c", "<code>"],
        "script": ["python", "-s", args.target, *args.argv],
        "pytest": ["python", "-s", "-m", "pytest", args.target, *args.argv],
    }[args.mode]
    return DebugReport(
        mode=args.mode,
        target=args.target,
        command=command,
        exit_code=exit_code,
        signal=_SIGNAL_OF_LIMIT.get(outcome.limit or "") if exit_code is None else None,
        limit=outcome.limit,
        duration_s=duration_s,
        stdout_tail=stdout,
        stderr_tail=stderr,
        stdout_bytes=len(stdout.encode()),
        stderr_bytes=len(stderr.encode()),
        exception=exc,
        tests=tests,
        failing_tests=[t.name for t in outcome.failing] if tests is not None else [],
        limits=limits.model_dump(),
        peak_processes=1,
    )


def make_debug_twin(*, script: str | None = None, seed: int | None = None) -> DebugTwin:
    """Registry factory for ``debug-twin``.

    Args:
        script: a YAML or JSON file mapping targets to lists of outcomes (`DebugOutcome`
            fields), e.g. ``{"tests/": [{"failing": ["tests/test_a.py::test_x"]}, {}]}``.
        seed: seeds the latency jitter.

    Raises:
        ConfigError: the script file cannot be read or is malformed.
    """
    mapping = (
        None
        if script is None
        else read_script(script, "debug-twin", "targets to lists of outcomes")
    )
    return DebugTwin(script=mapping, seed=seed)


async def measure_debug_latency(*, repeats: int = 5, tests: int = 500) -> DebugLatency:
    """Fit `DebugLatency` on this machine by timing the real `DebugTool`.

    Times ``repeats`` runs each of trivial code, a pytest run of 1 test and one of ``tests + 1``
    tests (written into the sandbox's temporary directory), and fits medians and the log-spread.
    Takes about ``repeats * 6`` seconds. ``python -c "import anyio; from tools.debug import
    measure_debug_latency as m; print(anyio.run(m))"`` prints the fit.
    """
    tool = DebugTool()

    async def timed(args: DebugArgs) -> float:
        started = anyio.current_time()
        result = await tool.call(args)
        if not result.ok:
            raise ConfigError(f"latency measurement run failed: {result.output}")
        return anyio.current_time() - started

    def trivial_tests(n: int) -> DebugArgs:
        body = "".join(f"def test_{i}():\n    assert True\n\n" for i in range(n))
        return DebugArgs(pytest=".", files={"test_trivial.py": body})

    code = [await timed(DebugArgs(code="print('ok')")) for _ in range(repeats)]
    one = [await timed(trivial_tests(1)) for _ in range(repeats)]
    lots = [await timed(trivial_tests(tests + 1)) for _ in range(repeats)]
    per_test_s = max(statistics.median(lots) - statistics.median(one), 0.0) / tests
    spread = [
        math.log(t / statistics.median(sample)) for sample in (code, one, lots) for t in sample
    ]
    return DebugLatency(
        start_s=round(statistics.median(code), 4),
        pytest_start_s=round(statistics.median(one) - per_test_s, 4),
        per_test_s=round(per_test_s, 6),
        sigma=round(statistics.pstdev(spread), 3),
    )
