from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from agentrt import Agent, Plan, Step
from agentrt.log import configure_logging, get_logger
from agentrt.testing import FixedLatencySubstrate


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
