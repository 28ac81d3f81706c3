"""Terminal pictures of runs and attributions: the step table, the report and a waterfall (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agentrt.compare import Comparison
from agentrt.report import CATEGORIES, Attribution, StepAttribution
from agentrt.result import RunResult

__all__ = ["COLORS", "print_comparison", "print_report", "print_run", "print_waterfall"]

#: One color per category, shared by the waterfall and the plot.
COLORS = {
    "queue_s": "#b8b8b8",
    "network_s": "#6fa8dc",
    "prefill_s": "#f6b26b",
    "decode_s": "#e06666",
    "comm_s": "#8e7cc3",
    "tool_s": "#93c47d",
    "retry_s": "#ffd966",
    "overhead_s": "#444444",
}
_STATUS = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "skipped": "dim"}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def print_run(console: Console, result: RunResult) -> None:
    """The per-step table of a run (times in ms) and a one-line summary."""
    title = f"run {result.run_id} · {result.plan} · {result.clock} time · times in ms"
    table = Table(title=title, title_justify="left")
    for column in ("step", "kind", "status", "substrate"):
        table.add_column(column)
    for column in ("start", "latency", "tries", "in tok", "out tok", "queue", "network"):
        table.add_column(column, justify="right")
    for column in ("prefill", "decode", "comm", "ttft", "tool"):
        table.add_column(column, justify="right")
    for s in result.steps:
        t = s.timing
        table.add_row(
            s.id,
            s.kind,
            f"[{_STATUS[s.status]}]{s.status}[/]",
            s.substrate or "-",
            _ms(s.start_s),
            _ms(s.latency_s if s.start_s is not None else None),
            str(s.attempts),
            str(s.input_tokens),
            str(s.output_tokens),
            _ms(t.queue_s if t else None),
            _ms(t.network_s if t else None),
            _ms(t.prefill_s if t else None),
            _ms(t.decode_s if t else None),
            _ms(t.comm_s if t else None),
            _ms(t.ttft_s if t else None),
            _ms(s.tool_s) if s.tool else "-",
        )
    console.print(table)
    console.print(
        f"[{_STATUS[result.status]}]{result.status}[/] · end-to-end {result.e2e_s:.3f} s · "
        f"{result.input_tokens} in / {result.output_tokens} out tokens · "
        f"${result.cost_usd:.6f} · {result.energy_j:.1f} J"
    )
    if result.error:
        console.print(f"[red]reason:[/] {result.error}", highlight=False)


def print_report(console: Console, report: Attribution) -> None:
    """Where the time went: per-step categories, the critical path and the totals."""
    table = Table(
        title=f"where the {report.e2e_s:.3f} s went · run {report.run_id} · times in ms "
        "· ● critical path",
        title_justify="left",
    )
    table.add_column("step")
    for column in (
        "start",
        "latency",
        "queue",
        "network",
        "prefill",
        "decode",
        "comm",
        "tool",
        "retry",
        "overhead",
        "share",
    ):
        table.add_column(column, justify="right")
    for s in report.steps:
        if s.status == "skipped":
            continue
        table.add_row(
            ("● " if s.critical else "  ") + s.id,
            _ms(s.start_s),
            _ms(s.latency_s),
            *(_ms(getattr(s, name)) for name in CATEGORIES),
            f"{s.share:.0%}",
        )
    console.print(table)
    total = report.e2e_s or 1.0
    parts = " + ".join(
        f"{name[:-2]} {value * 1000:.1f} ms ({value / total:.0%})"
        for name, value in report.categories.items()
        if value > 0.0005 * total
    )
    console.print(f"critical path: {' → '.join(report.critical_path) or '-'}", highlight=False)
    console.print(f"end-to-end {report.e2e_s * 1000:.1f} ms = {parts or '0'}", highlight=False)
    if report.sum_of_step_latencies_s > report.e2e_s * 1.001:
        console.print(
            f"parallelism saved {(report.sum_of_step_latencies_s - report.e2e_s) * 1000:.1f} ms "
            f"(steps add up to {report.sum_of_step_latencies_s * 1000:.1f} ms)",
            highlight=False,
        )


def _segments(step: StepAttribution) -> list[tuple[str, float, float]]:
    """The step's categories laid end to end: retry first, then the model call, tool, overhead."""
    order = (
        "retry_s",
        "queue_s",
        "network_s",
        "prefill_s",
        "decode_s",
        "comm_s",
        "tool_s",
        "overhead_s",
    )
    t = step.start_s
    out = []
    for name in order:
        duration = max(0.0, getattr(step, name))
        if duration > 0:
            out.append((name, t, t + duration))
            t += duration
    return out


def print_waterfall(console: Console, report: Attribution, *, width: int = 64) -> None:
    """Steps as bars on one time axis, colored by category; ● marks the critical path."""
    span = report.e2e_s or 1.0
    name_width = max((len(s.id) for s in report.steps), default=4) + 2
    console.print(f"{'':{name_width}}0{'':{width - 1}}{report.e2e_s * 1000:.0f} ms")
    for step in report.steps:
        if step.status == "skipped":
            continue
        line = Text(("● " if step.critical else "  ") + step.id.ljust(name_width - 2))
        cells = [" "] * width
        colors: list[str | None] = [None] * width
        for name, start, end in _segments(step):
            first = int(start / span * width)
            last = max(first + 1, round(end / span * width))
            for i in range(max(0, first), min(width, last)):
                colors[i] = COLORS[name]
                cells[i] = "█"
        for cell, color in zip(cells, colors, strict=True):
            line.append(cell, style=color or "")
        line.append(f" {step.latency_s * 1000:.1f} ms")
        if step.status != "succeeded":
            line.append(f" {step.status}", style=_STATUS.get(step.status, ""))
        console.print(line)
    legend = Text("  ")
    for name in CATEGORIES:
        legend.append("█", style=COLORS[name])
        legend.append(f" {name[:-2]}  ")
    console.print(legend)


def print_comparison(console: Console, comparison: Comparison) -> None:
    """End-to-end percentiles per substrate, per-step medians side by side, and speed-ups."""
    names = list(comparison.substrates)
    table = Table(
        title=f"{comparison.plan} · {comparison.trials} trials per substrate · "
        f"{comparison.clock} time · times in ms",
        title_justify="left",
    )
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    rows = [("e2e p50", "e2e_p50_s"), ("e2e p95", "e2e_p95_s"), ("e2e p99", "e2e_p99_s")]
    for label, field in rows:
        table.add_row(label, *(_ms(getattr(comparison.substrates[n], field)) for n in names))
    table.add_row(
        "speed-up (p50)", *(f"{comparison.speedup[n]:.2f}x" for n in names), end_section=True
    )
    step_ids: dict[str, None] = {}
    for summary in comparison.substrates.values():
        for step_id in summary.steps:
            step_ids.setdefault(step_id, None)
    for step_id in step_ids:
        table.add_row(
            f"step {step_id} (median)",
            *(_ms(comparison.substrates[n].steps.get(step_id)) for n in names),
        )
    table.add_row(
        "succeeded",
        *(f"{s.succeeded}/{s.trials}" for s in comparison.substrates.values()),
        end_section=True,
    )
    table.add_row(
        "cost per run", *(f"${s.cost_usd_mean:.5f}" for s in comparison.substrates.values())
    )
    table.add_row(
        "energy per run",
        *(f"{s.energy_j_mean / 1000:.2f} kJ" for s in comparison.substrates.values()),
    )
    console.print(table)
