from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from agentrt import ToolError
from tools.debug import (
    DebugArgs,
    DebugReport,
    DebugTool,
    SandboxLimits,
)

CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
CALC_FIXED = CALC.replace("a - b", "a + b")
CALC_TESTS = """\
import pytest
from calc import add, mul


def test_add():
    assert add(2, 3) == 5


def test_mul():
    assert mul(2, 3) == 6


class TestMore:
    @pytest.mark.parametrize("n", [0, 4])
    def test_add_self(self, n):
        assert add(n, n) == 2 * n
"""


def new_marker() -> str:
    """A string to put in the command lines of everything a test starts."""
    return f"agentrt-debug-test-{uuid.uuid4().hex}"


def pids_with(marker: str) -> list[int]:
    """Every live process whose command line holds ``marker`` (zombies have none)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(name))
    return found


def marked_sleep(marker: str, seconds: int = 60) -> str:
    """Code that starts a shell sleeping in the background, both marked."""
    return (
        f"# {marker}\nimport subprocess\n"
        f"subprocess.Popen(['sh', '-c', 'sleep {seconds}; : {marker}'])\n"
    )


def assert_nothing_survives(marker: str) -> None:
    assert pids_with(marker) == []


def make_package(root: Path) -> Path:
    (root / "tests").mkdir(parents=True)
    (root / "calc.py").write_text(CALC)
    (root / "tests" / "test_calc.py").write_text(CALC_TESTS)
    return root


async def test_code_runs_and_passes() -> None:
    result = await DebugTool().call(DebugArgs(code="print(6 * 7)"))
    assert result.ok
    report = DebugReport.model_validate(result.data)
    assert (report.exit_code, report.signal, report.limit) == (0, None, None)
    assert report.stdout_tail == "42\n"
    assert report.exception is None
    assert 0 < report.duration_s < 10
    assert "exit code 0" in result.output


async def test_exception_is_parsed_from_the_traceback() -> None:
    code = "def f(x):\n    return int(x)\n\nf('seven')\n"
    result = await DebugTool().call(DebugArgs(code=code))
    assert not result.ok
    assert isinstance(result.data, dict)
    assert result.data["exit_code"] == 1
    assert result.data["exception"] == {
        "type": "ValueError",
        "message": "invalid literal for int() with base 10: 'seven'",
        "file": "<string>",
        "line": 2,
        "function": "f",
        "source": "return int(x)",
    }
    assert "ValueError: invalid literal" in result.output


async def test_script_exception_names_the_file_relative_to_the_workdir() -> None:
    files = {"app/main.py": "import sys\n\nitems = []\nprint(items[3])\n"}
    result = await DebugTool().call(DebugArgs(script="app/main.py", files=files))
    assert isinstance(result.data, dict)
    exc = result.data["exception"]
    assert (exc["type"], exc["message"], exc["file"], exc["line"]) == (
        "IndexError",
        "list index out of range",
        "app/main.py",
        4,
    )
    assert exc["source"] == "print(items[3])"


async def test_failing_pytest_run_reports_the_failing_tests(tmp_path: Path) -> None:
    project = make_package(tmp_path / "project")
    tool = DebugTool()
    result = await tool.call(DebugArgs(pytest="tests/", copy_from=str(project)))
    assert not result.ok
    report = DebugReport.model_validate(result.data)
    assert report.exit_code == 1
    assert report.failing_tests == [
        "tests/test_calc.py::test_add",
        "tests/test_calc.py::TestMore::test_add_self[4]",
    ]
    assert report.tests is not None
    assert (report.tests.passed, report.tests.failed) == (2, 2)
    assert report.tests.failing[0].message == "assert -1 == 5"
    assert "FAILED tests/test_calc.py::test_add - assert -1 == 5" in result.output
    # The run happened in a copy: the project is untouched (no caches, no bytecode).
    assert sorted(p.name for p in project.rglob("*")) == ["calc.py", "test_calc.py", "tests"]

    # The coding agent's second step: the patch applied in a fresh copy, the tests pass.
    patched = DebugArgs(
        pytest="tests/test_calc.py",
        copy_from=str(project),
        files={"calc.py": CALC_FIXED},
        env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},  # faster: the tests need no plugins
    )
    result = await tool.call(patched)
    assert result.ok, result.output
    assert isinstance(result.data, dict)
    assert result.data["tests"]["passed"] == 4
    assert result.data["failing_tests"] == []


async def test_infinite_loop_hits_the_timeout_and_nothing_survives(tmp_path: Path) -> None:
    marker = new_marker()
    code = f"# {marker}\n" + "while True:\n    pass\n"
    # As in a background shell job, SIGINT ignored here must not defeat the polite stop there.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = await DebugTool().call(DebugArgs(code=code, timeout_s=1.0))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert isinstance(result.data, dict)
    assert result.data["limit"] == "timeout"
    assert not result.ok
    assert 1.0 <= result.data["duration_s"] < 4.0
    # SIGINT before SIGKILL: the traceback says where it was stuck.
    assert result.data["exception"]["type"] == "KeyboardInterrupt"
    assert result.data["exception"]["line"] in (2, 3)  # "while" or "pass"
    assert "STOPPED by the wall-clock timeout (1 s)" in result.output
    assert_nothing_survives(marker)


async def test_busy_loop_hits_the_cpu_limit() -> None:
    result = await DebugTool().call(DebugArgs(code="while True:\n    pass\n", cpu_s=1))
    assert isinstance(result.data, dict)
    assert (result.data["limit"], result.data["signal"]) == ("cpu", "SIGXCPU")
    assert result.data["duration_s"] < 5.0


async def test_fork_bomb_is_stopped_and_nothing_survives(tmp_path: Path) -> None:
    # Also as root, where the kernel does not apply RLIMIT_NPROC: the supervisor counts.
    marker = new_marker()
    code = f"# {marker}\nimport os\n" + "while True:\n    os.fork()\n"
    result = await DebugTool().call(DebugArgs(code=code, max_processes=16, timeout_s=10.0))
    assert isinstance(result.data, dict)
    assert result.data["limit"] == "processes"
    assert result.data["peak_processes"] > 16
    assert result.data["duration_s"] < 5.0
    assert_nothing_survives(marker)


async def test_huge_allocation_hits_the_memory_limit() -> None:
    result = await DebugTool().call(DebugArgs(code="data = bytearray(10 * 2**30)\n"))
    assert isinstance(result.data, dict)
    assert result.data["limit"] == "memory"
    assert result.data["exception"]["type"] == "MemoryError"


async def test_huge_file_hits_the_file_size_limit_and_stays_small(tmp_path: Path) -> None:
    code = (
        "chunk = b'x' * 2**20\n"
        "with open('big.bin', 'wb') as f:\n"
        "    for _ in range(100 * 1024):  # 100 GiB\n"
        "        f.write(chunk)\n"
    )
    result = await DebugTool().call(DebugArgs(code=code, workdir=str(tmp_path), file_size_mib=2))
    assert isinstance(result.data, dict)
    assert result.data["limit"] == "file_size"
    assert result.data["exception"]["message"] == "[Errno 27] File too large"
    assert (tmp_path / "big.bin").stat().st_size <= 2 * 2**20


async def test_parent_secrets_are_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_TEST_SECRET", "hunter2")
    code = "import os\nprint(sorted(os.environ))\nprint(os.environ.get('AGENTRT_TEST_SECRET'))\n"
    result = await DebugTool().call(DebugArgs(code=code, env={"MY_FLAG": "1"}))
    assert isinstance(result.data, dict)
    out = result.data["stdout_tail"]
    assert "hunter2" not in out
    assert "AGENTRT_TEST_SECRET" not in out
    assert "MY_FLAG" in out
    assert out.endswith("None\n")


async def test_background_processes_are_killed_at_exit(tmp_path: Path) -> None:
    marker = new_marker()
    result = await DebugTool().call(DebugArgs(code=marked_sleep(marker)))
    assert result.ok
    assert isinstance(result.data, dict)
    assert result.data["leftover_processes"] >= 1  # the shell (and its sleep, if started)
    assert_nothing_survives(marker)


async def test_cancelling_the_call_kills_the_process_group(tmp_path: Path) -> None:
    marker = new_marker()
    code = marked_sleep(marker) + "import time\ntime.sleep(60)\n"
    with anyio.move_on_after(1.0) as scope:
        await DebugTool().call(DebugArgs(code=code))
    assert scope.cancelled_caught
    assert_nothing_survives(marker)


async def test_huge_output_is_tailed() -> None:
    code = "import sys\nfor i in range(64):\n    sys.stdout.write('x' * 2**20)\nprint('END')\n"
    result = await DebugTool(tail_kib=16).call(DebugArgs(code=code))
    assert isinstance(result.data, dict)
    assert result.data["stdout_bytes"] == 64 * 2**20 + 4
    assert len(result.data["stdout_tail"]) == 16 * 1024
    assert result.data["stdout_tail"].endswith("xxEND\n")
    assert f"{64 * 2**20 + 4} bytes in all" in result.output


async def test_setup_errors_are_tool_errors(tmp_path: Path) -> None:
    tool = DebugTool()
    with pytest.raises(ToolError, match="not a directory"):
        await tool.call(DebugArgs(code="pass", workdir=str(tmp_path / "missing")))
    with pytest.raises(ToolError, match="script 'nope.py' not found"):
        await tool.call(DebugArgs(script="nope.py"))


def test_args_need_exactly_one_target() -> None:
    with pytest.raises(ValidationError, match="exactly one of code, script and pytest"):
        DebugArgs(code="pass", pytest="tests/")
    with pytest.raises(ValidationError, match="must be a relative path"):
        DebugArgs(code="pass", files={"../escape.py": ""})
    limits = DebugArgs(code="pass", timeout_s=2).effective_limits(SandboxLimits(cpu_s=5))
    assert (limits.timeout_s, limits.cpu_s, limits.memory_mib) == (2, 5, 1024)


def test_real_tool_refuses_virtual_time(vrun: Callable[..., Any]) -> None:
    with pytest.raises(ToolError, match="debug-twin"):
        vrun(DebugTool().call, DebugArgs(code="print(1)"))


async def test_pytest_output_has_no_plugin_deprecation_warning(tmp_path: Path) -> None:
    # Issue 12: pytest-asyncio's "asyncio_default_fixture_loop_scope is unset" warning landed
    # in the tool output of every pytest run without a project config.
    make_package(tmp_path)
    result = await DebugTool().call(DebugArgs(pytest="tests/", copy_from=str(tmp_path)))
    report = DebugReport.model_validate(result.data)
    assert report.tests is not None
    assert report.tests.failed == 2
    assert "Warning" not in report.stdout_tail + report.stderr_tail
    assert "warning" not in result.output
