"""``agentrt check --executor``: each check a task; the same verdicts wherever they ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SPEC = ROOT / "examples" / "fleets" / "check-small.yaml"


def _check(*args: str, hash_seed: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run(
        [sys.executable, "-m", "agentrt", "check", str(SPEC), "--json", *args],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("executor", ["processes:2", "ray:2"])
def test_check_gives_the_same_json_on_every_executor(executor: str) -> None:
    if executor.startswith("ray"):
        pytest.importorskip("ray")
    local = _check(hash_seed="1")
    assert local.returncode == 0, local.stderr
    other = _check("--executor", executor, hash_seed="2")
    assert other.returncode == 0, other.stderr
    assert other.stdout == local.stdout
    assert other.stderr == ""


def test_a_bad_executor_is_one_line_and_exit_2() -> None:
    proc = _check("--executor", "processes:many", hash_seed="0")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --executor 'processes:many' is not an executor")
    assert len(proc.stderr.strip().splitlines()) == 1
