"""The in-sandbox supervisor: starts one command under rlimits, polices it, reaps everything.

Run by `tools.debug.sandbox` as ``python -I -S supervisor.py CONFIG_JSON -- COMMAND...`` in a
new session. Standard library only (it runs without site-packages), no output on stdout/stderr
(those belong to the command); the outcome goes to the JSON status file named in the config.

Why one module of ~680 lines: it is one program, run by path in a bare interpreter (``-I -S``:
no site-packages, no script directory on ``sys.path``; the tests also run it as ``nobody`` with
the system Python), so it cannot import siblings, not even from this package, without adding
path machinery to the sandbox's most trusted process. Its parts (the /proc process table, the
namespace and mount set-up, the policing loop) serve that one program and nothing else.

Why a supervisor instead of ``exec``-ing the command directly: it makes itself a *child
subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``), so every orphaned descendant is re-parented to it
and can be killed and reaped here, whatever init does; and it counts descendants, which is the
only process limit that works as root (the kernel does not apply ``RLIMIT_NPROC`` to root).

Isolation (``config["isolate"]``, Linux): the supervisor moves into new PID and mount namespaces
(plus a user namespace when not root) and forks; the child is the namespace's init and runs the
supervision. Nothing the command starts can leave the PID namespace, and when its init dies,
for whatever reason, the kernel kills everything in it. The init mounts a fresh ``/proc`` (the
command sees its own namespace only: no other process's environment or memory), a size-capped
tmpfs for the run's scratch space (home, temporary directories, ``/tmp``, ``/var/tmp``,
``/dev/shm``, and the upper layer of an overlay over the working directory, whose changes are
copied back when it is used in place). The command then gets its own mount namespace in which
every mount is read-only except those, drops every capability (bounding, permitted, effective,
inheritable and ambient sets, no-new-privileges) and execs. If the kernel refuses the
namespaces the supervisor runs the command without them and says so in the status
(``isolation``).

The agent process may die without cleaning up (SIGKILL): the kernel then sends the supervisor
SIGHUP (``PR_SET_PDEATHSIG``), and it stops the run and deletes the run's private directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import stat
import sys
import time
from typing import Any

_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_MNT_DETACH = 2
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture (a post-5.1 system call)
_MOUNT_ATTR_RDONLY = 1
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_CAPABILITY_V3 = 0x20080522
_MAX_REPORT_BYTES = 32 << 20
# A tmpfs with less than this free counts as full (a write needing more failed with ENOSPC).
_FULL_MARGIN_BYTES = 64 << 10
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


_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _set_readonly(path: str, readonly: bool, *, recursive: bool = False) -> None:
    """Make the mount at ``path`` (and with ``recursive`` every mount under it) read-only or not."""
    flag = _MOUNT_ATTR_RDONLY
    attr = _MountAttr(flag if readonly else 0, 0 if readonly else flag, 0, 0)
    _check(
        _libc.syscall(
            ctypes.c_long(_SYS_MOUNT_SETATTR),
            ctypes.c_int(_AT_FDCWD),
            path.encode(),
            ctypes.c_uint(_AT_RECURSIVE if recursive else 0),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        f"mount_setattr {path}",
    )


def _enter_namespaces() -> str | None:
    """New PID and mount namespaces (and a user namespace when not root) for our children.

    Returns None when done, else why not (the kernel or a container policy refused).
    """
    uid, gid = os.geteuid(), os.getegid()
    flags = _CLONE_NEWPID | _CLONE_NEWNS | (0 if uid == 0 else _CLONE_NEWUSER)
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        return f"unshare: {os.strerror(ctypes.get_errno())}"
    if uid != 0:
        # Our uid becomes root in the namespace: enough to mount, nothing outside it.
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"0 {uid} 1"),
            ("gid_map", f"0 {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    return None


class _Mounts:
    """The namespace's mounts: made by the init, applied by the command, copied back after.

    The init (whose view of the file system is the host's but for ``/proc`` and the tmpfs)
    mounts the tmpfs at ``PRIVATE/scratch`` and an overlay at ``scratch/merged``: the working
    directory below, read-only, the run's writes above, in the tmpfs; it copies the inputs in
    ``PRIVATE/out`` (pytest's empty config) into the tmpfs. The command's own mount namespace
    covers ``/tmp``, ``/var/tmp`` and ``/dev/shm`` with directories of the tmpfs (the top-level
    folder there of the interpreter or of a ``PATH`` entry, say a checkout under ``/tmp``, is bound
    back read-only), binds ``scratch/{home,tmp,out}`` and the
    overlay over ``PRIVATE/{home,tmp,out}`` and the working directory, and makes every other
    mount read-only. So everything the run writes is in the tmpfs, whose size is the disk
    limit. Afterwards the init copies pytest's report out and, for a working directory used in
    place, the run's changes into it.
    """

    def __init__(self, config: dict[str, Any], argv: list[str]) -> None:
        self.private = config["private"]
        self.scratch = f"{self.private}/scratch"
        self.workdir = config["workdir"]
        self.in_place = not config["overlay"]
        self.overlaid = False
        # A bare command name is found on PATH, as exec will find it (not in the cwd).
        command = argv[0] if os.sep in argv[0] else (shutil.which(argv[0]) or "")
        needed = [command, os.path.realpath(command)] if command else []
        needed += os.environ.get("PATH", "").split(os.pathsep)
        needed = [os.path.abspath(p) for p in needed if p]
        covered = [
            (path, sub)
            for path, sub in (
                ("/tmp", "shared-tmp"),
                ("/var/tmp", "shared-tmp"),
                ("/dev/shm", "shm"),
            )
            if os.path.isdir(path) and not os.path.islink(path)
        ]
        # A directory that is itself needed (PATH=/tmp) stays as it is.
        self.shared = [(path, sub) for path, sub in covered if path not in needed]
        # What the command needs below a covered directory (an interpreter in a checkout under
        # /tmp, a PATH entry there) comes back read-only: its top-level folder, bound again.
        self.kept = sorted(
            {
                os.path.join(path, os.path.relpath(p, path).split(os.sep)[0])
                for p in needed
                for path, _ in self.shared
                if p != path and _is_under(p, path) and os.path.exists(p)
            }
        )

    def make(self, disk_bytes: int) -> None:
        """As the init of the new namespaces: fresh /proc, the tmpfs, the overlay."""
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        scratch = self.scratch
        _mount("agentrt-sandbox", scratch, "tmpfs", _MS_NOSUID | _MS_NODEV,
               f"size={disk_bytes},mode=0755")  # fmt: skip
        for sub in ("home", "tmp", "out", "upper", "overlay", "merged", "shared-tmp", "shm"):
            os.mkdir(f"{scratch}/{sub}", 0o755)
        for sub in ("shared-tmp", "shm"):
            os.chmod(f"{scratch}/{sub}", 0o1777)
        for name in os.listdir(f"{self.private}/out"):
            shutil.copy2(f"{self.private}/out/{name}", f"{scratch}/out/{name}")
        layers = f"lowerdir={self.workdir},upperdir={scratch}/upper,workdir={scratch}/overlay"
        with contextlib.suppress(OSError):  # then the working directory is polled instead
            _mount("overlay", f"{scratch}/merged", "overlay", 0, layers)
            self.overlaid = True
        # The command will need mount_setattr (Linux 5.12): find out now, while we can fall back.
        _set_readonly(scratch, False)

    def apply(self) -> None:
        """In the command's process: its own mount namespace where only the tmpfs is writable."""
        _check(_libc.unshare(ctypes.c_int(_CLONE_NEWNS)), "unshare")
        # Held by descriptor: covering /tmp hides the private directory when it lives there.
        scratch = os.open(self.scratch, os.O_PATH | os.O_DIRECTORY)
        work = os.open(
            f"{self.scratch}/merged" if self.overlaid else self.workdir,
            os.O_PATH | os.O_DIRECTORY,
        )
        kept = [(os.open(path, os.O_PATH | os.O_DIRECTORY), path) for path in self.kept]
        binds = [(f"/proc/self/fd/{scratch}/{sub}", path) for path, sub in self.shared]
        binds += [(f"/proc/self/fd/{fd}", path) for fd, path in kept]
        binds += [
            (f"/proc/self/fd/{scratch}/{sub}", f"{self.private}/{sub}")
            for sub in ("home", "tmp", "out")
        ]
        binds.append((f"/proc/self/fd/{work}", self.workdir))
        for source, target in binds:
            # Under a covered /tmp the mount point is made anew, in the tmpfs.
            os.makedirs(target, exist_ok=True)
            _mount(source, target, None, _MS_BIND)
        os.close(scratch)
        os.close(work)
        for fd, _ in kept:
            os.close(fd)
        _set_readonly("/", True, recursive=True)
        for _, target in binds:
            if target not in self.kept:
                _set_readonly(target, False)
        # The working directory was opened before the mounts: look it up again.
        os.chdir(self.workdir)

    def polled(self) -> list[str]:
        """Directories outside the tmpfs the run can write to (their growth is polled)."""
        return [] if self.overlaid else [self.workdir]

    def copy_out(self) -> None:
        """After the run: pytest's report, and the run's changes to a working directory in place."""
        report = f"{self.scratch}/out/junit.xml"
        if os.path.isfile(report) and os.path.getsize(report) <= _MAX_REPORT_BYTES:
            shutil.copyfile(report, f"{self.private}/out/junit.xml")
        if self.in_place and self.overlaid:
            _copy_up(f"{self.scratch}/upper", self.workdir)


def _is_under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _copy_up(upper: str, lower: str) -> None:
    """Apply an overlay's upper layer to the directory below: new and changed files, deletions.

    A deletion is a whiteout (a character device 0/0); a directory replaced as a whole is
    marked opaque (an extended attribute) and replaces its counterpart.
    """
    for name in sorted(os.listdir(upper)):
        source, target = os.path.join(upper, name), os.path.join(lower, name)
        st = os.lstat(source)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            _remove(target)
        elif stat.S_ISDIR(st.st_mode):
            if _is_opaque(source) or not os.path.isdir(target) or os.path.islink(target):
                _remove(target)
            os.makedirs(target, exist_ok=True)
            _copy_up(source, target)
            shutil.copystat(source, target)
        else:
            _remove(target)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(source), target)
            elif stat.S_ISREG(st.st_mode):
                shutil.copy2(source, target)


def _is_opaque(path: str) -> bool:
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        with contextlib.suppress(OSError):
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
    return False


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _drop_capabilities() -> None:
    """No capability now or after exec (root included), and none to be gained by setuid files."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL for caps this kernel lacks
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_V3, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(header, data), "capset")


def _directory_bytes(path: str) -> int:
    """Bytes allocated to the files under ``path`` (not following symlinks)."""
    total = 0
    todo = [path]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                todo.append(entry.path)
    return total


def _child(
    argv: list[str],
    rlimits: dict[str, list[int]],
    max_processes: int,
    mounts: _Mounts | None = None,
) -> None:
    """In the forked child: own process group, default signals, limits, then exec."""
    try:
        os.setpgid(0, 0)
        if mounts is not None:
            mounts.apply()
        # Ignored signals survive exec: Python ignores SIGPIPE and SIGXFSZ, and a shell ignores
        # SIGINT in background jobs (which would defeat the polite stop at the timeout).
        for sig in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        limits = dict(rlimits)
        if mounts is not None and os.getuid() == 0 and "RLIMIT_NPROC" in limits:
            # Root is exempt from RLIMIT_NPROC; in a user namespace we are not root outside it
            # and cannot count our user's tasks there: the supervisor's count is the limit.
            del limits["RLIMIT_NPROC"]
        elif os.getuid() != 0:
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
        if mounts is not None:
            _drop_capabilities()
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
        # SIGTERM: the agent asks us to stop; SIGHUP: the agent died (PR_SET_PDEATHSIG).
        self.waits = {signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP}
        self.orphaned = False
        # Set by main() when the namespaces are in place; and the directories outside the
        # scratch tmpfs whose growth counts against the disk limit.
        self.mounts: _Mounts | None = None
        self.polled: list[str] = []
        self.scratch: str | None = None
        self.disk_bytes = 0

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
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGHUP):
            self.cancelled = True
            self.orphaned |= info.si_signo == signal.SIGHUP

    def run(self) -> dict[str, Any]:
        self.me = os.getpid()  # 1 in a PID namespace, entered after __init__
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
        self.disk_bytes = int(self.config.get("disk_bytes") or 0)
        baseline = {path: _directory_bytes(path) for path in self.polled}
        self.main = os.fork()
        if self.main == 0:
            _child(self.argv, self.config["rlimits"], max_processes, self.mounts)
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
                if self.disk_full(baseline):
                    self.limit = "disk"
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
        if self.limit is None and self.disk_full(baseline):
            self.limit = "disk"  # written between two checks
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

    def disk_full(self, baseline: dict[str, int]) -> bool:
        """Whether the run has written its disk limit's worth.

        That is the scratch tmpfs's use (full when less than a few pages are left) plus the
        polled directories' growth.
        """
        if not self.disk_bytes:
            return False
        used = 0
        if self.scratch is not None:
            st = os.statvfs(self.scratch)
            if st.f_bavail * st.f_frsize < _FULL_MARGIN_BYTES:
                return True
            used += (st.f_blocks - st.f_bfree) * st.f_frsize
        for path, before in baseline.items():
            used += max(0, _directory_bytes(path) - before)
        return used > self.disk_bytes

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


def _relay(init: int, supervisor: _Supervisor) -> None:
    """Outside the namespaces: pass SIGTERM/SIGHUP on to the namespace's init, wait for it."""
    while True:
        pid, _ = os.waitpid(init, os.WNOHANG)
        if pid:
            return
        info = signal.sigtimedwait(supervisor.waits, 1.0)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGHUP):
            supervisor.orphaned |= info.si_signo == signal.SIGHUP
            with contextlib.suppress(OSError):
                os.kill(init, signal.SIGTERM)


