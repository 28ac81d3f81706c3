"""The ``debug`` tool: Python code, a script or a pytest target, run in a sandboxed subprocess."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path, PurePosixPath
from typing import Literal, Self, final

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentrt.clock import current_clock
from agentrt.errors import ToolError
from agentrt.interrupts import on_forced_exit
from agentrt.tool import ToolResult
from tools._debug_report import (
    DebugReport,
    ExceptionInfo,
    FailedTest,
    LimitName,
    TestSummary,
    infer_limit,
    parse_exception,
    parse_junit,
)
from tools._sandbox import Isolation, SandboxRun, remove_tree, run_sandboxed

__all__ = [
    "DebugArgs",
    "DebugReport",
    "DebugTool",
    "ExceptionInfo",
    "FailedTest",
    "LimitName",
    "SandboxLimits",
    "TestSummary",
    "make_debug",
]

_MIB = 1 << 20
# On timeout the group first gets SIGINT (a traceback showing where it hung), then SIGKILL.
_GRACE_S = 1.0
_MAX_COPY_BYTES = 256 * _MIB
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".hg", ".svn", ".venv", "venv", "node_modules", ".tox", "__pycache__", "*.pyc",
    ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis",
)  # fmt: skip
# Config files pytest would look for, and the section that makes a file count (None: any).
_PYTEST_CONFIGS = (
    ("pytest.toml", None), (".pytest.toml", None), ("pytest.ini", None), (".pytest.ini", None),
    ("pyproject.toml", "[tool.pytest"), ("tox.ini", "[pytest]"), ("setup.cfg", "[tool:pytest]"),
)  # fmt: skip
_ASYNCIO_SCOPE = "asyncio_default_fixture_loop_scope"


class SandboxLimits(BaseModel):
    """Resource limits of one sandboxed run (see ``docs/tools.md`` for how each is enforced).

    Example:
        >>> SandboxLimits(timeout_s=5).memory_mib
        1024
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(default=30.0, gt=0, description="Wall-clock time for the whole run.")
    cpu_s: int = Field(default=20, gt=0, description="CPU seconds per process (RLIMIT_CPU).")
    memory_mib: int = Field(
        default=1024, gt=0, description="Address space per process (RLIMIT_AS)."
    )
    file_size_mib: int = Field(default=64, gt=0, description="Largest file written (RLIMIT_FSIZE).")
    max_processes: int = Field(default=64, gt=0, description="Live processes in the sandbox.")
    max_open_files: int = Field(default=1024, gt=0, description="Descriptors per process.")
    disk_mib: int = Field(
        default=256, gt=0, description="Bytes the whole run may write, all files together."
    )


