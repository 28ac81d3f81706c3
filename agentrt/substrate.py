"""The `Substrate` protocol and its data: `InferenceRequest`, `InferenceResult`, `Timing`.

The conversation data follows OpenAI's chat-completions semantics so that every endpoint maps
1:1: a `Message` may carry the assistant's `ToolCall` list or answer one (``role="tool"`` with its
``tool_call_id``); a request may offer `ToolSpec` list with a ``tool_choice``; a result may end in
tool calls (``finish_reason="tool_calls"``) and a stream carries them as `ToolCallDelta` pieces.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Literal, Protocol, runtime_checkable

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    NonNegativeFloat,
    NonNegativeInt,
    model_validator,
)

__all__ = [
    "FinishReason",
    "InferenceRequest",
    "InferenceResult",
    "Message",
    "StreamingSubstrate",
    "Substrate",
    "Timing",
    "TokenChunk",
    "TokenStream",
    "ToolCall",
    "ToolCallDelta",
    "ToolSpec",
    "Usage",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")

#: ``tool_choice`` values that are not a tool name.
_TOOL_CHOICE_MODES = frozenset({"auto", "none", "required"})


class ToolCall(BaseModel):
    """One tool call a model asked for: an id, the tool's name and its arguments as JSON text.

    The arguments stay the model's text (it may be invalid JSON or miss a field): the agent
    validates them against the tool's argument model and answers a bad call with a tool message.

    Example:
        >>> call = ToolCall(id="call_1", name="search", arguments='{"query": "parser bug"}')
        >>> call.parsed_arguments()
        {'query': 'parser bug'}
    """

    model_config = _FROZEN

    id: str = Field(min_length=1, description="Unique within the conversation, e.g. 'call_1'.")
    name: str = Field(min_length=1, description="The tool's name.")
    arguments: str = Field(default="{}", description="The arguments as JSON text.")

    def parsed_arguments(self) -> JsonValue:
        """``arguments`` parsed as JSON.

        Raises:
            ValueError: the text is not JSON (the message says where).
        """
        parsed: JsonValue = json.loads(self.arguments) if self.arguments.strip() else {}
        return parsed


class ToolCallDelta(BaseModel):
    """A piece of a streamed tool call (OpenAI's ``delta.tool_calls[i]``).

    The first delta of a call carries its ``id`` and ``name``; later ones append to
    ``arguments``. Deltas with the same ``index`` belong to the same call.
    """

    model_config = _FROZEN

    index: NonNegativeInt = Field(description="Which call of the message this piece belongs to.")
    id: str | None = None
    name: str | None = None
    arguments: str = ""


def _empty_object_schema() -> dict[str, JsonValue]:
    return {"type": "object", "properties": {}}


class ToolSpec(BaseModel):
    """A tool offered to the model: name, description and a JSON schema of its arguments.

    Example:
        >>> schema = {"type": "object", "properties": {"query": {"type": "string"}}}
        >>> spec = ToolSpec(name="search", description="Search the docs.", parameters=schema)
        >>> spec.to_openai()["function"]["name"]
        'search'
    """

    model_config = _FROZEN

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="OpenAI's name rule.")
    description: str = ""
    parameters: dict[str, JsonValue] = Field(
        default_factory=_empty_object_schema,
        description="JSON schema of the arguments object.",
    )

    @functools.cached_property
    def rendered_chars(self) -> int:
        """Characters of this tool's compact JSON (what a chat template puts in the prompt)."""
        return len(json.dumps(self.to_openai(), separators=(",", ":")))

    def to_openai(self) -> dict[str, JsonValue]:
        """The chat-completions ``tools[i]`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


class Message(BaseModel):
    """One chat message, with OpenAI's roles.

    An assistant message may carry ``tool_calls`` (its ``content`` may then be empty); a ``tool``
    message answers one call and names it with ``tool_call_id``.

    Example:
        >>> ask = Message(role="assistant", tool_calls=(ToolCall(id="c1", name="search"),))
        >>> Message(role="tool", content="3 hits", tool_call_id="c1").tool_call_id
        'c1'
    """

    model_config = _FROZEN

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = Field(
        default=(), description="Assistant messages only: the tools the model asked for."
    )
    tool_call_id: str | None = Field(
        default=None, description="Tool messages only: the call this message answers."
    )
    name: str | None = Field(default=None, description="Tool messages: the tool's name.")

    @model_validator(mode="after")
    def _check_role_fields(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not {self.role!r} ones")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id: the id of the call it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"only tool messages carry tool_call_id, not {self.role!r} ones")
        return self

    def text_length(self) -> int:
        """Characters the model reads for this message (content plus tool-call names and JSON)."""
        n = len(self.content)
        for call in self.tool_calls:
            n += len(call.name) + len(call.arguments)
        return n


class InferenceRequest(BaseModel):
    """One inference call: what to generate and the hints a substrate needs to time it.

    A substrate reads the conversation from ``messages`` (or all of it as one string from the
    ``prompt_text`` property), generates at most ``max_output_tokens`` tokens, and may use the
    other fields as hints. The agent loop fills ``run_id``, ``step_id``, ``step_kind``, ``slo``,
    ``substrate_hint`` and ``priority`` from the plan's step. There is no ``prompt`` field:
    read ``prompt_text`` (a wrong name raises an AttributeError naming the right one).

    Example:
        >>> req = InferenceRequest.from_prompt("Plan a fix.", max_output_tokens=200)
        >>> req.prompt_text, req.max_output_tokens, req.messages[0].role
        ('Plan a fix.', 200, 'user')
        >>> req.estimated_prompt_tokens()  # no prompt_tokens hint: ~4 characters per token
        7
        >>> req.prompt
        Traceback (most recent call last):
        AttributeError: InferenceRequest has no attribute 'prompt'; use 'prompt_text' (all \
messages joined) or 'messages'
    """

    model_config = _FROZEN

    messages: tuple[Message, ...] = Field(
        min_length=1, description="The conversation, oldest first; at least one message."
    )
    model: str | None = Field(default=None, description="Model name; None = substrate default.")
    max_output_tokens: Annotated[int, Field(ge=1)] = Field(
        default=256, description="Generate at most this many tokens."
    )
    prompt_tokens: NonNegativeInt | None = Field(
        default=None,
        description="Prompt length in tokens if the caller knows it (a hint for emulated engines); "
        "None = the substrate counts or estimates.",
    )
    temperature: Annotated[float, Field(ge=0, le=2)] | None = Field(
        default=None, description="Sampling temperature in [0, 2]; None = substrate default."
    )
    seed: int | None = Field(default=None, description="Sampling seed, for reproducible output.")
    # Routing and accounting context, filled by the agent loop.
    run_id: str | None = Field(default=None, description="The run this call belongs to.")
    step_id: str | None = Field(default=None, description="The plan step making the call.")
    step_kind: str | None = Field(
        default=None, description="That step's kind: think, search, debug, answer, ..."
    )
    slo: str | None = Field(default=None, description="SLO class, e.g. 'interactive' or 'batch'.")
    substrate_hint: str | None = Field(
        default=None, description="Preferred substrate name (used by routers)."
    )
    priority: int = Field(default=0, description="Higher is served first by emulated engines.")
    tools: tuple[ToolSpec, ...] = Field(
        default=(), description="Tools the model may call; empty = a plain completion."
    )
    tool_choice: str | None = Field(
        default=None,
        description="'auto', 'none', 'required', or one tool's name; None = the substrate's "
        "default ('auto' when tools are offered).",
    )

    @model_validator(mode="after")
    def _check_tools(self) -> InferenceRequest:
        if self.tool_choice is None or self.tool_choice in _TOOL_CHOICE_MODES:
            return self
        names = [t.name for t in self.tools]
        if self.tool_choice not in names:
            offered = ", ".join(names) or "none offered"
            raise ValueError(
                f"tool_choice {self.tool_choice!r} is not 'auto', 'none', 'required' or the name "
                f"of an offered tool ({offered})"
            )
        return self

    def __getattr__(self, name: str) -> object:
        hint = _REQUEST_HINTS.get(name)
        if hint is not None:
            raise AttributeError(f"InferenceRequest has no attribute {name!r}; use {hint}")
        return super().__getattr__(name)  # type: ignore[misc]

    @classmethod
    def from_prompt(cls, prompt: str, **fields: object) -> InferenceRequest:
        """A request with a single user message."""
        return cls.model_validate({"messages": [{"role": "user", "content": prompt}], **fields})

    @property
    def prompt_text(self) -> str:
        """All message contents joined, for substrates that need one string."""
        return "\n".join(m.content for m in self.messages)

    def estimated_prompt_tokens(self) -> int:
        """``prompt_tokens`` if given, else a 4-characters-per-token estimate.

        The estimate counts the messages (content, tool-call names and arguments) and the
        offered tools' schemas, which chat templates put in the prompt too.
        """
        if self.prompt_tokens is not None:
            return self.prompt_tokens
        chars = sum(m.text_length() for m in self.messages) + _tools_chars(self.tools)
        # Chat templates add a few tokens per message around the content.
        return max(1, (chars + 3) // 4 + 4 * len(self.messages))


def _tools_chars(tools: tuple[ToolSpec, ...]) -> int:
    """Characters of the offered tools' JSON, as a chat template would render them."""
    return sum(t.rendered_chars for t in tools)


#: Names people reach for on a request, and what to use instead.
_REQUEST_HINTS = {
    "prompt": "'prompt_text' (all messages joined) or 'messages'",
    "text": "'prompt_text' (all messages joined) or 'messages'",
    "content": "'prompt_text' (all messages joined) or 'messages'",
    "max_tokens": "'max_output_tokens'",
    "max_new_tokens": "'max_output_tokens'",
    "input_tokens": "'prompt_tokens' (a hint, may be None) or 'estimated_prompt_tokens()'",
    "step": "'step_id' or 'step_kind'",
    "kind": "'step_kind'",
}


class Timing(BaseModel):
    """Where one inference call's time went. All durations are seconds of the run's clock.

    The five categories are disjoint and add up to ``e2e_s``: ``queue_s`` waiting for a batch slot,
    ``network_s`` between client and endpoint, ``prefill_s`` computing the prompt, ``decode_s``
    generating tokens, ``comm_s`` inter-chip communication (tensor-parallel all-reduce, pipeline
    and inter-wafer hops). ``ttft_s`` and ``tpot_s`` are derived unless the substrate measured them.

    Example:
        >>> t = Timing(queue_s=0.01, prefill_s=0.05, decode_s=0.4)
        >>> round(t.e2e_s, 3), round(t.ttft_s, 3)
        (0.46, 0.06)
    """

    model_config = _FROZEN

    queue_s: NonNegativeFloat = Field(default=0.0, description="Waiting for a batch slot.")
    network_s: NonNegativeFloat = Field(default=0.0, description="Client <-> endpoint transfer.")
    prefill_s: NonNegativeFloat = Field(default=0.0, description="Prompt processing compute.")
    decode_s: NonNegativeFloat = Field(default=0.0, description="Token generation compute.")
    comm_s: NonNegativeFloat = Field(default=0.0, description="Inter-chip communication.")
    ttft_s: NonNegativeFloat = Field(
        # Fields are validated in order, so the ones above are in ``data`` already.
        default_factory=lambda data: data["queue_s"] + data["network_s"] + data["prefill_s"],
        description="Time to first token; derived as queue + network + prefill when not given.",
    )
    tpot_s: NonNegativeFloat = Field(
        default=0.0, description="Mean time per output token after the first."
    )

    @model_validator(mode="after")
    def _check_ttft(self) -> Timing:
        if self.ttft_s > self.e2e_s + 1e-9:
            raise ValueError(f"ttft_s ({self.ttft_s}) cannot exceed e2e_s ({self.e2e_s})")
        return self

    @property
    def e2e_s(self) -> float:
        """End-to-end time of the call: the sum of the five categories."""
        return self.queue_s + self.network_s + self.prefill_s + self.decode_s + self.comm_s

    @classmethod
    def build(
        cls,
        *,
        output_tokens: int,
        queue_s: float = 0.0,
        network_s: float = 0.0,
        prefill_s: float = 0.0,
        decode_s: float = 0.0,
        comm_s: float = 0.0,
        ttft_s: float | None = None,
    ) -> Timing:
        """A `Timing` with ``tpot_s`` derived from the output length.

        ``tpot_s`` is the time after the first token divided by the tokens after the first.
        """
        e2e = queue_s + network_s + prefill_s + decode_s + comm_s
        ttft = queue_s + network_s + prefill_s if ttft_s is None else ttft_s
        tpot = (e2e - ttft) / (output_tokens - 1) if output_tokens > 1 else 0.0
        return cls(
            queue_s=queue_s,
            network_s=network_s,
            prefill_s=prefill_s,
            decode_s=decode_s,
            comm_s=comm_s,
            ttft_s=ttft,
            tpot_s=max(0.0, tpot),
        )

    def plus(self, other: Timing) -> Timing:
        """Category-wise sum (e.g. over a step's attempts); ``ttft_s``/``tpot_s`` kept from self."""
        return Timing(
            queue_s=self.queue_s + other.queue_s,
            network_s=self.network_s + other.network_s,
            prefill_s=self.prefill_s + other.prefill_s,
            decode_s=self.decode_s + other.decode_s,
            comm_s=self.comm_s + other.comm_s,
            ttft_s=self.ttft_s,
            tpot_s=self.tpot_s,
        )


class Usage(BaseModel):
    """Tokens in and out of one call."""

    model_config = _FROZEN

    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0


class InferenceResult(BaseModel):
    """What a substrate returns for one `InferenceRequest`.

    Example:
        >>> r = InferenceResult(text="ok", usage=Usage(input_tokens=10, output_tokens=1),
        ...                     timing=Timing(decode_s=0.01), substrate="fixed", model="test")
        >>> r.finish_reason
        'stop'
    """

    model_config = _FROZEN

    text: str
    usage: Usage
    timing: Timing
    substrate: str = Field(description="Name of the substrate that served the call.")
    model: str
    finish_reason: FinishReason = "stop"
    cost_usd: NonNegativeFloat = 0.0
    energy_j: NonNegativeFloat = 0.0
    chips: NonNegativeInt = Field(
        default=0, description="Accelerators that served the call (0 = n/a)."
    )
    attributes: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Substrate-specific facts for traces (e.g. routing decision, deployment).",
    )
    tool_calls: tuple[ToolCall, ...] = Field(
        default=(), description="The tools the model asked for (finish_reason 'tool_calls')."
    )

    @model_validator(mode="after")
    def _check_tool_calls(self) -> InferenceResult:
        if self.finish_reason == "tool_calls" and not self.tool_calls:
            raise ValueError("finish_reason 'tool_calls' needs at least one tool call")
        return self

    def message(self) -> Message:
        """The assistant message to append to the conversation."""
        return Message(role="assistant", content=self.text, tool_calls=self.tool_calls)


