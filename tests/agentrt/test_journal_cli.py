from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agentrt.journal import Journal

ROOT = Path(__file__).resolve().parents[2]
RESEARCH = ROOT / "examples" / "plans" / "research.yaml"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentrt", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_run_with_a_journal_prints_the_run_id_and_runs_lists_it(tmp_path: Path) -> None:
    done = cli("run", str(RESEARCH), "-s", "fixed", "--virtual", "--json",
               "--journal", "runs.db", "--run-id", "r1", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "run r1 · journal runs.db" in done.stderr
    assert json.loads(done.stdout)["run_id"] == "r1"

    listing = cli("runs", "--journal", "runs.db", "--json", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    (run,) = json.loads(listing.stdout)
    assert (run["run_id"], run["state"], run["steps_done"], run["steps_total"]) == (
        "r1",
        "succeeded",
        5,
        5,
    )
    table = cli("runs", "--journal", "runs.db", cwd=tmp_path)
    assert "r1" in table.stdout
    assert "succeeded" in table.stdout
    assert "5/5" in table.stdout

    again = cli("resume", "r1", "--journal", "runs.db", "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["steps"] == json.loads(done.stdout)["steps"]


def test_a_run_killed_mid_way_resumes_from_the_cli(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentrt", "run", str(RESEARCH), "-s", "fixed",
         "--latency-ms", "400", "--journal", "runs.db", "--run-id", "r2", "--json"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        steps_done = 0
        while time.monotonic() < deadline and steps_done == 0:
            time.sleep(0.05)
            if (tmp_path / "runs.db").exists():
                with Journal(tmp_path / "runs.db") as journal:
                    runs = journal.runs()
                steps_done = runs[0].steps_done if runs else 0
        assert steps_done >= 1
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)

    listing = json.loads(cli("runs", "--journal", "runs.db", "--json", cwd=tmp_path).stdout)
    assert listing[0]["state"] == "interrupted"
    assert listing[0]["steps_done"] < 5

    resumed = cli("resume", "r2", "--journal", "runs.db", "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run r2" in resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["status"] == "succeeded"
    assert [s["status"] for s in result["steps"]] == ["succeeded"] * 5
    (run,) = json.loads(cli("runs", "--journal", "runs.db", "--json", cwd=tmp_path).stdout)
    assert (run["state"], run["steps_done"], run["executions"]) == ("succeeded", 5, 2)


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cli("run", str(RESEARCH), "-s", "fixed", "--virtual", "--journal", "runs.db",
        "--run-id", "nightly-7", cwd=tmp_path)  # fmt: skip

    unknown = cli("resume", "nightly-8", "--journal", "runs.db", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "did you mean 'nightly-7'" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    changed = tmp_path / "changed.yaml"
    changed.write_text(
        RESEARCH.read_text().replace("max_output_tokens: 400", "max_output_tokens: 9")
    )
    mismatch = cli("run", str(changed), "-s", "fixed", "--virtual", "--journal", "runs.db",
                   "--run-id", "nightly-7", cwd=tmp_path)  # fmt: skip
    assert mismatch.returncode == 2
    assert "start a new run id" in mismatch.stderr

    missing = cli("runs", "--journal", "nope.db", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no journal at nope.db" in missing.stderr

    (tmp_path / "notes.db").write_text("not a database " * 100)
    not_journal = cli("runs", "--journal", "notes.db", cwd=tmp_path)
    assert not_journal.returncode == 2
    assert "not an agentrt journal" in not_journal.stderr


def test_secrets_are_not_journaled_and_resume_takes_them_again(tmp_path: Path) -> None:
    # An endpoint that refuses connections: the run fails, but its launch is journaled first.
    secret = "sk-journal-test-0123456789"
    endpoint = ["-s", "openai_http", "-o", "base_url=http://127.0.0.1:9/v1", "-o", "model=m"]
    failed = cli("run", str(RESEARCH), *endpoint, "-o", f"api_key={secret}", "--deadline", "3",
                 "--journal", "runs.db", "--run-id", "r1", cwd=tmp_path)  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("runs.db*"))
    assert b"127.0.0.1:9" in stored  # the launch is there ...
    assert secret.encode() not in stored  # ... without the key
    with Journal(tmp_path / "runs.db") as journal:
        options = journal.run("r1").launch["cli"]["options"]  # type: ignore[index, call-overload]
    assert options == {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    # The key is given again on resume (accepted: the run fails on the endpoint, not the option).
    again = cli("resume", "r1", "--journal", "runs.db", "-o", f"api_key={secret}", cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    assert secret not in again.stdout + again.stderr
