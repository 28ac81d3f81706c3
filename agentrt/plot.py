"""A picture of a run: steps as bars on the time axis, split by category (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path

from agentrt.errors import ConfigError
from agentrt.render import COLORS, _segments
from agentrt.report import CATEGORIES, Attribution

__all__ = ["plot_attribution"]


def plot_attribution(report: Attribution, path: str | Path) -> Path:
    """Draw ``report`` as a waterfall and save it as SVG or PNG (by the file's suffix).

    Needs matplotlib: ``pip install 'agentrt[plot]'``.

    Raises:
        ConfigError: matplotlib is missing, or the suffix is not .svg / .png.
    """
    out = Path(path)
    if out.suffix.lower() not in (".svg", ".png"):
        raise ConfigError(f"--plot writes .svg or .png files, not {out.name!r}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:  # pragma: no cover - the dev extra installs matplotlib
        raise ConfigError("plotting needs matplotlib: pip install 'agentrt[plot]'") from exc

    steps = [s for s in report.steps if s.status != "skipped"]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(steps) + 2.0))
    for row, step in enumerate(steps):
        for name, start, end in _segments(step):
            ax.barh(row, (end - start) * 1000, left=start * 1000, color=COLORS[name], height=0.6)
        if step.critical:
            ax.barh(
                row,
                step.latency_s * 1000,
                left=step.start_s * 1000,
                height=0.72,
                fill=False,
                edgecolor="black",
                linewidth=1.4,
            )
    ax.set_yticks(range(len(steps)))
    ax.set_yticklabels([("● " if s.critical else "") + s.id for s in steps])
    ax.invert_yaxis()
    ax.set_xlabel("time since the run started (ms)")
    ax.set_xlim(0, max(report.e2e_s * 1000, 1e-3))
    ax.set_title(
        f"{report.agent} · run {report.run_id} · {report.e2e_s * 1000:.1f} ms end to end "
        "(outlined: critical path)"
    )
    ax.legend(
        handles=[Patch(color=COLORS[n], label=n[:-2]) for n in CATEGORIES],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        fontsize="small",
        ncol=len(CATEGORIES),
        frameon=False,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
