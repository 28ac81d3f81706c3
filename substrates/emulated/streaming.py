"""`EngineStream`: an emulated engine's tokens as they arrive, delayed by the network time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import final

import anyio

from agentrt import current_clock
from agentrt.errors import BadResponse
from agentrt.substrate import InferenceResult, TokenChunk
from substrates.emulated.content import LazyText
from substrates.emulated.scheduler import ServiceRecord, ServiceStream
from substrates.emulated.trajectory import ToolCallText

__all__ = ["EngineStream"]


@final
class EngineStream:
    """A `TokenStream` over a scheduler stream, delayed by the response's network time.

    A reply with tool calls (`ToolCallText`) streams them as ``TokenChunk.tool_calls`` deltas
    on the tokens that carry them. ``finish`` builds the result from the scheduler's record.
    """

    def __init__(
        self,
        content: LazyText,
        served: ServiceStream,
        *,
        delay_s: float,
        t0: float,
        finish: Callable[[ServiceRecord, float], InferenceResult],
    ) -> None:
        self._content = content  # pieces are cut as they leave: memory stays one chunk
        self._served = served
        self._delay = delay_s
        self._t0 = t0
        self._finish = finish
        self._result: InferenceResult | None = None

    def __aiter__(self) -> AsyncIterator[TokenChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TokenChunk]:
        clock = current_clock()
        calls = self._content if isinstance(self._content, ToolCallText) else None
        async for arrivals in self._served.arrivals(max_tokens=1):
            for offset, t in enumerate(arrivals.times_s):
                index = arrivals.index + offset
                due = t + self._delay
                delay = due - clock.current_time()
                if delay > 0:
                    await anyio.sleep(delay)
                piece = self._content.piece(index)
                if calls is None:
                    yield TokenChunk(text=piece, index=index, t_s=clock.current_time())
                else:
                    yield TokenChunk(
                        text=piece,
                        index=index,
                        t_s=clock.current_time(),
                        tool_calls=calls.deltas(index),
                    )
        record = await self._served.wait()
        self._result = self._finish(record, clock.current_time() - self._t0)

    def result(self) -> InferenceResult:
        """The complete result; only valid after the stream was read to the end."""
        if self._result is None:
            raise BadResponse("the stream was not read to the end; its result is not known yet")
        return self._result
