"""``agentrt load --sweep``: latency versus arrival rate per substrate, as a table and a plot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from substrates.fleet.load import LoadReport

__all__ = ["plot_curves", "print_curves", "sweep_rates"]

Curves = dict[str, list[dict[str, Any]]]
_KEYS = (
    "arrival_rate", "completed", "failed", "lost", "throughput_runs_per_s",
    "e2e_p50_s", "e2e_p95_s", "e2e_p99_s", "ttft_p50_s", "ttft_p99_s",
)  # fmt: skip


def sweep_rates(
    one: Callable[..., LoadReport], names: Sequence[str], rates: Sequence[float]
) -> Curves:
    """Call ``one(name, rate=r)`` for every substrate and rate; keep the latency figures."""
    curves: Curves = {}
    for name in names:
        points = []
        for rate in rates:
            data = one(name, rate=rate).to_dict()
            points.append({key: data[key] for key in _KEYS})
        curves[name] = points
    return curves


def print_curves(console: Console, curves: Curves) -> None:
    """One latency-vs-load table per substrate."""
    for name, points in curves.items():
        table = Table(title=f"latency vs load on {name}", title_justify="left")
        seeded = len({p.get("seed") for p in points}) > 1
        columns = ("arrivals/s", "runs/s", "e2e p50 s", "e2e p99 s", "ttft p99 s", "failed")
        for column in ("seed", *columns) if seeded else columns:
            table.add_column(column, justify="right")
        for p in points:
            table.add_row(
                *([str(p["seed"])] if seeded else []),
                f"{p['arrival_rate']:.3g}",
                f"{p['throughput_runs_per_s']:.3g}",
                "-" if p["e2e_p50_s"] is None else f"{p['e2e_p50_s']:.3f}",
                "-" if p["e2e_p99_s"] is None else f"{p['e2e_p99_s']:.3f}",
                "-" if p["ttft_p99_s"] is None else f"{p['ttft_p99_s']:.3f}",
                str(p["failed"]),
            )
        console.print(table)


def _mean_over_seeds(points: list[dict[str, Any]]) -> tuple[list[float], ...]:
    """Per arrival rate, the mean p50 and p99 over the seeds that completed runs."""
    by_rate: dict[float, list[dict[str, Any]]] = {}
    for p in points:
        if p["e2e_p50_s"] is not None:
            by_rate.setdefault(p["arrival_rate"], []).append(p)
    xs = sorted(by_rate)
    p50 = [sum(p["e2e_p50_s"] for p in by_rate[x]) / len(by_rate[x]) for x in xs]
    p99 = [sum(p["e2e_p99_s"] for p in by_rate[x]) / len(by_rate[x]) for x in xs]
    return xs, p50, p99


def plot_curves(curves: Curves, path: Path, *, title: str) -> None:
    """Draw p50 and p99 end-to-end time against arrival rate, one colour per substrate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, points in curves.items():
        xs, p50, p99 = _mean_over_seeds(points)
        (line,) = ax.plot(xs, p50, marker="o", label=f"{name} p50")
        ax.plot(xs, p99, marker="^", linestyle="--", color=line.get_color(), label=f"{name} p99")
    rates = [p["arrival_rate"] for points in curves.values() for p in points]
    if rates and max(rates) > 20 * min(rates):
        ax.set_xscale("log")
    ax.set_xlabel("agent arrivals per second")
    ax.set_ylabel("end-to-end agent time (s)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
