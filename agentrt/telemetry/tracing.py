"""Spans and metrics for one run, timestamped by the run's clock (OpenTelemetry API only)."""

from __future__ import annotations

import contextlib
import traceback
import weakref
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Literal

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from agentrt.clock import Clock
from agentrt.redact import redact
from agentrt.telemetry import semconv as sc

if TYPE_CHECKING:
    from agentrt.plan import Step
    from agentrt.substrate import InferenceRequest, InferenceResult, Substrate
    from agentrt.tool import ToolResult

__all__ = ["Detail", "Instruments", "RunTracer", "current_span"]

#: ``steps``: run, step, chat and tool spans. ``phases``: also queue/network/prefill/decode spans.
Detail = Literal["steps", "phases"]

_SCOPE = "agentrt"

#: Attribute values a span takes.
_Value = str | int | float | bool | Sequence[str]


_TRACERS: weakref.WeakKeyDictionary[trace.TracerProvider, trace.Tracer] = (
    weakref.WeakKeyDictionary()
)


def _tracer_of(provider: trace.TracerProvider) -> trace.Tracer:
    """The tracer agentrt uses from ``provider``, made once per provider (not once per run)."""
    try:
        return _TRACERS[provider]
    except (KeyError, TypeError):
        pass
    from agentrt import __version__

    tracer = provider.get_tracer(_SCOPE, __version__)
    with contextlib.suppress(TypeError):  # not weak-referenceable: asked again next run
        _TRACERS[provider] = tracer
    return tracer


def current_span(span: Span | None) -> AbstractContextManager[object]:
    """Make ``span`` the current span (for log trace ids and trace propagation), if any."""
    if span is None:
        return nullcontext()
    return trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )


class Instruments:
    """The GenAI histograms, created once per agent from a meter provider."""

    __slots__ = ("_attrs", "_explicit", "duration", "tokens", "tpot", "ttft")

    def __init__(self, meter_provider: metrics.MeterProvider | None) -> None:
        from agentrt import __version__

        self._explicit = meter_provider is not None
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(_SCOPE, __version__)
        self.duration = meter.create_histogram(
            sc.METRIC_OPERATION_DURATION,
            unit="s",
            description="Duration of a model call, as the agent saw it.",
            explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS_S),
        )
        self.ttft = meter.create_histogram(
            sc.METRIC_TIME_TO_FIRST_TOKEN,
            unit="s",
            description="Time to the first output token.",
            explicit_bucket_boundaries_advisory=list(sc.TTFT_BUCKETS_S),
        )
        self.tpot = meter.create_histogram(
            sc.METRIC_TIME_PER_OUTPUT_TOKEN,
            unit="s",
            description="Time per output token after the first.",
            explicit_bucket_boundaries_advisory=list(sc.TPOT_BUCKETS_S),
        )
        self.tokens = meter.create_histogram(
            sc.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Tokens per model call, by gen_ai.token.type.",
            explicit_bucket_boundaries_advisory=list(sc.TOKEN_BUCKETS),
        )
        # Attribute sets per (provider, model, substrate), built once: recording is per call.
        self._attrs: dict[tuple[str, str, str], tuple[dict[str, str], ...]] = {}

    @property
    def active(self) -> bool:
        """Whether recording can reach an SDK: a provider was given, or a global one is set.

        Checked once per run: with no SDK anywhere, a run skips metrics entirely instead of
        building attributes for no-op instruments on every model call.
        """
        if self._explicit:
            return True
        provider = metrics.get_meter_provider()
        if isinstance(provider, metrics.NoOpMeterProvider):
            return False
        # The API's default global is a proxy that forwards once an SDK provider is set.
        return getattr(provider, "_real_meter_provider", True) is not None

    def record(self, result: InferenceResult, duration_s: float, provider: str) -> None:
        """Record one successful model call."""
        key = (provider, result.model, result.substrate)
        sets = self._attrs.get(key)
        if sets is None:
            attrs = {
                sc.OPERATION_NAME: "chat",
                sc.PROVIDER_NAME: provider,
                sc.REQUEST_MODEL: result.model,
                sc.SUBSTRATE: result.substrate,
            }
            sets = self._attrs[key] = (
                attrs,
                {**attrs, sc.TOKEN_TYPE: "input"},
                {**attrs, sc.TOKEN_TYPE: "output"},
            )
        attrs, inputs, outputs = sets
        self.duration.record(duration_s, attrs)
        self.ttft.record(result.timing.ttft_s, attrs)
        if result.usage.output_tokens > 1:
            self.tpot.record(result.timing.tpot_s, attrs)
        self.tokens.record(result.usage.input_tokens, inputs)
        self.tokens.record(result.usage.output_tokens, outputs)


