from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from agentrt import (
    BadResponse,
    InferenceRequest,
    InferenceResult,
    StreamingSubstrate,
    Substrate,
    SubstrateUnavailable,
    Timing,
    Usage,
    current_clock,
)
from agentrt.testing import (
    FixedLatencySubstrate,
    FunctionSubstrate,
    FunctionTool,
    ScriptedSubstrate,
    check_substrate,
    fixed_substrate,
    synthetic_text,
)

REQ = InferenceRequest.from_prompt("hello", max_output_tokens=8, step_id="a")


def test_fixed_latency_timing_adds_up(vrun: Callable[..., Any]) -> None:
    sub = FixedLatencySubstrate(latency_s=0.5, output_tokens=5, ttft_s=0.1)

    async def main() -> tuple[InferenceResult, float]:
        result = await sub.infer(REQ)
        return result, current_clock().current_time()

    result, now = vrun(main)
    assert now == pytest.approx(0.5)
    assert result.timing.e2e_s == pytest.approx(0.5)
    assert result.timing.ttft_s == pytest.approx(0.1)
    assert result.timing.tpot_s == pytest.approx(0.1)  # 0.4 s over the 4 tokens after the first
    assert result.usage.output_tokens == 5
    assert result.text == synthetic_text(5)
    assert result.finish_reason == "stop"


def test_fixed_latency_streams_on_the_clock(vrun: Callable[..., Any]) -> None:
    sub = FixedLatencySubstrate(latency_s=1.0, output_tokens=3, ttft_s=0.4)
    assert isinstance(sub, StreamingSubstrate)

    async def main() -> tuple[list[float], str, str]:
        times = []
        text = ""
        async with sub.stream(REQ) as stream:
            async for chunk in stream:
                times.append(chunk.t_s)
                text += chunk.text
            return times, text, stream.result().text

    times, text, final = vrun(main)
    assert times == pytest.approx([0.4, 0.7, 1.0])
    assert text == final


@pytest.mark.parametrize(
    "make",
    [
        lambda: FixedLatencySubstrate(latency_s=0.2, output_tokens=4),
        lambda: FixedLatencySubstrate(),
        lambda: ScriptedSubstrate({}, default="scripted words here", latency_s=0.3),
        lambda: FunctionSubstrate(lambda r: "a b c"),
    ],
    ids=["fixed", "instant", "scripted", "function"],
)
def test_shipped_doubles_pass_the_conformance_check(
    make: Callable[[], Substrate], vrun: Callable[..., Any]
) -> None:
    vrun(check_substrate, make)


async def test_conformance_check_in_real_time() -> None:
    await check_substrate(lambda: FixedLatencySubstrate(latency_s=0.02, output_tokens=4))


class _Liar:
    """Claims a second of work but returns at once."""

    name = "liar"

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        await anyio.lowlevel.checkpoint()
        return InferenceResult(
            text="x",
            usage=Usage(output_tokens=1),
            timing=Timing(decode_s=1.0),
            substrate="liar",
            model="m",
        )

    async def aclose(self) -> None: ...


class _Uncancellable:
    """Shields its work from cancellation: a cancelled call does not stop."""

    name = "stubborn"

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(60)
        return InferenceResult(
            text="x",
            usage=Usage(output_tokens=1),
            timing=Timing(decode_s=60.0),
            substrate="stubborn",
            model="m",
        )

    async def aclose(self) -> None: ...


def test_conformance_check_catches_a_lying_substrate(vrun: Callable[..., Any]) -> None:
    with pytest.raises(AssertionError, match="timing claims 1.000000 s but only 0.000000 s"):
        vrun(check_substrate, _Liar())


def test_conformance_check_catches_an_uncancellable_substrate(vrun: Callable[..., Any]) -> None:
    with pytest.raises(AssertionError, match="did not stop promptly"):
        vrun(check_substrate, _Uncancellable())


def test_conformance_check_enforces_a_floor(vrun: Callable[..., Any]) -> None:
    with pytest.raises(AssertionError, match="faster than the physical floor"):
        vrun(lambda: check_substrate(FixedLatencySubstrate(latency_s=0.1), floor_s=lambda r: 0.5))


