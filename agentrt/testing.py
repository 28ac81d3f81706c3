"""Test doubles shipped as product: substrates and tools for tests, and `check_substrate()`.

Like httpx's ``MockTransport`` and pydantic-ai's ``FunctionModel``: build an agent with these to
test your plans, policies and tools without an engine, in real or virtual time.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, final

import anyio
import anyio.lowlevel
from pydantic import BaseModel, ConfigDict, JsonValue

from agentrt.clock import current_clock
from agentrt.errors import BadResponse, ConfigError
from agentrt.substrate import (
    InferenceRequest,
    InferenceResult,
    StreamingSubstrate,
    Substrate,
    Timing,
    TokenChunk,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from agentrt.tool import ToolResult

__all__ = [
    "FixedLatencySubstrate",
    "FunctionSubstrate",
    "FunctionTool",
    "Reply",
    "ScriptedSubstrate",
    "ScriptedToolSubstrate",
    "check_substrate",
    "fixed_substrate",
    "synthetic_text",
]

_WORDS = tuple(
    "the agent reads the failing test then plans a small patch and runs the suite again "
    "until every check passes and the answer is ready".split(" ")
)


@functools.lru_cache(maxsize=256)
def synthetic_text(tokens: int, *, offset: int = 0) -> str:
    """Deterministic filler text of ``tokens`` words (one word stands for one token).

    Example:
        >>> synthetic_text(3)
        'the agent reads'
    """
    n = len(_WORDS)
    return " ".join(_WORDS[(offset + i) % n] for i in range(tokens))


def _text_result(
    request: InferenceRequest,
    text: str,
    *,
    substrate: str,
    model: str,
    timing: Timing,
    tokens: int | None = None,
) -> InferenceResult:
    out = tokens if tokens is not None else (max(1, len(text.split())) if text else 0)
    return InferenceResult(
        text=text,
        usage=Usage(input_tokens=request.estimated_prompt_tokens(), output_tokens=out),
        timing=timing,
        substrate=substrate,
        model=request.model or model,
        finish_reason="length" if out >= request.max_output_tokens else "stop",
    )


@final
class FunctionSubstrate:
    """A substrate backed by a function of the request (sync or async).

    The function returns an `InferenceResult`, or a string that becomes the text of a result with
    zero timing. Raise `agentrt.errors.RetryableError` from it to test retries.

    Example:
        >>> sub = FunctionSubstrate(lambda req: req.prompt_text.upper())
        >>> sub.name
        'function'
    """

    def __init__(
        self,
        fn: Callable[[InferenceRequest], InferenceResult | str | Awaitable[InferenceResult | str]],
        *,
        name: str = "function",
        model: str = "function",
    ) -> None:
        self.name = name
        self.model = model
        self._fn = fn
        self.calls: list[InferenceRequest] = []

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Call the function."""
        self.calls.append(request)
        value = self._fn(request)
        if inspect.isawaitable(value):
            value = await value
        else:
            await anyio.lowlevel.checkpoint()
        if isinstance(value, InferenceResult):
            return value
        return _text_result(request, value, substrate=self.name, model=self.model, timing=Timing())

    async def aclose(self) -> None:
        """Nothing to release."""


