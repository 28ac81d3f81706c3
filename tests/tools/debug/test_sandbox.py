"""What the debug tool's sandbox isolates, proved from inside it (claims: docs/tools.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tools.debug import DebugArgs, DebugTool

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux sandbox")

MIB = 2**20


def wait_until(predicate: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Poll ``predicate``; the limit only guards against hanging, it is not a speed assertion."""
    until = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > until:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def total_bytes(path: Path) -> int:
    return sum(os.path.getsize(path / name) for name in os.listdir(path))


def new_marker() -> str:
    return f"agentrt-sandbox-test-{uuid.uuid4().hex}"


def pids_with(marker: str) -> list[int]:
    """Every live process whose command line holds ``marker`` (zombies have none)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(name))
    return found


async def call(isolate: bool = True, **args: Any) -> dict[str, Any]:
    result = await DebugTool(isolate=isolate).call(DebugArgs(**args))
    assert isinstance(result.data, dict)
    data = dict(result.data)
    data["output"] = result.output
    if isolate and data["isolation"] != "namespaces":
        pytest.skip(f"the kernel refused the sandbox's namespaces here ({data['isolation']})")
    return data


def daemon(marker: str) -> str:
    """Code that starts a double-forked setsid() daemon (a marked shell sleeping)."""
    return f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sh", ["sh", "-c", "sleep 300; : {marker}"])
    os._exit(0)
time.sleep(0.5)
"""


