from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agentrt import (
    Agent,
    InferenceRequest,
    Plan,
    RetryPolicy,
    RunState,
    Step,
    SubstrateUnavailable,
    ToolResult,
)
from agentrt.report import CATEGORIES, from_jaeger, from_run
from agentrt.telemetry import semconv as sc
from agentrt.telemetry.jaeger import spans_to_jaeger
from agentrt.testing import (
    FixedLatencySubstrate,
    FunctionSubstrate,
    FunctionTool,
    ScriptedSubstrate,
)

NO_JITTER = RetryPolicy(max_attempts=3, initial_backoff_s=0.5, jitter_s=0.0)


def by_name(spans: Sequence[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def dur(span: ReadableSpan) -> float:
    assert span.start_time is not None
    assert span.end_time is not None
    return (span.end_time - span.start_time) / 1e9


def parallel_plan_with_retry() -> tuple[Plan, ScriptedSubstrate, FunctionTool]:
    sub = ScriptedSubstrate(
        {"flaky": [SubstrateUnavailable("engine warming up"), "ok"]},
        default="fine words here",
        latency_s=0.25,
    )

    async def search(args: Any) -> ToolResult:
        await anyio.sleep(0.1)
        return ToolResult(output="3 hits")

    tool = FunctionTool("search", search)
    plan = Plan(
        name="traced",
        steps=[
            Step(id="plan"),
            Step(id="flaky", depends_on=["plan"], retry=NO_JITTER),
            Step(id="look", kind="search", tool="search", depends_on=["plan"]),
            Step(id="answer", kind="answer", depends_on=["flaky", "look"]),
        ],
    )
    return plan, sub, tool


def test_span_tree_follows_the_genai_conventions(
    vrun: Callable[..., Any], provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    plan, sub, tool = parallel_plan_with_retry()
    agent = Agent(sub, tools=[tool], name="coder", tracer_provider=provider, trace_detail="phases")
    result = vrun(agent.run, plan)
    assert result.status == "succeeded"
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    assert result.trace_id == format(spans[0].context.trace_id, "032x")

    (root,) = by_name(spans, "invoke_agent")
    assert root.name == "invoke_agent coder"
    assert root.parent is None
    assert root.attributes[sc.OPERATION_NAME] == "invoke_agent"
    assert root.attributes[sc.RUN_ID] == result.run_id
    assert root.attributes[sc.RUN_STATUS] == "succeeded"
    assert dur(root) == pytest.approx(result.e2e_s, abs=1e-6)

    steps = {s.attributes[sc.STEP_ID]: s for s in by_name(spans, "step ")}
    assert set(steps) == {"plan", "flaky", "look", "answer"}
    for step_id, span in steps.items():
        assert span.parent.span_id == root.context.span_id
        r = result.step(step_id)
        assert span.attributes[sc.STEP_STATUS] == "succeeded"
        assert span.attributes[sc.STEP_ATTEMPTS] == r.attempts
        assert dur(span) == pytest.approx(r.latency_s, abs=1e-6)
        assert (span.start_time - root.start_time) / 1e9 == pytest.approx(r.start_s, abs=1e-6)
    assert steps["answer"].attributes[sc.STEP_WAITS_FOR] == ("flaky", "look")

    # The retried step: one chat span per attempt, the first marked as an error.
    chats = [
        s for s in by_name(spans, "chat ") if s.parent.span_id == steps["flaky"].context.span_id
    ]
    chats.sort(key=lambda s: s.attributes[sc.ATTEMPT])
    assert [c.attributes[sc.ATTEMPT] for c in chats] == [1, 2]
    assert chats[0].status.status_code is StatusCode.ERROR
    assert chats[0].attributes[sc.ERROR_TYPE] == "SubstrateUnavailable"
    assert any(e.name == "exception" for e in chats[0].events)
    assert chats[1].status.status_code is StatusCode.UNSET
    assert steps["flaky"].attributes[sc.STEP_RETRY_S] == pytest.approx(0.25 + 0.5)

    ok = chats[1]
    assert ok.name == "chat scripted"
    for key, value in {
        sc.OPERATION_NAME: "chat",
        sc.PROVIDER_NAME: "agentrt.scripted",
        sc.REQUEST_MODEL: "scripted",
        sc.OUTPUT_TOKENS: 1,
        sc.FINISH_REASONS: ("stop",),
        sc.SUBSTRATE: "scripted",
    }.items():
        assert ok.attributes[key] == value, key
    assert ok.attributes[sc.INPUT_TOKENS] > 0
    assert ok.attributes[sc.TIMING["decode_s"]] == pytest.approx(0.25)

    # Phase children tile the chat span; decode carries the first-token event.
    phases = [s for s in spans if s.parent is not None and s.parent.span_id == ok.context.span_id]
    assert [p.name for p in phases] == ["decode"]
    assert dur(phases[0]) == pytest.approx(dur(ok), abs=1e-6)
    assert [e.name for e in phases[0].events] == [sc.FIRST_TOKEN_EVENT]

    (tool_span,) = by_name(spans, "execute_tool")
    assert tool_span.name == "execute_tool search"
    assert tool_span.attributes[sc.TOOL_NAME] == "search"
    assert tool_span.parent.span_id == steps["look"].context.span_id
    assert dur(tool_span) == pytest.approx(0.1, abs=1e-6)

    # Every child lies inside its parent.
    index = {s.context.span_id: s for s in spans}
    for s in spans:
        if s.parent is not None:
            parent = index[s.parent.span_id]
            assert parent.start_time <= s.start_time <= s.end_time <= parent.end_time, s.name


def test_phase_spans_split_the_timing(
    vrun: Callable[..., Any], provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from agentrt import InferenceResult, Timing, Usage

    async def engine(request: InferenceRequest) -> InferenceResult:
        timing = Timing.build(
            output_tokens=10, queue_s=0.1, network_s=0.02, prefill_s=0.2, decode_s=0.6, comm_s=0.08
        )
        await anyio.sleep(timing.e2e_s)
        return InferenceResult(
            text="x",
            usage=Usage(input_tokens=5, output_tokens=10),
            timing=timing,
            substrate="engine",
            model="m",
            chips=4,
            cost_usd=0.01,
            energy_j=3.0,
            attributes={"server.address": "a"},
        )

    agent = Agent(FunctionSubstrate(engine), tracer_provider=provider, trace_detail="phases")
    vrun(agent.run, Plan(name="p", steps=[Step(id="a")]))
    spans = exporter.get_finished_spans()
    (chat,) = by_name(spans, "chat ")
    assert chat.attributes[sc.CHIPS] == 4
    assert chat.attributes[sc.COST_USD] == 0.01
    assert chat.attributes[sc.ENERGY_J] == 3.0
    assert chat.attributes["server.address"] == "a"
    phases = {s.name: s for s in spans if s.parent and s.parent.span_id == chat.context.span_id}
    assert set(phases) == {"queue", "network", "prefill", "decode"}
    assert dur(phases["queue"]) == pytest.approx(0.1, abs=1e-6)
    assert dur(phases["network"]) == pytest.approx(0.02, abs=1e-6)
    # comm (0.08 s) is shared in proportion to compute: 0.02 in prefill, 0.06 in decode
    assert dur(phases["prefill"]) == pytest.approx(0.22, abs=1e-6)
    assert dur(phases["decode"]) == pytest.approx(0.66, abs=1e-6)
    first = phases["decode"].events[0]
    assert (first.timestamp - chat.start_time) / 1e9 == pytest.approx(0.32, abs=1e-6)


def test_a_50_step_virtual_run_exports_simulated_durations(
    vrun: Callable[..., Any], provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    plan = Plan(
        name="long",
        steps=[Step(id=f"s{i}", depends_on=[f"s{i - 1}"] if i else []) for i in range(50)],
    )
    agent = Agent(FixedLatencySubstrate(latency_s=1.5), tracer_provider=provider)
    result = vrun(agent.run, plan)
    spans = exporter.get_finished_spans()
    (root,) = by_name(spans, "invoke_agent")
    assert dur(root) == pytest.approx(75.0, abs=1e-6)
    steps = by_name(spans, "step ")
    assert len(steps) == 50
    assert all(dur(s) == pytest.approx(1.5, abs=1e-6) for s in steps)
    assert result.e2e_s == pytest.approx(75.0)


def test_failures_and_cancellations_mark_spans(
    vrun: Callable[..., Any], provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def fn(request: InferenceRequest) -> str:
        if request.step_id == "bad":
            await anyio.sleep(1)
            raise ValueError("broken")
        await anyio.sleep(10)
        return "x"

    result = vrun(
        Agent(FunctionSubstrate(fn), tracer_provider=provider).run,
        Plan(name="p", steps=[Step(id="bad"), Step(id="slow")]),
    )
    assert result.status == "failed"
    spans = exporter.get_finished_spans()
    (root,) = by_name(spans, "invoke_agent")
    assert root.status.status_code is StatusCode.ERROR
    steps = {s.attributes[sc.STEP_ID]: s for s in by_name(spans, "step ")}
    assert steps["bad"].attributes[sc.ERROR_TYPE] == "ValueError"
    assert steps["slow"].attributes[sc.STEP_STATUS] == "cancelled"
    assert steps["slow"].status.status_code is StatusCode.ERROR
    # no span is left open: every started span was exported
    assert len(spans) == len({s.context.span_id for s in spans})
    assert all(s.end_time is not None for s in spans)


class _Loop:
    name = "loop"

    async def next_steps(self, state: RunState) -> list[Step]:
        n = state.steps_run
        if n == 0:
            return [Step(id="t0")]
        if n == 1:
            return [
                Step(id="s1", kind="search", tool="search"),
                Step(id="s2", kind="search", tool="search"),
            ]
        if n == 3:
            return [Step(id="fix", retry=NO_JITTER)]
        return [Step(id="done", kind="answer")]


def _plans() -> list[tuple[str, Callable[[], tuple[Agent, Any]]]]:
    def diamond() -> tuple[Agent, Any]:
        from agentrt import InferenceResult, Timing, Usage

        async def fn(request: InferenceRequest) -> InferenceResult:
            seconds = {"a": 1.0, "b": 2.0, "c": 0.5, "d": 0.25}[request.step_id or ""]
            await anyio.sleep(seconds)
            timing = Timing.build(
                output_tokens=4,
                queue_s=seconds / 4,
                prefill_s=seconds / 4,
                decode_s=seconds / 4,
                comm_s=seconds / 4,
            )
            return InferenceResult(
                text="x", usage=Usage(output_tokens=4), timing=timing, substrate="fn", model="m"
            )

        plan = Plan(
            name="diamond",
            steps=[
                Step(id="a"),
                Step(id="b", depends_on=["a"]),
                Step(id="c", depends_on=["a"]),
                Step(id="d", depends_on=["b", "c"]),
            ],
        )
        return Agent(FunctionSubstrate(fn)), plan

    def retried_tools() -> tuple[Agent, Any]:
        plan, sub, tool = parallel_plan_with_retry()
        return Agent(sub, tools=[tool]), plan

    def dynamic() -> tuple[Agent, Any]:
        async def search(args: Any) -> str:
            await anyio.sleep(0.3)
            return "hit"

        sub = ScriptedSubstrate(
            {"fix": [SubstrateUnavailable("x"), "patched"]}, default="ok", latency_s=0.2
        )
        return Agent(sub, tools=[FunctionTool("search", search)]), _Loop()

    return [("diamond", diamond), ("retries+tools", retried_tools), ("policy", dynamic)]


@pytest.mark.parametrize(("name", "make"), _plans(), ids=[n for n, _ in _plans()])
def test_attribution_invariant_from_results_and_traces(
    name: str,
    make: Callable[[], tuple[Agent, Any]],
    vrun: Callable[..., Any],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    agent, target = make()
    agent.tracer_provider = provider
    result = vrun(agent.run, target)
    assert result.status == "succeeded"
    report = from_run(result)
    total = sum(report.categories[c] for c in CATEGORIES)
    assert total == pytest.approx(report.e2e_s, rel=0.01)
    # Virtual time and in-process doubles: the runtime adds no time of its own.
    assert report.categories["overhead_s"] == pytest.approx(0.0, abs=1e-6)
    # The critical path is a chain of waits that ends at the run's end.
    last = result.step(report.critical_path[-1])
    assert last.end_s == pytest.approx(result.e2e_s)
    for before, after in zip(report.critical_path, report.critical_path[1:], strict=False):
        assert before in result.step(after).waits_for
    # The same attribution from the exported trace, through Jaeger JSON and back.
    document = json.loads(json.dumps(spans_to_jaeger(exporter.get_finished_spans())))
    (from_trace,) = from_jaeger(document)
    assert from_trace.critical_path == report.critical_path
    assert from_trace.e2e_s == pytest.approx(report.e2e_s, abs=1e-5)
    for c in CATEGORIES:
        assert from_trace.categories[c] == pytest.approx(report.categories[c], abs=1e-4), c


def test_diamond_critical_path(vrun: Callable[..., Any]) -> None:
    agent, plan = _plans()[0][1]()
    report = from_run(vrun(agent.run, plan))
    assert report.critical_path == ("a", "b", "d")
    assert report.e2e_s == pytest.approx(3.25)
    assert report.sum_of_step_latencies_s == pytest.approx(3.75)


def test_metrics_are_recorded_with_fine_buckets(vrun: Callable[..., Any]) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    agent = Agent(
        FixedLatencySubstrate(latency_s=0.2, output_tokens=11, ttft_s=0.1), meter_provider=meters
    )
    vrun(agent.run, Plan(name="p", steps=[Step(id="a"), Step(id="b")]))
    data = reader.get_metrics_data()
    metrics = {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    assert set(metrics) == {
        sc.METRIC_OPERATION_DURATION,
        sc.METRIC_TIME_TO_FIRST_TOKEN,
        sc.METRIC_TIME_PER_OUTPUT_TOKEN,
        sc.METRIC_TOKEN_USAGE,
    }
    tpot = metrics[sc.METRIC_TIME_PER_OUTPUT_TOKEN].data.data_points[0]
    assert tpot.count == 2
    assert tpot.sum == pytest.approx(0.02)
    assert tuple(tpot.explicit_bounds) == sc.TPOT_BUCKETS_S
    assert tpot.explicit_bounds[0] <= 0.001  # wafer-scale gaps do not all land in one bucket
    tokens = metrics[sc.METRIC_TOKEN_USAGE].data.data_points
    by_type = {p.attributes[sc.TOKEN_TYPE]: p.sum for p in tokens}
    assert by_type["output"] == 22


def test_the_default_detail_is_steps(
    vrun: Callable[..., Any], provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    agent = Agent(FixedLatencySubstrate(0.1), tracer_provider=provider)
    vrun(agent.run, Plan(name="p", steps=[Step(id="a")]))
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["chat fixed", "invoke_agent agent", "step a"]


def test_a_sampled_out_run_records_nothing_and_a_sampled_one_everything(
    exporter: InMemorySpanExporter, vrun: Callable[..., Any]
) -> None:
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    tp = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    agent = Agent(FixedLatencySubstrate(latency_s=0.1), tracer_provider=tp)
    plan = Plan(name="p", steps=[Step(id="a"), Step(id="b", depends_on=["a"])])
    results = [vrun(agent.run, plan) for _ in range(40)]
    traced = {r.trace_id for r in results if r.trace_id is not None}
    spans = exporter.get_finished_spans()
    # Each run is traced whole (root, two steps, two chats) or not at all.
    assert 0 < len(traced) < 40
    assert {format(s.context.trace_id, "032x") for s in spans} == traced
    assert len(spans) == 5 * len(traced)
    assert all(r.status == "succeeded" for r in results)
