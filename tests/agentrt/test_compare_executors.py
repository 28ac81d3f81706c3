"""``agentrt compare --executor``: a task per substrate; the same JSON on every executor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "examples" / "plans" / "research.yaml"


def _compare(*args: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run(
        [sys.executable, "-m", "agentrt", "compare", str(PLAN), "--substrates", "wse3,h100,b200",
         "--trials", "30", "--virtual", "--seed", "1", "--json", *args],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("executor", ["processes:2", "ray:2"])
def test_compare_gives_the_same_json_on_every_executor(executor: str) -> None:
    if executor.startswith("ray"):
        pytest.importorskip("ray")
    local = _compare(hash_seed="1")
    assert local.returncode == 0, local.stderr
    other = _compare("--executor", executor, hash_seed="2")
    assert other.returncode == 0, other.stderr
    assert other.stdout == local.stdout
    assert other.stderr == ""


def test_trace_needs_the_local_executor() -> None:
    proc = _compare("--executor", "processes:2", "--trace", "console")
    assert proc.returncode == 2
    assert "use it with --executor local" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_typo_in_a_substrate_fails_before_anything_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agentrt", "compare", str(PLAN), "--substrates", "wse3,nope",
         "--virtual", "--executor", "processes:2"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown substrate 'nope'" in proc.stderr
