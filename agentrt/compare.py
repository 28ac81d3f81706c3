"""The same plan on several substrates, many trials each: percentiles, step medians, speed-ups."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.trace import TracerProvider
from pydantic import BaseModel, ConfigDict, Field

from agentrt.agent import Agent
from agentrt.plan import Plan
from agentrt.result import RunResult
from agentrt.substrate import Substrate
from agentrt.tool import Tool

__all__ = [
    "Comparison",
    "SubstrateSummary",
    "compare",
    "percentile",
    "summarize",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class SubstrateSummary(BaseModel):
    """One substrate's trials of a plan."""

    model_config = _FROZEN

    name: str
    trials: int
    succeeded: int
    e2e_p50_s: float
    e2e_p95_s: float
    e2e_p99_s: float
    e2e_mean_s: float
    steps: dict[str, float] = Field(description="Median latency of each step, by id.")
    cost_usd_mean: float
    energy_j_mean: float
    failure_reasons: dict[str, int] = Field(
        default_factory=dict, description="Why runs failed (first line of the error) -> count."
    )


class Comparison(BaseModel):
    """A plan's end-to-end time on several substrates.

    ``speedup[name]`` is the slowest substrate's p50 divided by this one's p50 (so the slowest
    is 1.0 and a substrate twice as fast is 2.0).
    """

    model_config = _FROZEN

    plan: str
    trials: int
    clock: str
    substrates: dict[str, SubstrateSummary]
    speedup: dict[str, float]

    @classmethod
    def from_summaries(
        cls, plan: str, summaries: Mapping[str, SubstrateSummary], *, trials: int, clock: str
    ) -> Comparison:
        """The comparison of substrates summarised apart (e.g. by `compare_substrate` tasks).

        Example:
            >>> s = SubstrateSummary(name="x", trials=1, succeeded=1, e2e_p50_s=1, e2e_p95_s=1,
            ...     e2e_p99_s=1, e2e_mean_s=1, steps={}, cost_usd_mean=0, energy_j_mean=0)
            >>> Comparison.from_summaries("p", {"x": s}, trials=1, clock="virtual").speedup
            {'x': 1.0}
        """
        slowest = max(s.e2e_p50_s for s in summaries.values())
        speedup = {
            name: (slowest / s.e2e_p50_s if s.e2e_p50_s > 0 else float("inf"))
            for name, s in summaries.items()
        }
        return cls(
            plan=plan, trials=trials, clock=clock, substrates=dict(summaries), speedup=speedup
        )

    def failures(self) -> list[str]:
        """One line per substrate with failed runs: how many failed and the commonest reasons.

        A speed-up between substrates whose runs failed compares failures, not work done;
        the command line prints these lines instead of the speed-up and exits 1.

        Example:
            >>> import agentrt
            >>> from agentrt.testing import FixedLatencySubstrate
            >>> plan = agentrt.Plan(name="p", steps=[agentrt.Step(id="a")])
            >>> subs = {"x": FixedLatencySubstrate(0.1)}
            >>> result = agentrt.run(compare, plan, subs, clock=agentrt.VirtualClock())
            >>> result.failures()
            []
        """
        lines = []
        for name, summary in self.substrates.items():
            failed = summary.trials - summary.succeeded
            if failed:
                reasons = sorted(summary.failure_reasons.items(), key=lambda kv: -kv[1])
                shown = "; ".join(f"{reason} (x{count})" for reason, count in reasons[:2])
                more = f"; and {len(reasons) - 2} other reasons" if len(reasons) > 2 else ""
                lines.append(f"{failed} of {summary.trials} runs on {name} failed: {shown}{more}")
        return lines


def summarize(name: str, runs: Sequence[RunResult]) -> SubstrateSummary:
    """Percentiles and per-step medians of one substrate's runs (failed runs included)."""
    e2e = [r.e2e_s for r in runs]
    step_ids: dict[str, None] = {}
    for r in runs:
        for s in r.steps:
            step_ids.setdefault(s.id, None)
    steps = {}
    for step_id in step_ids:
        latencies = [
            s.latency_s for r in runs for s in r.steps if s.id == step_id and s.end_s is not None
        ]
        if latencies:
            steps[step_id] = statistics.median(latencies)
    return SubstrateSummary(
        name=name,
        trials=len(runs),
        succeeded=sum(r.status == "succeeded" for r in runs),
        e2e_p50_s=percentile(e2e, 50),
        e2e_p95_s=percentile(e2e, 95),
        e2e_p99_s=percentile(e2e, 99),
        e2e_mean_s=statistics.fmean(e2e),
        steps=steps,
        cost_usd_mean=statistics.fmean(r.cost_usd for r in runs),
        energy_j_mean=statistics.fmean(r.energy_j for r in runs),
        failure_reasons=dict(
            Counter(_reason(r) for r in runs if r.status != "succeeded").most_common()
        ),
    )


def _reason(run: RunResult) -> str:
    """The first line of a failed run's error, shortened: what a summary line shows."""
    text = (run.error or run.status).splitlines()[0] if (run.error or run.status) else "failed"
    return text if len(text) <= 160 else text[:157] + "..."


async def compare(
    plan: Plan,
    substrates: Mapping[str, Substrate],
    *,
    tools: Sequence[Tool] = (),
    trials: int = 10,
    seed: int | None = None,
    on_trial: Callable[[str, RunResult], None] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Comparison:
    """Run ``plan`` ``trials`` times on each substrate, one trial after another, and compare.

    Example:
        >>> import agentrt
        >>> from agentrt.testing import FixedLatencySubstrate
        >>> plan = agentrt.Plan(name="p", steps=[agentrt.Step(id="a")])
        >>> subs = {"fast": FixedLatencySubstrate(0.1), "slow": FixedLatencySubstrate(0.4)}
        >>> result = agentrt.run(compare, plan, subs, clock=agentrt.VirtualClock())
        >>> result.speedup
        {'fast': 4.0, 'slow': 1.0}

    Args:
        plan: the plan.
        substrates: name -> substrate.
        tools: the tools the plan's steps use.
        trials: runs per substrate.
        seed: seeds the agents' retry jitter.
        on_trial: called after each run (for progress bars).
        tracer_provider: where the runs' spans go (one trace per run); default the global one.

    Raises:
        ValueError: ``trials`` below 1 or no substrates.
    """
    if trials < 1 or not substrates:
        raise ValueError("compare needs at least one substrate and one trial")
    summaries: dict[str, SubstrateSummary] = {}
    clock = "real"
    for name, substrate in substrates.items():
        agent = Agent(
            substrate, tools=tools, name=plan.name, seed=seed, tracer_provider=tracer_provider
        )
        runs: list[RunResult] = []
        for _ in range(trials):
            result = await agent.run(plan)
            clock = result.clock
            runs.append(result)
            if on_trial is not None:
                on_trial(name, result)
        summaries[name] = summarize(name, runs)
    return Comparison.from_summaries(plan.name, summaries, trials=trials, clock=clock)