@final
class FixedLatencySubstrate:
    """A substrate that takes a fixed time per call on the run's clock and streams its tokens.

    The first token arrives after ``ttft_s``; the rest are evenly spaced until ``latency_s``.

    Example:
        >>> sub = FixedLatencySubstrate(latency_s=0.2, output_tokens=10)
        >>> sub.name
        'fixed'

    Args:
        latency_s: end-to-end seconds per call.
        output_tokens: tokens generated per call (capped by the request's ``max_output_tokens``);
            None = the request's ``max_output_tokens``.
        ttft_s: time to first token; default 10% of ``latency_s``.
        name: substrate name in results.
        model: model name in results.
    """

    def __init__(
        self,
        latency_s: float = 0.0,
        output_tokens: int | None = None,
        *,
        ttft_s: float | None = None,
        name: str = "fixed",
        model: str = "fixed",
    ) -> None:
        if latency_s < 0:
            raise ConfigError(f"latency_s must be >= 0, got {latency_s}")
        if output_tokens is not None and output_tokens < 1:
            raise ConfigError(f"output_tokens must be >= 1, got {output_tokens}")
        ttft = latency_s * 0.1 if ttft_s is None else ttft_s
        if not 0 <= ttft <= latency_s:
            raise ConfigError(f"ttft_s must lie in [0, latency_s={latency_s}], got {ttft}")
        self.name = name
        self.model = model
        self.latency_s = latency_s
        self.ttft_s = ttft
        self.output_tokens = output_tokens
        self.calls = 0

    def _tokens(self, request: InferenceRequest) -> int:
        if self.output_tokens is None:
            return request.max_output_tokens
        return min(self.output_tokens, request.max_output_tokens)

    def _result(self, request: InferenceRequest, tokens: int) -> InferenceResult:
        timing = Timing.build(
            output_tokens=tokens, prefill_s=self.ttft_s, decode_s=self.latency_s - self.ttft_s
        )
        return _text_result(
            request,
            synthetic_text(tokens),
            substrate=self.name,
            model=self.model,
            timing=timing,
            tokens=tokens,
        )

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Wait ``latency_s`` on the run's clock, then return synthetic text."""
        self.calls += 1
        if self.latency_s > 0:
            await anyio.sleep(self.latency_s)
        else:
            await anyio.lowlevel.checkpoint()
        return self._result(request, self._tokens(request))

    def stream(self, request: InferenceRequest) -> AbstractAsyncContextManager[_ListStream]:
        """Stream the same tokens `infer` would return, one chunk per token, on the clock."""
        return self._stream(request)

    @asynccontextmanager
    async def _stream(self, request: InferenceRequest) -> AsyncIterator[_ListStream]:
        self.calls += 1
        tokens = self._tokens(request)
        result = self._result(request, tokens)
        gap = (self.latency_s - self.ttft_s) / (tokens - 1) if tokens > 1 else 0.0
        words = result.text.split(" ")
        clock = current_clock()
        start = clock.current_time()

        async def chunks() -> AsyncIterator[TokenChunk]:
            for i, word in enumerate(words):
                due = start + self.ttft_s + gap * i
                delay = due - clock.current_time()
                if delay > 0:
                    await anyio.sleep(delay)
                yield TokenChunk(
                    text=word if i == 0 else " " + word, index=i, t_s=clock.current_time()
                )

        yield _ListStream(chunks(), result)

    async def aclose(self) -> None:
        """Nothing to release."""


@final
class _ListStream:
    """A `TokenStream` over an async generator with a precomputed result."""

    def __init__(self, chunks: AsyncIterator[TokenChunk], result: InferenceResult) -> None:
        self._chunks = chunks
        self._result = result
        self._done = False

    def __aiter__(self) -> AsyncIterator[TokenChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TokenChunk]:
        async for chunk in self._chunks:
            yield chunk
        self._done = True

    def result(self) -> InferenceResult:
        if not self._done:
            raise BadResponse("the stream was not read to the end; its result is not known yet")
        return self._result


ScriptItem = str | InferenceResult | BaseException


