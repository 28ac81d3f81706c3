"""The runtime's own overhead per step: a 50-step sequential plan on an instant substrate.

Run: ``python benchmarks/overhead.py [--runs N]``. Prints median (and p90) microseconds per step
with logging and tracing off, with tracing on (spans through a batch processor to an in-memory
exporter, at both levels of detail), with a do-nothing tracer in place of the SDK (the runtime's
own share of tracing), and with logging on (JSON rendered to an in-memory stream).
The in-memory exporter's finished spans are cleared between runs, outside the timed region: a real
exporter sends spans away, and a heap that grows by 100 spans per run would otherwise charge
Python's garbage collector to every later step.
Targets: median at most 50 µs per step with logging and tracing off; at most 150 µs with tracing
on at the default detail.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Any

import anyio
from _common import InstantSubstrate, chain, logging_off, print_table
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from agentrt import Agent
from agentrt.log import configure_logging
from agentrt.telemetry import Detail

STEPS = 50
WARM_UP_RUNS = 20


class _NullSpan(NonRecordingSpan):
    """A span that says it records and does nothing: what tracing costs without an SDK."""

    def is_recording(self) -> bool:
        return True


class _NullTracer(trace.Tracer):
    def start_span(self, name: str, *args: object, **kwargs: object) -> trace.Span:
        return _NullSpan(_SPAN_CONTEXT)

    def start_as_current_span(self, *args: object, **kwargs: object) -> Any:
        raise NotImplementedError


class NullTracerProvider(trace.TracerProvider):
    """Recording spans that cost nothing: the runtime's own share of tracing, without the SDK."""

    def get_tracer(self, *args: object, **kwargs: object) -> trace.Tracer:
        return _NullTracer()


_SPAN_CONTEXT = SpanContext(1, 1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def traced_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """Spans through a batch processor to an in-memory exporter, as the issue asks."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=65536))
    return provider, exporter


async def measure(
    runs: int, detail: Detail | None = None, null: trace.TracerProvider | None = None
) -> list[float]:
    """Microseconds per step of ``runs`` runs; ``detail`` None means tracing off.

    With ``null``, spans go to that provider instead of the SDK.
    """
    provider, exporter = traced_provider() if detail is not None else (None, None)
    agent = Agent(
        InstantSubstrate(), tracer_provider=null or provider, trace_detail=detail or "steps"
    )
    plan = chain(STEPS)
    per_step_us: list[float] = []
    exported = 0
    # Warm caches and the allocator: enough runs for several batch exports, so the heap the
    # span queue needs is in place before timing starts (on a virtual machine, touching fresh
    # memory is slow).
    for _ in range(WARM_UP_RUNS):
        await agent.run(plan)
    for _ in range(runs):
        t0 = time.perf_counter()
        result = await agent.run(plan)
        per_step_us.append((time.perf_counter() - t0) / STEPS * 1e6)
        assert result.status == "succeeded"
        if exporter is not None:
            exported += len(exporter.get_finished_spans())
            exporter.clear()
    if provider is not None and exporter is not None and null is None:
        provider.shutdown()  # flushes the queue
        exported += len(exporter.get_finished_spans())
        # The instant substrate reports no phases: a root, and a step and a chat span per step.
        expected = (runs + WARM_UP_RUNS) * (1 + 2 * STEPS)
        assert exported == expected, f"exported {exported} spans, expected {expected}"
    return per_step_us


def summarize(label: str, samples: list[float]) -> list[object]:
    samples = sorted(samples)
    p90 = samples[int(len(samples) * 0.9) - 1]
    return [
        label,
        f"{statistics.median(samples):.1f}",
        f"{p90:.1f}",
        f"{samples[0]:.1f}",
        len(samples),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    logging_off()
    off = anyio.run(measure, args.runs)
    traced = anyio.run(measure, args.runs, "steps")
    phases = anyio.run(measure, args.runs, "phases")
    null = anyio.run(measure, args.runs, "steps", NullTracerProvider())
    configure_logging(format="json", level="info", stream=io.StringIO())
    on = anyio.run(measure, max(20, args.runs // 4))
    measured = {
        "logging off, tracing off": off,
        "tracing on (step spans: the default), logging off": traced,
        "tracing on (phase spans), logging off": phases,
        "tracing on (step spans), a do-nothing tracer instead of the SDK": null,
        "logging on (json, in-memory stream)": on,
    }
    print_table(
        f"agentrt runtime overhead: {STEPS}-step sequential plan, instant substrate (µs per step)",
        ["configuration", "median", "p90", "min", "runs"],
        [summarize(label, samples) for label, samples in measured.items()],
    )
    off_us, null_us, traced_us = (statistics.median(x) for x in (off, null, traced))
    print(
        f"tracing's {traced_us - off_us:.1f} µs per step: {null_us - off_us:.1f} in agentrt, "
        f"{traced_us - null_us:.1f} in the OpenTelemetry SDK"
    )
    # On a quiet machine each median sits within ~5% of its minimum; a burst of load from
    # elsewhere during one configuration shows as a median far above it.
    busy = [label for label, x in measured.items() if statistics.median(x) > 1.15 * min(x)]
    if busy:
        print(
            "warning: the machine was busy during " + "; ".join(busy) + " (median more than 15% "
            "above the minimum); rerun for figures to compare"
        )
    verdict = "meets" if statistics.median(off) <= 50 else "MISSES"
    print(f"target: median <= 50 µs/step with logging and tracing off -> {verdict}")
    verdict = "meets" if statistics.median(traced) <= 150 else "MISSES"
    print(f"target: median <= 150 µs/step with tracing on (default detail) -> {verdict}")


if __name__ == "__main__":
    main()
