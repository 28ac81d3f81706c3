"""A smoke run of benchmarks/journal.py with small sizes, so it never rots. No timing asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_the_journal_benchmark_prints_a_table() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "journal.py"), "--runs", "2", "--turns", "3"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "┃" in proc.stdout
    assert "tool loop (per turn)" in proc.stdout
    assert "plan chain (per step)" in proc.stdout
