"""``--executor ray:HOST:PORT`` against a running cluster: ``ray start --head`` for real.

The head runs with token authentication (Ray's default), which the command uses too. The study
gives the same bytes as the local executor, and the cluster, which the command did not start, is
left running when it ends; the test then stops the head it started (by its process id).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def head() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    pytest.importorskip("ray")
    port = _free_port()
    # Ray's socket paths must stay short: not under pytest's long tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    proc = subprocess.Popen(
        [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", f"--temp-dir={temp_dir}", "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not _listening(port):
            assert proc.poll() is None, "ray start --head ended"
            assert time.monotonic() < deadline, "the head never listened"
            time.sleep(0.5)
        yield port, proc
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_sweep_on_a_running_cluster_matches_the_local_one(
    head: tuple[int, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port, head_proc = head
    plan = tmp_path / "short.yaml"
    plan.write_text("name: short\nsteps:\n  - id: think\n  - id: answer\n    kind: answer\n")
    args = [
        sys.executable,
        "-m",
        "substrates.fleet.cli",
        str(plan),
        "-s",
        "wse3,h100",
        "--rates",
        "1:5:1",
        "--seeds",
        "4",
        "--agents",
        "10",
        "--virtual",
        "--sweep",
        "--json",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    local = subprocess.run(
        args, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT
    )  # fmt: skip
    remote = subprocess.run(
        [*args, "--executor", f"ray:127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT, env=env,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout
    assert head_proc.poll() is None, "the command stopped a cluster it did not start"
    assert _listening(port)
