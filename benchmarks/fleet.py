"""Fleet operations in virtual time: the example specs' wall time, losses and autoscaler lag.

Runs each fleet spec (default: examples/fleets/spike.yaml, a 1 -> 20 agents/s spike on a mixed
wse3 + h100 fleet with cold starts over 10 simulated minutes, and examples/fleets/canary.yaml, a
canary on a deliberately slower stack) and prints, per spec: simulated and wall seconds,
arrivals and how they ended, model calls, peak memory, and per pool the lag between the first
scale-up decision and the first replica it made ready (the cold start the picture shows).

Run: ``python benchmarks/fleet.py [SPEC.yaml ...]``.
Target: every spec in under 30 s of wall time, 0 lost; the canary rolled back.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from _common import logging_off, print_table

from substrates.fleet.fleetbuild import run_fleet_spec
from substrates.fleet.fleetreport import FleetReport
from substrates.fleet.fleetspec import load_fleet_spec

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [ROOT / "examples" / "fleets" / name for name in ("spike.yaml", "canary.yaml")]


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024


def lags(report: FleetReport) -> dict[str, float]:
    """Per pool: seconds from its first scale-up decision to the first replica ready after it."""
    out: dict[str, float] = {}
    events = sorted(report.scale_events, key=lambda e: e.t_s)
    for pool in {e.pool for e in events}:
        up = next((e for e in events if e.pool == pool and e.kind == "scale_up"), None)
        if up is None:
            continue
        ready = next(
            (e for e in events if e.pool == pool and e.kind == "ready" and e.t_s >= up.t_s), None
        )
        if ready is not None:
            out[pool] = ready.t_s - up.t_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", type=Path, default=DEFAULT)
    args = parser.parse_args()
    logging_off()
    rows = []
    verdicts = []
    for path in args.specs:
        spec = load_fleet_spec(path)
        wall0 = time.perf_counter()
        report = run_fleet_spec(spec)
        wall = time.perf_counter() - wall0
        data = report.to_dict()
        lost = report.arrivals - report.completed - report.failed - report.rejected
        rolled_back = any(e.kind == "rollback" for e in report.rollout_events)
        lag = ", ".join(f"{pool} {s:.0f} s" for pool, s in sorted(lags(report).items())) or "-"
        rows.append(
            [
                path.name,
                f"{data.get('sim_s', spec.duration_s):,.0f}",
                f"{wall:.1f}",
                f"{report.arrivals:,}",
                f"{report.completed:,} / {report.failed:,} / {report.rejected:,}",
                lost,
                lag,
                "yes" if rolled_back else "no",
                f"{peak_rss_mb():.0f}",
            ]
        )
        verdicts.append((path.name, wall, lost, rolled_back))
    print_table(
        "fleet specs in virtual time",
        ["spec", "sim s", "wall s", "arrivals", "done / failed / shed", "lost",
         "scale-up -> ready", "rolled back", "peak MB"],
        rows,
    )  # fmt: skip
    for name, wall, lost, rolled_back in verdicts:
        ok = wall < 30 and lost == 0 and (rolled_back or "canary" not in name)
        extra = ", canary rolled back" if "canary" in name else ""
        print(
            f"target: {name} in < 30 s wall, 0 lost{extra} -> {'meets' if ok else 'MISSES'} "
            f"({wall:.1f} s, {lost} lost)"
        )


if __name__ == "__main__":
    main()
