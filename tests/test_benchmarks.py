"""Smoke runs of the benchmarks with small sizes, so they never rot. No timing is asserted."""

from __future__ import annotations

import json
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
        ("energy_price.py", ["--presets", "h100,wse3", "--models", "llama-3.1-8b"]),
        ("peers.py", ["--reps", "1", "--turns", "3"]),
        ("fleet.py", [str(BENCHMARKS.parent / "examples" / "fleets" / "canary.yaml")]),
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


def test_energy_price_benchmark_prints_json_from_the_model() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "energy_price.py"), "--presets", "h100,wse3",
         "--models", "llama-3.1-8b", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    by_preset = {row["preset"]: row for row in data["presets"]}
    assert set(by_preset) == {"h100", "wse3"}
    h100 = by_preset["h100"]
    assert h100["j_per_token_max_batch"] < h100["j_per_token_batch1"]
    assert by_preset["wse3"]["price_basis"] == "list"
    assert data["published"]
    assert all(p["scenario"] and p["measured"] > 0 for p in data["published"])
