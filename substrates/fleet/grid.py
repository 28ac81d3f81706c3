"""The ``agentrt load --sweep`` grid: substrates x arrival rates x seeds, one task per point.

Each point is an independent, deterministic load study in virtual time (`sweep_point`, a
module-level function an executor can ship to another process or a Ray node). `sweep_grid`
maps it over the grid and returns the curves keyed by substrate, each point carrying its
``arrival_rate`` and ``seed``, in grid order whatever ran where.

Example:
    >>> parse_rates("0.5,1,2"), parse_rates("1:3:0.5")
    ([0.5, 1.0, 2.0], [1.0, 1.5, 2.0, 2.5, 3.0])
    >>> seed_list(seed=7, seeds=3, listed=None)
    [7, 8, 9]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from agentrt.cli_tasks import map_tasks
from agentrt.errors import ConfigError
from agentrt.plan import Plan
from substrates.fleet.study import LoadInterrupted, run_load_study

__all__ = ["POINT_KEYS", "parse_rates", "seed_list", "sweep_grid", "sweep_point"]

#: What each sweep point keeps of its load report (no wall-clock figures: they vary per run).
POINT_KEYS = (
    "arrival_rate", "seed", "completed", "failed", "lost", "throughput_runs_per_s",
    "e2e_p50_s", "e2e_p95_s", "e2e_p99_s", "ttft_p50_s", "ttft_p99_s",
)  # fmt: skip
#: The most points a ``START:STOP:STEP`` range may expand to.
_MAX_POINTS = 100_000


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"--rates: {text.strip()!r} is not an arrival rate; give rates > 0 as a list "
            "(0.5,1,2) or a range START:STOP:STEP (1:10:0.5)"
        )
    return value


def parse_rates(text: str) -> list[float]:
    """``"0.5,1,2"`` (a list) or ``"START:STOP:STEP"`` (a range, STOP included).

    Raises:
        ConfigError: a rate that is not a number above 0, or a step of 0.
    """
    if ":" not in text:
        return [_rate(part) for part in text.split(",") if part.strip()] or [_rate(text)]
    parts = text.split(":")
    if len(parts) != 3:
        raise ConfigError(f"--rates {text!r}: a range is START:STOP:STEP, e.g. 1:10:0.5")
    start, stop, step = (_rate(p) for p in parts)
    count = math.floor((stop - start) / step + 1e-9) + 1
    if count < 1 or count > _MAX_POINTS:
        raise ConfigError(f"--rates {text!r}: STOP must be >= START and the range small")
    # From integers, so 0.1 steps give 0.3, not 0.30000000000000004, on every machine.
    return [round(start + k * step, 12) for k in range(count)]


def seed_list(*, seed: int, seeds: int | None, listed: str | None) -> list[int]:
    """The sweep's seeds: ``listed`` (``"1,2,3"``), or ``seeds`` from ``seed`` on, or ``seed``.

    Raises:
        ConfigError: both ``--seeds`` and ``--seed-list``, or a seed that is not an integer.
    """
    if seeds is not None and listed is not None:
        raise ConfigError("give --seeds N or --seed-list A,B,C, not both")
    if listed is not None:
        try:
            out = [int(part) for part in listed.split(",") if part.strip()]
        except ValueError:
            raise ConfigError(f"--seed-list {listed!r}: give integers, e.g. 1,2,3") from None
        if not out:
            raise ConfigError("--seed-list needs at least one seed, e.g. 1,2,3")
        return out
    return [seed + k for k in range(seeds or 1)]


def sweep_point(
    *,
    plan: Plan,
    substrate: str,
    rate: float,
    seed: int,
    agents: int,
    duration_s: float | None,
    virtual: bool,
    faults: str | None,
    slo_s: float | None,
    options: dict[str, Any],
    signals: bool = False,
) -> dict[str, Any]:
    """One point of a sweep: a load study of ``plan`` on ``substrate`` at ``rate`` with ``seed``.

    ``signals`` lets SIGINT/SIGTERM cancel the study (only where it runs in the command's own
    process; a worker leaves signals to the command).

    Raises:
        Interrupted: a signal cancelled the study.
        AgentrtError: a bad substrate name or option.
    """
    try:
        report = run_load_study(
            plan, substrate, agents=agents, rate=rate, duration_s=duration_s, virtual=virtual,
            seed=seed, faults=faults, slo_s=slo_s, options=options, signals=signals,
        )  # fmt: skip
    except LoadInterrupted as exc:
        raise exc.interrupted from None
    data = report.to_dict()
    data["seed"] = seed
    return {key: data[key] for key in POINT_KEYS}


def sweep_grid(
    plan: Plan,
    names: Sequence[str],
    rates: Sequence[float],
    seeds: Sequence[int],
    *,
    executor: str | None,
    show: bool,
    common: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    """Run every (substrate, rate, seed) point on ``executor``; the curves keyed by substrate.

    ``common`` holds the other `sweep_point` arguments (agents, duration_s, virtual, faults,
    slo_s, options). Points are in grid order (rate, then seed) whatever finished first.

    Raises:
        TaskFailed: a point failed; names its substrate, rate and seed.
        ConfigError: a bad executor or substrate.
    """
    local = (executor or "local").strip() == "local"
    params = [
        {"plan": plan, "substrate": name, "rate": rate, "seed": seed, **common, "signals": local}
        for name in names
        for rate in rates
        for seed in seeds
    ]
    points = map_tasks(
        executor,
        sweep_point,
        params,
        description=f"{plan.name}: sweep",
        show=show,
        label=lambda p: f"{p['substrate']} rate={p['rate']:g} seed={p['seed']}",
    )
    curves: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for p, point in zip(params, points, strict=True):
        curves[p["substrate"]].append(point)
    return curves
