"""``agentrt load --sweep`` as a grid of tasks on an executor: the same bytes wherever it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentrt.errors import ConfigError
from substrates.fleet.grid import parse_rates, seed_list

ROOT = Path(__file__).resolve().parents[3]
GRID = ("--rates", "1:10:1", "--seeds", "10", "--agents", "10")


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "short.yaml"
    path.write_text(
        "name: short\nsteps:\n  - id: think\n    slo: interactive\n"
        "  - id: answer\n    kind: answer\n    depends_on: [think]\n"
    )
    return path


def _load(*args: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    # Each run under its own hash seed: set and dict order must not leak into the results.
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run(
        [sys.executable, "-m", "substrates.fleet.cli", *args],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT, env=env,
    )  # fmt: skip


def test_a_200_point_sweep_is_byte_identical_on_local_processes_and_ray(
    plan_file: Path,
) -> None:
    pytest.importorskip("ray")
    base = (str(plan_file), "-s", "wse3,h100", *GRID, "--virtual", "--sweep", "--json")
    outputs = {}
    for hash_seed, executor in (("1", "local"), ("2", "processes:2"), ("3", "ray:2")):
        proc = _load(*base, "--executor", executor, hash_seed=hash_seed)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "", proc.stderr  # no progress bar or Ray chatter when piped
        outputs[executor] = proc.stdout
    curves = json.loads(outputs["local"])
    assert list(curves) == ["wse3", "h100"]
    assert sum(len(points) for points in curves.values()) == 200
    first = curves["wse3"][0]
    assert (first["arrival_rate"], first["seed"]) == (1.0, 0)
    assert (curves["h100"][-1]["arrival_rate"], curves["h100"][-1]["seed"]) == (10.0, 9)
    assert len({json.dumps(p) for p in curves["wse3"]}) == 100  # the seeds differ
    assert outputs["processes:2"] == outputs["local"]
    assert outputs["ray:2"] == outputs["local"]


def test_grid_options_and_their_errors(plan_file: Path) -> None:
    proc = _load(
        str(plan_file), "-s", "fixed", "--rates", "2,4", "--seed-list", "5,9", "--agents", "5",
        "--virtual", "--sweep", "--executor", "processes:2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "latency vs load on fixed" in proc.stdout
    assert "seed" in proc.stdout
    for args, message in (
        (("--rates", "1,2"), "--rates set the --sweep grid; add --sweep"),
        (("--sweep", "--rates", "0,1"), "is not an arrival rate"),
        (("--sweep", "--seeds", "2", "--seed-list", "1"), "not both"),
        (("--sweep", "--executor", "threads"), "is not an executor; use local"),
        (("--executor", "processes"), "--executor runs the points of a --sweep"),
    ):
        bad = _load(str(plan_file), "-s", "fixed", "--virtual", *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert message in bad.stderr, (args, bad.stderr)
        assert "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_without_ray_the_executor_option_says_how_to_install_it(plan_file: Path) -> None:
    code = (
        "import sys; sys.modules['ray'] = None; sys.argv[0] = 'agentrt'\n"
        "from substrates.fleet.cli import main; main()\n"
    )
    args = [str(plan_file), "-s", "fixed", "--virtual", "--sweep", "--executor", "ray"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "error: --executor ray needs Ray, an optional extra: pip install 'agentrt[ray]'"
    )


@pytest.mark.parametrize("executor", ["processes:1", "ray:1"])
def test_a_bad_name_found_in_a_worker_comes_back_as_one_line(
    plan_file: Path, executor: str
) -> None:
    if executor.startswith("ray"):
        pytest.importorskip("ray")
    # UnknownNameError does not pickle as itself: it must still reach the command, not break
    # the pool or arrive as Ray's "unserialisable exception".
    proc = _load(
        str(plan_file), "-s", "nosuch", "--rates", "1", "--virtual", "--sweep",
        "--executor", executor,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: unknown substrate 'nosuch'; known substrates:")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_rates_and_seeds_parse() -> None:
    assert parse_rates("0.1:0.5:0.1") == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert parse_rates("3") == [3.0]
    assert seed_list(seed=0, seeds=None, listed=None) == [0]
    assert seed_list(seed=0, seeds=None, listed="4, 2") == [4, 2]
    for bad in ("1:2", "5:1:1", "a,b", "inf"):
        with pytest.raises(ConfigError):
            parse_rates(bad)
    with pytest.raises(ConfigError, match="integers"):
        seed_list(seed=0, seeds=None, listed="1.5")


def test_on_a_terminal_a_progress_bar_counts_the_points(plan_file: Path) -> None:
    import pty
    import re

    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "substrates.fleet.cli", str(plan_file), "-s", "fixed",
         "--rates", "1:4:1", "--seeds", "3", "--agents", "5", "--virtual", "--sweep",
         "--executor", "processes:2"],
        stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, cwd=ROOT, env=env,
    )  # fmt: skip
    os.close(secondary)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the command closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        proc.wait(timeout=120)
        os.close(primary)
    assert proc.returncode == 0
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", b"".join(chunks).decode(errors="replace"))
    assert "short: sweep" in text
    assert "12/12 tasks" in text
    assert "latency vs load on fixed" in text