class DebugArgs(BaseModel):
    """Arguments of the ``debug`` tool: exactly one of ``code``, ``script`` and ``pytest``.

    Example:
        >>> DebugArgs(pytest="tests/test_calc.py", copy_from="examples/calc").target
        'tests/test_calc.py'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str | None = Field(default=None, max_length=100_000, description="Python source to run.")
    script: str | None = Field(default=None, description="A Python file, relative to the workdir.")
    pytest: str | None = Field(
        default=None, description="A pytest target: 'tests/', 'tests/test_x.py::test_y'."
    )
    argv: list[str] = Field(default_factory=list, description="Extra arguments (script, pytest).")
    workdir: str | None = Field(
        default=None, description="Run in this existing directory (what the run writes stays)."
    )
    copy_from: str | None = Field(
        default=None, description="Copy this directory into a fresh temporary one and run there."
    )
    files: dict[str, str] = Field(
        default_factory=dict, description="Files (relative path -> text) written before the run."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    timeout_s: float | None = Field(default=None, gt=0)
    cpu_s: int | None = Field(default=None, gt=0)
    memory_mib: int | None = Field(default=None, gt=0)
    file_size_mib: int | None = Field(default=None, gt=0)
    max_processes: int | None = Field(default=None, gt=0)
    disk_mib: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        given = [name for name in ("code", "script", "pytest") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of code, script and pytest (got {', '.join(given) or 'none'})"
            )
        if self.workdir is not None and self.copy_from is not None:
            raise ValueError("give workdir (run in place) or copy_from (run in a copy), not both")
        for name in self.files:
            path = PurePosixPath(name)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise ValueError(f"files: {name!r} must be a relative path inside the workdir")
        return self

    @property
    def mode(self) -> Literal["code", "script", "pytest"]:
        """Which kind of run this is."""
        if self.code is not None:
            return "code"
        return "script" if self.script is not None else "pytest"

    def effective_limits(self, defaults: SandboxLimits) -> SandboxLimits:
        """``defaults`` with the limits this call sets."""
        overrides = {
            key: value
            for key in SandboxLimits.model_fields
            if (value := getattr(self, key, None)) is not None
        }
        return defaults.model_copy(update=overrides)

    @property
    def target(self) -> str:
        """The script path or pytest target, or ``"<code>"``: the key twins script outcomes by."""
        return self.script or self.pytest or "<code>"


@final
class DebugTool:
    r"""Runs Python code, a script or a pytest target in a sandboxed subprocess.

    The run gets a fresh session and temporary directory, a scrubbed environment, rlimits on
    CPU, memory, file size and descriptors, a process count and a wall-clock timeout; when it
    ends, everything it started is killed and reaped. The result carries the exit status, the
    tails of stdout and stderr, the parsed exception or the failing tests, and which limit (if
    any) stopped it. Not a security boundary: see ``docs/tools.md``.

    Example:
        >>> import anyio
        >>> result = anyio.run(DebugTool().call, DebugArgs(code="print(6 * 7)"))
        >>> result.ok, result.data["stdout_tail"]
        (True, '42\n')

    Args:
        limits: default limits; each call may override them in its arguments.
        python: the interpreter for code, scripts and pytest (default: this one).
        tail_kib: how much of the end of stdout and of stderr to keep.
        isolate: run in new PID and mount namespaces where the kernel allows it (see
            ``docs/tools.md``); False keeps only the supervisor, rlimits and disk polling.
    """

    name = "debug"
    description = (
        "Run Python code, a script or a pytest target in a sandbox (temporary directory, "
        "scrubbed environment, time/CPU/memory/file-size/process limits). Returns the exit "
        "status, output tails, the exception raised or the failing tests."
    )
    args_model = DebugArgs

    def __init__(
        self,
        *,
        limits: SandboxLimits | None = None,
        python: str | None = None,
        tail_kib: int = 64,
        isolate: bool = True,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.python = python or sys.executable
        self.tail_kib = tail_kib
        self.isolate = isolate

    async def call(self, args: DebugArgs) -> ToolResult:
        """Run the code, script or tests; a failing run is a result with ``ok=False``.

        Raises:
            ToolError: in virtual time (use the twin), or when the run cannot be set up (no
                such workdir, script or copy source; copy too large).
        """
        if current_clock().is_virtual:
            raise ToolError(
                "the debug tool runs real processes, which take real time a virtual clock "
                "cannot see; in virtual time use its emulated twin 'debug-twin' "
                "(tools.twins.DebugTwin)"
            )
        limits = args.effective_limits(self.limits)
        private = Path(await anyio.to_thread.run_sync(_mkdtemp))
        try:
            with on_forced_exit(partial(_rmtree, private)):
                workdir, argv, shown = await anyio.to_thread.run_sync(self._setup, args, private)
                try:
                    run = await run_sandboxed(
                        argv,
                        cwd=workdir,
                        env=_environment(private, self.python, args.env),
                        status_path=private / "status.json",
                        timeout_s=limits.timeout_s,
                        grace_s=_GRACE_S,
                        max_processes=limits.max_processes,
                        rlimits=_rlimits(limits),
                        tail_bytes=self.tail_kib * 1024,
                        isolation=Isolation(
                            private=private,
                            workdir=workdir,
                            overlay=args.workdir is None,
                            disk_bytes=limits.disk_mib * _MIB,
                            namespaces=self.isolate,
                        ),
                    )
                except OSError as exc:
                    raise ToolError(f"cannot start the sandbox for {args.target!r}: {exc}") from exc
                tests = await anyio.to_thread.run_sync(parse_junit, private / "out" / "junit.xml")
                report = _report(args, shown, run, tests, limits, workdir)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_rmtree, private)
        return ToolResult(
            ok=report.ok, output=report.summary(), data=report.model_dump(mode="json")
        )

    async def aclose(self) -> None:
        """Nothing to release: every call cleans up after itself."""

    def _setup(self, args: DebugArgs, private: Path) -> tuple[Path, list[str], list[str]]:
        """In a worker thread: the working directory, the argv to run and the argv to show."""
        try:
            workdir = _prepare(args, private)
            return workdir, *self._command(args, workdir, private)
        except OSError as exc:  # shutil.Error too
            raise ToolError(f"cannot set up the run of {args.target!r}: {exc}") from exc

    def _command(
        self, args: DebugArgs, workdir: Path, private: Path
    ) -> tuple[list[str], list[str]]:
        # No -I/-S: -S would hide the environment's site-packages (pytest, the code's own
        # dependencies) and -I's -P would drop the workdir from sys.path. The environment is
        # built from scratch (so -E is moot) and sets PYTHONNOUSERSITE (-s) for child processes.
        python = [self.python, "-s"]
        if args.code is not None:
            return [*python, "-c", args.code], [*python, "-c", "<code>"]
        if args.script is not None:
            if not (workdir / args.script).is_file():
                raise ToolError(f"script {args.script!r} not found in the workdir {workdir}")
            argv = [*python, args.script, *args.argv]
            return argv, argv
        assert args.pytest is not None
        config = _pytest_config(workdir, private)
        argv = [
            *python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", "--tb=short",
            "--color=no", f"--junitxml={private / 'out' / 'junit.xml'}",
            "-o", "junit_family=xunit1",
            f"--rootdir={workdir}", f"--confcutdir={workdir}", "-c", str(config),
            *self._plugin_options(config, args.env), args.pytest, *args.argv,
        ]  # fmt: skip
        return argv, argv

    def _plugin_options(self, config: Path, env: dict[str, str]) -> list[str]:
        """Settings that keep auto-loaded plugins from printing warnings into the output.

        pytest-asyncio warns on every run whose config leaves its fixture loop scope unset; set
        it to ``function`` (its future default), unless the project's config sets it, the
        plugin is not auto-loaded (then ``-o`` of an unknown option would warn instead), or the
        interpreter is not this one (its plugins are unknown).
        """
        if env.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") or self.python != sys.executable:
            return []
        if _ASYNCIO_SCOPE in config.read_text(errors="replace"):
            return []
        if not any(ep.name == "asyncio" for ep in entry_points(group="pytest11")):
            return []
        return ["-o", f"{_ASYNCIO_SCOPE}=function"]


def make_debug(
    *,
    seed: int | None = None,
    timeout_s: float = 30.0,
    cpu_s: int = 20,
    memory_mib: int = 1024,
    file_size_mib: int = 64,
    max_processes: int = 64,
    disk_mib: int = 256,
    isolate: bool = True,
) -> DebugTool:
    """Registry factory for ``debug`` (``seed`` is accepted for uniformity; nothing is random)."""
    del seed
    return DebugTool(
        limits=SandboxLimits(
            timeout_s=timeout_s,
            cpu_s=cpu_s,
            memory_mib=memory_mib,
            file_size_mib=file_size_mib,
            max_processes=max_processes,
            disk_mib=disk_mib,
        ),
        isolate=isolate,
    )


def _mkdtemp() -> str:
    return tempfile.mkdtemp(prefix="agentrt-debug-")


def _rmtree(path: Path) -> None:
    remove_tree(str(path))


def _prepare(args: DebugArgs, private: Path) -> Path:
    """Make the private directories and the working directory; write ``files``."""
    # scratch: the tmpfs mount point; out: where pytest writes its report.
    for sub in ("home", "tmp", "scratch", "out"):
        (private / sub).mkdir()
    if args.workdir is not None:
        workdir = Path(args.workdir).resolve()
        if not workdir.is_dir():
            raise ToolError(f"workdir {args.workdir!r} is not a directory")
    elif args.copy_from is not None:
        source = Path(args.copy_from).resolve()
        if not source.is_dir():
            raise ToolError(f"copy_from {args.copy_from!r} is not a directory")
        workdir = private / "work"
        copied = 0

        def copy(src: str, dst: str) -> None:
            nonlocal copied
            copied += os.path.getsize(src)
            if copied > _MAX_COPY_BYTES:
                raise ToolError(
                    f"copy_from {args.copy_from!r} holds more than {_MAX_COPY_BYTES // _MIB} MiB; "
                    "copy a smaller directory (the project, not its parent)"
                )
            shutil.copy2(src, dst)

        shutil.copytree(source, workdir, symlinks=True, ignore=_COPY_IGNORE, copy_function=copy)
    else:
        workdir = private / "work"
        workdir.mkdir()
    for name, text in args.files.items():
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return workdir


def _environment(private: Path, python: str, extra: dict[str, str]) -> dict[str, str]:
    """An allow-list environment: nothing of the caller's leaks in but PATH."""
    path = os.environ.get("PATH", os.defpath)
    env = {
        "PATH": f"{Path(python).parent}{os.pathsep}{path}",
        "HOME": str(private / "home"),
        "TMPDIR": str(private / "tmp"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONNOUSERSITE": "1",
        # glibc reserves 64 MiB of address space per malloc arena; under RLIMIT_AS that is waste.
        "MALLOC_ARENA_MAX": "2",
        "NO_COLOR": "1",
    }
    env.update(extra)
    return env


def _rlimits(limits: SandboxLimits) -> dict[str, tuple[int, int]]:
    memory = limits.memory_mib * _MIB
    file_size = limits.file_size_mib * _MIB
    return {
        # SIGXCPU at the soft limit, SIGKILL one second later if it is caught or ignored.
        "RLIMIT_CPU": (limits.cpu_s, limits.cpu_s + 1),
        "RLIMIT_AS": (memory, memory),
        "RLIMIT_FSIZE": (file_size, file_size),
        "RLIMIT_NOFILE": (limits.max_open_files, limits.max_open_files),
        # Not enforced for root (the supervisor's count is); the supervisor adjusts it otherwise.
        "RLIMIT_NPROC": (limits.max_processes, limits.max_processes),
        "RLIMIT_CORE": (0, 0),
    }


def _pytest_config(workdir: Path, private: Path) -> Path:
    """The workdir's own pytest config, or an empty one so no parent directory's applies."""
    for name, section in _PYTEST_CONFIGS:
        path = workdir / name
        if path.is_file() and (section is None or section in path.read_text(errors="replace")):
            return path
    empty = private / "out" / "pytest.ini"  # out/ is what the sandbox sees of the private dir
    empty.write_text("[pytest]\n")
    return empty


def _report(
    args: DebugArgs,
    command: list[str],
    run: SandboxRun,
    tests: TestSummary | None,
    limits: SandboxLimits,
    workdir: Path,
) -> DebugReport:
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
