"""`EmulatedEngine`: the performance model and the scheduler behind the `Substrate` protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import final

import anyio

from agentrt import current_clock
from agentrt.errors import BadResponse, ConfigError
from agentrt.substrate import InferenceRequest, InferenceResult, ToolCall, Usage
from substrates.emulated.comm import network_s
from substrates.emulated.content import (
    ContentSource,
    LazyText,
    SyntheticContent,
    content_for,
    parse_content,
)
from substrates.emulated.deployment import Deployment, weight_bytes
from substrates.emulated.predict import cost_usd, energy_j
from substrates.emulated.scheduler import Scheduler, SchedulerStatistics, ServiceRecord
from substrates.emulated.service import PerfServiceModel, burst_attributes
from substrates.emulated.sizing import (
    DEFAULT_MODEL,
    build_deployment,
    check_context,
    check_fits,
)
from substrates.emulated.streaming import EngineStream
from substrates.emulated.trajectory import ToolCallText, TrajectoryContent

__all__ = [
    "DEFAULT_JITTER",
    "DEFAULT_STALL_PROB",
    "EmulatedEngine",
    "build_engine",
]

#: Seeded noise on every engine pass (lognormal sigma) and rare stalls: honest tails.
#: Assumptions, not measurements: 2% per-pass jitter; one pass in 5,000 stalls for 20
#: single-request iterations (a preemption, a GC pause, a slow collective).
DEFAULT_JITTER = 0.02
DEFAULT_STALL_PROB = 2e-4
_STALL_ITERATIONS = 20.0
#: An SLO class worth a higher priority in the engine's queue.
_INTERACTIVE = frozenset({"interactive", "latency-critical", "realtime"})


@final
class EmulatedEngine:
    """An emulated inference engine (wafer-scale or GPU) that implements `Substrate`.

    Requests share the engine through an iteration-level continuous-batching scheduler on the
    run's clock; each pass is priced by the calibrated performance model. Works in real time
    (responses are paced by the engine) and in virtual time (instant, same timings).

    Example:
        >>> import agentrt
        >>> engine = EmulatedEngine.from_profile("wse3", "llama-3.1-70b", seed=1, jitter=0)
        >>> req = agentrt.InferenceRequest.from_prompt("hi", prompt_tokens=1000,
        ...                                           max_output_tokens=200)
        >>> result = agentrt.run(engine.infer, req, clock=agentrt.VirtualClock())
        >>> result.usage.output_tokens, result.chips
        (200, 4)

    Args:
        deployment: the model on its chips (see `substrates.emulated.sizing.size_deployment`).
        name: the substrate name in results and traces; default the hardware's name.
        content: where the text comes from; default synthetic text of the requested length.
        seed: seeds jitter, stalls and synthetic text.
        warm: True = weights already loaded; False = the first request waits for the load.
        cold_start_s: load time when not warm; default the weights streamed over the chips'
            network links (a floor: real engines add process start and compilation).
        jitter: lognormal sigma of per-pass noise (0 = deterministic).
        stall_prob: probability that a pass stalls.
        stall_s: stall length; default 20 single-request decode iterations.
    """

    provider = "agentrt.emulated"
    remote = False

    def __init__(
        self,
        deployment: Deployment,
        *,
        name: str | None = None,
        content: ContentSource | None = None,
        seed: int | None = None,
        warm: bool = True,
        cold_start_s: float | None = None,
        jitter: float = DEFAULT_JITTER,
        stall_prob: float = DEFAULT_STALL_PROB,
        stall_s: float | None = None,
    ) -> None:
        check_fits(deployment)
        self.deployment = deployment
        self.name = name or deployment.hardware.name
        self.model = deployment.model.name
        self.chips = deployment.chips
        #: Prompt plus output tokens one request may hold (the model's context window).
        self.context_length_tokens = deployment.model.context_length_tokens
        self._content = content or SyntheticContent(seed=seed)
        service = PerfServiceModel(deployment)
        #: Prompt plus output tokens one request's KV cache may hold on this deployment (can be
        #: less than the context window: a request beyond it raises `DoesNotFitError`).
        self.kv_capacity_tokens = int(service.kv_capacity_tokens)
        one_iteration = service.decode_iter([deployment.reserved_context_tokens]).total_s
        self._scheduler = Scheduler(
            service,
            seed=seed or 0,
            jitter=jitter,
            stall_prob=stall_prob,
            stall_s=_STALL_ITERATIONS * one_iteration if stall_s is None else stall_s,
        )
        load_bandwidth = deployment.hardware.scale_out_bandwidth_gb_per_s * 1e9 * deployment.chips
        self.cold_start_s = (
            weight_bytes(deployment.model, deployment.precision) / load_bandwidth
            if cold_start_s is None
            else cold_start_s
        )
        self._loaded = warm
        self._loading: anyio.Event | None = None
        self._network_s = network_s(deployment)
        self._described = deployment.describe()
        # Usage is immutable and requests repeat a few shapes: validate each shape once.
        self._usage: dict[tuple[int, int], Usage] = {}

    @classmethod
    def from_profile(
        cls,
        hardware: str,
        model: str = "llama-3.1-70b",
        **options: object,
    ) -> EmulatedEngine:
        """An engine on the smallest deployment of ``hardware`` that fits ``model``.

        ``options`` are those of `build_engine` (chips, tp, pp, precision, max_batch,
        network_rtt_ms, spec_decode, stack, ep, seed, warm, jitter, ...).
        """
        return build_engine(hardware, model=model, **options)  # type: ignore[arg-type]

    # -- the Substrate protocol ------------------------------------------------------------

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Serve one request on the emulated engine, on the run's clock."""
        prompt, content, priority = self._prepare(request)
        clock = current_clock()
        t0 = clock.current_time()
        if not self._loaded:
            await self._wait_loaded()
        loaded = clock.current_time()
        record = await self._scheduler.submit(prompt, content.tokens, priority=priority)
        # The whole round trip is waited after the server's work rather than half before and
        # half after: every request of this engine has the same network time, so submitting
        # half a round trip early only translates the server's schedule in time (same order,
        # same batches, same draws) and the client sees every token at the same moment. It
        # saves one clock wait per request.
        if self._network_s > 0:
            await anyio.sleep(self._network_s)
        cold = max(0.0, loaded - t0)
        elapsed = clock.current_time() - t0
        return self._result(
            request, content.text(), record, cold_s=cold, elapsed_s=elapsed, tool_calls=content
        )

    def stream(self, request: InferenceRequest) -> AbstractAsyncContextManager[EngineStream]:
        """Stream tokens as the engine emits them: the first at TTFT, then the per-token gaps."""
        return self._stream(request)

    @asynccontextmanager
    async def _stream(self, request: InferenceRequest) -> AsyncIterator[EngineStream]:
        prompt, content, priority = self._prepare(request)
        clock = current_clock()
        t0 = clock.current_time()
        await self._wait_loaded()
        cold = max(0.0, clock.current_time() - t0)
        # As in `infer`: the server's schedule is translated by half a round trip, so each token
        # reaches the client a whole round trip after the engine emits it.
        async with self._scheduler.stream(prompt, content.tokens, priority=priority) as served:

            def finish(record: ServiceRecord, elapsed_s: float) -> InferenceResult:
                return self._result(
                    request,
                    content.text(),
                    record,
                    cold_s=cold,
                    elapsed_s=elapsed_s,
                    tool_calls=content,
                )

            yield EngineStream(content, served, delay_s=self._network_s, t0=t0, finish=finish)

    async def warm_up(self) -> None:
        """Load the weights now, so that no request pays the cold start."""
        await self._wait_loaded()

    def statistics(self) -> SchedulerStatistics:
        """A snapshot of the engine's scheduler (queue, batch, KV use, busy time, events)."""
        return self._scheduler.statistics()

    async def aclose(self) -> None:
        """Nothing to release (the scheduler has no background task)."""

    def __repr__(self) -> str:
        return f"EmulatedEngine({self.name!r}, {self.deployment.describe()})"

    # -- internals ---------------------------------------------------------------------------

    def _prepare(self, request: InferenceRequest) -> tuple[int, LazyText, int]:
        if request.model is not None and request.model != self.model:
            raise BadResponse(
                f"this {self.name} engine serves {self.model}, not {request.model}; build one "
                f"with --model {request.model}"
            )
        prompt = max(1, request.estimated_prompt_tokens())
        # Before any text exists: a request beyond the context window fails at once, whatever
        # max_output_tokens it names (as a real server answers 400).
        check_context(self.model, self.context_length_tokens, prompt, request.max_output_tokens)
        content = content_for(self._content, request, request.max_output_tokens)
        priority = request.priority + (1 if request.slo in _INTERACTIVE else 0)
        return prompt, content, priority

    async def _wait_loaded(self) -> None:
        # The first caller loads the weights; the others wait for it. If the loader is
        # cancelled, a waiter takes over, so a cancelled request never leaves the engine stuck.
        while not self._loaded:
            loading = self._loading
            if loading is not None:
                await loading.wait()
                continue
            loading = self._loading = anyio.Event()
            try:
                await anyio.sleep(self.cold_start_s)
                self._loaded = True
            finally:
                self._loading = None
                loading.set()

    def _result(
        self,
        request: InferenceRequest,
        text: str,
        record: ServiceRecord,
        *,
        cold_s: float,
        elapsed_s: float,
        tool_calls: LazyText | None = None,
    ) -> InferenceResult:
        dep = self.deployment
        queue = max(0.0, record.queue_s) + cold_s
        # Whatever the scheduler's parts do not cover (float rounding) lands in decode, so the
        # timing accounts for exactly the time that passed.
        decode = max(0.0, elapsed_s - self._network_s - queue - record.prefill_s - record.comm_s)
        ttft = self._network_s + cold_s + record.ttft_s
        n = record.output_tokens
        busy = record.busy_share_s
        price = cost_usd(dep, busy_s=busy, input_tokens=record.prompt_tokens, output_tokens=n)
        usage = self._usage.get((record.prompt_tokens, n))
        if usage is None:
            usage = Usage(input_tokens=record.prompt_tokens, output_tokens=n)
            if len(self._usage) < 4096:
                self._usage[record.prompt_tokens, n] = usage
        finish = "length" if n >= request.max_output_tokens else "stop"
        calls: tuple[ToolCall, ...] = ()
        if isinstance(tool_calls, ToolCallText) and tool_calls.tool_calls:
            calls, finish = tool_calls.tool_calls, "tool_calls"
        # One validation of the whole result, the timing included as a mapping: the same
        # checks as building the `Timing` first, in one pass instead of two.
        return InferenceResult.model_validate(
            {
                "text": text,
                "usage": usage,
                "timing": {
                    "queue_s": queue,
                    "network_s": self._network_s,
                    "prefill_s": record.prefill_s,
                    "decode_s": decode,
                    "comm_s": record.comm_s,
                    "ttft_s": min(ttft, elapsed_s),
                    "tpot_s": record.tpot_s if n > 1 else 0.0,
                },
                "substrate": self.name,
                "model": self.model,
                "finish_reason": finish,
                "cost_usd": price or 0.0,
                "energy_j": energy_j(dep, busy),
                "chips": dep.chips,
                "attributes": {
                    "agentrt.deployment": self._described,
                    "agentrt.precision": dep.precision,
                    "agentrt.stack": dep.stack.name,
                    "agentrt.engine.busy_s": busy,
                    "agentrt.engine.cold_start_s": cold_s,
                    **(burst_attributes(record) if dep.spec_decode else {}),
                },
                **({"tool_calls": calls} if calls else {}),
            }
        )


