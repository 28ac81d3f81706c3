"""Terminal pictures of runs and attributions: the step table, the report and a waterfall (rich).

Two promises hold at any terminal width: no number or id is ever cut short (a table too wide for
the terminal is printed turned on its side, or one record at a time), and every printed sum adds
up to its printed total (the terms are rounded by largest remainder, see `split_exactly`).
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agentrt.compare import Comparison
from agentrt.report import CATEGORIES, LABELS, Attribution, StepAttribution
from agentrt.result import RunResult

__all__ = [
    "COLORS",
    "Column",
    "print_comparison",
    "print_report",
    "print_run",
    "print_table",
    "print_waterfall",
    "split_exactly",
    "sum_line",
    "terminal_console",
]

#: One color per category, shared by the waterfall and the plot.
COLORS = {
    "queue_s": "#b8b8b8",
    "network_s": "#6fa8dc",
    "prefill_s": "#f6b26b",
    "decode_s": "#e06666",
    "comm_s": "#8e7cc3",
    "tool_s": "#93c47d",
    "retry_s": "#ffd966",
    "failed_s": "#cc0000",
    "overhead_s": "#444444",
}
_STATUS = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "skipped": "dim"}


def terminal_console(*, stderr: bool = False, piped_width: int = 200) -> Console:
    """A console as wide as the terminal; when piped, ``$COLUMNS`` wide, else ``piped_width``.

    Rich falls back to 80 columns when output is not a terminal; a log file or a pipe into
    ``less -S`` is better served by full-width tables, unless the user set ``COLUMNS``.
    """
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and not os.environ.get("COLUMNS", "").isdigit()
    return Console(stderr=stderr, width=piped_width if wide else None)


def split_exactly(
    values: Sequence[float], total: float, *, unit: float, residue: int = -1
) -> list[int]:
    """Round ``values`` to whole ``unit``s that add up exactly to ``total`` rounded.

    Largest remainder (Hamilton's method): each value is rounded down, and the units still
    missing go to the values that lost the most. Negative values count as zero. If the values
    do not add up to the total in the first place, the term at ``residue`` absorbs the difference.

    Args:
        values: the terms (same unit as ``total``).
        total: what they add up to.
        unit: the printed resolution, e.g. ``1e-4`` for seconds shown as ms with one decimal.
        residue: index of the term that absorbs any mismatch (default: the last).

    Returns:
        One integer count of ``unit`` per value; their sum is ``round(total / unit)``.

    Example:
        >>> split_exactly([0.33333, 0.33333, 0.33334], 1.0, unit=0.01)
        [33, 33, 34]
        >>> sum(split_exactly([1.04, 2.04, 2.92], 6.0, unit=0.1))
        60
    """
    target = round(total / unit)
    scaled = [max(0.0, v / unit) for v in values]
    units = [math.floor(x + 1e-9) for x in scaled]
    missing = target - sum(units)
    if 0 <= missing <= len(units):
        by_loss = sorted(range(len(units)), key=lambda i: units[i] - scaled[i])
        for i in by_loss[:missing]:
            units[i] += 1
    elif units:
        units[residue] += missing
    return units


# -- tables that never cut a number short --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    """One column of `print_table`: its header and alignment (numbers right)."""

    header: str
    justify: Literal["left", "right"] = "right"
    wrap: bool = False
    """Free text that may wrap at spaces (never inside a word); numbers and ids never wrap."""


def _natural_width(table: Table) -> int:
    """The width the table needs: every cell on one line, wrapping columns at their longest word."""
    wide = Console(width=100_000, file=io.StringIO(), color_system=None)
    return wide.measure(table).maximum


_WORD_FOLD = 20
_TURN_AT_MOST = 12


def _longest_word(cells: Sequence[str]) -> int:
    words = (w for cell in cells for w in Text.from_markup(cell).plain.split())
    return max((len(w) for w in words), default=1)


def _table(
    title: str | None,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    compact: bool = False,
) -> Table:
    table = (
        Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold")
        if compact
        else Table(title=title, title_justify="left")
    )
    for i, column in enumerate(columns):
        longest = None
        if column.wrap:  # longer words fold
            longest = min(_WORD_FOLD, _longest_word([column.header, *(r[i] for r in rows)]))
        table.add_column(
            column.header,
            justify=column.justify,
            no_wrap=not column.wrap,
            overflow="fold",
            max_width=longest,
        )
    for row in rows:
        table.add_row(*row)
    return table


def _print_fitted(console: Console, table: Table) -> None:
    """Print a table whose `_natural_width` fits, letting its wrapping columns grow to fit."""
    for column in table.columns:
        if not column.no_wrap:
            column.max_width = None
    console.print(table)


def print_table(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
) -> None:
    """Print rows as a table that fits the console without cutting any cell short.

    Tried in order: the table as is; without borders; turned on its side (one column per row,
    headed by the row's first cell), split into as few pieces as fit; for more than 12 rows,
    one ``header value · ...`` line per row instead. Cells may hold rich markup.

    Args:
        console: where to print.
        columns: the headers; the first column names the row.
        rows: one string per column in each.
        title: printed above (wrapped at spaces if long, never cut).
    """
    for compact in (False, True):
        table = _table(title, columns, rows, compact=compact)
        if _natural_width(table) <= console.width:
            _print_fitted(console, table)
            return
    if len(rows) > _TURN_AT_MOST:
        # Too many rows to turn: one record per row, wrapped at spaces only.
        if title:
            console.print(title, highlight=False)
        for row in rows:
            record = " · ".join(
                f"{c.header.replace(chr(10), ' ')} {cell}" if c.header else cell
                for c, cell in zip(columns, row, strict=True)
            )
            console.print(record, highlight=False)
        return
    # Turned on its side, in as few pieces as fit: each piece holds consecutive rows.
    pieces: list[list[Sequence[str]]] = [[]]
    for row in rows:
        trial = [*pieces[-1], row]
        if pieces[-1] and _natural_width(_turned(None, columns, trial)) > console.width:
            pieces.append([row])
        else:
            pieces[-1] = trial
    for number, piece in enumerate(pieces):
        console.print(_turned(title if number == 0 else None, columns, piece))


def _turned(title: str | None, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> Table:
    """One column per row, headed by its first cell; one row per column."""
    headers = [Column(columns[0].header, "left")]
    headers += [Column(Text.from_markup(r[0]).plain) for r in rows]
    cells = [[c.header.replace("\n", " "), *(r[i] for r in rows)] for i, c in enumerate(columns)]
    table = _table(title, headers, cells[1:])
    for column in table.columns:  # a single narrow piece still never cuts a cell: it folds it
        column.no_wrap = False
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _tenths(units: int) -> str:
    """0.1-ms units as ms with one decimal, exactly (no float rounding on the way)."""
    sign = "-" if units < 0 else ""
    return f"{sign}{abs(units) // 10}.{abs(units) % 10}"


def print_run(console: Console, result: RunResult) -> None:
    """The per-step table of a run (times in ms) and a one-line summary."""
    title = f"run {result.run_id} · {result.plan} · {result.clock} time · times in ms"
    columns = [
        Column("step", "left"),
        Column("kind", "left"),
        Column("status", "left"),
        Column("substrate", "left"),
        *(
            Column(h)
            for h in ("start", "latency", "tries", "in\ntok", "out\ntok", "queue", "network")
        ),
        *(Column(h) for h in ("prefill", "decode", "comm", "ttft", "tool")),
    ]
    rows = []
    for s in result.steps:
        t = s.timing
        rows.append(
            [
                s.id,
                # A tool loop's tool steps name the tool the model called.
                f"{s.kind} {s.tool}" if s.kind == "tool" and s.tool else s.kind,
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
            ]
        )
    print_table(console, columns, rows, title=title)
    console.print(
        f"[{_STATUS[result.status]}]{result.status}[/] · end-to-end {result.e2e_s:.3f} s · "
        f"{result.input_tokens} in / {result.output_tokens} out tokens · "
        f"${result.cost_usd:.6f} · {result.energy_j:.1f} J"
    )
    if result.error:
        console.print(f"[red]reason:[/] {result.error}", highlight=False)


def print_report(console: Console, report: Attribution) -> None:
    """Where the time went: per-step categories, the critical path and the totals.

    Each row's categories add up to its printed latency, and the end-to-end line's terms add up
    to its printed total, to the printed digit (see `split_exactly`). Categories that are 0.0 in
    every row get no column; a line under the table names them.
    """
    who = f"agent {report.agent}"
    if report.substrates:
        who += f" on {', '.join(report.substrates)}"
    residue = CATEGORIES.index("overhead_s")
    shown = [s for s in report.steps if s.status != "skipped"]
    split = [
        split_exactly([getattr(s, n) for n in CATEGORIES], s.latency_s, unit=1e-4, residue=residue)
        for s in shown
    ]
    # A category that is zero on every row is left out (the line below the table says so).
    kept = [i for i in range(len(CATEGORIES)) if any(units[i] for units in split)]
    columns = [
        Column("step", "left"),
        Column("start"),
        Column("latency"),
        *(Column(LABELS[CATEGORIES[i]]) for i in kept),
        Column("share"),
    ]
    rows = [
        [
            ("● " if s.critical else "  ") + s.id,
            _ms(s.start_s),
            _tenths(round(s.latency_s / 1e-4)),
            *(_tenths(units[i]) for i in kept),
            f"{s.share:.0%}",
        ]
        for s, units in zip(shown, split, strict=True)
    ]
    print_table(
        console,
        columns,
        rows,
        title=f"where the {report.e2e_s:.3f} s went · run {report.run_id} · {who} · times in ms "
        "· ● critical path",
    )
    dropped = [LABELS[n] for i, n in enumerate(CATEGORIES) if i not in kept]
    if dropped and shown:
        console.print(f"(0.0 in every row: {', '.join(dropped)})", highlight=False)
    console.print(f"critical path: {' → '.join(report.critical_path) or '-'}", highlight=False)
    console.print(f"end-to-end {sum_line(report)}", highlight=False)
    if report.sum_of_step_latencies_s > report.e2e_s * 1.001:
        console.print(
            f"parallelism saved {(report.sum_of_step_latencies_s - report.e2e_s) * 1000:.1f} ms "
            f"(steps add up to {report.sum_of_step_latencies_s * 1000:.1f} ms)",
            highlight=False,
        )


def sum_line(report: Attribution) -> str:
    """``TOTAL ms = a ms (x%) + b ms (y%) + ...``: the terms add up to the total, as printed.

    Every category with a printed value above zero appears; the percentages add up to 100.

    Example:
        >>> from agentrt.report import Attribution
        >>> cats = dict.fromkeys(CATEGORIES, 0.0) | {"decode_s": 2 / 3, "tool_s": 1 / 3}
        >>> sum_line(Attribution(run_id="r", agent="a", status="succeeded", e2e_s=1.0,
        ...     critical_path=(), categories=cats, steps=(), sum_of_step_latencies_s=1.0))
        '1000.0 ms = decode 666.7 ms (67%) + tool 333.3 ms (33%)'
    """
    values = [report.categories.get(name, 0.0) for name in CATEGORIES]
    residue = CATEGORIES.index("overhead_s")
    units = split_exactly(values, report.e2e_s, unit=1e-4, residue=residue)
    total = sum(units)
    shares = split_exactly([float(u) for u in units], float(total), unit=total / 100 or 1.0)
    parts = [
        f"{LABELS[name]} {_tenths(u)} ms ({p}%)"
        for name, u, p in zip(CATEGORIES, units, shares, strict=True)
        if u != 0
    ]
    return f"{_tenths(total)} ms = {' + '.join(parts) or '0'}"


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
        "failed_s",
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
    """Steps as bars on one time axis, colored by category; ● marks the critical path.

    The bars shrink to fit a narrow console (``width`` is the widest they get).
    """
    span = report.e2e_s or 1.0
    steps = [s for s in report.steps if s.status != "skipped"]
    name_width = max((len(s.id) for s in steps), default=4) + 2
    label_width = max((len(f" {s.latency_s * 1000:.1f} ms {s.status}") for s in steps), default=0)
    width = max(8, min(width, console.width - name_width - label_width))
    total = f"{report.e2e_s * 1000:.0f} ms"
    console.print(f"{'':{name_width}}0{total:>{width + len(total) - 1}}", highlight=False)
    for step in steps:
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
        console.print(line, no_wrap=True, overflow="ignore", crop=False)
    legend = Text("  ")
    for name in CATEGORIES:
        legend.append("█", style=COLORS[name])
        legend.append(f" {LABELS[name]}  ")
    console.print(legend)


def print_comparison(console: Console, comparison: Comparison) -> None:
    """End-to-end percentiles per substrate, per-step medians side by side, and speed-ups."""
    names = list(comparison.substrates)
    summaries = comparison.substrates
    rows: list[list[str]] = []
    for label, field in (
        ("e2e p50", "e2e_p50_s"),
        ("e2e p95", "e2e_p95_s"),
        ("e2e p99", "e2e_p99_s"),
    ):
        rows.append([label, *(_ms(getattr(summaries[n], field)) for n in names)])
    rows.append(["speed-up (p50)", *(f"{comparison.speedup[n]:.2f}x" for n in names)])
    step_ids: dict[str, None] = {}
    for summary in summaries.values():
        for step_id in summary.steps:
            step_ids.setdefault(step_id, None)
    rows += [
        [f"step {step_id} (median)", *(_ms(summaries[n].steps.get(step_id)) for n in names)]
        for step_id in step_ids
    ]
    rows.append(["succeeded", *(f"{s.succeeded}/{s.trials}" for s in summaries.values())])
    rows.append(["cost per run", *(f"${s.cost_usd_mean:.5f}" for s in summaries.values())])
    rows.append(
        ["energy per run", *(f"{s.energy_j_mean / 1000:.2f} kJ" for s in summaries.values())]
    )
    print_table(
        console,
        [Column("", "left"), *(Column(n) for n in names)],
        rows,
        title=f"{comparison.plan} · {comparison.trials} trials per substrate · "
        f"{comparison.clock} time · times in ms",
    )
