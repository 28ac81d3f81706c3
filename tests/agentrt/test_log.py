from __future__ import annotations

import io
import json
from collections.abc import Callable
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