def build_engine(
    hardware: str,
    *,
    model: str = DEFAULT_MODEL,
    chips: int | None = None,
    tp: int | None = None,
    pp: int | None = None,
    precision: str | None = None,
    max_batch: int = 256,
    network_rtt_ms: float = 0.0,
    spec_decode: str | None = None,
    stack: str | None = None,
    ep: int = 1,
    spec_content: str | None = None,
    seed: int | None = None,
    warm: bool = True,
    cold_start_s: float | None = None,
    jitter: float = DEFAULT_JITTER,
    stall_prob: float = DEFAULT_STALL_PROB,
    content: str | ContentSource = "synthetic",
    trajectory: str | None = None,
    name: str | None = None,
) -> EmulatedEngine:
    """An `EmulatedEngine` for a preset; every keyword is also a command-line option.

    ``stack`` names the serving stack (default the hardware's ``default_stack``; its weight
    precision and speculative decoding apply unless ``precision`` / ``spec_decode`` say
    otherwise, ``spec_decode="off"`` turning speculation off); ``ep`` is the expert-parallel
    degree; ``spec_content`` (``chat``, ``code``, ``reasoning``) picks the stack draft's
    acceptance rate. ``trajectory`` plays a recorded trajectory file (the same as
    ``content="trajectory:FILE"``): each request gets its recorded turn, tool calls included.

    Example:
        >>> engine = build_engine("h100", model="llama-3.1-8b", precision="fp8")
        >>> engine.deployment.describe()
        'h100 x1 (--tp 1 --pp 1, fp8)'
    """
    dep = build_deployment(
        hardware,
        model=model,
        chips=chips,
        tp=tp,
        pp=pp,
        precision=precision,
        max_batch=max_batch,
        network_rtt_ms=network_rtt_ms,
        spec_decode=spec_decode,
        stack=stack,
        ep=ep,
        spec_content=spec_content,
    )
    if trajectory is not None:
        if content != "synthetic":
            raise ConfigError("give either trajectory=FILE or content=..., not both")
        content = TrajectoryContent(trajectory)
    source = parse_content(content, seed=seed) if isinstance(content, str) else content
    return EmulatedEngine(
        dep,
        name=name or hardware,
        content=source,
        seed=seed,
        warm=warm,
        cold_start_s=cold_start_s,
        jitter=jitter,
        stall_prob=stall_prob,
    )
