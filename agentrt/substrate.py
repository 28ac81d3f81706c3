"""The `Substrate` protocol and its data: `InferenceRequest`, `InferenceResult`, `Timing`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, model_validator

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
    "Usage",
]

FinishReason = Literal["stop", "length", "tool_call", "content_filter", "error"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Message(BaseModel):
    """One chat message."""

    model_config = _FROZEN

    role: Literal["system", "user", "assistant", "tool"]
    content: str


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
        """``prompt_tokens`` if given, else a 4-characters-per-token estimate of the messages."""
        if self.prompt_tokens is not None:
            return self.prompt_tokens
        chars = sum(len(m.content) for m in self.messages)
        # Chat templates add a few tokens per message around the content.
        return max(1, (chars + 3) // 4 + 4 * len(self.messages))


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


class TokenChunk(BaseModel):
    """A piece of streamed output and when it arrived on the run's clock."""

    model_config = _FROZEN

    text: str
    index: NonNegativeInt = Field(description="Index of the first token in this chunk.")
    tokens: Annotated[int, Field(ge=1)] = 1
    t_s: float = Field(description="Arrival time on the run's clock.")


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