@final
class ScriptedSubstrate:
    """A substrate that answers from a script, keyed by step id, after a fixed latency.

    Each key maps to one response or a sequence consumed one per call (the last one repeats).
    A response that is an exception is raised instead, which tests retries and failures.

    Example:
        >>> from agentrt.errors import SubstrateUnavailable
        >>> sub = ScriptedSubstrate({"plan": [SubstrateUnavailable("warming up"), "fix line 3"]})
        >>> sub.name
        'scripted'

    Args:
        script: step id -> response(s).
        latency_s: seconds per call on the run's clock.
        default: the answer for steps the script does not name; None = raise `BadResponse`.
        name: substrate name in results.
    """

    def __init__(
        self,
        script: Mapping[str, ScriptItem | Sequence[ScriptItem]],
        *,
        latency_s: float = 0.0,
        default: str | None = None,
        name: str = "scripted",
        model: str = "scripted",
    ) -> None:
        self.name = name
        self.model = model
        self.latency_s = latency_s
        self.default = default
        self._script: dict[str, deque[ScriptItem]] = {}
        for key, value in script.items():
            items: Iterable[ScriptItem] = (
                [value] if isinstance(value, str | InferenceResult | BaseException) else value
            )
            self._script[key] = deque(items)
        self.calls: list[InferenceRequest] = []

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Wait ``latency_s``, then answer (or raise) from the script."""
        self.calls.append(request)
        if self.latency_s > 0:
            await anyio.sleep(self.latency_s)
        else:
            await anyio.lowlevel.checkpoint()
        queue = self._script.get(request.step_id or "")
        if not queue:
            if self.default is None:
                known = ", ".join(sorted(self._script)) or "none"
                raise BadResponse(
                    f"no scripted response for step {request.step_id!r} (scripted: {known}); "
                    "add it to the script or pass default="
                )
            item: ScriptItem = self.default
        else:
            item = queue.popleft() if len(queue) > 1 else queue[0]
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, InferenceResult):
            return item
        tokens = max(1, len(item.split()))
        timing = Timing.build(output_tokens=tokens, decode_s=self.latency_s)
        return _text_result(request, item, substrate=self.name, model=self.model, timing=timing)

    async def aclose(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted model reply with both text and tool calls (see `ScriptedToolSubstrate`).

    Example:
        >>> Reply("Let me look.", ("search", {"query": "parser"})).calls[0][0]
        'search'
    """

    text: str = ""
    calls: tuple[ToolCall | tuple[str, Mapping[str, JsonValue] | str], ...] = ()

    def __init__(
        self, text: str = "", *calls: ToolCall | tuple[str, Mapping[str, JsonValue] | str]
    ) -> None:
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "calls", calls)


#: What a `ScriptedToolSubstrate` script holds: a text answer, one tool call as ``(name, args)``
#: (or a `ToolCall`), a list of calls made at once, a `Reply`, a whole result, or an exception.
ScriptedReply = (
    str
    | ToolCall
    | tuple[str, Mapping[str, JsonValue] | str]
    | list[ToolCall | tuple[str, Mapping[str, JsonValue] | str]]
    | Reply
    | InferenceResult
    | BaseException
)


def _as_reply(item: ScriptedReply) -> Reply | InferenceResult | BaseException:
    if isinstance(item, Reply | InferenceResult | BaseException):
        return item
    if isinstance(item, str):
        return Reply(item)
    if isinstance(item, list):
        return Reply("", *item)
    return Reply("", item)


def _tool_call(
    spec: ToolCall | tuple[str, Mapping[str, JsonValue] | str], call_id: str
) -> ToolCall:
    if isinstance(spec, ToolCall):
        return spec
    name, args = spec
    arguments = args if isinstance(args, str) else json.dumps(args, separators=(",", ":"))
    return ToolCall(id=call_id, name=name, arguments=arguments)


