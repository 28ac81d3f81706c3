"""The ``debug`` tool's report: its data model, its text summary, and the parsers that fill it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree

from pydantic import BaseModel, ConfigDict, Field

from tools.debug.args import DebugArgs, SandboxLimits
from tools.debug.sandbox import SandboxRun

__all__ = [
    "DebugReport",
    "ExceptionInfo",
    "FailedTest",
    "LimitName",
    "TestSummary",
    "build_report",
    "infer_limit",
    "parse_exception",
    "parse_junit",
]

LimitName = Literal["timeout", "cpu", "memory", "file_size", "disk", "processes", "open_files"]

_LIMIT_TEXT: dict[str, str] = {
    "timeout": "wall-clock timeout ({timeout_s:g} s)",
    "cpu": "CPU time limit ({cpu_s} s)",
    "memory": "memory limit ({memory_mib} MiB of address space)",
    "file_size": "file size limit ({file_size_mib} MiB)",
    "disk": "disk limit ({disk_mib} MiB written in all)",
    "processes": "process limit ({max_processes} processes)",
    "open_files": "open files limit ({max_open_files})",
}
_MAX_JUNIT_BYTES = 32 << 20
_SHOWN_LINES = 30
_SHOWN_FAILURES = 20


class ExceptionInfo(BaseModel):
    """The exception that ended a run, read from the last traceback on stderr."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    message: str = ""
    file: str | None = Field(default=None, description="Relative to the workdir when inside it.")
    line: int | None = None
    function: str | None = None
    source: str | None = Field(default=None, description="The source line, when known.")


class FailedTest(BaseModel):
    """One failing (or erroring) test: its pytest node id and the first line of the error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    message: str = ""


class TestSummary(BaseModel):
    """Counts of a pytest run and its failing tests (from its JUnit XML report)."""

    __test__ = False  # not a pytest test class, despite the name
    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failing: list[FailedTest] = Field(default_factory=list)

    def counts(self) -> str:
        """``"2 failed, 5 passed"`` in pytest's words."""
        parts = [
            f"{n} {word}"
            for n, word in (
                (self.failed, "failed"),
                (self.passed, "passed"),
                (self.skipped, "skipped"),
                (self.errors, "error" if self.errors == 1 else "errors"),
            )
            if n
        ]
        return ", ".join(parts) or "no tests ran"


