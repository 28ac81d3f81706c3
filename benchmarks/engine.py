"""Emulated engine: simulated requests per wall-clock second, in virtual time.

Run: ``python benchmarks/engine.py [--sequential N] [--concurrent N] [--output-tokens K]``.
Two loads on one engine: one stream of sequential requests (an agent's calls, one after
another), and many concurrent requests arriving together; each again with speculative decoding
(``--spec-decode``, default 4:0.7: every cycle's accepted tokens drawn per request). Target: at
least 10,000 simulated requests per wall second in every row.

The engine is the full ``EmulatedEngine`` (h100 preset, Llama 3.1 70B, TP 8), called through
``infer()`` as a user calls it; ``--engine scheduler`` measures the bare serving scheduler over
an H100-like stand-in cost model. `make_target` is the one place to swap in another engine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio
from _common import logging_off, print_table

from agentrt import InferenceRequest, VirtualClock, current_clock, run
from substrates.emulated import build_engine
from substrates.emulated.deployment import SpecDecode
from substrates.emulated.scheduler import IterCost, Scheduler, Speculation

TARGET_PER_WALL_S = 10_000


@dataclass(frozen=True)
class H100Llama70B:
    """Stand-in costs shaped like Llama-3.1-70B on one 8x H100 node (TP=8).

    A decode iteration is ~20 ms (weights over HBM bandwidth, all-reduce), plus a little per
    request in the batch and per token of context (KV reads); prefill 0.3 ms per prompt token.
    Placeholder numbers: what is measured here is the cost of simulating, not the engine.
    """

    max_batch: int = 256
    kv_capacity_tokens: int = 1_000_000

    def prefill(self, prompt_tokens: Sequence[int]) -> IterCost:
        return IterCost(3.0e-4 * sum(prompt_tokens), 2e-3)

    def decode_iter(self, contexts: Sequence[int]) -> IterCost:
        return IterCost(0.017 + 3.5e-5 * len(contexts) + 1.2e-8 * sum(contexts), 3e-3)


@dataclass(frozen=True)
class H100Llama70BSpeculative(H100Llama70B):
    """The same, speculating: ``decode_iter`` is taken as one verification cycle."""

    speculation: Speculation = field(default_factory=lambda: Speculation(4, 0.7))


class Target(Protocol):
    """What the benchmark drives: one call per request, and a count of simulation events."""

    e2e_s: list[float]  # end-to-end seconds of every request served

    async def serve(self, prompt_tokens: int, output_tokens: int) -> None:
        """Serve one request."""
        ...

    def counters(self) -> dict[str, int]:
        """Simulation counters: ``events`` and clock ``waits``."""
        ...


class SchedulerTarget:
    def __init__(self, *, seed: int, spec: str | None = None) -> None:
        model = H100Llama70B()
        if spec is not None:
            parsed = SpecDecode.parse(spec)
            model = H100Llama70BSpeculative(
                speculation=Speculation(parsed.draft_tokens, parsed.acceptance_rate)
            )
        # The jitter and stalls an engine would use: tails cost events too.
        self._sched = Scheduler(model, seed=seed, jitter=0.05, stall_prob=1e-3, stall_s=0.4)
        self.e2e_s: list[float] = []

    async def serve(self, prompt_tokens: int, output_tokens: int) -> None:
        self.e2e_s.append((await self._sched.submit(prompt_tokens, output_tokens)).e2e_s)

    def counters(self) -> dict[str, int]:
        s = self._sched.statistics()
        return {"events": s.events, "waits": s.waits}


class EngineTarget:
    """The full `EmulatedEngine` (h100 preset, Llama 3.1 70B on one 8-GPU node, TP 8)."""

    def __init__(self, *, seed: int, spec: str | None = None, moe: str | None = None) -> None:
        # ``moe``: an MoE model instead, its experts spread over the 8 GPUs (--ep 8)
        options: dict[str, object] = {"model": moe, "ep": 8} if moe else {}
        self._engine = build_engine(
            "h100",
            **{"model": "llama-3.1-70b", "tp": 8, "seed": seed, "spec_decode": spec, **options},  # type: ignore[arg-type]
        )
        self._requests: dict[tuple[int, int], InferenceRequest] = {}
        self.e2e_s: list[float] = []

    async def serve(self, prompt_tokens: int, output_tokens: int) -> None:
        # Requests are immutable and the loads repeat one shape: build each shape once, so the
        # benchmark measures the engine rather than the construction of its input.
        key = (prompt_tokens, output_tokens)
        request = self._requests.get(key)
        if request is None:
            request = self._requests[key] = InferenceRequest.from_prompt(
                "bench", prompt_tokens=prompt_tokens, max_output_tokens=output_tokens
            )
        self.e2e_s.append((await self._engine.infer(request)).timing.e2e_s)

    def counters(self) -> dict[str, int]:
        s = self._engine.statistics()
        return {"events": s.events, "waits": s.waits}


ENGINE = "emulated"


def make_target(seed: int, spec: str | None = None, moe: str | None = None) -> Target:
    """The engine under test: the full ``EmulatedEngine``, or the bare scheduler."""
    if ENGINE == "scheduler":
        return SchedulerTarget(seed=seed, spec=spec)
    return EngineTarget(seed=seed, spec=spec, moe=moe)


@dataclass
class Outcome:
    name: str
    requests: int
    output_tokens: int
    simulated_s: float
    wall_s: float
    e2e_s: list[float]
    counters: dict[str, int]


async def sequential(target: Target, n: int, prompt: int, output: int) -> None:
    for _ in range(n):
        await target.serve(prompt, output)


async def concurrent(target: Target, n: int, prompt: int, output: int) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(target.serve, prompt, output)


def measure(
    name: str,
    load: Callable[[Target, int, int, int], Awaitable[None]],
    n: int,
    prompt: int,
    output: int,
    repeat: int,
    spec: str | None = None,
    moe: str | None = None,
) -> Outcome:
    """Run the load ``repeat`` times (same seed: the same simulation); keep the fastest."""

    async def main() -> Outcome:
        target = make_target(seed=1, spec=spec, moe=moe)
        clock = current_clock()
        sim0, wall0 = clock.current_time(), time.perf_counter()
        await load(target, n, prompt, output)
        wall = time.perf_counter() - wall0
        sim = clock.current_time() - sim0
        return Outcome(name, n, output, sim, wall, target.e2e_s, target.counters())

    return min((run(main, clock=VirtualClock()) for _ in range(repeat)), key=lambda o: o.wall_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=10_000, help="requests, one at a time")
    parser.add_argument("--concurrent", type=int, default=1_000, help="requests, all at once")
    parser.add_argument("--prompt-tokens", type=int, default=1_000)
    parser.add_argument("--output-tokens", type=int, default=500, help="of concurrent requests")
    parser.add_argument("--sequential-output-tokens", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5, help="runs per load; the fastest counts")
    parser.add_argument(
        "--spec-decode",
        default="4:0.7",
        metavar="K:A",
        help="speculative decoding of the last two rows (draft tokens : acceptance); '' = none",
    )
    parser.add_argument(
        "--moe",
        default="gpt-oss-120b",
        metavar="MODEL",
        help="two more rows: this MoE model on the same node, --ep 8, with --spec-decode; "
        "'' = none",
    )
    parser.add_argument(
        "--engine",
        choices=("emulated", "scheduler"),
        default="emulated",
        help="the full EmulatedEngine (h100, Llama 3.1 70B, TP 8) or the bare scheduler",
    )
    args = parser.parse_args()
    global ENGINE
    ENGINE = args.engine
    logging_off()
    spec = args.spec_decode or None
    variants: list[tuple[str | None, str | None]] = [(None, None)]
    variants += [(spec, None)] if spec else []
    variants += [(spec, args.moe)] if args.moe and ENGINE == "emulated" else []

    def label(load: str, spec: str | None, moe: str | None) -> str:
        return load + (f", {moe} --ep 8" if moe else "") + (f", spec {spec}" if spec else "")

    outcomes = [
        o
        for spec, moe in variants
        for o in (
            measure(
                label("sequential", spec, moe),
                sequential,
                args.sequential,
                args.prompt_tokens,
                args.sequential_output_tokens,
                args.repeat,
                spec,
                moe,
            ),
            measure(
                label("concurrent", spec, moe),
                concurrent,
                args.concurrent,
                args.prompt_tokens,
                args.output_tokens,
                args.repeat,
                spec,
                moe,
            ),
        )
    ]
    rows = []
    for o in outcomes:
        q = statistics.quantiles(o.e2e_s, n=100) if len(o.e2e_s) > 1 else o.e2e_s * 99
        rows.append(
            [
                o.name,
                f"{o.requests:,} x {o.output_tokens}",
                f"{o.simulated_s:,.1f}",
                f"{o.wall_s:.3f}",
                f"{o.requests / o.wall_s:,.0f}",
                f"{o.counters['events']:,}",
                f"{o.counters['waits']:,}",
                f"{q[49]:.2f} / {q[98]:.2f}",
            ]
        )
    print_table(
        (
            "EmulatedEngine h100 x8 (TP 8), Llama 3.1 70B"
            if args.engine == "emulated"
            else "bare scheduler, H100-like 70B stand-in costs"
        )
        + f", virtual time, best of {args.repeat}",
        [
            "load",
            "requests x out",
            "simulated s",
            "wall s",
            "req / wall s",
            "events",
            "clock waits",
            "e2e p50/p99 s",
        ],
        rows,
    )
    worst = min(o.requests / o.wall_s for o in outcomes)
    verdict = "meets" if worst >= TARGET_PER_WALL_S else "MISSES"
    print(
        f"target: >= {TARGET_PER_WALL_S:,} simulated requests per wall second in every row "
        f"(worst {worst:,.0f}) -> {verdict}"
    )


if __name__ == "__main__":
    main()