def provider_of(substrate: Substrate) -> str:
    """``gen_ai.provider.name`` for a substrate: its ``provider`` attribute, or agentrt.<name>."""
    provider = getattr(substrate, "provider", None)
    return provider if isinstance(provider, str) else f"agentrt.{substrate.name}"


class RunTracer:
    """Creates a run's spans with timestamps from the run's clock.

    All methods are cheap no-ops when tracing is off (no SDK configured, or a non-recording
    root span), so the agent loop calls them unconditionally.
    """

    __slots__ = (
        "_chat_openings",
        "_clock",
        "_detail",
        "_idle",
        "_ns",
        "_tracer",
        "enabled",
        "root",
        "root_context",
    )

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        clock: Clock,
        *,
        detail: Detail = "steps",
    ) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        # The API hands out its proxy until an SDK provider is set: then no span would record.
        self._idle = isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        self._tracer = _tracer_of(provider)
        self._clock = clock
        self._ns = clock.to_epoch_ns
        self._detail = detail
        # (substrate, model) -> a chat span's name, kind and opening attributes, built once.
        self._chat_openings: dict[tuple[int, str | None], tuple[str, SpanKind, dict[str, str]]] = {}
        self.enabled = False
        self.root: Span | None = None
        self.root_context: Context | None = None

    @property
    def trace_id(self) -> str | None:
        """The run's trace id in lowercase hex, if it is being traced."""
        if self.root is None or not self.enabled:
            return None
        return format(self.root.get_span_context().trace_id, "032x")

    def start_run(
        self, *, agent: str, run_id: str, target: str, t: float, links: Sequence[Link] = ()
    ) -> None:
        """Open the root ``invoke_agent`` span (none at all when no SDK is configured).

        ``links``: spans this run continues (a resumed run links to its first execution's root).
        """
        if self._idle:
            return
        root = self._tracer.start_span(
            sc.INVOKE_AGENT_SPAN.format(agent=agent),
            kind=SpanKind.INTERNAL,
            start_time=self._ns(t),
            links=links,
            attributes={
                sc.OPERATION_NAME: "invoke_agent",
                sc.AGENT_NAME: agent,
                sc.RUN_ID: run_id,
                sc.PLAN_NAME: target,
                sc.CLOCK: "virtual" if self._clock.is_virtual else "real",
            },
        )
        self.enabled = root.is_recording()
        self.root = root
        self.root_context = trace.set_span_in_context(root)

    def end_run(self, *, status: str, error: str | None, t: float) -> None:
        """Close the root span with the run's status."""
        root = self.root
        if root is None or not self.enabled:
            return
        root.set_attribute(sc.RUN_STATUS, status)
        if status != "succeeded":
            root.set_status(Status(StatusCode.ERROR, redact(error) if error else status))
        root.end(end_time=self._ns(t))

    def start_step(self, step: Step, *, t: float) -> Span | None:
        """Open a ``step {id}`` span under the root; `end_step` gives it its attributes."""
        if not self.enabled:
            return None
        return self._tracer.start_span(
            sc.STEP_SPAN.format(step=step.id), context=self.root_context, start_time=self._ns(t)
        )

    def end_step(
        self,
        span: Span | None,
        step: Step,
        *,
        index: int,
        waits_for: Sequence[str],
        status: str,
        attempts: int,
        retry_s: float,
        error: BaseException | None,
        t: float,
    ) -> None:
        """Close a step span, setting all its attributes at once.

        They are set here rather than at the start: nothing samples on them, spans are
        exported only when they end, and one batch of attributes costs the SDK less than two.
        """
        if span is None:
            return
        attributes: dict[str, str | int | float | bool | Sequence[str]] = {
            sc.STEP_ID: step.id,
            sc.STEP_KIND: step.kind,
            sc.STEP_INDEX: index,
            sc.STEP_STATUS: status,
            sc.STEP_ATTEMPTS: attempts,
        }
        if waits_for:
            attributes[sc.STEP_WAITS_FOR] = waits_for
        if step.optional:
            attributes[sc.STEP_OPTIONAL] = True
        if retry_s:
            attributes[sc.STEP_RETRY_S] = retry_s
        if error is None and status == "cancelled":
            attributes[sc.ERROR_TYPE] = "cancelled"
            span.set_status(Status(StatusCode.ERROR, "cancelled"))
        span.set_attributes(attributes)
        if error is not None:
            _record_error(span, error, self._ns(t))
        span.end(end_time=self._ns(t))

    def context_of(self, span: Span | None) -> Context | None:
        """The context whose current span is ``span`` (build once, reuse for its children)."""
        # Built on the root's context, not the current one: same span, one context lookup less.
        return None if span is None else trace.set_span_in_context(span, self.root_context)

    def start_chat(
        self, parent: Context | None, request: InferenceRequest, substrate: Substrate, *, t: float
    ) -> Span | None:
        """Open a ``chat {model}`` span under the step whose context is ``parent``.

        The kind is CLIENT for substrates that declare ``remote = True`` (HTTP endpoints) and
        INTERNAL otherwise: an emulated engine runs in process. All attributes are set by
        `end_chat`, in one batch: a chat span always has a step span as its parent, so a
        parent-based sampler (the SDK's default) never reads attributes given at its start.
        """
        if parent is None:
            return None
        name, kind, _ = self._opening(request, substrate)
        return self._tracer.start_span(name, context=parent, kind=kind, start_time=self._ns(t))

    def _opening(
        self, request: InferenceRequest, substrate: Substrate
    ) -> tuple[str, SpanKind, dict[str, str]]:
        # A chat span's name, kind and the attributes that depend only on substrate and model.
        key = (id(substrate), request.model)
        opening = self._chat_openings.get(key)
        if opening is None:
            model = str(request.model or getattr(substrate, "model", None) or substrate.name)
            opening = self._chat_openings[key] = (
                sc.CHAT_SPAN.format(model=model),
                SpanKind.CLIENT if getattr(substrate, "remote", False) else SpanKind.INTERNAL,
                {
                    sc.OPERATION_NAME: "chat",
                    sc.PROVIDER_NAME: provider_of(substrate),
                    sc.REQUEST_MODEL: model,
                    sc.SUBSTRATE: substrate.name,
                },
            )
        return opening

    def end_chat(
        self,
        span: Span | None,
        request: InferenceRequest,
        substrate: Substrate,
        *,
        attempt: int,
        result: InferenceResult | None,
        error: BaseException | None,
        t_start: float,
        t_end: float,
        step: Mapping[str, _Value] | None = None,
    ) -> None:
        """Close a chat span: usage, timing attributes and, at ``phases`` detail, phase spans.

        ``step`` holds ``agentrt.step.*`` attributes that make the span stand for a step of the
        run too: a tool loop's model calls are steps with no span of their own.
        """
        if span is None:
            return
        # Attribute cleaning dominates the SDK's cost: set everything in one batch, skip empties.
        _, _, opening = self._opening(request, substrate)
        attributes: dict[str, str | int | float | bool | Sequence[str]] = dict(opening)
        if step is None:  # a step's span counts its attempts in agentrt.step.attempts
            attributes[sc.ATTEMPT] = attempt
        if request.max_output_tokens is not None:
            attributes[sc.REQUEST_MAX_TOKENS] = request.max_output_tokens
        if result is not None:
            timing = result.timing
            usage = result.usage
            attributes[sc.RESPONSE_MODEL] = result.model
            attributes[sc.INPUT_TOKENS] = usage.input_tokens
            attributes[sc.OUTPUT_TOKENS] = usage.output_tokens
            attributes[sc.FINISH_REASONS] = (result.finish_reason,)
            attributes[sc.TTFT_S] = timing.ttft_s
            attributes[sc.TPOT_S] = timing.tpot_s
            # A category that took no time is left out: readers treat a missing one as 0.
            if timing.queue_s:
                attributes[sc.QUEUE_S] = timing.queue_s
            if timing.network_s:
                attributes[sc.NETWORK_S] = timing.network_s
            if timing.prefill_s:
                attributes[sc.PREFILL_S] = timing.prefill_s
            if timing.decode_s:
                attributes[sc.DECODE_S] = timing.decode_s
            if timing.comm_s:
                attributes[sc.COMM_S] = timing.comm_s
            if result.cost_usd:
                attributes[sc.COST_USD] = result.cost_usd
            if result.energy_j:
                attributes[sc.ENERGY_J] = result.energy_j
            if result.chips:
                attributes[sc.CHIPS] = result.chips
            if result.attributes:
                attributes.update(result.attributes)
            if result.model != opening[sc.REQUEST_MODEL]:
                span.update_name(sc.CHAT_SPAN.format(model=result.model))
        if step is not None:
            attributes.update(step)
        span.set_attributes(attributes)
        if result is not None and self._detail == "phases":
            self._phases(span, result, t_start)
        if error is not None:
            _record_error(span, error, self._ns(t_end))
        span.end(end_time=self._ns(t_end))

    def _phases(self, chat: Span, result: InferenceResult, t0: float) -> None:
        # Lay the phases end to end from the call's start. Communication happens inside prefill
        # and decode (all-reduces per layer, hops per token), so it is shared between them in
        # proportion to their compute time; each phase span carries its share as an attribute.
        timing = result.timing
        compute = timing.prefill_s + timing.decode_s
        comm_prefill = timing.comm_s * (timing.prefill_s / compute) if compute > 0 else 0.0
        comm_decode = timing.comm_s - comm_prefill
        spans = (
            ("queue", timing.queue_s, 0.0),
            ("network", timing.network_s, 0.0),
            ("prefill", timing.prefill_s + comm_prefill, comm_prefill),
            ("decode", timing.decode_s + comm_decode, comm_decode),
        )
        context = trace.set_span_in_context(chat)
        t = t0
        for name, duration, comm in spans:
            if duration <= 0:
                continue
            phase = self._tracer.start_span(
                name, context=context, start_time=self._ns(t), attributes={"agentrt.comm_s": comm}
            )
            if name == "decode":
                phase.add_event(
                    sc.FIRST_TOKEN_EVENT,
                    {sc.TIMING["ttft_s"]: timing.ttft_s},
                    timestamp=self._ns(t0 + timing.ttft_s),
                )
            t += duration
            phase.end(end_time=self._ns(t))

    def start_tool(
        self,
        parent: Context | None,
        tool: str,
        *,
        attempt: int | None,
        t: float,
        call_id: str | None = None,
    ) -> Span | None:
        """Open an ``execute_tool {tool}`` span under ``parent`` (a step's or the run's context).

        ``call_id`` is the model's id of the call (``gen_ai.tool.call.id``), when a model asked;
        ``attempt`` None for a span that stands for a step (it counts its attempts itself).
        """
        if parent is None:
            return None
        attributes: dict[str, _Value] = {sc.OPERATION_NAME: "execute_tool", sc.TOOL_NAME: tool}
        if attempt is not None:
            attributes[sc.ATTEMPT] = attempt
        if call_id is not None:
            attributes[sc.TOOL_CALL_ID] = call_id
        return self._tracer.start_span(
            sc.EXECUTE_TOOL_SPAN.format(tool=tool),
            context=parent,
            start_time=self._ns(t),
            attributes=attributes,
        )

    def end_tool(
        self,
        span: Span | None,
        *,
        result: ToolResult | None,
        error: BaseException | None,
        t: float,
        step: Mapping[str, _Value] | None = None,
    ) -> None:
        """Close a tool span; ``step`` as for `end_chat`."""
        if span is None:
            return
        if step is not None:
            attributes = dict(step)
            if result is not None:
                attributes[sc.TOOL_OK] = result.ok
            span.set_attributes(attributes)
        elif result is not None:
            span.set_attribute(sc.TOOL_OK, result.ok)
        if error is not None:
            _record_error(span, error, self._ns(t))
        span.end(end_time=self._ns(t))


def _record_error(span: Span, error: BaseException, t_ns: int) -> None:
    # Error texts may quote URLs and server bodies: redacted here, whatever exporter follows.
    cause = error.__cause__ if error.__cause__ is not None else error
    message = redact(str(cause))
    span.set_status(Status(StatusCode.ERROR, f"{type(cause).__name__}: {message}"))
    span.set_attribute(sc.ERROR_TYPE, type(cause).__name__)
    module = type(cause).__module__
    qualname = type(cause).__qualname__
    # The attributes of Span.record_exception, with the message and traceback redacted.
    span.add_event(
        "exception",
        {
            "exception.type": qualname if module in (None, "builtins") else f"{module}.{qualname}",
            "exception.message": message,
            "exception.stacktrace": redact("".join(traceback.format_exception(cause))),
            "exception.escaped": "False",
        },
        timestamp=t_ns,
    )
