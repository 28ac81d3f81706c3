from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

from agentrt import Plan, Step, current_clock
from agentrt.errors import ConfigError
from substrates.fleet.arrivals import StepArrivals
from substrates.fleet.fleetreport import FleetReport
from substrates.fleet.fleetrun import run_fleet
from substrates.fleet.ops import RolloutEvent, ScaleEvent
from substrates.fleet.tenants import Tenant

from .test_fleetrun import FakePool


def spike_report(vrun: Callable[..., Any]) -> FleetReport:
    """A spike on a fake pool that a toy controller scales up after a lag."""
    pool = FakePool("h100", latency_s=1.0, replicas=2, max_queue=40)
    events: list[ScaleEvent | RolloutEvent] = []

    async def controller() -> None:
        while True:
            await anyio.sleep(5.0)
            snap = pool.snapshot()
            if snap.queued > 4 and pool.replicas < 12:
                now = current_clock().current_time()
                events.append(
                    ScaleEvent(now, "h100", "scale_up", pool.replicas, pool.replicas + 4, "queue")
                )
                pool.replicas += 4
                pool.limiter.total_tokens = pool.replicas

    events.append(RolloutEvent(40.0, "start", "canary 10%", {"v1": 0.9, "v2": 0.1}))
    tenant = Tenant(
        name="chat",
        plan=Plan(name="p", steps=[Step(id="a"), Step(id="b", depends_on=["a"])]),
        arrivals=StepArrivals(base_rate=0.5, peak_rate=6.0, at_s=20.0, until_s=50.0),
        e2e_s=6.0,
        ttft_s=0.5,
    )
    return vrun(
        partial(run_fleet, [tenant], pool, duration_s=80.0, seed=3, background=[controller],
                events=[events])
    )  # fmt: skip


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_picture_is_written(vrun: Callable[..., Any], tmp_path: Path, suffix: str) -> None:
    from substrates.fleet.timeline import plot_timeline

    report = spike_report(vrun)
    assert any(e.kind == "scale_up" for e in report.scale_events)
    out = plot_timeline(report, tmp_path / f"sub/fleet{suffix}")
    data = out.read_bytes()
    assert out.suffix == suffix
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:2000]


def test_picture_refuses_other_suffixes_and_empty_reports(tmp_path: Path) -> None:
    from substrates.fleet.timeline import plot_timeline

    with pytest.raises(ConfigError, match=r"\.svg or \.png"):
        plot_timeline(FleetReport(), tmp_path / "fleet.pdf")
    with pytest.raises(ConfigError, match="no samples"):
        plot_timeline(FleetReport(), tmp_path / "fleet.png")


def test_summary_fits_100_columns(vrun: Callable[..., Any]) -> None:
    from substrates.fleet.timeline import print_fleet_summary

    report = spike_report(vrun)
    buffer = io.StringIO()
    print_fleet_summary(Console(file=buffer, width=100, color_system=None), report)
    text = buffer.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "chat" in text
    assert "h100" in text
    assert "scale_up" in text
    assert f"{report.arrivals:,} arrivals" in text


def test_picture_without_pools(vrun: Callable[..., Any], tmp_path: Path) -> None:
    from agentrt.testing import FixedLatencySubstrate
    from substrates.fleet.arrivals import PoissonArrivals
    from substrates.fleet.timeline import plot_timeline

    tenant = Tenant(
        name="t", plan=Plan(name="p", steps=[Step(id="a")]), arrivals=PoissonArrivals(rate=2)
    )
    report = vrun(
        partial(run_fleet, [tenant], FixedLatencySubstrate(latency_s=0.3), duration_s=10.0)
    )
    assert report.pools == {} or all(p.replica_s is None for p in report.pools.values())
    assert plot_timeline(report, tmp_path / "plain.svg").stat().st_size > 0
