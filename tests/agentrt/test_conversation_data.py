"""The conversation data of the substrate protocol: tool calls, tool messages, tool specs."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agentrt import (
    InferenceRequest,
    InferenceResult,
    Message,
    Timing,
    ToolCall,
    ToolSpec,
    Usage,
)

SEARCH = ToolSpec(
    name="search",
    description="Search the docs.",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}},
)


def test_assistant_tool_calls_and_tool_answers_round_trip_through_json() -> None:
    convo = (
        Message(role="user", content="find the bug"),
        Message(role="assistant", tool_calls=(ToolCall(id="c1", name="search", arguments="{}"),)),
        Message(role="tool", content="3 hits", tool_call_id="c1", name="search"),
    )
    req = InferenceRequest(messages=convo, tools=(SEARCH,), tool_choice="auto")
    again = InferenceRequest.model_validate_json(req.model_dump_json())
    assert again == req
    assert again.messages[1].tool_calls[0].name == "search"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"role": "user", "tool_calls": [{"id": "c", "name": "x"}]}, "only assistant"),
        ({"role": "tool", "content": "x"}, "needs tool_call_id"),
        ({"role": "user", "content": "x", "tool_call_id": "c"}, "only tool messages"),
    ],
)
def test_role_rules_are_clear_errors(fields: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        Message.model_validate(fields)


def test_tool_choice_must_name_an_offered_tool() -> None:
    with pytest.raises(ValidationError, match="not 'auto', 'none', 'required'.*search"):
        InferenceRequest.from_prompt("x", tools=[SEARCH], tool_choice="grep")
    assert InferenceRequest.from_prompt("x", tools=[SEARCH], tool_choice="search").tool_choice


def test_tool_names_follow_openai_rules() -> None:
    with pytest.raises(ValidationError):
        ToolSpec(name="has space")


def test_prompt_estimate_counts_tool_calls_and_schemas() -> None:
    plain = InferenceRequest.from_prompt("find the bug")
    with_tools = InferenceRequest.from_prompt("find the bug", tools=[SEARCH])
    schema_chars = len(json.dumps(SEARCH.to_openai(), separators=(",", ":")))
    assert with_tools.estimated_prompt_tokens() - plain.estimated_prompt_tokens() == pytest.approx(
        schema_chars / 4, abs=1
    )
    call = ToolCall(id="c1", name="search", arguments='{"query": "' + "x" * 400 + '"}')
    longer = InferenceRequest(
        messages=(plain.messages[0], Message(role="assistant", tool_calls=(call,)))
    )
    assert longer.estimated_prompt_tokens() > plain.estimated_prompt_tokens() + 100


def test_tool_calls_finish_reason_needs_calls_and_message_carries_them() -> None:
    base = {"text": "", "usage": Usage(), "timing": Timing(), "substrate": "s", "model": "m"}
    with pytest.raises(ValidationError, match="at least one tool call"):
        InferenceResult(**base, finish_reason="tool_calls")  # type: ignore[arg-type]
    call = ToolCall(id="c1", name="search", arguments='{"query": "q"}')
    result = InferenceResult(**base, finish_reason="tool_calls", tool_calls=(call,))  # type: ignore[arg-type]
    msg = result.message()
    assert msg.role == "assistant"
    assert msg.tool_calls == (call,)
    assert call.parsed_arguments() == {"query": "q"}
    with pytest.raises(ValueError):
        ToolCall(id="c2", name="search", arguments="{not json").parsed_arguments()
