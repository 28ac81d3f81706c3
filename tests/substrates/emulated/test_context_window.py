"""Output bounded by the model's context window, and text produced lazily, one piece at a time."""

from __future__ import annotations

import tomllib
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import agentrt
from agentrt import Agent, BadResponse, InferenceRequest, Plan, Step
from substrates.emulated import ContextLengthExceeded, build_engine
from substrates.emulated.content import (
    ReplayContent,
    ScriptedContent,
    SyntheticContent,
    content_for,
    split_tokens,
)
from substrates.emulated.profiles import load_model, model_names

MODELS = Path(__file__).resolve().parents[3] / "substrates" / "emulated" / "profiles" / "models"


def _engine() -> Any:
    return build_engine("h100", model="llama-3.1-8b", jitter=0, stall_prob=0)


def test_every_model_profile_has_a_sourced_context_length() -> None:
    for path in sorted(MODELS.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        assert data["context_length_tokens"] >= 2048, path
        assert data["sources"]["context_length_tokens"], path
    assert load_model("llama-3.1-8b").context_length_tokens == 131072
    assert len(model_names()) == len(list(MODELS.glob("*.toml")))


def test_output_beyond_the_context_window_fails_at_once_and_is_not_retryable(
    vrun: Callable[..., Any],
) -> None:
    engine = _engine()
    req = InferenceRequest.from_prompt("p", prompt_tokens=1000, max_output_tokens=1_000_000_000)
    with pytest.raises(ContextLengthExceeded) as caught:
        vrun(engine.infer, req)
    error = caught.value
    assert isinstance(error, BadResponse)
    assert not error.retryable
    assert str(error) == (
        "llama-3.1-8b's maximum context length is 131,072 tokens, but the request asks for "
        "1,000,001,000 (1,000 in the prompt, 1,000,000,000 of output): reduce "
        "max_output_tokens to at most 130072"
    )
    with pytest.raises(ContextLengthExceeded, match="shorten the prompt"):
        vrun(
            engine.infer, req.model_copy(update={"prompt_tokens": 200_000, "max_output_tokens": 1})
        )

    async def stream() -> None:
        async with engine.stream(req) as chunks:
            async for _ in chunks:  # pragma: no cover - never reached
                pass

    with pytest.raises(ContextLengthExceeded):
        vrun(stream)
    # The largest request that fits is served.
    fits = req.model_copy(update={"max_output_tokens": 131072 - 1000})
    assert vrun(engine.infer, fits).usage.output_tokens == 131072 - 1000


def test_a_plan_step_beyond_the_context_fails_once_with_the_reason(
    vrun: Callable[..., Any],
) -> None:
    plan = Plan(name="huge", steps=[Step(id="big", max_output_tokens=1_000_000_000)])
    result = vrun(Agent(_engine()).run, plan)
    assert result.status == "failed"
    step = result.step("big")
    assert step.attempts == 1  # not retried: the same request fails the same way
    assert step.error is not None
    assert "maximum context length is 131,072 tokens" in step.error


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_lazy_synthetic_pieces_are_the_split_of_the_text(seed: int) -> None:
    source = SyntheticContent(seed=seed)
    for tokens in (1, 2, 3, 5, 37, 38, 39, 100, 1000, 5000):
        req = InferenceRequest.from_prompt("p", step_id=f"s{tokens}")
        text, n = source.text_for(req, tokens)
        lazy = content_for(source, req, tokens)
        assert lazy.tokens == n == tokens
        assert lazy.text() == text
        assert [lazy.piece(i) for i in range(tokens)] == split_tokens(text, tokens)
        assert lazy.piece(tokens + 5) == ""


def test_sources_without_a_lazy_form_still_work() -> None:
    req = InferenceRequest.from_prompt("p", step_id="a")
    for source in (
        ScriptedContent({"a": "a scripted answer of some length"}),
        ReplayContent({"steps": [{"id": "a", "text": "recorded", "output_tokens": 3}]}),
    ):
        text, tokens = source.text_for(req, 100)
        lazy = content_for(source, req, 100)
        assert (lazy.text(), lazy.tokens) == (text, tokens)
        assert [lazy.piece(i) for i in range(tokens)] == split_tokens(text, tokens)


def test_a_long_stream_holds_one_piece_at_a_time() -> None:
    """130,000 tokens: memory after a thousand chunks is a few kB, not the whole split text
    (which is about 8 MB: a string per token, before the text is even sent)."""
    engine = _engine()
    req = InferenceRequest.from_prompt("hi", max_output_tokens=130_000)
    seen: dict[str, int] = {}

    async def main() -> None:
        tracemalloc.start()
        try:
            async with engine.stream(req) as chunks:
                pieces = []
                async for chunk in chunks:
                    pieces.append(chunk.text)
                    if len(pieces) == 1000:
                        break
            seen["peak"] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        seen["chars"] = sum(map(len, pieces))

    agentrt.run(main, clock=agentrt.VirtualClock())
    assert seen["chars"] > 1000
    assert seen["peak"] < 1_000_000, seen
