"""The runtime's own overhead per step: a 50-step sequential plan on an instant substrate.

Run: ``python benchmarks/overhead.py [--runs N]``. Prints median (and p90) microseconds per step
with logging and tracing off, with tracing on (spans through a batch processor to an in-memory
exporter, at both levels of detail), and with logging on (JSON rendered to an in-memory stream).
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

import anyio
from _common import InstantSubstrate, chain, logging_off, print_table
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentrt import Agent
from agentrt.log import configure_logging
from agentrt.telemetry import Detail

STEPS = 50


def traced_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """Spans through a batch processor to an in-memory exporter, as the issue asks."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=65536))
    return provider, exporter


async def measure(runs: int, detail: Detail | None = None) -> list[float]:
    """Microseconds per step of ``runs`` runs; ``detail`` None means tracing off."""
    provider, exporter = traced_provider() if detail is not None else (None, None)
    agent = Agent(InstantSubstrate(), tracer_provider=provider, trace_detail=detail or "steps")
    plan = chain(STEPS)
    per_step_us: list[float] = []
    exported = 0
    for _ in range(5):  # warm caches and the allocator
        await agent.run(plan)
    for _ in range(runs):
        t0 = time.perf_counter()
        result = await agent.run(plan)
        per_step_us.append((time.perf_counter() - t0) / STEPS * 1e6)
        assert result.status == "succeeded"
        if exporter is not None:
            exported += len(exporter.get_finished_spans())
            exporter.clear()
    if provider is not None and exporter is not None:
        provider.shutdown()  # flushes the queue
        exported += len(exporter.get_finished_spans())
        # The instant substrate reports no phases: a root, and a step and a chat span per step.
        expected = (runs + 5) * (1 + 2 * STEPS)
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
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    rows = []
    logging_off()
    off = anyio.run(measure, args.runs)
    rows.append(summarize("logging off, tracing off", off))
    traced = anyio.run(measure, args.runs, "steps")
    rows.append(summarize("tracing on (step spans: the default), logging off", traced))
    phases = anyio.run(measure, args.runs, "phases")
    rows.append(summarize("tracing on (phase spans), logging off", phases))
    configure_logging(format="json", level="info", stream=io.StringIO())
    on = anyio.run(measure, max(20, args.runs // 4))
    rows.append(summarize("logging on (json, in-memory stream)", on))
    print_table(
        f"agentrt runtime overhead: {STEPS}-step sequential plan, instant substrate (µs per step)",
        ["configuration", "median", "p90", "min", "runs"],
        rows,
    )
    verdict = "meets" if statistics.median(off) <= 50 else "MISSES"
    print(f"target: median <= 50 µs/step with logging and tracing off -> {verdict}")
    verdict = "meets" if statistics.median(traced) <= 150 else "MISSES"
    print(f"target: median <= 150 µs/step with tracing on (default detail) -> {verdict}")


if __name__ == "__main__":
    main()
