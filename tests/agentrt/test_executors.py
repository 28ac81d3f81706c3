"""The executors for real: this process, a process pool (workers killed on purpose), and
Ray's local cluster, each checked against the same contract (`check_executor`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentrt.errors import ConfigError
from agentrt.executors import (
    RAY_MISSING,
    LocalExecutor,
    ProcessExecutor,
    RayExecutor,
    TaskFailed,
    check_executor,
    parse_executor,
)
from agentrt.executors.checks import echo


def test_local_executor_keeps_the_contract(tmp_path: Path) -> None:
    with LocalExecutor() as ex:
        check_executor(ex, tmp_path, dies=False)


def test_process_executor_keeps_the_contract_and_retries_dead_workers(tmp_path: Path) -> None:
    with ProcessExecutor(2, max_retries=1) as ex:
        check_executor(ex, tmp_path)


@pytest.fixture(scope="module")
def ray_executor() -> Iterator[RayExecutor]:
    ray = pytest.importorskip("ray")
    with RayExecutor(num_cpus=2, max_retries=1) as ex:
        yield ex
    assert not ray.is_initialized(), "the local cluster was left running"


def test_ray_executor_keeps_the_contract_and_retries_dead_workers(
    ray_executor: RayExecutor, tmp_path: Path
) -> None:
    check_executor(ray_executor, tmp_path)


def test_a_task_that_kills_its_worker_every_time_is_named(tmp_path: Path) -> None:
    from agentrt.executors.checks import die

    with ProcessExecutor(2, max_retries=1) as ex, pytest.raises(TaskFailed) as info:
        ex.map(die, [{"value": "only"}], label=lambda p: f"the {p['value']} task")
    assert "the only task (value='only') failed after 3 attempts" in str(info.value)
    assert "BrokenProcessPool" in str(info.value)


def test_parse_executor_names_the_choices() -> None:
    assert isinstance(parse_executor(None), LocalExecutor)
    assert parse_executor("processes:3").workers == 3  # type: ignore[attr-defined]
    ray_ex = parse_executor("ray:10.0.0.5:6379")
    assert isinstance(ray_ex, RayExecutor)
    assert ray_ex.address == "10.0.0.5:6379"
    assert parse_executor("ray:2").num_cpus == 2  # type: ignore[attr-defined]
    for bad in ("threads", "processes:x", "local:2"):
        with pytest.raises(ConfigError, match="use local, processes, processes:N, ray"):
            parse_executor(bad)
    with pytest.raises(ConfigError, match="N >= 1"):
        parse_executor("processes:0")


def test_ray_missing_is_one_line_naming_the_extra() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from agentrt.executors import parse_executor\n"
        "parse_executor('ray')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert RAY_MISSING in proc.stderr
    assert "pip install 'agentrt[ray]'" in RAY_MISSING


def test_ray_results_come_back_in_input_order(ray_executor: RayExecutor) -> None:
    done: list[int] = []
    params = [{"value": f"v{i}"} for i in range(40)]
    out = ray_executor.map(echo, params, on_done=lambda d, n: done.append(d))
    assert out == [f"v{i}" for i in range(40)]
    assert done == list(range(1, 41))


def test_a_second_ray_executor_uses_the_running_ray_and_leaves_it(
    ray_executor: RayExecutor,
) -> None:
    import ray

    ray_executor.map(echo, [{"value": 1}])  # the fixture's executor started Ray here
    with RayExecutor() as other:
        assert other.map(echo, [{"value": 2}]) == [2]
    assert ray.is_initialized(), "closed a Ray it did not start"
