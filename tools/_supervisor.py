"""The in-sandbox supervisor: starts one command under rlimits, polices it, reaps everything.

Run by `tools._sandbox` as ``python -I -S _supervisor.py CONFIG_JSON -- COMMAND...`` in a new
session. Standard library only (it runs without site-packages), no output on stdout/stderr (those
belong to the command); the outcome goes to the JSON status file named in the config.

Why a supervisor instead of ``exec``-ing the command directly: it makes itself a *child
subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``), so every orphaned descendant is re-parented to it
and can be killed and reaped here, whatever init does; and it counts descendants, which is the
only process limit that works as root (the kernel does not apply ``RLIMIT_NPROC`` to root).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
import time
from typing import Any

_PR_SET_CHILD_SUBREAPER = 36
# How often the process count is checked when /proc/loadavg says the system's task count moved.
_TICK_S = 0.01
# Scan /proc at least this often even when the system's task count did not move.
_FULL_SCAN_S = 0.5
_KILL_BUDGET_S = 5.0


def _tasks_on_system() -> int:
    # "0.00 0.01 0.05 1/123 4567": the fourth field's denominator counts every task (thread).
    with open("/proc/loadavg", "rb") as f:
        return int(f.read().split()[3].split(b"/")[1])


def _process_table() -> dict[int, tuple[int, int, bytes]]:
    """Pid -> (ppid, pgid, state) for every process in /proc."""
    table: dict[int, tuple[int, int, bytes]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            # The command name in parentheses may hold spaces and parentheses: split after the
            # last one.
            fields = stat[stat.rindex(b")") + 2 :].split()
        except (OSError, ValueError):  # gone meanwhile
            continue
        table[int(name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def _descendants(root: int) -> dict[int, int]:
    """Live (non-zombie) descendants of ``root``: pid -> pgid."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        ppid, pgid, state = table[pid]
        if state != b"Z":
            found[pid] = pgid
        todo.extend(children.get(pid, ()))
    return found


def _user_tasks(uid: int) -> int:
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{name}/task"))
            except OSError:
                continue
    return count


def _child(argv: list[str], rlimits: dict[str, list[int]], max_processes: int) -> None:
    """In the forked child: own process group, default signals, limits, then exec."""
    try:
        os.setpgid(0, 0)
        # Ignored signals survive exec: Python ignores SIGPIPE and SIGXFSZ, and a shell ignores
        # SIGINT in background jobs (which would defeat the polite stop at the timeout).
        for sig in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        limits = dict(rlimits)
        if os.getuid() != 0:
            # RLIMIT_NPROC counts every task of the real user, not just ours: allow what the
            # user already runs plus our budget. (Root is exempt from RLIMIT_NPROC altogether.)
            headroom = _user_tasks(os.getuid()) + max_processes
            limits["RLIMIT_NPROC"] = [headroom, headroom]
        for name, (soft, hard) in limits.items():
            kind = getattr(resource, name)
            _, current_hard = resource.getrlimit(kind)
            if current_hard != resource.RLIM_INFINITY:
                hard = min(hard, current_hard)
                soft = min(soft, hard)
            resource.setrlimit(kind, (soft, hard))
        os.execvp(argv[0], argv)
    except BaseException as exc:
        os.write(2, f"sandbox: cannot start {argv[0]!r}: {exc}\n".encode(errors="replace"))
    os._exit(127)


