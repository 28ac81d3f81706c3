"""The ``debug`` tool: `DebugTool` runs code, a script or pytest in a sandbox; its factory."""

from __future__ import annotations

import sys
import tempfile
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path
from typing import final

import anyio
import anyio.to_thread

from agentrt.clock import current_clock
from agentrt.errors import ToolError
from agentrt.interrupts import on_forced_exit
from agentrt.tool import ToolResult
from tools.debug.args import MIB, DebugArgs, SandboxLimits
from tools.debug.report import build_report, parse_junit
from tools.debug.sandbox import (
    Isolation,
    environment_for,
    remove_tree,
    rlimits_for,
    run_sandboxed,
)
from tools.debug.workdir import prepare_workdir, pytest_config

__all__ = ["DebugTool", "make_debug"]

# On timeout the group first gets SIGINT (a traceback showing where it hung), then SIGKILL.
_GRACE_S = 1.0
_ASYNCIO_SCOPE = "asyncio_default_fixture_loop_scope"


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
                "(tools.debug.DebugTwin)"
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
                        env=environment_for(private, self.python, args.env),
                        status_path=private / "status.json",
                        timeout_s=limits.timeout_s,
                        grace_s=_GRACE_S,
                        max_processes=limits.max_processes,
                        rlimits=rlimits_for(limits),
                        tail_bytes=self.tail_kib * 1024,
                        isolation=Isolation(
                            private=private,
                            workdir=workdir,
                            overlay=args.workdir is None,
                            disk_bytes=limits.disk_mib * MIB,
                            namespaces=self.isolate,
                        ),
                    )
                except OSError as exc:
                    raise ToolError(f"cannot start the sandbox for {args.target!r}: {exc}") from exc
                tests = await anyio.to_thread.run_sync(parse_junit, private / "out" / "junit.xml")
                report = build_report(args, shown, run, tests, limits, workdir)
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
            workdir = prepare_workdir(args, private)
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
        config = pytest_config(workdir, private)
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