class DebugReport(BaseModel):
    """Everything a ``debug`` run produced: the ``data`` of its `ToolResult`.

    ``limit`` names the limit that stopped the run, if one did: ``timeout`` and ``processes``
    are enforced by the sandbox's supervisor, ``cpu`` and ``file_size`` show as signals
    (SIGXCPU, SIGXFSZ) or errors, ``memory`` and ``open_files`` as errors (MemoryError, EMFILE).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["code", "script", "pytest"]
    target: str
    command: list[str]
    exit_code: int | None = Field(description="None when the process died of a signal.")
    signal: str | None = None
    limit: LimitName | None = None
    duration_s: float = Field(ge=0)
    stdout_tail: str = ""
    stderr_tail: str = ""
    stdout_bytes: int = Field(default=0, description="Bytes written in all (the tail is kept).")
    stderr_bytes: int = 0
    exception: ExceptionInfo | None = None
    tests: TestSummary | None = None
    failing_tests: list[str] = Field(default_factory=list)
    limits: dict[str, float | int] = Field(default_factory=dict)
    cpu_time_s: float | None = None
    max_rss_mib: float | None = None
    peak_processes: int = 0
    leftover_processes: int = Field(default=0, description="Still running at exit; killed.")
    isolation: str = Field(
        default="", description="'namespaces', or 'none: why' when the kernel refused them."
    )

    @property
    def ok(self) -> bool:
        """True when the run exited 0 and no limit stopped it."""
        return self.exit_code == 0 and self.limit is None

    def summary(self) -> str:
        """The text the model sees: status, exception or failing tests, and output tails."""
        if self.exit_code is not None:
            status = f"exit code {self.exit_code}"
        else:
            status = f"killed by {self.signal}" if self.signal else "no exit status"
        head = f"{self.mode} {self.target}: {status} after {self.duration_s:.2f} s"
        if self.tests is not None:
            head += f"; tests: {self.tests.counts()}"
        lines = [head]
        if self.limit is not None:
            stopped = _LIMIT_TEXT[self.limit].format(**self.limits)
            lines.append(f"STOPPED by the {stopped}")
        exc = self.exception
        if exc is not None:
            lines.append(f"{exc.type}: {exc.message}".rstrip(": "))
            if exc.file is not None:
                lines.append(
                    f"  at {exc.file}:{exc.line}" + (f" in {exc.function}" if exc.function else "")
                )
            if exc.source:
                lines.append(f"    {exc.source}")
        if self.tests is not None:
            lines.extend(
                f"FAILED {t.name}" + (f" - {t.message}" if t.message else "")
                for t in self.tests.failing[:_SHOWN_FAILURES]
            )
            if len(self.tests.failing) > _SHOWN_FAILURES:
                lines.append(f"... and {len(self.tests.failing) - _SHOWN_FAILURES} more")
        if self.leftover_processes:
            lines.append(f"killed {self.leftover_processes} process(es) left running at exit")
        for name, text, total in (
            ("stdout", self.stdout_tail, self.stdout_bytes),
            ("stderr", self.stderr_tail, self.stderr_bytes),
        ):
            shown = text.splitlines()[-_SHOWN_LINES:]
            if shown:
                kept = "" if total <= len(text.encode()) else f", {total} bytes in all"
                lines.append(f"--- {name} (last {len(shown)} lines{kept}) ---")
                lines.extend(line[:300] for line in shown)
        return "\n".join(lines)


_FRAME = re.compile(r'^\s*File "(?P<file>.+)", line (?P<line>\d+)(?:, in (?P<function>.+))?$')
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$")
_HEADER = ("Traceback (most recent call last):", "Exception Group Traceback (most recent call")
# Exception groups draw boxes: "  | " before each line, "  + " before the group's header.
_BOX = re.compile(r"^\s*[|+](?: |$)")
_RULE = re.compile(r"^\s*\+-")
_MAX_MESSAGE = 1000


def parse_exception(
    stderr: str, *, code: str | None = None, workdir: Path | None = None
) -> ExceptionInfo | None:
    r"""The exception of the last Python traceback in ``stderr``, or None if there is none.

    Also reads the header-less ``SyntaxError`` form. ``code`` supplies the source line of
    frames in ``"<string>"`` (``python -c``); files under ``workdir`` are made relative to it.

    Example:
        >>> err = 'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\n'
        >>> parse_exception(err + "ZeroDivisionError: division by zero").type
        'ZeroDivisionError'
    """
    lines = [_BOX.sub("", line, count=1) for line in stderr.splitlines()]
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(_HEADER)]
    if not starts:
        starts = [i for i, line in enumerate(lines) if _FRAME.match(line)]
    if not starts:
        return None
    frame: re.Match[str] | None = None
    source: str | None = None
    for i in range(starts[-1], len(lines)):
        line = lines[i]
        if (match := _FRAME.match(line)) is not None:
            frame, source = match, None
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if following and not _FRAME.match(lines[i + 1]) and set(following) - set("^~ "):
                source = following if lines[i + 1][:1].isspace() else None
            continue
        if line[:1].isspace() or not line or line.startswith(_HEADER):
            continue
        if (exc := _EXCEPTION.match(line)) is None:
            continue
        message = [exc["message"] or ""]
        message.extend(_continuation(lines, i + 1))
        file = frame["file"] if frame else None
        line_no = int(frame["line"]) if frame else None
        if file == "<string>" and code is not None and line_no is not None:
            code_lines = code.splitlines()
            if 0 < line_no <= len(code_lines):
                source = code_lines[line_no - 1].strip()
        if file is not None and workdir is not None and file.startswith(f"{workdir}/"):
            file = file[len(str(workdir)) + 1 :]
        return ExceptionInfo(
            type=exc["type"],
            message="\n".join(message).strip()[:_MAX_MESSAGE],
            file=file,
            line=line_no,
            function=frame["function"] if frame else None,
            source=source,
        )
    return None


def _continuation(lines: list[str], start: int) -> list[str]:
    """Further lines of a multi-line exception message, up to a blank line."""
    found: list[str] = []
    for line in lines[start:]:
        if not line.strip() or line.startswith(_HEADER) or _FRAME.match(line) or _RULE.match(line):
            break
        found.append(line)
    return found


def parse_junit(path: Path) -> TestSummary | None:
    """Counts and failing test node ids from a pytest ``--junitxml`` (xunit1) report.

    Returns None when there is no readable report (pytest never got that far).
    """
    try:
        if path.stat().st_size > _MAX_JUNIT_BYTES:
            return None
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failing: list[FailedTest] = []
    for case in root.iter("testcase"):
        failure, error = case.find("failure"), case.find("error")
        bad = failure if failure is not None else error
        if bad is not None:
            counts["failed" if failure is not None else "errors"] += 1
            failing.append(FailedTest(name=_node_id(case), message=_failure_message(bad)))
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return TestSummary(**counts, failing=failing)


def _node_id(case: ElementTree.Element) -> str:
    """Rebuild ``path/to/test_x.py::Class::test[param]`` from xunit1's file/classname/name."""
    classname, name, file = case.get("classname", ""), case.get("name", ""), case.get("file")
    if not file:
        return f"{classname}::{name}" if classname else name
    if not classname:  # a collection error: the whole file
        return file
    module = file.removesuffix(".py").replace("/", ".").replace("\\", ".")
    rest = classname[len(module) :].strip(".") if classname.startswith(module) else ""
    return "::".join([file, *(rest.split(".") if rest else []), name])