class _Supervisor:
    def __init__(self, config: dict[str, Any], argv: list[str]) -> None:
        self.config = config
        self.argv = argv
        self.me = os.getpid()
        self.main = 0
        self.status: int | None = None
        self.rusage: resource.struct_rusage | None = None
        self.limit: str | None = None
        self.cancelled = False
        self.peak = 0
        self.leftovers = 0
        self.waits = {signal.SIGCHLD, signal.SIGTERM}

    def reap(self) -> bool:
        """Reap every exited child; False once no child is left."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.main:
                self.status, self.rusage = status, usage

    def wait_signal(self, timeout: float) -> None:
        info = signal.sigtimedwait(self.waits, max(timeout, 0.0))
        if info is not None and info.si_signo == signal.SIGTERM:
            self.cancelled = True

    def run(self) -> dict[str, Any]:
        timeout_s = float(self.config["timeout_s"])
        grace_s = float(self.config["grace_s"])
        max_processes = int(self.config["max_processes"])
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        with contextlib.suppress(OSError):
            # A fork bomb makes thousands of runnable processes that would starve the policing
            # loop of CPU; real-time priority (allowed for root) keeps it in charge. The command
            # does not inherit it (SCHED_RESET_ON_FORK).
            policy = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
            os.sched_setscheduler(0, policy, os.sched_param(1))
        signal.pthread_sigmask(signal.SIG_BLOCK, self.waits)
        started = time.monotonic()
        deadline = started + timeout_s
        self.main = os.fork()
        if self.main == 0:
            _child(self.argv, self.config["rlimits"], max_processes)
        with contextlib.suppress(OSError):
            # Also from this side, so a signal to the group cannot race the child's own setpgid.
            os.setpgid(self.main, self.main)
        scanned_at, tasks_then, ours_then = 0.0, 0, 1
        while True:
            self.reap()
            if self.status is not None or self.cancelled:
                break
            now = time.monotonic()
            if now >= deadline:
                self.limit = "timeout"
                break
            tasks = _tasks_on_system()
            # Our count can only have passed the limit if the system's grew by the difference.
            if now - scanned_at >= _FULL_SCAN_S or tasks - tasks_then >= max_processes - ours_then:
                scanned_at, tasks_then = now, tasks
                ours_then = len(_descendants(self.me))
                self.peak = max(self.peak, ours_then)
                if ours_then > max_processes:
                    self.limit = "processes"
                    break
            self.wait_signal(min(_TICK_S, deadline - now))
        if self.limit == "timeout" and self.status is None:
            # A polite stop first: Python prints where it was, pytest its summary and report.
            self._signal_group(signal.SIGINT)
            until = time.monotonic() + grace_s
            while (
                self.reap()
                and self.status is None
                and not self.cancelled
                and time.monotonic() < until
            ):
                self.wait_signal(until - time.monotonic())
        self.kill_all()
        duration_s = time.monotonic() - started
        exit_code = None if self.status is None else os.waitstatus_to_exitcode(self.status)
        usage = self.rusage
        return {
            "exit_code": exit_code,
            "limit": self.limit,
            "cancelled": self.cancelled,
            "duration_s": duration_s,
            "peak_processes": self.peak,
            "leftover_processes": self.leftovers,
            "cpu_time_s": None if usage is None else usage.ru_utime + usage.ru_stime,
            "max_rss_kib": None if usage is None else usage.ru_maxrss,
        }

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.main, sig)

    def kill_all(self) -> None:
        """SIGKILL every descendant (whole process groups first) until none is left; reap all."""
        if self.status is None:
            self._signal_group(signal.SIGKILL)
        until = time.monotonic() + _KILL_BUDGET_S
        counted = False
        my_group = os.getpgid(0)
        while self.reap() and time.monotonic() < until:
            alive = _descendants(self.me)
            if not counted:
                self.leftovers = len(alive) - (1 if self.main in alive else 0)
                counted = True
            for pgid in set(alive.values()) - {my_group}:
                with contextlib.suppress(OSError):
                    os.killpg(pgid, signal.SIGKILL)
            for pid in alive:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            self.wait_signal(0.005)


def main() -> None:
    """Entry point: ``_supervisor.py CONFIG_JSON -- COMMAND...``."""
    config = json.loads(sys.argv[1])
    supervisor = _Supervisor(config, sys.argv[3:])
    try:
        outcome = supervisor.run()
    except BaseException as exc:
        # Never leave the command running unsupervised; the parent reads the error.
        if supervisor.main > 0:
            supervisor.kill_all()
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    tmp = config["status_path"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(outcome, f)
    os.replace(tmp, config["status_path"])


if __name__ == "__main__":
    main()