SCENARIOS = {
    "setsid-daemon": lambda m: daemon(m),
    "daemon-then-kill-the-supervisor": lambda m: (
        daemon(m)
        + "import signal\nfor pid in {os.getppid(), 1}:\n"
        + "    for sig in (signal.SIGKILL, signal.SIGTERM):\n"
        + "        try:\n            os.kill(pid, sig)\n        except OSError as e:\n"
        + "            print(pid, sig, e)\ntime.sleep(300)\n"
    ),
    "nohup-background": lambda m: (
        "import subprocess\n"
        f"subprocess.Popen(['nohup', 'sh', '-c', 'sleep 300; : {m}'], start_new_session=True,\n"
        "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    ),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("isolate", [True, False], ids=["namespaces", "no-namespaces"])
async def test_nothing_the_run_started_is_still_running(scenario: str, isolate: bool) -> None:
    marker = new_marker()
    code = f"# {marker}\n" + SCENARIOS[scenario](marker)
    await call(isolate, code=code, timeout_s=5.0)
    assert pids_with(marker) == []


PROBE = """
import os
# Reversed, so that this process's own environment does not hold the canary.
canary = os.environ["PROBE_FOR"][::-1].encode()
found, readable = [], 0
for name in os.listdir("/proc"):
    if not name.isdigit():
        continue
    for what in ("environ", "cmdline"):
        try:
            with open(f"/proc/{name}/{what}", "rb") as f:
                data = f.read()
        except OSError:
            continue
        readable += 1
        if canary in data:
            found.append(f"{name}/{what}")
pid, chain = os.getppid(), []
while pid > 0:
    chain.append(pid)
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if canary in f.read():
                found.append(f"ancestor {pid}")
        with open(f"/proc/{pid}/status") as f:
            pid = int(next(l for l in f if l.startswith("PPid:")).split()[1])
    except OSError:
        break
print("FOUND" if found else "CLEAN", found, readable, chain)
"""

AGENT = """
import anyio, json, sys
from tools.debug import DebugArgs, DebugTool
probe, isolate = sys.argv[1], sys.argv[2] == "1"
args = DebugArgs(code=probe, env={"PROBE_FOR": sys.argv[3][::-1]})
result = anyio.run(DebugTool(isolate=isolate).call, args)
print(json.dumps(result.data))
"""


@pytest.mark.parametrize("isolate", [True, False], ids=["namespaces", "no-namespaces"])
def test_the_agents_api_key_is_not_readable_from_the_sandbox(isolate: bool) -> None:
    # The key is in the agent's (and its test parent's) real environment block, which is what
    # /proc/PID/environ shows; os.environ changes after start-up would not be there.
    canary = f"sk-canary-{uuid.uuid4().hex}"
    env = {**os.environ, "OPENAI_API_KEY": canary}
    done = subprocess.run(
        [sys.executable, "-c", AGENT, PROBE, "1" if isolate else "0", canary],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    data = json.loads(done.stdout)
    out = data["stdout_tail"]
    if isolate:
        if data["isolation"] != "namespaces":
            pytest.skip(f"the kernel refused the sandbox's namespaces here ({data['isolation']})")
        assert out.startswith("CLEAN"), out
        assert canary not in out
    else:
        # The control: without namespaces the same probe finds the key in the agent's environ.
        assert out.startswith("FOUND"), out


async def test_the_sandbox_sees_only_its_own_processes_and_has_no_capabilities() -> None:
    code = (
        "import os\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Cap')]\n"
        "print(len(pids), os.getpid(), os.getppid(), set(caps))\n"
    )
    data = await call(code=code)
    count, pid, ppid, caps = data["stdout_tail"].split(" ", 3)
    assert int(count) <= 3  # the supervisor, this process, perhaps a zombie
    assert (pid, ppid) == ("2", "1")
    assert caps.strip() == "{'0000000000000000'}"


WRITE_40_FILES = """
chunk = b"x" * 2**20
for i in range(40):
    with open(f"big-{i}.bin", "wb") as f:
        for _ in range(7):
            f.write(chunk)
print("wrote 280 MiB")
"""


async def test_the_disk_limit_bounds_all_files_together() -> None:
    # Issue 12: RLIMIT_FSIZE is per file; 40 files of 7 MiB under an 8 MiB limit wrote 280 MiB.
    data = await call(code=WRITE_40_FILES, file_size_mib=8, disk_mib=64)
    assert data["limit"] == "disk"
    assert "wrote 280 MiB" not in data["stdout_tail"]
    assert "STOPPED by the disk limit (64 MiB written in all)" in data["output"]
    assert data["exception"]["message"].startswith("[Errno 28] No space left on device")


async def test_the_disk_limit_bounds_a_workdir_used_in_place(tmp_path: Path) -> None:
    data = await call(code=WRITE_40_FILES, workdir=str(tmp_path), file_size_mib=8, disk_mib=64)
    assert data["limit"] == "disk"
    assert total_bytes(tmp_path) <= 64 * MIB


async def test_without_namespaces_the_disk_limit_is_polled() -> None:
    code = WRITE_40_FILES.replace("print(", "import time; time.sleep(5); print(")
    data = await call(False, code=code, file_size_mib=8, disk_mib=64, timeout_s=20)
    assert data["limit"] == "disk"
    assert "STOPPED by the disk limit (64 MiB written in all)" in data["output"]


async def test_the_run_cannot_write_outside_its_directories(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    read_only = [Path.home() / f"agentrt-escape-{token}", Path(__file__).parent / f"escape-{token}"]
    # /tmp, /var/tmp and /dev/shm are the sandbox's own (in its tmpfs): writes succeed there
    # and are gone with it; what was under /tmp (this test's tmp_path) is not visible.
    own = [Path("/tmp") / f"agentrt-escape-{token}", Path("/dev/shm") / f"agentrt-escape-{token}"]
    hidden = [tmp_path / "escape"]
    code = "".join(
        f"try:\n    open({str(p)!r}, 'w').write('x')\n    print('wrote', {str(p)!r})\n"
        "except OSError as e:\n    print(e)\n"
        for p in [*read_only, *own, *hidden]
    )
    data = await call(code=code)
    out = data["stdout_tail"]
    assert out.count("[Errno 30] Read-only file system") == 2, out
    assert out.count("wrote /") == 2, out
    assert "[Errno 2] No such file or directory" in out, out
    assert not any(p.exists() for p in [*read_only, *own, *hidden])


async def test_a_workdir_used_in_place_keeps_what_the_run_changed(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("old")
    (tmp_path / "gone.txt").write_text("x")
    (tmp_path / "olddir").mkdir()
    (tmp_path / "olddir" / "f").write_text("x")
    code = (
        "import os, shutil\n"
        "open('keep.txt', 'a').write(' new')\n"
        "os.remove('gone.txt')\n"
        "shutil.rmtree('olddir')\n"
        "os.makedirs('made/deep')\n"
        "open('made/deep/f.txt', 'w').write('hello')\n"
        "os.symlink('keep.txt', 'link')\n"
    )
    data = await call(code=code, workdir=str(tmp_path))
    assert data["exit_code"] == 0, data["output"]
    assert (tmp_path / "keep.txt").read_text() == "old new"
    assert not (tmp_path / "gone.txt").exists()
    assert not (tmp_path / "olddir").exists()
    assert (tmp_path / "made" / "deep" / "f.txt").read_text() == "hello"
    assert os.readlink(tmp_path / "link") == "keep.txt"


async def test_a_non_python_writer_filling_the_disk_is_reported() -> None:
    code = "import subprocess\nsubprocess.run(['sh', '-c', 'head -c 100000000 /dev/zero > big'])\n"
    data = await call(code=code, disk_mib=16)
    assert data["exit_code"] == 0  # the script itself did not fail ...
    assert data["limit"] == "disk"  # ... but the run was stopped by the disk limit
    assert "STOPPED by the disk limit (16 MiB written in all)" in data["output"]


SUPERVISOR = Path(__file__).resolve().parents[3] / "tools" / "debug" / "supervisor.py"
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists() or not shutil.which("setpriv"),
    reason="needs root (to become nobody), setpriv and a system python nobody can run",
)
def test_as_a_non_root_user_a_user_namespace_gives_the_same_isolation() -> None:
    # The supervisor is standard-library only, so the system python can run it as nobody.
    private = Path(tempfile.mkdtemp(prefix="agentrt-debug-"))
    try:
        for sub in ("home", "tmp", "scratch", "out", "work"):
            (private / sub).mkdir()
        (private / "work" / "a.txt").write_text("hello")
        for path in (private, *private.rglob("*")):
            os.chown(path, 65534, 65534)
        marker = new_marker()
        config = {
            "status_path": str(private / "status.json"),
            "timeout_s": 20, "grace_s": 1, "max_processes": 16, "rlimits": {},
            "isolate": True, "private": str(private), "workdir": str(private / "work"),
            "overlay": False, "disk_bytes": 8 * MIB,
        }  # fmt: skip
        script = (
            "grep CapEff /proc/self/status; cat a.txt; echo new > new.txt; "
            "head -c 20000000 /dev/zero > big; echo x > /var/lib/esc-$$; echo y > /tmp/esc-$$; "
            f"(setsid sh -c 'sleep 300; : {marker}' &) ; sleep 0.2"
        )
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON,
             "-I", "-S", str(SUPERVISOR), json.dumps(config), "--", "sh", "-c", script],
            cwd=private / "work", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        status = json.loads((private / "status.json").read_text())
        if status.get("isolation") != "namespaces":
            pytest.skip(f"no user namespaces for non-root users here ({status})")
        assert "CapEff:\t0000000000000000" in done.stdout
        assert "No space left on device" in done.stderr
        assert "Read-only file system" in done.stderr
        assert status["limit"] == "disk"
        assert pids_with(marker) == []
        assert (private / "work" / "new.txt").read_text() == "new\n"  # copied back
        assert (private / "work" / "big").stat().st_size <= 8 * MIB
    finally:
        shutil.rmtree(private, ignore_errors=True)


async def test_multiprocessing_and_hard_coded_tmp_paths_work_inside() -> None:
    # POSIX semaphores live in /dev/shm; some programs write to /tmp directly.
    code = (
        "import multiprocessing as mp\n"
        "def square(x):\n    return x * x\n"
        "if __name__ == '__main__':\n"
        "    with mp.Pool(2) as pool:\n        print(pool.map(square, [1, 2, 3]))\n"
        "    open('/tmp/scratch.txt', 'w').write('ok')\n"
        "    print(open('/tmp/scratch.txt').read())\n"
    )
    data = await call(code=code)
    assert data["stdout_tail"] == "[1, 4, 9]\nok\n", data["output"]


KILLED_AGENT = """
import anyio, sys
from tools.debug import DebugArgs, DebugTool
code = f"# {sys.argv[1]}\\nimport subprocess, time\\n"
code += f"subprocess.Popen(['sh', '-c', 'sleep 300; : {sys.argv[1]}'], start_new_session=True)\\n"
code += "time.sleep(300)\\n"
anyio.run(DebugTool(isolate=sys.argv[2] == "1").call, DebugArgs(code=code, timeout_s=600))
"""


@pytest.mark.parametrize("isolate", [True, False], ids=["namespaces", "no-namespaces"])
def test_an_agent_killed_with_sigkill_leaves_nothing_running(tmp_path: Path, isolate: bool) -> None:
    marker = new_marker()
    agent = subprocess.Popen(
        [sys.executable, "-c", KILLED_AGENT, marker, "1" if isolate else "0"],
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        wait_until(lambda: len(pids_with(marker)) >= 2, "the run to start")
        assert len(list(tmp_path.glob("agentrt-debug-*"))) == 1
    finally:
        agent.kill()  # SIGKILL: no clean-up in the agent at all
        agent.wait()
    # The supervisor learns of it from the kernel (PR_SET_PDEATHSIG) and stops everything.
    wait_until(lambda: pids_with(marker) == [], "the run's processes to be gone")
    wait_until(lambda: not list(tmp_path.glob("agentrt-debug-*")), "the run's directory to go")
