"""Running one command in a fresh session under the supervisor: environment, rlimits, output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import ByteReceiveStream, Process

from agentrt.interrupts import on_forced_exit
from tools.debug.args import MIB, SandboxLimits

__all__ = [
    "Isolation",
    "SandboxRun",
    "Tail",
    "environment_for",
    "remove_tree",
    "rlimits_for",
    "run_sandboxed",
]

_SUPERVISOR = Path(__file__).with_name("supervisor.py")
# The supervisor enforces the timeout; the parent steps in only if the supervisor itself hangs.
_BACKSTOP_S = 5.0
# Once the supervisor has exited every writer is dead, so the pipes end at once; bound it anyway.
_DRAIN_S = 2.0
_STOP_S = 2.0
_KILL_ROUNDS = 100
# Every sandboxed process carries this variable (a per-call token), so that without namespaces
# the processes a call left behind can still be found, wherever they were re-parented.
_MARKER = "AGENTRT_SANDBOX"


@dataclass(slots=True)
class Tail:
    """The last ``size`` bytes of a stream, and how many bytes the stream carried in all.

    Memory stays bounded however much a process writes: each chunk is appended and the front
    trimmed.
    """

    size: int
    data: bytearray = field(default_factory=bytearray)
    total: int = 0

    def add(self, chunk: bytes) -> None:
        """Append ``chunk``, keeping only the last ``size`` bytes."""
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.size:
            del self.data[: len(self.data) - self.size]

    def text(self) -> str:
        """The kept bytes as text (UTF-8, undecodable bytes replaced)."""
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class Isolation:
    """Where the run may write and how much, and whether to ask for namespaces.

    ``private`` holds the empty mount points ``scratch`` (the tmpfs), ``home``, ``tmp`` and
    ``out``; ``overlay`` puts the run's writes to ``workdir`` in the tmpfs (a temporary
    working directory), else they go through to it and count by polling (``workdir`` in place).
    """

    private: Path
    workdir: Path
    overlay: bool
    disk_bytes: int
    namespaces: bool = True


@dataclass(frozen=True, slots=True)
class SandboxRun:
    """What happened to one sandboxed command.

    ``limit`` is set here only for what the supervisor enforces itself (``"timeout"``,
    ``"processes"``); the kernel's rlimits show up as signals or errors, read by the caller.
    """

    exit_code: int | None
    signal: str | None
    limit: str | None
    duration_s: float
    stdout: Tail
    stderr: Tail
    peak_processes: int = 0
    leftover_processes: int = 0
    cpu_time_s: float | None = None
    max_rss_kib: int | None = None
    isolation: str = ""


def environment_for(private: Path, python: str, extra: dict[str, str]) -> dict[str, str]:
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


def rlimits_for(limits: SandboxLimits) -> dict[str, tuple[int, int]]:
    """The rlimits (soft, hard) the supervisor sets on the command, by ``resource`` name."""
    memory = limits.memory_mib * MIB
    file_size = limits.file_size_mib * MIB
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


async def run_sandboxed(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    status_path: Path,
    timeout_s: float,
    grace_s: float,
    max_processes: int,
    rlimits: Mapping[str, tuple[int, int]],
    tail_bytes: int,
    isolation: Isolation | None = None,
) -> SandboxRun:
    """Run ``argv`` under the supervisor and wait until it and everything it started are gone.

    Cancelling this call kills the whole process tree before the cancellation propagates; so
    does a forced exit of the process (`agentrt.interrupts.on_forced_exit`).

    Raises:
        OSError: the supervisor could not be started (bad ``cwd``, no interpreter).
    """
    config = {
        "status_path": str(status_path),
        "timeout_s": timeout_s,
        "grace_s": grace_s,
        "max_processes": max_processes,
        "rlimits": {name: list(pair) for name, pair in rlimits.items()},
        # The supervisor stops everything, and deletes ``private``, when this process dies.
        "parent": os.getpid(),
    }
    if isolation is not None:
        config.update(
            isolate=isolation.namespaces,
            private=str(isolation.private),
            workdir=str(isolation.workdir),
            overlay=isolation.overlay,
            disk_bytes=isolation.disk_bytes,
        )
    token = uuid.uuid4().hex
    env = {**env, _MARKER: token}
    command = [sys.executable, "-I", "-S", str(_SUPERVISOR), json.dumps(config), "--", *argv]
    out, err = Tail(tail_bytes), Tail(tail_bytes)
    started = anyio.current_time()
    backstop_hit = False
    process = await anyio.open_process(
        command,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
    )
    with on_forced_exit(partial(_kill_everything, process.pid, token)):
        try:
            async with anyio.create_task_group() as tg:
                assert process.stdout is not None
                assert process.stderr is not None
                tg.start_soon(_drain, process.stdout, out)
                tg.start_soon(_drain, process.stderr, err)
                with anyio.move_on_after(timeout_s + grace_s + _BACKSTOP_S):
                    await process.wait()
                if process.returncode is None:
                    backstop_hit = True
                    await anyio.to_thread.run_sync(_kill_session, process.pid)
                    await process.wait()
                elif process.returncode != 0 or not await anyio.Path(status_path).exists():
                    # The supervisor was killed or died without a report (a report may be
                    # forged by the command when there are no namespaces): whatever it
                    # started is unsupervised.
                    await anyio.to_thread.run_sync(_kill_session, process.pid)
                tg.cancel_scope.deadline = anyio.current_time() + _DRAIN_S
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process)
                status = _read_status(status_path)
                # Without a PID namespace a process that left the session (setsid) after its
                # supervisor was killed is found by its marker, wherever it was re-parented.
                # Always looked for: the status cannot be trusted to say there is a namespace.
                await anyio.to_thread.run_sync(_kill_marked, token)
    duration_s = anyio.current_time() - started
    if status is None:
        # The supervisor died without a report (killed by the backstop or from outside).
        code = process.returncode
        return SandboxRun(
            exit_code=None,
            signal=_signal_name(code) if code is not None and code < 0 else None,
            limit="timeout" if backstop_hit else None,
            duration_s=duration_s,
            stdout=out,
            stderr=err,
        )
    if "error" in status:
        err.add(f"\n[sandbox supervisor failed: {status['error']}]\n".encode())
    exit_code = status.get("exit_code")
    return SandboxRun(
        exit_code=exit_code if isinstance(exit_code, int) and exit_code >= 0 else None,
        signal=_signal_name(exit_code) if isinstance(exit_code, int) and exit_code < 0 else None,
        limit=status.get("limit"),
        duration_s=duration_s,
        stdout=out,
        stderr=err,
        peak_processes=int(status.get("peak_processes") or 0),
        leftover_processes=int(status.get("leftover_processes") or 0),
        cpu_time_s=status.get("cpu_time_s"),
        max_rss_kib=status.get("max_rss_kib"),
        isolation=str(status.get("isolation") or ""),
    )


async def _drain(stream: ByteReceiveStream, tail: Tail) -> None:
    async for chunk in stream:
        tail.add(chunk)


async def _stop(process: Process) -> None:
    """Make sure the supervisor, and so the whole tree, is gone; close the pipes."""
    if process.returncode is None:
        # SIGTERM asks the supervisor to kill and reap every descendant, then exit.
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(_STOP_S):
            await process.wait()
        if process.returncode is None:
            await anyio.to_thread.run_sync(_kill_session, process.pid)
    await process.aclose()


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (the fallback when the supervisor is gone)."""
    for _ in range(_KILL_ROUNDS):
        members: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
                fields = stat[stat.rindex(b")") + 2 :].split()
            except (OSError, ValueError):
                continue
            if int(fields[3]) == sid and fields[0] != b"Z":
                members[int(name)] = int(fields[2])
        if not members:
            return
        # Whole groups first: one killpg() also catches children forked while we scan.
        for pgid in set(members.values()):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        for pid in members:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def remove_tree(path: str) -> None:
    """Delete ``path``; retried for a moment while the sandbox's mounts on it are torn down.

    The kernel releases a dead namespace's mounts shortly after its last process is reaped;
    until then their mount points cannot be removed (EBUSY).
    """
    for _ in range(_KILL_ROUNDS):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.01)


def _kill_marked(token: str) -> None:
    """SIGKILL every process whose environment carries this call's marker, until none is left.

    Only processes whose environment we may read are found: our user's (all of them as root).
    """
    needle = f"{_MARKER}={token}".encode()
    for _ in range(_KILL_ROUNDS):
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    environ = f.read()
            except OSError:
                continue
            if needle in environ.split(b"\0"):
                found.append(int(name))
        if not found:
            return
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _kill_everything(sid: int, token: str) -> None:
    """For a forced exit: the supervisor's session (and so its PID namespace), then the marked."""
    _kill_session(sid)
    _kill_marked(token)


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
