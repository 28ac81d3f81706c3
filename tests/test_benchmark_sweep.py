"""A smoke run of benchmarks/sweep.py with small sizes, so it never rots. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_sweep_benchmark_runs_every_executor_and_prints_a_table() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "sweep.py"), "--rates", "2", "--seeds", "2",
         "--agents", "5", "--trivial", "10"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "┃" in proc.stdout
    assert "processes:2" in proc.stdout
    assert "target:" in proc.stdout
