"""SIGINT/SIGTERM to the CLI during a real sandboxed step: cancelled, reaped, flushed, reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import agentrt
from agentrt.interrupts import Interrupted, on_forced_exit

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

AGENTRT = [sys.executable, "-c", "from agentrt.cli import main; main()"]


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


def wait_until(predicate: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Poll ``predicate``; the limit only guards against hanging, it is not a speed assertion."""
    until = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > until:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def sleepy_plan(path: Path, marker: str, *, substrate: bool = True) -> Path:
    """A plan whose debug step starts a background shell and sleeps, all marked."""
    code = (
        "import subprocess, time\n"
        f"subprocess.Popen(['sh', '-c', 'sleep 300; : {marker}'])\n"
        f"time.sleep(300)  # {marker}\n"
    )
    plan = {
        "name": "sleepy",
        **({"substrate": "fixed"} if substrate else {}),
        "steps": [
            {"id": "think", "kind": "think", "prompt": "hi"},
            {
                "id": "wait",
                "kind": "debug",
                "tool": "debug",
                "depends_on": ["think"],
                "args": {"code": code, "timeout_s": 600},
            },
        ],
    }
    path.write_text(json.dumps(plan))
    return path


def start(argv: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch), "AGENTRT_TRACE": "none"}
    return subprocess.Popen(
        [*AGENTRT, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # Not the test's own SIGINT disposition (a background job's SIG_IGN, say).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_run_is_cancelled_reaped_flushed_and_reported(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    marker = f"agentrt-signal-test-{uuid.uuid4().hex}"
    plan = sleepy_plan(tmp_path / "plan.json", marker)
    trace = tmp_path / "trace.json"
    proc = start(["run", str(plan), "--trace", f"jaeger-json:{trace}"], tmp_path)
    try:
        # The python running the step and the shell it started are both up.
        wait_until(lambda: len(pids_with(marker)) >= 2, "the debug step to start")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"agentrt: interrupted by {sig.name}; run ")
    assert "cancelled after 1 of 2 steps" in lines[0]
    assert lines[0].endswith(f"trace: {trace}")
    assert "Traceback" not in out + err
    assert pids_with(marker) == []
    assert list((tmp_path / "scratch").iterdir()) == []  # no agentrt-debug-* left
    spans = json.loads(trace.read_text())["data"][0]["spans"]
    assert {s["operationName"] for s in spans} >= {"invoke_agent sleepy", "execute_tool debug"}


def test_load_prints_the_partial_report_on_sigterm(tmp_path: Path) -> None:
    marker = f"agentrt-signal-test-{uuid.uuid4().hex}"
    plan = sleepy_plan(tmp_path / "plan.json", marker, substrate=False)
    proc = start(
        ["load", str(plan), "-s", "fixed", "--agents", "3", "--arrival-rate", "100", "--json"],
        tmp_path,
    )
    try:
        wait_until(lambda: len(pids_with(marker)) >= 6, "three debug steps to start")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    report = json.loads(out)
    assert report["interrupted"] == "SIGTERM"
    counts = [report[key] for key in ("arrivals", "completed", "failed", "lost")]
    assert counts == [3, 0, 3, 0]
    assert err.strip().splitlines() == [
        "agentrt: interrupted by SIGTERM; load cancelled after 3 arrivals (0 completed, 3 failed "
        "or cancelled); the report above is partial"
    ]
    assert pids_with(marker) == []
    assert list((tmp_path / "scratch").iterdir()) == []


SECOND_SIGNAL = """
import os, signal, sys
import anyio
import agentrt
from agentrt.interrupts import on_forced_exit

async def main() -> None:
    try:
        await anyio.sleep(300)
    finally:
        with anyio.CancelScope(shield=True):
            open(sys.argv[1] + ".cleaning", "w").close()
            await anyio.sleep(300)  # a clean-up that hangs

with on_forced_exit(lambda: open(sys.argv[1] + ".forced", "w").close()):
    open(sys.argv[1] + ".ready", "w").close()
    agentrt.run(main, cancel_on=(signal.SIGINT, signal.SIGTERM))
"""


def test_a_second_signal_ends_a_hung_clean_up_after_the_forced_exit_callbacks(
    tmp_path: Path,
) -> None:
    base = str(tmp_path / "flag")
    proc = subprocess.Popen(
        [sys.executable, "-c", SECOND_SIGNAL, base], stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: Path(base + ".ready").exists(), "the run to start")
        time.sleep(0.2)  # the loop's handlers are installed right after; a miss only retries
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: Path(base + ".cleaning").exists(), "the clean-up to start")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert Path(base + ".forced").exists()
    assert err.strip() == (
        "agentrt: a second signal (SIGTERM); processes killed, exiting without finishing clean-up"
    )


def test_run_without_cancel_on_is_plain_anyio_run() -> None:
    async def main() -> int:
        return 7

    assert agentrt.run(main) == 7


def test_interrupted_carries_the_exit_code() -> None:
    exc = Interrupted(signal.SIGINT)
    assert (exc.signal_name, exc.exit_code, str(exc)) == ("SIGINT", 130, "interrupted by SIGINT")


def test_forced_exit_callbacks_are_forgotten_after_the_block() -> None:
    from agentrt import interrupts

    before = len(interrupts._forced_exit_callbacks)
    with on_forced_exit(lambda: None):
        assert len(interrupts._forced_exit_callbacks) == before + 1
    assert len(interrupts._forced_exit_callbacks) == before


def test_a_signal_cancels_the_run_and_raises_interrupted_after_unwinding() -> None:
    unwound: list[str] = []

    async def main() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await anyio.sleep(300)
        finally:
            unwound.append("finally")

    with pytest.raises(Interrupted) as caught:
        agentrt.run(main, cancel_on=(signal.SIGTERM,))
    assert caught.value.signum == signal.SIGTERM
    assert unwound == ["finally"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_compare_is_cancelled_and_reaped_on_sigterm(tmp_path: Path) -> None:
    marker = f"agentrt-signal-test-{uuid.uuid4().hex}"
    plan = sleepy_plan(tmp_path / "plan.json", marker)
    proc = start(["compare", str(plan), "--substrates", "fixed", "--trials", "2"], tmp_path)
    try:
        wait_until(lambda: len(pids_with(marker)) >= 2, "a debug step to start")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip() == "agentrt: interrupted by SIGTERM; comparison cancelled"
    assert "speed-up" not in out
    assert pids_with(marker) == []
    assert list((tmp_path / "scratch").iterdir()) == []


def test_cancel_on_outside_the_main_thread_is_a_config_error() -> None:
    import threading

    from agentrt.errors import ConfigError

    async def main() -> None:
        pass

    errors: list[BaseException] = []

    def target() -> None:
        try:
            agentrt.run(main, cancel_on=(signal.SIGTERM,))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert isinstance(errors[0], ConfigError)


@pytest.mark.parametrize("gap_s", [0.0, 0.05])
def test_two_sigterms_still_exit_143_with_one_line_and_nothing_left(
    tmp_path: Path, gap_s: float
) -> None:
    marker = f"agentrt-signal-test-{uuid.uuid4().hex}"
    plan = sleepy_plan(tmp_path / "plan.json", marker)
    proc = start(["run", str(plan)], tmp_path)
    try:
        wait_until(lambda: len(pids_with(marker)) >= 2, "the debug step to start")
        proc.send_signal(signal.SIGTERM)
        time.sleep(gap_s)  # the second signal lands in the clean-up or just after it
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("agentrt: "), err
    assert pids_with(marker) == []
    assert list((tmp_path / "scratch").iterdir()) == []
