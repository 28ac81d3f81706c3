"""Smoke runs of the benchmarks with small sizes, so they never rot. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("overhead.py", ["--runs", "5"]),
        ("virtual_time.py", ["--steps", "300"]),
        ("engine.py", ["--sequential", "200", "--concurrent", "100", "--repeat", "1"]),
        ("load.py", ["--agents", "50", "--steps", "5"]),
        ("server.py", ["--requests", "20", "--tokens", "4", "--concurrency", "1,10"]),
    ],
)
def test_benchmark_runs_and_prints_a_table(script: str, args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "┃" in proc.stdout  # a rich table
    assert "target:" in proc.stdout
