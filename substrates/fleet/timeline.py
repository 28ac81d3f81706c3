"""A fleet run over time: the time-series picture (PNG/SVG) and the terminal summary.

`plot_timeline` draws panels sharing the time axis: arrivals (and completions, rejections) per
second; replicas per pool as step lines with scale decisions marked as ticks; queued requests
per pool and agent runs in flight; windowed E2E and TTFT percentiles. Rollout steps are vertical
lines across all panels. `print_fleet_summary` prints the per-tenant and per-pool tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from agentrt.errors import ConfigError
from agentrt.render import Column, print_table
from substrates.fleet.fleetreport import FleetReport

__all__ = ["plot_timeline", "print_fleet_summary"]

_TICK_COLORS = {
    "scale_up": "tab:green",
    "scale_down": "tab:red",
    "ready": "black",
    "stopped": "grey",
}


def _panel_arrivals(ax: Any, report: FleetReport, xs: list[float]) -> None:
    per_s = 1.0 / report.sample_s
    for name, color in (("arrivals", "black"), ("completed", "tab:blue"), ("rejected", "tab:red")):
        values = [getattr(s, name) * per_s for s in report.samples]
        if name == "arrivals" or any(values):
            ax.step(xs, values, where="pre", color=color, label=f"{name}/s", linewidth=1.2)
    ax.set_ylabel("agents per s")


def _panel_replicas(ax: Any, report: FleetReport, xs: list[float], pools: list[str]) -> None:
    lines = {}
    for pool in pools:
        values = [s.pools.get(pool, {}).get("replicas", 0) for s in report.samples]
        warm = [s.pools.get(pool, {}).get("warm", 0) for s in report.samples]
        (line,) = ax.step(xs, values, where="pre", label=f"{pool} replicas", linewidth=1.4)
        ax.step(xs, warm, where="pre", color=line.get_color(), linestyle=":", linewidth=1.0)
        lines[pool] = line.get_color()
    for event in report.scale_events:
        t = event.t_s - report.start_s
        color = _TICK_COLORS.get(event.kind, "grey")
        # A short tick at the decision's new count: the gap to the step line is the start lag.
        ax.plot([t, t], [event.before, event.after], color=color, linewidth=2.2, alpha=0.8)
        ax.plot([t], [event.after], marker="|", markersize=9, color=lines.get(event.pool, color))
    ax.set_ylabel("replicas (dotted: warm)\nticks: up, down, ready")


def _panel_queue(ax: Any, report: FleetReport, xs: list[float], pools: list[str]) -> None:
    ax.step(
        xs,
        [s.in_flight for s in report.samples],
        where="pre",
        color="black",
        label="runs in flight",
        linewidth=1.0,
    )
    for pool in pools:
        queued = [s.pools.get(pool, {}).get("queued", 0) for s in report.samples]
        ax.step(xs, queued, where="pre", label=f"{pool} queued", linewidth=1.2)
    ax.set_ylabel("requests")


def _panel_latency(ax: Any, report: FleetReport, xs: list[float]) -> None:
    styles = {"p50": "-", "p95": "--", "p99": ":"}
    drawn = False
    for metric, color in (("e2e", "tab:purple"), ("ttft", "tab:orange")):
        for q, style in styles.items():
            pts = [
                (x, s.latency.get(f"{metric}_{q}_s"))
                for x, s in zip(xs, report.samples, strict=True)
            ]
            kept = [(x, v) for x, v in pts if v is not None and v > 0]
            if kept:
                drawn = True
                ax.plot(
                    *zip(*kept, strict=True),
                    linestyle=style,
                    color=color,
                    marker=".",
                    markersize=3,
                    label=f"{metric} {q}",
                )
    if drawn:
        ax.set_yscale("log")
    ax.set_ylabel("seconds")


def plot_timeline(report: FleetReport, path: str | Path, *, title: str | None = None) -> Path:
    """Draw ``report``'s time series and save it as SVG or PNG (by the file's suffix).

    Needs matplotlib: ``pip install 'agentrt[plot]'``.

    Raises:
        ConfigError: matplotlib is missing, the suffix is not .svg / .png, or nothing was sampled.
    """
    out = Path(path)
    if out.suffix.lower() not in (".svg", ".png"):
        raise ConfigError(f"--plot writes .svg or .png files, not {out.name!r}")
    if not report.samples:
        raise ConfigError("the fleet run has no samples to draw; run it for at least sample_s")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - the dev extra installs matplotlib
        raise ConfigError("plotting needs matplotlib: pip install 'agentrt[plot]'") from exc

    xs = [s.t_s for s in report.samples]
    pools = sorted({p for s in report.samples for p in s.pools})
    # Without sampled pools (plain substrates) there is no replicas panel.
    rows = 4 if pools else 3
    fig, axes = plt.subplots(rows, 1, sharex=True, figsize=(11, 2.5 * rows))
    _panel_arrivals(axes[0], report, xs)
    if pools:
        _panel_replicas(axes[1], report, xs, pools)
    _panel_queue(axes[rows - 2], report, xs, pools)
    _panel_latency(axes[rows - 1], report, xs)
    for event in report.rollout_events:
        for ax in axes:
            ax.axvline(event.t_s - report.start_s, color="tab:gray", linestyle="--", linewidth=0.9)
        axes[0].annotate(
            event.kind,
            (event.t_s - report.start_s, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize="x-small",
            rotation=90,
            va="top",
            ha="right",
        )
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small", loc="upper left", ncol=3)
    axes[-1].set_xlabel(f"time since the start (s); sampled every {report.sample_s:g} s")
    axes[0].set_title(title or _headline(report))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _headline(report: FleetReport) -> str:
    slo = report.slo_attainment
    return (
        f"{report.arrivals:,} arrivals: {report.completed:,} completed, {report.failed:,} failed, "
        f"{report.rejected:,} rejected, {report.lost} lost"
        + ("" if slo is None else f"; SLO attainment {slo:.1%}")
    )


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _trio(row: dict[str, Any], metric: str, qs: tuple[int, ...]) -> str:
    return "/".join(_s(row[f"{metric}_p{q}_s"]) for q in qs)


def _n(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_fleet_summary(console: Console, report: FleetReport) -> None:
    """Print the fleet run's headline, per-tenant and per-pool tables and event counts."""
    data = report.to_dict()
    console.print(_headline(report), highlight=False)
    tenant_rows = [
        [
            name,
            f"{t['slo']}/{t['priority']}",
            f"{t['arrivals']:,}",
            f"{t['completed']:,}",
            f"{t['failed']:,}",
            f"{t['rejected']:,}",
            _trio(t, "e2e", (50, 95, 99)),
            _s(t["ttft_p99_s"]),
            "-" if t["slo_attainment"] is None else f"{t['slo_attainment']:.1%}",
            f"{t['cost_usd']:.3g}",
        ]
        for name, t in data["tenants"].items()
    ]
    tenant_headers = ("class/\nprio", "arrived", "done", "failed", "shed", "e2e s\np50/95/99",
                      "ttft s\np99", "in SLO", "cost $")  # fmt: skip
    print_table(
        console,
        [Column("tenant", "left"), *map(Column, tenant_headers)],
        tenant_rows,
        title="tenants (e2e per agent run, ttft per model call; shed: rejected at admission)",
    )
    if data["pools"]:
        pool_rows = [
            [
                name,
                p["version"] or "-",
                f"{p['calls']:,}",
                _trio(p, "ttft", (50, 99)),
                _trio(p, "e2e", (50, 99)),
                _n(p["replica_s"], ",.0f"),
                _n(p["peak_replicas"], "d"),
                _n(p["cold_starts"], "d"),
                _n(p["rejected"], ",d"),
            ]
            for name, p in data["pools"].items()
        ]
        pool_headers = ("version", "calls", "ttft s\np50/99", "e2e s\np50/99", "replica-s",
                        "peak\nreplicas", "cold\nstarts", "shed\ncalls")  # fmt: skip
        print_table(
            console,
            [Column("pool", "left"), *map(Column, pool_headers)],
            pool_rows,
            title="pools (per model call)",
        )
    kinds: dict[str, int] = {}
    for event in report.scale_events:
        kinds[event.kind] = kinds.get(event.kind, 0) + 1
    for rollout in report.rollout_events:
        kinds[f"rollout {rollout.kind}"] = kinds.get(f"rollout {rollout.kind}", 0) + 1
    if kinds:
        console.print("events: " + ", ".join(f"{n} {k}" for k, n in kinds.items()), highlight=False)
    console.print(
        f"cost ${report.cost_usd:.4g}, energy {report.energy_j / 3.6e6:.3g} kWh; "
        f"{report.sim_s:.1f} s simulated in {report.wall_s:.2f} s wall",
        highlight=False,
    )