class TokenChunk(BaseModel):
    """A piece of streamed output and when it arrived on the run's clock."""

    model_config = _FROZEN

    text: str
    index: NonNegativeInt = Field(description="Index of the first token in this chunk.")
    tokens: Annotated[int, Field(ge=1)] = 1
    t_s: float = Field(description="Arrival time on the run's clock.")
    tool_calls: tuple[ToolCallDelta, ...] = Field(
        default=(), description="Pieces of tool calls that arrived with this chunk."
    )


class TokenStream(Protocol):
    """**Protocol:** an async iterator of `TokenChunk` whose final result is known at the end."""

    def __aiter__(self) -> AsyncIterator[TokenChunk]:
        """Iterate over chunks as they arrive."""
        ...

    def result(self) -> InferenceResult:
        """The complete result; only valid after iteration finished."""
        ...


@runtime_checkable
class Substrate(Protocol):
    """**Protocol:** turns one `InferenceRequest` into one `InferenceResult`.

    A substrate is like an httpx transport: one async call plus ``aclose()``. It reads time only
    through ``agentrt.current_clock()`` / anyio, so it runs in real and virtual time alike.
    Transient failures raise `agentrt.errors.RetryableError`; everything else raises
    `agentrt.errors.SubstrateError`. Cancellation must propagate.

    Example:
        >>> class Echo:
        ...     name = "echo"
        ...     async def infer(self, request: InferenceRequest) -> InferenceResult:
        ...         return InferenceResult(text=request.prompt_text, usage=Usage(),
        ...                                timing=Timing(), substrate=self.name, model="echo")
        ...     async def aclose(self) -> None: ...
        >>> isinstance(Echo(), Substrate)
        True
    """

    name: str

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Run one inference call."""
        ...

    async def aclose(self) -> None:
        """Release resources; safe to call more than once."""
        ...


@runtime_checkable
class StreamingSubstrate(Substrate, Protocol):
    """**Protocol:** a `Substrate` that can also stream tokens as they are generated.

    Example:
        >>> async def show(sub: StreamingSubstrate, req: InferenceRequest) -> None:
        ...     async with sub.stream(req) as chunks:
        ...         async for chunk in chunks:
        ...             print(chunk.t_s, chunk.text)
        ...         print(chunks.result().timing.ttft_s)
    """

    def stream(self, request: InferenceRequest) -> AbstractAsyncContextManager[TokenStream]:
        """Open a token stream for ``request``; closing it cancels the generation."""
        ...