def _write_status(config: dict[str, Any], outcome: dict[str, Any]) -> None:
    tmp = config["status_path"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(outcome, f)
    os.replace(tmp, config["status_path"])


def main() -> None:
    """Entry point: ``supervisor.py CONFIG_JSON -- COMMAND...``."""
    config = json.loads(sys.argv[1])
    supervisor = _Supervisor(config, sys.argv[3:])
    # Blocked from the start (and so in the init forked below, which ignores signals it has no
    # handler for unless they are blocked): SIGTERM asks us to stop, and the kernel sends
    # SIGHUP when the agent process dies, however it dies (even SIGKILL).
    signal.pthread_sigmask(signal.SIG_BLOCK, supervisor.waits)
    me, parent = os.getpid(), config.get("parent")
    if parent:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)
        if os.getppid() != parent:  # died before we asked: stop at once
            os.kill(me, signal.SIGHUP)
    try:
        _supervise(config, supervisor)
    finally:
        if os.getpid() == me and supervisor.orphaned and config.get("private"):
            # The agent is gone: nobody else will delete the run's directory. We share the
            # init's mount namespace (unshare moved us into it): detach the tmpfs first.
            _libc.umount2(f"{config['private']}/scratch".encode(), _MNT_DETACH)
            for _ in range(100):
                shutil.rmtree(config["private"], ignore_errors=True)
                if not os.path.lexists(config["private"]):
                    break
                time.sleep(0.01)