def _failure_message(element: ElementTree.Element) -> str:
    message = (element.get("message") or "").strip()
    if message in ("", "collection failure") or message.startswith("failed on setup"):
        # The useful line is the last "E   ..." of the report text.
        errors = [
            line[1:].strip() for line in (element.text or "").splitlines() if line.startswith("E ")
        ]
        if errors:
            return errors[-1]
    return message.splitlines()[0] if message else ""


_ERRORS: tuple[tuple[LimitName, re.Pattern[str]], ...] = (
    ("memory", re.compile(r"\bMemoryError\b|Cannot allocate memory|std::bad_alloc|out of memory")),
    ("file_size", re.compile(r"\[Errno 27\]|File too large")),
    ("disk", re.compile(r"\[Errno 28\]|No space left on device")),
    ("open_files", re.compile(r"\[Errno 24\]|Too many open files")),
    ("processes", re.compile(r"BlockingIOError: \[Errno 11\]|fork: retry|Cannot fork")),
)


def infer_limit(
    *,
    supervisor_limit: str | None,
    signal: str | None,
    exit_code: int | None,
    cpu_time_s: float | None,
    cpu_limit_s: float,
    stderr: str,
    exception: ExceptionInfo | None,
    tests: TestSummary | None,
) -> LimitName | None:
    """Which limit stopped a run: the supervisor's word, the signal, or the error it caused.

    Python turns rlimits into exceptions (MemoryError; OSError EFBIG, EMFILE; fork's EAGAIN),
    so those are read from the exception, the failing tests' messages and the end of stderr.
    """
    if supervisor_limit == "timeout":
        return "timeout"
    if supervisor_limit in ("processes", "disk"):
        return supervisor_limit  # type: ignore[return-value]
    if signal == "SIGXCPU" or (signal == "SIGKILL" and (cpu_time_s or 0) >= cpu_limit_s):
        return "cpu"
    if signal == "SIGXFSZ":
        return "file_size"
    if exit_code == 0:
        return None
    texts = [stderr[-4096:]]
    if exception is not None:
        texts.append(f"{exception.type}: {exception.message}")
    if tests is not None:
        texts.extend(t.message for t in tests.failing)
    for name, pattern in _ERRORS:
        if any(pattern.search(text) for text in texts):
            return name
    return None


def build_report(
    args: DebugArgs,
    command: list[str],
    run: SandboxRun,
    tests: TestSummary | None,
    limits: SandboxLimits,
    workdir: Path,
) -> DebugReport:
    """The report of a finished run: its outcome, output, exception, tests and the limit hit."""
    stderr = run.stderr.text()
    exception = parse_exception(stderr, code=args.code, workdir=workdir)
    return DebugReport(
        mode=args.mode,
        target=args.target,
        command=command,
        exit_code=run.exit_code,
        signal=run.signal,
        limit=infer_limit(
            supervisor_limit=run.limit,
            signal=run.signal,
            exit_code=run.exit_code,
            cpu_time_s=run.cpu_time_s,
            cpu_limit_s=limits.cpu_s,
            stderr=stderr,
            exception=exception,
            tests=tests,
        ),
        duration_s=run.duration_s,
        stdout_tail=run.stdout.text(),
        stderr_tail=stderr,
        stdout_bytes=run.stdout.total,
        stderr_bytes=run.stderr.total,
        exception=exception,
        tests=tests if args.mode == "pytest" else None,
        failing_tests=[t.name for t in tests.failing] if tests and args.mode == "pytest" else [],
        limits=limits.model_dump(),
        cpu_time_s=run.cpu_time_s,
        max_rss_mib=None if run.max_rss_kib is None else run.max_rss_kib / 1024,
        peak_processes=run.peak_processes,
        leftover_processes=run.leftover_processes,
        isolation=run.isolation,
    )
