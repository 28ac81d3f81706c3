"""`agentrt batch`: TASKS files, real runs over HTTP and on emulated engines, executors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentrt.batch import BatchSettings, BatchTask, read_tasks, shard
from agentrt.errors import ConfigError
from agentrt.journal import Journal

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "batch" / "tasks.jsonl"
MODEL = "llama-3.1-8b"


def batch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentrt", "batch", *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
    )  # fmt: skip


def lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def write_tasks(path: Path, count: int, *, extra: list[str] = ()) -> Path:  # type: ignore[assignment]
    rows = [json.dumps({"id": f"t{i:03d}", "task": f"Question {i}: say something."})
            for i in range(count)]  # fmt: skip
    path.write_text("\n".join([*rows, *extra]) + "\n")
    return path


# -- the TASKS file --------------------------------------------------------------------------


def test_the_example_tasks_file_reads() -> None:
    tasks = read_tasks(EXAMPLE)
    assert [t.id for t in tasks] == ["hello", "summary", "research", "haiku"]
    assert tasks[1].max_turns == 4
    research = tasks[2]
    assert research.plan is not None
    assert research.plan.name == "research"
    assert research.seed == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"id": "a", "task": "x"', ":1: not JSON"),
        ('["a", "x"]', ":1: a JSON list, not an object"),
        ('{"id": "a", "prompt": "x"}', ":1: unknown field(s) 'prompt'"),
        ('{"task": "x"}', ":1: no id"),
        ('{"id": "a"}', ":1: give exactly one of task and plan"),
        ('{"id": "a", "task": "x", "plan": "p.yaml"}', ":1: give exactly one of task and plan"),
        ('{"id": "a/b", "task": "x"}', ":1: id: "),
        ('{"id": "a", "task": "x", "max_turns": 0}', ":1: max_turns: "),
        ('{"id": "a", "task": ""}', ":1: task: "),
        ('{"id": "a", "plan": "missing.yaml"}', ":1: plan 'missing.yaml': "),
        ('{"id": "a", "task": "x"}\n\n{"id": "a", "task": "y"}', ":3: id 'a' is also on line 1"),
        ("\n\n", ": no tasks"),
    ],
)
def test_a_bad_line_is_named_with_the_fix(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_tasks(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert "\n" not in message


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"id": "a", "task": "x"}\n{"id": "a", "task": "y"}\n')
    proc = batch(str(path), "-s", "wse3", "--virtual")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}:2: id 'a' is also on line 1; ids must be unique (they name the runs in "
        "the journal)"
    ]
    for argv in (
        [str(tmp_path / "nope.jsonl"), "-s", "wse3"],
        [str(EXAMPLE), "-s", "no-such-substrate"],
        [str(EXAMPLE), "-s", "wse3", "--tools", "no-such-tool"],
        [str(EXAMPLE), "-s", "wse3", "--executor", "threads"],
        [str(EXAMPLE), "-s", "wse3", "--name", "a/b"],
        [str(EXAMPLE), "-s", "wse3", "--journal", "j.db", "--executor", "ray:10.0.0.1:6379"],
    ):
        proc = batch(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.startswith("error: "), proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_shards_deal_round_robin_and_keep_every_task() -> None:
    tasks = [BatchTask(id=str(i), task="t") for i in range(7)]
    parts = shard(tasks, 3)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert sorted(t.id for p in parts for t in p) == sorted(t.id for t in tasks)
    assert len(shard(tasks, 50)) == 7
    assert BatchSettings(substrate="x", name="n").run_id(tasks[0]) == "n/0"


# -- emulated substrates, executors ----------------------------------------------------------


def test_a_batch_on_an_emulated_engine_in_virtual_time() -> None:
    proc = batch(str(EXAMPLE), "-s", "wse3", "--virtual", "--json", "--concurrency", "2")
    assert proc.returncode == 0, proc.stderr
    rows = lines(proc.stdout)
    assert [r["id"] for r in rows] == ["hello", "summary", "research", "haiku"]
    assert [r["run_id"] for r in rows] == [f"tasks/{r['id']}" for r in rows]
    assert all(r["status"] == "succeeded" and r["output"] and r["error"] is None for r in rows)
    assert rows[2]["steps"] == 5  # the research plan's DAG ran
    assert all(float(r["e2e_s"]) > 0 for r in rows)  # type: ignore[arg-type]


def test_the_summary_table_and_the_out_file(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    proc = batch(str(EXAMPLE), "-s", "wse3", "--virtual", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "succeeded" in proc.stdout
    assert "wall time (s)" in proc.stdout
    rows = lines(out.read_text())
    assert [r["status"] for r in rows] == ["succeeded"] * 4


def test_the_processes_executor_gives_the_local_results(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", 9, extra=[
        json.dumps({"id": "plan", "plan": str(ROOT / "examples" / "plans" / "research.yaml")}),
    ])  # fmt: skip
    local = batch(str(tasks), "-s", "h100", "--virtual", "--json", "--concurrency", "3")
    sharded = batch(str(tasks), "-s", "h100", "--virtual", "--json", "--concurrency", "3",
                    "--executor", "processes:2")  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert sharded.returncode == 0, sharded.stderr
    assert len(lines(local.stdout)) == 10
    # In task order, the same runs; times to the rounding of the virtual clock's readings (a
    # task that starts later in the shared clock subtracts larger numbers).
    for a, b in zip(lines(sharded.stdout), lines(local.stdout), strict=True):
        assert {**a, "e2e_s": None} == {**b, "e2e_s": None}
        assert a["e2e_s"] == pytest.approx(b["e2e_s"], rel=1e-9)


def test_the_ray_executor_gives_the_local_results_and_resumes_from_the_journal(
    tmp_path: Path,
) -> None:
    """On Ray's local cluster: the same lines as local; a journal on this machine works."""
    pytest.importorskip("ray")
    pytest.importorskip("agentrt.executors.raycluster")
    tasks = write_tasks(tmp_path / "tasks.jsonl", 6)
    journal = tmp_path / "runs.db"
    local = batch(str(tasks), "-s", "h100", "--virtual", "--json", "--concurrency", "2")
    on_ray = batch(str(tasks), "-s", "h100", "--virtual", "--json", "--concurrency", "2",
                   "--executor", "ray:2", "--journal", str(journal), timeout=300)  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert on_ray.returncode == 0, on_ray.stderr
    for a, b in zip(lines(on_ray.stdout), lines(local.stdout), strict=True):
        assert {**a, "e2e_s": None} == {**b, "e2e_s": None}
        assert a["e2e_s"] == pytest.approx(b["e2e_s"], rel=1e-9)
    again = batch(str(tasks), "-s", "h100", "--virtual", "--json", "--concurrency", "2",
                  "--executor", "ray:2", "--journal", str(journal), timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert [r["journal"] for r in lines(again.stdout)] == ["done"] * 6


# -- real time, over HTTP against `agentrt serve` --------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, object]]:
    """An emulated wafer behind the OpenAI API on loopback (real time); yields (URL, engine)."""
    from substrates.emulated import build_engine
    from substrates.http.server import create_app, serve_in_thread

    engine = build_engine("wse3", model=MODEL, seed=0)
    with serve_in_thread(create_app(engine)) as url:
        yield url, engine


def test_a_batch_over_openai_http_against_serve(tmp_path: Path, served: tuple[str, object]) -> None:
    url, _ = served
    slow = tmp_path / "slow.yaml"
    slow.write_text(
        "name: too-slow\nsteps:\n  - id: think\n    prompt: Think long.\n    timeout_s: 0.001\n"
        "    retry: {max_attempts: 1}\n"
    )
    tasks = write_tasks(tmp_path / "http.jsonl", 12, extra=[
        json.dumps({"id": "fails", "plan": "slow.yaml"}),
    ])  # fmt: skip
    out = tmp_path / "results.jsonl"
    proc = batch(
        str(tasks), "-s", "openai_http", "-o", f"base_url={url}/v1", "-o", f"model={MODEL}",
        "-o", "api_key=test", "--concurrency", "4", "--json", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # one task failed; the batch went on
    rows = lines(proc.stdout)
    assert lines(out.read_text()) == rows
    assert [r["id"] for r in rows] == [f"t{i:03d}" for i in range(12)] + ["fails"]
    assert all(r["status"] == "succeeded" and r["output"] for r in rows[:12])
    assert rows[12]["status"] == "failed"
    assert "think" in str(rows[12]["error"])
    assert "failed: fails:" in proc.stderr


# -- a journal: a crashed or interrupted batch resumes ---------------------------------------


@pytest.fixture
def counted() -> Iterator[tuple[str, Any]]:
    """A fresh served engine per test, so its statistics count this test's requests only."""
    from substrates.emulated import build_engine
    from substrates.http.server import create_app, serve_in_thread

    engine = build_engine("wse3", model=MODEL, seed=0)
    with serve_in_thread(create_app(engine)) as url:
        yield url, engine


def _http_args(url: str, tasks: Path, journal: Path) -> list[str]:
    return [
        str(tasks), "-s", "openai_http", "-o", f"base_url={url}/v1", "-o", f"model={MODEL}",
        "-o", "api_key=test", "--concurrency", "2", "--journal", str(journal), "--json",
    ]  # fmt: skip


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentrt", "batch", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip


def _wait_for_succeeded(journal: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate(timeout=10)
            raise AssertionError(f"the batch ended before it could be stopped:\n{out}\n{err}")
        if journal.exists():
            with Journal(journal) as j:
                if sum(r.state == "succeeded" for r in j.runs()) >= count:
                    return
        time.sleep(0.02)
    raise AssertionError(f"{count} runs did not succeed within 60 s")


def _states(journal: Path) -> dict[str, str]:
    with Journal(journal) as j:
        return {r.run_id: r.state for r in j.runs()}


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(
    ("how", "executor"),
    [
        (signal.SIGKILL, "local"),
        (signal.SIGINT, "local"),
        (signal.SIGTERM, "processes:2"),
        (signal.SIGKILL, "processes:2"),
    ],
    ids=["kill-9", "ctrl-c", "sigterm-processes", "kill-9-processes"],
)
def test_a_stopped_batch_resumes_without_rerunning_finished_tasks(
    tmp_path: Path, counted: tuple[str, Any], how: signal.Signals, executor: str
) -> None:
    url, engine = counted
    tasks = write_tasks(tmp_path / "crash.jsonl", 24)
    journal = tmp_path / "runs.db"
    args = [*_http_args(url, tasks, journal), "--executor", executor]
    proc = _start(args)
    try:
        _wait_for_succeeded(journal, 6, proc)
        workers = _descendants(proc.pid)
        proc.send_signal(how)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    # No orphans: the workers of a killed batch notice and stop (journalling their runs).
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), workers
    before = _states(journal)
    finished = {r for r, s in before.items() if s == "succeeded"}
    assert 6 <= len(finished) < 24
    # Nothing is left "running": a killed process's runs read as interrupted, and Ctrl-C
    # journals them so before it exits.
    assert set(before.values()) <= {"succeeded", "interrupted"}, before
    if how != signal.SIGKILL:
        assert proc.returncode == 128 + how
        assert f"interrupted by {how.name}; batch crash stopped" in stderr
        assert "re-run the same command to resume" in stderr
        assert "Traceback" not in stderr
        assert "interrupted" in before.values()
    else:
        assert proc.returncode == -signal.SIGKILL

    again = batch(*args)
    assert again.returncode == 0, again.stderr
    rows = lines(again.stdout)
    assert [r["id"] for r in rows] == [f"t{i:03d}" for i in range(24)]
    assert all(r["status"] == "succeeded" and r["output"] for r in rows)
    how_run = {str(r["run_id"]): r["journal"] for r in rows}
    assert {r for r, j in how_run.items() if j == "done"} == finished
    assert {r for r, j in how_run.items() if j == "resumed"} == set(before) - finished
    assert set(_states(journal).values()) == {"succeeded"}
    # Every task reached the engine once, but for those in flight when the batch stopped (at
    # most --concurrency): the finished ones were not run again.
    stats = engine.statistics()
    assert 24 <= stats.completed + stats.cancelled <= 24 + 2


def test_the_batch_benchmark_runs_small() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "batch.py"), "--tasks", "4",
         "--concurrency", "1,2", "--executors", "local,processes:2"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT / "benchmarks",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "┃" in proc.stdout  # a rich table
    assert "target:" in proc.stdout
    assert proc.stdout.count("│ processes:2 ") == 2


def test_tool_loop_tasks_call_the_tools_over_http(tmp_path: Path) -> None:
    """--tools: the served model (playing a trajectory) calls the real search tool, then answers."""
    from agentrt import Message, ToolCall
    from agentrt.trajectory import Trajectory, TrajectoryHeader, TurnRecord, write_trajectory
    from substrates.emulated import build_engine
    from substrates.http.server import create_app, serve_in_thread

    call = ToolCall(id="call_s1", name="search", arguments='{"query": "wafer", "k": 2}')
    script = tmp_path / "script.jsonl"
    write_trajectory(
        Trajectory(
            header=TrajectoryHeader(messages=(Message(role="user", content="Find it."),)),
            records=(
                TurnRecord(index=1, tool_calls=(call,), finish_reason="tool_calls",
                           output_tokens=12),
                TurnRecord(index=2, text="Found it in the corpus.", output_tokens=6),
            ),
        ),
        script,
    )  # fmt: skip
    engine = build_engine(
        "wse3", model=MODEL, jitter=0, stall_prob=0, trajectory=str(script)
    )  # fmt: skip
    tasks = write_tasks(tmp_path / "tools.jsonl", 3)
    with serve_in_thread(create_app(engine)) as url:
        proc = batch(
            str(tasks), "-s", "openai_http", "-o", f"base_url={url}/v1", "-o", f"model={MODEL}",
            "-o", "api_key=test", "--tools", "search", "--concurrency", "3", "--json",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = lines(proc.stdout)
    assert [r["output"] for r in rows] == ["Found it in the corpus."] * 3
    assert [r["steps"] for r in rows] == [3, 3, 3]  # chat, the search call, chat


def test_a_changed_task_line_is_refused_by_the_journal(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", 3)
    journal = tmp_path / "runs.db"
    first = batch(str(tasks), "-s", "wse3", "--virtual", "--json", "--journal", str(journal))
    assert first.returncode == 0, first.stderr
    assert [r["journal"] for r in lines(first.stdout)] == ["new"] * 3
    text = tasks.read_text().replace("Question 1:", "Another question:")
    tasks.write_text(text)
    again = batch(str(tasks), "-s", "wse3", "--virtual", "--json", "--journal", str(journal))
    assert again.returncode == 1
    rows = lines(again.stdout)
    assert [rows[0]["journal"], rows[2]["journal"]] == ["done", "done"]
    assert [r["status"] for r in rows] == ["succeeded", "failed", "succeeded"]
    assert str(rows[1]["error"]).startswith("JournalMismatch: ")
    renamed = batch(str(tasks), "-s", "wse3", "--virtual", "--json", "--journal", str(journal),
                    "--name", "second")  # fmt: skip
    assert renamed.returncode == 0, renamed.stderr
    assert [r["run_id"] for r in lines(renamed.stdout)] == [
        "second/t000", "second/t001", "second/t002",
    ]  # fmt: skip