@final
class ScriptedToolSubstrate:
    """A model that plays a scripted conversation: text answers and tool calls, turn by turn.

    Each run (each ``run_id``) replays the script from its start, one reply per model call; the
    last reply repeats (a script ending in a tool call tests ``max_turns``). A mapping of plan
    step id -> script gives each step with ``tools`` its own. Tool calls get the ids
    ``call_<turn>_<k>`` unless given as `ToolCall` objects. It streams too (`stream`): the text
    word by word, then each call as `ToolCallDelta` pieces.

    Example:
        >>> model = ScriptedToolSubstrate([
        ...     ("search", {"query": "parser bug"}),             # turn 1: one tool call
        ...     [("read", {"path": "a.py"}), ("read", {"path": "b.py"})],  # 2: two at once
        ...     Reply("Found it; running the tests.", ("debug", {})),      # 3: text and a call
        ...     "The bug is in parse().",                         # 4: the answer
        ... ])
        >>> model.name
        'scripted-tools'

    Args:
        script: the replies in order, or plan step id -> replies.
        latency_s: seconds per call on the run's clock; None answers without yielding to the
            event loop at all (for measuring the runtime's own overhead).
        input_tokens: input tokens reported per call; None estimates them from the request
            (which reads the whole conversation: use a number for long benchmark runs).
        name: substrate name in results.
        model: model name in results.
    """

    def __init__(
        self,
        script: Sequence[ScriptedReply] | Mapping[str, Sequence[ScriptedReply]],
        *,
        latency_s: float | None = 0.0,
        input_tokens: int | None = None,
        name: str = "scripted-tools",
        model: str = "scripted-tools",
    ) -> None:
        if latency_s is not None and latency_s < 0:
            raise ConfigError(f"latency_s must be >= 0 (or None), got {latency_s}")
        scripts = script if isinstance(script, Mapping) else {"": script}
        self._scripts = {key: [_as_reply(item) for item in items] for key, items in scripts.items()}
        for key, items in self._scripts.items():
            if not items:
                raise ConfigError(
                    f"the script {key or 'given'!r} is empty; give at least one reply"
                )
        self._by_step = isinstance(script, Mapping)
        self.name = name
        self.model = model
        self.latency_s = latency_s
        self.input_tokens = input_tokens
        self._position: dict[tuple[str | None, str], int] = {}
        self._results: dict[tuple[str, int, str | None], InferenceResult] = {}
        self.calls: list[InferenceRequest] = []

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Wait ``latency_s``, then give (or raise) the conversation's next scripted reply."""
        self.calls.append(request)
        if self.latency_s is not None:
            if self.latency_s > 0:
                await anyio.sleep(self.latency_s)
            else:
                await anyio.lowlevel.checkpoint()
        return self._next(request)

    def _next(self, request: InferenceRequest) -> InferenceResult:
        key = request.step_id or "" if self._by_step else ""
        items = self._scripts.get(key)
        if items is None:
            known = ", ".join(sorted(self._scripts))
            raise BadResponse(
                f"no script for step {request.step_id!r} (scripted steps: {known}); add it"
            )
        slot = (request.run_id, key)
        turn = self._position.get(slot, 0)
        self._position[slot] = turn + 1
        index = min(turn, len(items) - 1)
        item = items[index]
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, InferenceResult):
            return item
        cache = (key, turn, request.model) if self.input_tokens is not None else None
        if cache is not None and cache in self._results:
            return self._results[cache]
        calls = tuple(_tool_call(c, f"call_{turn + 1}_{k}") for k, c in enumerate(item.calls, 1))
        out = max(1, len(item.text.split()) + sum((len(c.arguments) + 3) // 4 for c in calls))
        tokens_in = (
            self.input_tokens
            if self.input_tokens is not None
            else request.estimated_prompt_tokens()
        )
        result = InferenceResult(
            text=item.text,
            usage=Usage(input_tokens=tokens_in, output_tokens=out),
            timing=Timing.build(output_tokens=out, decode_s=self.latency_s or 0.0),
            substrate=self.name,
            model=request.model or self.model,
            finish_reason="tool_calls" if calls else "stop",
            tool_calls=calls,
        )
        if cache is not None:
            self._results[cache] = result
        return result

    def stream(self, request: InferenceRequest) -> AbstractAsyncContextManager[_ListStream]:
        """Stream the reply `infer` would give: text words, then tool-call deltas."""
        return self._stream(request)

    @asynccontextmanager
    async def _stream(self, request: InferenceRequest) -> AsyncIterator[_ListStream]:
        self.calls.append(request)
        result = self._next(request)
        clock = current_clock()

        async def chunks() -> AsyncIterator[TokenChunk]:
            if self.latency_s:
                await anyio.sleep(self.latency_s)
            index = 0
            for i, word in enumerate(result.text.split(" ") if result.text else ()):
                yield TokenChunk(
                    text=word if i == 0 else " " + word, index=index, t_s=clock.current_time()
                )
                index += 1
            for k, call in enumerate(result.tool_calls):
                pieces = [call.arguments[i : i + 16] for i in range(0, len(call.arguments), 16)]
                deltas = [ToolCallDelta(index=k, id=call.id, name=call.name)]
                deltas += [ToolCallDelta(index=k, arguments=p) for p in pieces]
                for delta in deltas:
                    yield TokenChunk(
                        text="", index=index, t_s=clock.current_time(), tool_calls=(delta,)
                    )
                    index += 1

        yield _ListStream(chunks(), result)

    async def aclose(self) -> None:
        """Nothing to release."""


class _AnyArgs(BaseModel):
    """Arguments of a `FunctionTool` without a model: any JSON object."""

    model_config = ConfigDict(extra="allow")


@final
class FunctionTool:
    """A tool backed by a function (sync or async) of its validated arguments.

    The function returns a `ToolResult` or a string (the output).

    Example:
        >>> tool = FunctionTool("echo", lambda args: "ok")
        >>> tool.name
        'echo'

    Args:
        name: the tool name steps refer to.
        fn: the function; receives an instance of ``args_model``.
        args_model: pydantic model for the arguments; default accepts any object.
        description: what the tool does.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[Any], ToolResult | str | Awaitable[ToolResult | str]],
        *,
        args_model: type[BaseModel] | None = None,
        description: str = "",
    ) -> None:
        self.name = name
        self.description = description or f"Function tool {name}."
        self.args_model: type[BaseModel] = args_model or _AnyArgs
        self._fn = fn
        self.calls: list[BaseModel] = []

    async def call(self, args: Any) -> ToolResult:
        """Call the function."""
        self.calls.append(args)
        value = self._fn(args)
        if inspect.isawaitable(value):
            value = await value
        else:
            await anyio.lowlevel.checkpoint()
        return value if isinstance(value, ToolResult) else ToolResult(output=value)

    async def aclose(self) -> None:
        """Nothing to release."""


def fixed_substrate(
    *,
    latency_ms: float = 0.0,
    output_tokens: int | None = None,
    ttft_ms: float | None = None,
    seed: int | None = None,
) -> FixedLatencySubstrate:
    """Registry factory for ``--substrate fixed`` (``seed`` is accepted and unused).

    Example:
        >>> fixed_substrate(latency_ms=200).latency_s
        0.2
    """
    del seed
    return FixedLatencySubstrate(
        latency_s=latency_ms / 1000,
        output_tokens=output_tokens,
        ttft_s=None if ttft_ms is None else ttft_ms / 1000,
    )


def _substrate_from(make: object) -> Substrate:
    """The substrate to check: ``make`` itself, or what calling it (a class or factory) returns."""
    # A class has the protocol's attributes too (isinstance(MyEngine, Substrate) holds), so a
    # class is always instantiated, never used as the substrate.
    if isinstance(make, type) or (callable(make) and not isinstance(make, Substrate)):
        try:
            sub = make()
        except TypeError as exc:
            raise TypeError(
                f"check_substrate could not call {make!r} without arguments ({exc}); pass an "
                "instance or a factory, e.g. check_substrate(lambda: MyEngine(...))"
            ) from exc
    else:
        sub = make
    assert isinstance(sub, Substrate), f"{sub!r} does not implement the Substrate protocol"
    return sub


async def check_substrate(
    make: type[Substrate] | Callable[[], Substrate] | Substrate,
    *,
    floor_s: Callable[[InferenceRequest], float] | None = None,
    max_output_tokens: int = 16,
) -> None:
    """Check that a substrate honours the `Substrate` contract; raise AssertionError if not.

    Run it in your own tests, in real or virtual time (like trio's ``check_two_way_stream``):
    results are well formed, ``ttft_s <= e2e_s`` and the reported time fits the time that passed
    on the run's clock (exactly, in virtual time); four concurrent calls all complete; a call
    cancelled from outside stops at once and leaves no task behind; streams (if supported) deliver
    the same text in time order; ``aclose()`` may be called twice; and, given ``floor_s``, no call
    is faster than the physical floor.

    Example:
        >>> from agentrt import VirtualClock, run
        >>> run(check_substrate, lambda: FixedLatencySubstrate(latency_s=0.01),
        ...     clock=VirtualClock())
        >>> run(check_substrate, FixedLatencySubstrate(latency_s=0.01), clock=VirtualClock())

    Args:
        make: a substrate instance, a class whose constructor needs no arguments, or a factory
            (any callable) returning a fresh one.
        floor_s: the least e2e time physics allows for a request, if known.
        max_output_tokens: the output length of the probe requests.
    """
    sub = _substrate_from(make)
    assert isinstance(sub.name, str), "a substrate's name must be a string"
    assert sub.name, "a substrate needs a non-empty name"
    clock = current_clock()
    request = InferenceRequest.from_prompt(
        "Check the substrate contract.", max_output_tokens=max_output_tokens, step_id="check"
    )
    try:
        t0 = clock.current_time()
        result = await sub.infer(request)
        elapsed = clock.current_time() - t0
        assert isinstance(result, InferenceResult), f"infer() returned {type(result).__name__}"
        t = result.timing
        assert 0 <= t.ttft_s <= t.e2e_s + 1e-9, f"ttft_s {t.ttft_s} outside [0, e2e_s={t.e2e_s}]"
        assert result.usage.output_tokens <= request.max_output_tokens, (
            f"generated {result.usage.output_tokens} tokens, more than max_output_tokens="
            f"{request.max_output_tokens}"
        )
        assert t.e2e_s <= elapsed * 1.01 + 1e-3, (
            f"timing claims {t.e2e_s:.6f} s but only {elapsed:.6f} s passed on the run's clock"
        )
        if clock.is_virtual:
            assert abs(elapsed - t.e2e_s) <= 1e-6 + 1e-6 * elapsed, (
                f"in virtual time the timing ({t.e2e_s:.9f} s) must account for all the "
                f"simulated time of the call ({elapsed:.9f} s)"
            )
        if floor_s is not None:
            floor = floor_s(request)
            assert t.e2e_s >= floor * (1 - 1e-9), (
                f"e2e {t.e2e_s:.6f} s is faster than the physical floor {floor:.6f} s"
            )

        results: list[InferenceResult] = []

        async def one(i: int) -> None:
            results.append(await sub.infer(request.model_copy(update={"step_id": f"check-{i}"})))

        with anyio.fail_after(3600):
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(one, i)
        assert len(results) == 4, "concurrent calls did not all complete"

        before = {task.id for task in anyio.get_running_tasks()}
        t1 = clock.current_time()
        with anyio.move_on_after(max(1e-4, result.timing.e2e_s / 10)):
            await sub.infer(request.model_copy(update={"max_output_tokens": 4096}))
        assert clock.current_time() - t1 < 5.0, "a cancelled call did not stop promptly"
        await anyio.lowlevel.checkpoint()
        left = [t.name for t in anyio.get_running_tasks() if t.id not in before]
        assert not left, f"a cancelled call left tasks running: {left}"

        if isinstance(sub, StreamingSubstrate):
            t2 = clock.current_time()
            texts: list[str] = []
            times: list[float] = []
            async with sub.stream(request) as stream:
                async for chunk in stream:
                    texts.append(chunk.text)
                    times.append(chunk.t_s)
                streamed = stream.result()
            assert "".join(texts) == streamed.text, "streamed chunks differ from the result text"
            assert times == sorted(times), "stream chunks arrived out of time order"
            if times:
                first = times[0] - t2
                assert first <= streamed.timing.ttft_s * 1.01 + 5e-3, (
                    f"first chunk after {first:.6f} s, but ttft_s is {streamed.timing.ttft_s:.6f}"
                )
    finally:
        await sub.aclose()
        await sub.aclose()
