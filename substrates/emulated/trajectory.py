"""A recorded trajectory as an engine's content: each request gets the turn it asks for.

An emulated engine cannot decide what to say; with a trajectory it plays a recorded run. The
reply to a request whose conversation already holds n assistant messages is the recorded turn
n + 1 of that conversation (found by its opening messages, else by the request's step id), with
its text, its tool calls and its output token count; the engine times it for the request's real
prompt length. A request beyond the recorded turns is an error, never a made-up answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import final

from agentrt.errors import BadResponse
from agentrt.substrate import InferenceRequest, Message, ToolCall, ToolCallDelta
from agentrt.trajectory import Trajectory, TurnRecord, opening_key, read_trajectory
from substrates.emulated.tokens import count_tokens, split_tokens

__all__ = ["ToolCallText", "TrajectoryContent"]


@final
class ToolCallText:
    """A reply of ``tokens`` tokens: its text first, then its tool calls, streamed piece by piece.

    The tokens are shared out by length (text, then each call's name and arguments; a call has
    at least one). A call's first token carries its id and name, the next ones its arguments,
    as OpenAI streams them.

    Example:
        >>> call = ToolCall(id="c1", name="search", arguments='{"query": "bug"}')
        >>> reply = ToolCallText("", (call,), 3)
        >>> [d.name or d.arguments for i in range(3) for d in reply.deltas(i)]
        ['search', '{"query"', ': "bug"}']
    """

    __slots__ = ("_arguments", "_size", "_starts", "_text", "_text_tokens", "tokens", "tool_calls")

    def __init__(self, text: str, tool_calls: Sequence[ToolCall], tokens: int) -> None:
        self._text = text
        self.tool_calls = tuple(tool_calls)
        calls = len(self.tool_calls)
        self.tokens = max(tokens, calls + (1 if text else 0), 1)
        weights = [len(c.name) + len(c.arguments) for c in self.tool_calls]
        spare = self.tokens - calls
        share = len(text) / (len(text) + sum(weights)) if text else 0.0
        self._text_tokens = min(spare, max(1 if text else 0, round(spare * share))) if calls else 0
        if not calls:
            self._text_tokens = self.tokens
        spare -= self._text_tokens
        counts = [1 + math.floor(spare * w / max(1, sum(weights))) for w in weights]
        if counts:
            counts[-1] += self.tokens - self._text_tokens - sum(counts)
        self._starts: list[int] = []
        self._arguments: list[list[str]] = []
        start = self._text_tokens
        for call, count in zip(self.tool_calls, counts, strict=True):
            self._starts.append(start)
            self._arguments.append(split_tokens(call.arguments, count - 1) if count > 1 else [])
            start += count
        self._size = (
            math.ceil(len(text) / self._text_tokens)
            if self._text_tokens > 1 and text
            else len(text)
        )

    def piece(self, index: int) -> str:
        """The ``index``-th piece of the text ("" for the tool-call tokens)."""
        if index < 0 or index >= self._text_tokens or not self._size:
            return ""
        return self._text[index * self._size : (index + 1) * self._size]

    def deltas(self, index: int) -> tuple[ToolCallDelta, ...]:
        """The tool-call pieces that arrive with token ``index`` (empty for text tokens)."""
        if index < self._text_tokens or index >= self.tokens:
            return ()
        which = next(k for k in range(len(self._starts) - 1, -1, -1) if self._starts[k] <= index)
        call = self.tool_calls[which]
        offset = index - self._starts[which]
        pieces = self._arguments[which]
        if offset == 0:
            arguments = "" if pieces else call.arguments
            return (ToolCallDelta(index=which, id=call.id, name=call.name, arguments=arguments),)
        return (ToolCallDelta(index=which, arguments=pieces[offset - 1]),)

    def text(self) -> str:
        """The whole text (the tool calls are in ``tool_calls``)."""
        return self._text


class TrajectoryContent:
    """A content source that plays a recorded trajectory, turn by turn.

    Example:
        >>> from agentrt.trajectory import TrajectoryHeader
        >>> task = Message(role="user", content="fix it")
        >>> calls = (ToolCall(id="c1", name="debug", arguments="{}"),)
        >>> run = Trajectory(header=TrajectoryHeader(messages=(task,)), records=(
        ...     TurnRecord(index=1, tool_calls=calls, finish_reason="tool_calls",
        ...                output_tokens=12),
        ...     TurnRecord(index=2, text="fixed", output_tokens=3)))
        >>> source = TrajectoryContent(run)
        >>> reply = source.lazy_text_for(InferenceRequest(messages=(task,)), 256)
        >>> reply.tokens, reply.tool_calls[0].name
        (12, 'debug')

    Args:
        trajectory: the trajectory, or the path of its file.
    """

    def __init__(self, trajectory: Trajectory | str | Path) -> None:
        if not isinstance(trajectory, Trajectory):
            self.source = str(trajectory)
            trajectory = read_trajectory(trajectory)
        else:
            self.source = "the trajectory"
        self.trajectory = trajectory
        self._turns: dict[tuple[int, int], TurnRecord] = {}
        self._by_opening: dict[str, list[int]] = {}
        self._by_step: dict[str, list[int]] = {}
        for thread in trajectory.threads():
            messages, _ = trajectory.opening(thread)
            self._by_opening.setdefault(opening_key(messages), []).append(thread)
        for turn in trajectory.turns:
            self._turns.setdefault((turn.thread, turn.index), turn)
            if turn.step_id is not None:
                threads = self._by_step.setdefault(turn.step_id, [])
                if turn.thread not in threads:
                    threads.append(turn.thread)
        self._served: set[tuple[int, int]] = set()

    def turn_for(self, request: InferenceRequest) -> TurnRecord:
        """The recorded turn that answers ``request``.

        Raises:
            BadResponse: no recorded conversation matches, or it has no such turn.
        """
        index = 1 + _assistants(request.messages)
        threads = self._by_opening.get(opening_key(request.messages))
        if threads is None and request.step_id is not None:
            threads = self._by_step.get(request.step_id)
        if threads is None:
            known = self.trajectory.threads()
            if len(known) != 1:
                raise BadResponse(
                    f"{self.source} holds no conversation that opens like this request "
                    f"(step {request.step_id!r}, {len(known)} recorded conversations): "
                    "replay the run that was recorded"
                )
            threads = known
        found = [t for t in threads if (t, index) in self._turns]
        if not found:
            recorded = max(i for t in threads for (u, i) in self._turns if u == t)
            raise BadResponse(
                f"{self.source}: the request's conversation holds {index - 1} assistant "
                f"messages, so it asks for turn {index}, but the recorded conversation has "
                f"{recorded} turns; the replayed run went further than the recorded one"
            )
        thread = next((t for t in found if (t, index) not in self._served), found[0])
        self._served.add((thread, index))
        return self._turns[thread, index]

    def lazy_text_for(self, request: InferenceRequest, max_tokens: int) -> ToolCallText:
        """The recorded turn as a `ToolCallText` of its recorded output tokens."""
        turn = self.turn_for(request)
        tokens = turn.output_tokens or count_tokens(
            turn.text + "".join(c.name + c.arguments for c in turn.tool_calls)
        )
        return ToolCallText(turn.text, turn.tool_calls, tokens)

    def text_for(self, request: InferenceRequest, max_tokens: int) -> tuple[str, int]:
        """The recorded turn's text and output tokens."""
        reply = self.lazy_text_for(request, max_tokens)
        return reply.text(), reply.tokens


def _assistants(messages: Sequence[Message]) -> int:
    return sum(m.role == "assistant" for m in messages)
