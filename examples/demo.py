"""The demo behind ``agentrt demo``: the coding agent on emulated wse3 and h100, side by side.

Both agents fix the same bug in their own temporary copy of tinycsv, at the same time. Real time
by default (responses paced by the emulated engines, real sandboxed pytest and SQLite search);
``--virtual`` for instant, simulated time with the tools' twins. Prints each run's steps, where
the time went, a side-by-side comparison, and where the traces went.

Run: python examples/demo.py [--virtual] [--substrates wse3,h100] [--model M] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coding_agent import build_plan, copy_project, make_substrate, make_tools

from agentrt import Agent, AgentRun, RunResult, VirtualClock, run
from agentrt.log import configure_logging
from agentrt.render import (
    Column,
    print_report,
    print_run,
    print_table,
    print_waterfall,
    terminal_console,
)
from agentrt.report import from_run
from agentrt.telemetry import Telemetry, configure


def _trace_targets(spec: str | None, names: list[str]) -> dict[str, str]:
    """One trace target per substrate: a Jaeger JSON file each gets its own ``-NAME`` file."""
    if not spec:
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            spec = "otlp"
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            spec = f"jaeger-json:{Path(tempfile.gettempdir()) / f'agentrt-demo-{stamp}.json'}"
    if not spec.startswith("jaeger-json:") or len(names) == 1:
        return dict.fromkeys(names, spec)
    path = Path(spec.removeprefix("jaeger-json:"))
    return {n: f"jaeger-json:{path.with_name(f'{path.stem}-{n}{path.suffix}')}" for n in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentrt demo", description=__doc__.splitlines()[0])
    parser.add_argument("--virtual", action="store_true", help="instant, simulated time")
    parser.add_argument("--substrates", default="wse3,h100")
    parser.add_argument("--model", default="llama-3.1-70b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--trace",
        default=None,
        help="otlp | jaeger-json:PATH (one file per substrate: PATH-NAME.json) | console | none",
    )
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    console = terminal_console(piped_width=140)
    names = [n.strip() for n in args.substrates.split(",") if n.strip()]
    telemetry = {
        name: configure(target, service_name=f"agentrt-demo-{name}", set_global=False)
        for name, target in _trace_targets(args.trace, names).items()
    }
    scratch = Path(tempfile.mkdtemp(prefix="agentrt-demo-"))
    try:
        prepared = {}
        for name in names:
            substrate = make_substrate(name, seed=args.seed, model=args.model)
            workdir = copy_project(scratch / name)
            agent = Agent(
                substrate,
                tools=make_tools(virtual=args.virtual, seed=args.seed),
                name=f"coding-agent@{name}",
                seed=args.seed,
                tracer_provider=telemetry[name].tracer_provider,
            )
            prepared[name] = agent.prepare(build_plan(workdir))
        mode = "virtual time" if args.virtual else "real time"
        console.print(
            f"[bold]agentrt demo[/]: the coding agent fixes tinycsv on "
            f"{' and '.join(names)} ({args.model}), {mode}"
        )
        results = run(
            _race, prepared, console, args.virtual, clock=VirtualClock() if args.virtual else None
        )
    finally:
        for each in telemetry.values():
            each.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    for name, result in results.items():
        console.rule(f"{name}")
        print_run(console, result)
        report = from_run(result)
        print_report(console, report)
        print_waterfall(console, report)
    _print_comparison(console, results)
    _print_trace(console, telemetry, results)
    fixed = all(r.status == "succeeded" and r.step("re-test").tool_ok for r in results.values())
    return 0 if fixed else 1


async def _race(
    prepared: dict[str, AgentRun], console: Console, virtual: bool
) -> dict[str, RunResult]:
    with Progress(
        TextColumn("{task.description:>6}"),
        BarColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=virtual or not console.is_terminal,
    ) as progress:
        tasks = {
            name: progress.add_task(name, total=len(p.result().steps), step="")
            for name, p in prepared.items()
        }

        async def watch() -> None:
            while True:
                for name, p in prepared.items():
                    steps = p.result().steps
                    running = [s.id for s in steps if s.start_s is not None and s.end_s is None]
                    done = sum(s.end_s is not None for s in steps)
                    progress.update(tasks[name], completed=done, step=", ".join(running))
                await anyio.sleep(0.1)

        async with anyio.create_task_group() as tg:
            if not virtual:
                tg.start_soon(watch)
            async with anyio.create_task_group() as agents:
                for p in prepared.values():
                    agents.start_soon(p.execute)
            tg.cancel_scope.cancel()
    return {name: p.result() for name, p in prepared.items()}


def _print_comparison(console: Console, results: dict[str, RunResult]) -> None:
    names = list(results)
    first = results[names[0]]
    rows = [
        [step.id, *(f"{results[n].step(step.id).latency_s * 1000:.1f}" for n in names)]
        for step in first.steps
    ]
    rows.append(
        ["[bold]end to end[/]", *(f"[bold]{results[n].e2e_s * 1000:.1f}[/]" for n in names)]
    )
    rows.append(["tests after the fix", *(_tests(results[n]) for n in names)])
    rows.append(
        [
            "cost / energy",
            *(f"${results[n].cost_usd:.4f} / {results[n].energy_j / 1000:.1f} kJ" for n in names),
        ]
    )
    print_table(
        console,
        [Column("step", "left"), *(Column(n) for n in names)],
        rows,
        title="end to end, side by side (ms)",
    )
    slowest = max(names, key=lambda n: results[n].e2e_s)
    for name in names:
        e2e = results[name].e2e_s
        if name != slowest and e2e > 0:
            speedup = results[slowest].e2e_s / e2e
            console.print(
                f"[bold]{name}[/] ran the same agent {speedup:.1f}x faster than {slowest}"
            )


def _tests(result: RunResult) -> str:
    step = result.step("re-test")
    output = (step.tool_output or "").splitlines()
    return output[0].split("; ")[-1] if output else step.status


def _print_trace(
    console: Console, telemetry: dict[str, Telemetry], results: dict[str, RunResult]
) -> None:
    for name, result in results.items():
        where = telemetry[name].where(result.trace_id)
        if where:
            console.print(f"trace ({name}): {where}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    raise SystemExit(main())
