from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from agentrt import Agent, InferenceRequest, Plan, Step
from agentrt.log import configure_logging, get_logger
from agentrt.testing import FixedLatencySubstrate, FunctionSubstrate


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error", "off"])
def test_every_level_configures(level: Any, vrun: Callable[..., Any]) -> None:
    stream = io.StringIO()
    configure_logging(format="json", level=level, stream=stream)
    plan = Plan(name="p", steps=[Step(id="a")])
    vrun(Agent(FixedLatencySubstrate(latency_s=0.1)).run, plan)
    get_logger("x").error("boom", detail=1)
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    events = [x["event"] for x in lines]
    if level == "off":
        assert events == []
    elif level in ("debug", "info"):
        assert "step_finished" in events
        assert all("timestamp" in x and "level" in x for x in lines)
    else:
        assert events == ["boom"]


def test_console_format_renders_ids(vrun: Callable[..., Any]) -> None:
    stream = io.StringIO()
    configure_logging(format="console", level="info", stream=stream)
    result = vrun(Agent(FixedLatencySubstrate()).run, Plan(name="p", steps=[Step(id="a")]))
    text = stream.getvalue()
    assert "step_finished" in text
    assert f"run_id={result.run_id}" in text
    assert "step_id=a" in text


def test_code_inside_a_step_logs_with_the_step_ids(vrun: Callable[..., Any]) -> None:
    stream = io.StringIO()
    configure_logging(format="json", level="info", stream=stream)

    async def logs(request: InferenceRequest) -> str:
        get_logger("my.substrate").info("inside")
        return "ok"

    result = vrun(Agent(FunctionSubstrate(logs)).run, Plan(name="p", steps=[Step(id="a")]))
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    inside = next(x for x in lines if x["event"] == "inside")
    assert (inside["run_id"], inside["step_id"], inside["kind"]) == (result.run_id, "a", "think")
    assert structlog.contextvars.get_contextvars() == {}  # unbound after the run


def test_with_logging_off_no_step_context_is_bound(vrun: Callable[..., Any]) -> None:
    # Nothing would read it: the runtime skips binding step ids when no processor merges them.
    configure_logging(level="off")
    seen: list[dict[str, Any]] = []

    async def peek(request: InferenceRequest) -> str:
        seen.append(structlog.contextvars.get_contextvars())
        return "ok"

    vrun(Agent(FunctionSubstrate(peek)).run, Plan(name="p", steps=[Step(id="a")]))
    assert "step_id" not in seen[0]
    configure_logging(format="json", level="info", stream=io.StringIO())
    vrun(Agent(FunctionSubstrate(peek)).run, Plan(name="p", steps=[Step(id="a")]))
    assert seen[1]["step_id"] == "a"


# -- the library is silent until the application configures logging ---------------------------

_ROOT = Path(__file__).resolve().parents[2]


def _readme_library_example() -> str:
    readme = (_ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    return next(b for b in blocks if "Agent(" in b and "print(" in b)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )


def test_the_readme_example_prints_only_what_it_prints() -> None:
    done = _python(_readme_library_example())
    assert done.returncode == 0, done.stderr
    assert done.stdout == "succeeded 0.6\n"
    assert done.stderr == ""


def test_the_readme_example_logs_once_the_application_configures_logging() -> None:
    code = "from agentrt.log import configure_logging\nconfigure_logging(level='info')\n"
    done = _python(code + _readme_library_example())
    assert done.returncode == 0, done.stderr
    assert done.stdout == "succeeded 0.6\n"
    assert "run_started" in done.stderr
    assert "step_finished" in done.stderr


def test_an_application_that_configures_structlog_itself_gets_the_events() -> None:
    code = (
        "import structlog\nstructlog.configure(processors=[structlog.processors.JSONRenderer()])\n"
    )
    done = _python(code + _readme_library_example())
    assert done.returncode == 0, done.stderr
    events = [json.loads(x)["event"] for x in done.stdout.splitlines()[:-1]]
    assert events[0] == "run_started"
    assert "step_finished" in events
    assert done.stdout.endswith("succeeded 0.6\n")


def test_unconfigured_loggers_do_nothing(
    vrun: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    structlog.reset_defaults()  # as in a fresh process: structlog unconfigured
    assert not structlog.is_configured()
    get_logger("agentrt.test").error("boom", detail=1)
    seen: list[dict[str, Any]] = []

    async def peek(request: InferenceRequest) -> str:
        seen.append(structlog.contextvars.get_contextvars())
        return "ok"

    result = vrun(Agent(FunctionSubstrate(peek)).run, Plan(name="p", steps=[Step(id="a")]))
    assert result.status == "succeeded"
    assert capsys.readouterr() == ("", "")
    assert "step_id" not in seen[0]  # nothing is bound for loggers that print nothing


def test_configure_logging_redacts_every_event() -> None:
    stream = io.StringIO()
    configure_logging(format="console", level="info", stream=stream)
    get_logger("x").warning("call_failed", url="http://me:pw-123456@h/v1?api_key=k-98765")
    assert "url='http://***@h/v1?api_key=***'" in stream.getvalue()
    assert "pw-123456" not in stream.getvalue()
    assert "k-98765" not in stream.getvalue()
