"""The command line's input handling: one line and exit 2 for bad input, shared options, help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESEARCH = ROOT / "examples" / "plans" / "research.yaml"
FIX_BUG = ROOT / "examples" / "plans" / "fix-bug.yaml"
OLD_FIX_BUG = """\
name: fix-bug
steps:
  - id: plan
    kind: think
  - id: run-tests
    kind: debug
    depends_on: [plan]
    tool: debug
    args: {target: tests/}
"""


def agentrt_cli(
    *args: str, cwd: Path | None = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentrt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# --- item 1: examples run; tool arguments are checked at load; compare fails loudly ----------


@pytest.mark.parametrize("plan", [FIX_BUG, RESEARCH])
def test_the_example_plans_run_and_succeed_in_virtual_time(plan: Path) -> None:
    proc = agentrt_cli("run", str(plan), "-s", "wse3", "--virtual", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "succeeded"


def test_bad_tool_arguments_are_a_load_error_with_file_and_line(tmp_path: Path) -> None:
    plan = tmp_path / "fix.yaml"
    plan.write_text(OLD_FIX_BUG)
    for command in (
        ["run", str(plan), "-s", "wse3", "--virtual"],
        ["compare", str(plan), "--substrates", "wse3,h100", "--virtual", "--trials", "2"],
        ["load", str(plan), "-s", "wse3", "--virtual", "--agents", "2"],
    ):
        line = one_error_line(agentrt_cli(*command))
        assert line.startswith(
            f"error: {plan}:9: step 'run-tests': tool 'debug' has no argument 'target'"
        ), line
        assert "its arguments: code, script, pytest" in line


def test_an_unknown_tool_names_the_registered_ones(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text("name: p\nsteps:\n  - id: a\n    tool: serch\n    args: {query: x}\n")
    line = one_error_line(agentrt_cli("run", str(plan), "-s", "fixed", "--virtual"))
    assert f"{plan}:4: step 'a' uses an unknown tool: unknown tool 'serch'" in line
    assert "known tools: debug, debug-twin, search, search-twin" in line


def test_a_misspelt_field_gets_a_hint_with_file_and_line(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text("name: p\nsteps:\n  - id: a\n  - id: b\n    depend_on: [a]\n")
    line = one_error_line(agentrt_cli("run", str(plan), "-s", "fixed", "--virtual"))
    assert f"{plan}:5: steps.1.depend_on: step 'b' has no field 'depend_on'" in line
    assert "(did you mean 'depends_on'?)" in line


def test_compare_exits_1_without_a_speedup_when_runs_fail(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text(
        "name: p\ndefaults: {timeout_s: 1, retry: {max_attempts: 1}}\nsteps:\n  - id: a\n"
    )
    proc = agentrt_cli(
        "compare", str(plan), "--substrates", "fixed", "--latency-ms", "5000",
        "--virtual", "--trials", "3",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "speed-up" not in proc.stdout
    assert "3 of 3 runs on fixed failed: step 'a' failed after 1 attempt: StepTimeout" in (
        proc.stderr
    )
    assert "no speed-up is reported when runs fail" in proc.stderr
    proc = agentrt_cli(
        "compare", str(plan), "--substrates", "fixed", "--latency-ms", "5000",
        "--virtual", "--trials", "2", "--json",
    )  # fmt: skip
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["speedup"] is None
    assert data["substrates"]["fixed"]["succeeded"] == 0
    assert sum(data["substrates"]["fixed"]["failure_reasons"].values()) == 2


def test_compare_takes_the_engine_options_of_run() -> None:
    proc = agentrt_cli(
        "compare", str(RESEARCH), "--substrates", "wse3,h100", "--model", "llama-3.1-8b",
        "--max-batch", "8", "--virtual", "--trials", "2", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data["speedup"]) == {"wse3", "h100"}


# --- item 4: one line, exit 2 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--deadline", "nan"], "--deadline must be a finite number > 0, not nan"),
        (["--deadline", "inf"], "--deadline must be a finite number > 0, not inf"),
        (["--latency-ms", "inf"], "--latency-ms must be a finite number >= 0, not inf"),
        (["-o", "latency_ms=inf"], "option latency_ms=inf of substrate 'fixed' must be a finite"),
        (["--chips", "0"], "--chips must be at least 1, not 0"),
        (["-o", "nokey"], "--option expects KEY=VALUE, got 'nokey'"),
    ],
)
def test_bad_numbers_are_one_line(args: list[str], expected: str) -> None:
    line = one_error_line(agentrt_cli("run", str(RESEARCH), "-s", "fixed", "--virtual", *args))
    assert expected in line


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("total_timeout_s=-1", "substrate 'openai_http' (options: model, base_url, "),
        ("base_url=::not a url::", "is not a URL"),
        ("base_url=ftp://host/v1", "is not an http(s) URL"),
        ("total_timeout_s=inf", "total_timeout_s=inf of substrate 'openai_http' must be a finite"),
    ],
)
def test_bad_substrate_options_are_one_line_naming_the_option(option: str, expected: str) -> None:
    line = one_error_line(
        agentrt_cli(
            "run",
            str(RESEARCH),
            "-s",
            "openai_http",
            "-o",
            "model=m",
            "-o",
            "base_url=http://127.0.0.1:9/v1",
            "-o",
            option,
            "--virtual",
        ),
    )
    assert expected in line


def test_a_trace_file_in_a_missing_folder_is_refused_and_nothing_is_created(
    tmp_path: Path,
) -> None:
    target = tmp_path / "missing" / "sub" / "t.json"
    line = one_error_line(
        agentrt_cli(
            "run", str(RESEARCH), "-s", "fixed", "--virtual", "--trace", f"jaeger-json:{target}"
        )
    )
    assert f"the folder {target.parent} does not exist; create it first" in line
    assert not (tmp_path / "missing").exists()
    line = one_error_line(
        agentrt_cli(
            "run", str(RESEARCH), "-s", "fixed", "--trace", "jaeger-json:/dev/null/sub/t.json"
        )
    )
    assert "the folder /dev/null/sub" in line
    if Path("/proc").is_dir():  # exists, but nothing can be created in it (not even by root)
        line = one_error_line(
            agentrt_cli("run", str(RESEARCH), "-s", "fixed", "--trace", "jaeger-json:/proc/t.json")
        )
        assert "cannot write in /proc" in line


@pytest.mark.parametrize("content", ['{"hello":"world","data":3}', "[1,2]", '"hello"', "{}"])
def test_report_on_json_that_is_not_a_trace_is_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content)
    line = one_error_line(agentrt_cli("report", str(path)))
    assert "expected Jaeger JSON" in line or "no agentrt run in this trace" in line
    assert "OTLP JSON" in line or "jaeger-json:PATH" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--duration", "-5"], "--duration must be a finite number > 0, not -5"),
        (["--arrival-rate", "nan"], "--arrival-rate must be a finite number > 0, not nan"),
        (["--slo-s", "inf"], "--slo-s must be a finite number > 0, not inf"),
        (["--max-batch", "0"], "--max-batch must be at least 1, not 0"),
    ],
)
def test_load_validates_its_numbers(args: list[str], expected: str) -> None:
    line = one_error_line(
        agentrt_cli("load", str(RESEARCH), "-s", "wse3", "--virtual", "--agents", "2", *args)
    )
    assert expected in line


def test_load_takes_the_engine_options_of_run() -> None:
    proc = agentrt_cli(
        "load", str(RESEARCH), "-s", "wse3", "--model", "llama-3.1-8b", "--chips", "1",
        "--virtual", "--agents", "3", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["completed"] == 3


@pytest.mark.parametrize("path", ["/dev/zero", "fifo"])
def test_run_never_reads_a_device_or_fifo(tmp_path: Path, path: str) -> None:
    if path == "fifo":
        fifo = tmp_path / "plan.yaml"
        os.mkfifo(fifo)
        path = str(fifo)
    line = one_error_line(agentrt_cli("run", path, "-s", "fixed", "--virtual"))
    assert "not a regular file" in line


def test_a_deep_plan_is_one_line(tmp_path: Path) -> None:
    plan = tmp_path / "deep.json"
    nested = "[" * 50_000 + "]" * 50_000
    plan.write_text('{"name": "x", "steps": [{"id": "a", "args": ' + nested + "}]}")
    line = one_error_line(agentrt_cli("run", str(plan), "-s", "fixed", "--virtual"))
    assert "nests deeper than 64 levels (agentrt.plan.MAX_PLAN_DEPTH)" in line


# --- item 3: output that stays fast ----------------------------------------------------------


def test_json_to_a_pipe_is_plain_one_line_json() -> None:
    proc = agentrt_cli("run", str(RESEARCH), "-s", "fixed", "--virtual", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1  # json.dumps, not rich's indented, highlighted print
    assert json.loads(proc.stdout)["status"] == "succeeded"


def test_a_run_over_the_table_limit_prints_totals_and_its_slowest_steps(tmp_path: Path) -> None:
    plan = tmp_path / "chain.json"
    steps = [{"id": f"s{i}", "depends_on": [f"s{i - 1}"] if i else []} for i in range(300)]
    plan.write_text(json.dumps({"name": "chain", "steps": steps}))
    proc = agentrt_cli("run", str(plan), "-s", "fixed", "--virtual", "--latency-ms", "10")
    assert proc.returncode == 0, proc.stderr
    assert "300 steps (tables list the 20 slowest; more than 200 steps are not tabulated" in (
        proc.stdout
    )
    assert "succeeded · end-to-end 3.000 s" in proc.stdout
    assert "(279 more) → s299" in proc.stdout
    assert proc.stdout.count("\n") < 100


# --- item 5: help ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["run", "compare", "load", "predict", "serve", "report", "demo"]
)
def test_help_shows_no_type_placeholders_and_fits_100_columns(command: str) -> None:
    proc = agentrt_cli(command, "--help", env={"COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    assert "<bool>" not in proc.stdout
    assert "<list[str]>" not in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 100
    if command in ("run", "compare", "load", "predict", "serve", "demo"):
        seed = proc.stdout[proc.stdout.index("--seed") :]
        assert "[default: 0]" in seed[:400]
    if command in ("run", "compare", "load", "serve"):
        assert "KEY=VALUE" in proc.stdout
        assert "--model" in proc.stdout


def test_predict_help_lists_every_preset() -> None:
    from substrates.emulated import PRESETS

    proc = agentrt_cli("predict", "--help", env={"COLUMNS": "200"})
    for name in PRESETS:
        assert name in proc.stdout
    assert agentrt_cli("predict", "-s", "tpu-v5e", "--json").returncode == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run"], "error: Missing argument 'PLAN'. (see `"),
        (["run", str(RESEARCH), "--seed", "abc"], "Invalid value for '--seed'"),
        (
            ["run", str(RESEARCH), "--modle", "m"],
            "No such option: --modle (Possible options: --model)",
        ),
        (["compare", str(RESEARCH), "--substrates", "fixed", "--trials", "0"], "'--trials'"),
        (["bogus"], "No such command 'bogus'."),
    ],
)
def test_usage_errors_are_one_line_too(args: list[str], expected: str) -> None:
    assert expected in one_error_line(agentrt_cli(*args))


def test_agentrt_alone_still_prints_the_help() -> None:
    proc = agentrt_cli()
    assert "Usage: " in proc.stdout + proc.stderr
    assert "COMMAND" in proc.stdout + proc.stderr
    assert "error:" not in proc.stderr
