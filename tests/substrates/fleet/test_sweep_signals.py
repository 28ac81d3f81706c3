"""SIGTERM during a sweep on worker processes or a local Ray cluster: the study is cancelled, the
command says so and exits 143, and every process it started is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def _running_tasks(pids: set[int]) -> bool:
    """Whether a Ray worker among ``pids`` runs a task (its title is ``ray::_call``)."""
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::_call"):
                return True
        except OSError:
            continue
    return False


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("executor", ["processes:2", "ray:2"])
def test_sigterm_cancels_a_sweep_and_leaves_no_process(tmp_path: Path, executor: str) -> None:
    if executor.startswith("ray"):
        pytest.importorskip("ray")
    plan = tmp_path / "short.yaml"
    plan.write_text("name: short\nsteps:\n  - id: think\n  - id: answer\n    kind: answer\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "substrates.fleet.cli", str(plan), "-s", "wse3,h100",
         "--agents", "2000", "--rates", "1:20:1", "--seeds", "20", "--virtual", "--sweep",
         "--json", "--executor", executor],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        started: set[int] = set()
        ray = executor.startswith("ray")
        # Until tasks run: the forkserver and two workers, or a Ray worker running a task.
        while time.monotonic() < deadline:
            started = _children(proc.pid)
            if _running_tasks(started) if ray else len(started) >= 3:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the workers never started")
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 143, stderr
    assert stderr.strip().endswith("agentrt: interrupted by SIGTERM; sweep cancelled"), stderr
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in started if _alive(p)], "processes left behind"
