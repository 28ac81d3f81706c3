"""A smoke run of benchmarks/cli.py with a small plan, so it never rots. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_cli_benchmark_prints_the_library_vs_cli_table() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "cli.py"), "--steps", "300", "--repeat", "1"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "┃" in proc.stdout  # a rich table
    assert "agentrt run --virtual --json" in proc.stdout
    assert "target: agentrt run --json within 1.5x of the library" in proc.stdout