def _supervise(config: dict[str, Any], supervisor: _Supervisor) -> None:
    isolation = "none: not requested"
    if config.get("isolate"):
        try:
            refused = _enter_namespaces()
        except OSError as exc:
            _write_status(config, {"error": f"cannot set up the user namespace: {exc}"})
            return
        if refused is None:
            init = os.fork()
            if init:
                _relay(init, supervisor)
                return
            # The namespace's init (pid 1): it dies with the outer supervisor, and with it
            # everything in the namespace.
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            mounts = _Mounts(config, supervisor.argv)
            try:
                mounts.make(int(config["disk_bytes"]))
            except OSError as exc:
                # An old kernel (no mount_setattr, no overlay in a user namespace): the PID
                # namespace still holds every process; the rest is as without namespaces.
                isolation = f"none: PID namespace only ({exc})"
            else:
                supervisor.mounts, supervisor.polled = mounts, mounts.polled()
                supervisor.scratch = mounts.scratch
                isolation = "namespaces"
        else:
            isolation = f"none: {refused}"
    if supervisor.mounts is None and config.get("private"):
        supervisor.polled = [config["private"]]
        workdir = config["workdir"]
        if not os.path.realpath(workdir).startswith(os.path.realpath(config["private"]) + "/"):
            supervisor.polled.append(workdir)
    try:
        outcome = supervisor.run()
    except BaseException as exc:
        # Never leave the command running unsupervised; the parent reads the error.
        if supervisor.main > 0:
            supervisor.kill_all()
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    outcome["isolation"] = isolation
    if supervisor.mounts is not None and "error" not in outcome:
        try:
            supervisor.mounts.copy_out()
        except OSError as exc:
            outcome["error"] = f"cannot copy the run's files out of the sandbox: {exc}"
    _write_status(config, outcome)


if __name__ == "__main__":
    main()
