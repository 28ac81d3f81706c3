"""kill -9 a journaled real-time run at random points, 50 times, and resume it until it is done."""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from agentrt.journal import Journal

DRIVER = Path(__file__).with_name("journal_driver.py")
#: Fixed seeds: a failure names its seed, and rerunning with it repeats the kill times.
SEEDS = list(range(1801, 1841))
KILLS = 50
KILLS_PER_RUN = 5
#: Seconds after ``ready`` within which a kill lands (the run itself takes about 0.3 s).
WINDOW_S = 0.3
TIMEOUT_S = 30.0


def _start(tmp: Path, run_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(DRIVER),
            str(tmp / "runs.db"),
            run_id,
            str(tmp / "exec.log"),
            str(tmp / f"effects-{run_id}.log"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp,
    )


def _ready(proc: subprocess.Popen[str]) -> str:
    """The driver's first line, or "" if it prints none within the timeout."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=TIMEOUT_S):
            return ""
    return proc.stdout.readline().strip()


def _finish(proc: subprocess.Popen[str]) -> list[list[str]]:
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    steps: list[list[str]] = json.loads(out.splitlines()[-1])
    return steps


def _executions(tmp: Path, pid: int) -> list[tuple[str, str, str]]:
    log = tmp / "exec.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [
        (kind, step, key)
        for line in lines
        for p, kind, step, key in [line.split(" ")]
        if int(p) == pid
    ]


def test_kill_9_at_random_points_then_resume(tmp_path: Path) -> None:
    reference = _finish(_start(tmp_path, "reference"))
    kills = 0
    runs = 0
    for seed in SEEDS:
        if kills >= KILLS:
            break
        rng = random.Random(seed)
        run_id = f"run-{seed}"
        runs += 1
        this_run = 0
        outputs: list[list[str]] | None = None
        while outputs is None:
            with Journal(tmp_path / "runs.db") as journal:
                known = {r.run_id for r in journal.runs()}
                finished = {s.id for s in journal.finished(run_id)} if run_id in known else set()
            proc = _start(tmp_path, run_id)
            try:
                assert _ready(proc) == "ready", f"seed {seed}: the driver did not start"
                if this_run < KILLS_PER_RUN and kills < KILLS:
                    time.sleep(rng.uniform(0.0, WINDOW_S))
                    if proc.poll() is None:
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.wait(timeout=TIMEOUT_S)
                        kills += 1
                        this_run += 1
                        again = [s for _, s, _ in _executions(tmp_path, proc.pid) if s in finished]
                        assert not again, f"seed {seed}: finished steps ran again: {again}"
                        continue
                outputs = _finish(proc)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=TIMEOUT_S)
                if proc.stdout is not None:
                    proc.stdout.close()
                if proc.stderr is not None:
                    proc.stderr.close()
            again = [s for _, s, _ in _executions(tmp_path, proc.pid) if s in finished]
            assert not again, f"seed {seed}: finished steps ran again: {again}"
        assert outputs == reference, f"seed {seed}: outputs differ from the reference run"
        effects = (tmp_path / f"effects-{run_id}.log").read_text().splitlines()
        keys = [line.split(" ", 1)[0] for line in effects]
        assert sorted(keys) == sorted(f"{run_id}:s{i}" for i in range(len(reference))), (
            f"seed {seed}: each effect must happen exactly once, got {keys}"
        )
        with Journal(tmp_path / "runs.db") as journal:
            info = journal.run(run_id)
        assert info.state == "succeeded", f"seed {seed}"
        assert info.executions >= 1
    assert kills >= KILLS, f"only {kills} kills landed in {runs} runs; widen WINDOW_S"