def test_scripted_sequences_and_errors(vrun: Callable[..., Any]) -> None:
    sub = ScriptedSubstrate({"a": [SubstrateUnavailable("down"), "one", "two"]})

    async def main() -> list[str]:
        out = []
        for _ in range(4):
            try:
                out.append((await sub.infer(REQ)).text)
            except SubstrateUnavailable as exc:
                out.append(f"error: {exc}")
        return out

    assert vrun(main) == ["error: down", "one", "two", "two"]


def test_scripted_without_an_answer_says_what_to_do(vrun: Callable[..., Any]) -> None:
    sub = ScriptedSubstrate({"known": "x"})
    with pytest.raises(
        BadResponse, match="no scripted response for step 'a' \\(scripted: known\\)"
    ):
        vrun(sub.infer, REQ)


def test_function_substrate_accepts_async_functions(vrun: Callable[..., Any]) -> None:
    async def fn(request: InferenceRequest) -> str:
        await anyio.sleep(2)
        return request.prompt_text.upper()

    sub = FunctionSubstrate(fn)
    result = vrun(sub.infer, REQ)
    assert result.text == "HELLO"
    assert sub.calls == [REQ]


def test_function_tool_sync_and_async(vrun: Callable[..., Any]) -> None:
    async def afn(args: Any) -> str:
        return f"async {args.model_dump()}"

    sync = FunctionTool("s", lambda args: "sync")
    asyn = FunctionTool("a", afn)

    async def main() -> tuple[str, str]:
        a = await sync.call(sync.args_model.model_validate({}))
        b = await asyn.call(asyn.args_model.model_validate({"k": 1}))
        return a.output, b.output

    assert vrun(main) == ("sync", "async {'k': 1}")


def test_fixed_substrate_factory_and_validation() -> None:
    sub = fixed_substrate(latency_ms=250, output_tokens=3, ttft_ms=50)
    assert (sub.latency_s, sub.ttft_s, sub.output_tokens) == (0.25, 0.05, 3)
    with pytest.raises(Exception, match="latency_s must be >= 0"):
        FixedLatencySubstrate(latency_s=-1)
    with pytest.raises(Exception, match="ttft_s must lie in"):
        FixedLatencySubstrate(latency_s=0.1, ttft_s=0.2)


def test_timing_rules() -> None:
    t = Timing(queue_s=0.1, network_s=0.02, prefill_s=0.05, decode_s=0.5, comm_s=0.03)
    assert t.e2e_s == pytest.approx(0.7)
    assert t.ttft_s == pytest.approx(0.17)
    with pytest.raises(ValueError, match="cannot exceed e2e_s"):
        Timing(decode_s=0.1, ttft_s=0.5)
    with pytest.raises(ValueError):
        Timing(queue_s=-1)
    built = Timing.build(output_tokens=11, prefill_s=0.1, decode_s=1.0)
    assert built.tpot_s == pytest.approx(0.1)
    assert InferenceRequest.from_prompt("x" * 400).estimated_prompt_tokens() == 104


class _NoArgsEngine:
    """A substrate class as docs/plugins.md writes one: a class attribute name, no arguments."""

    name = "no-args"

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        return await FixedLatencySubstrate(latency_s=0.05, name=self.name).infer(request)

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(
    "make",
    [_NoArgsEngine, _NoArgsEngine(), lambda: _NoArgsEngine()],
    ids=["class", "instance", "factory"],
)
def test_check_substrate_takes_a_class_an_instance_or_a_factory(
    make: Any, vrun: Callable[..., Any]
) -> None:
    vrun(check_substrate, make)


def test_check_substrate_on_a_class_that_needs_arguments_says_what_to_pass(
    vrun: Callable[..., Any],
) -> None:
    class NeedsArgs(_NoArgsEngine):
        def __init__(self, speed: float) -> None:
            self.speed = speed

    with pytest.raises(TypeError, match=r"pass an instance or a factory"):
        vrun(check_substrate, NeedsArgs)


@pytest.mark.parametrize(
    ("wrong", "right"),
    [("prompt", "prompt_text"), ("max_tokens", "max_output_tokens"), ("kind", "step_kind")],
)
def test_a_wrong_request_field_name_says_which_one_to_use(wrong: str, right: str) -> None:
    request = InferenceRequest.from_prompt("hello")
    with pytest.raises(AttributeError, match=rf"no attribute '{wrong}'; use '{right}'"):
        getattr(request, wrong)
    assert not hasattr(request, "no_such_field")


def test_every_request_field_is_described() -> None:
    for name, field in InferenceRequest.model_fields.items():
        assert field.description, name
