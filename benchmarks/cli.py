"""The command line vs the library: ``agentrt run`` of an N-step chain vs the same run in code.

Run: ``.venv/bin/python benchmarks/cli.py [--steps N] [--repeat R]``.
Target: ``agentrt run PLAN.json -s fixed --virtual --json`` within 1.5x of the library's wall time
for loading and running the same plan (10,000 steps).

The library column loads the plan file and runs it in this process (``load_plan`` + ``Agent.run``
+ ``to_dict``); the CLI column is the whole ``agentrt`` subprocess, interpreter start-up and
imports included, so a start-up row (the interpreter importing ``agentrt.cli``) is shown as well,
and a library row
that also builds the attribution report the CLI's JSON carries.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import logging_off, print_table

from agentrt import Agent, VirtualClock, load_plan, run
from agentrt.registry import resolve_substrate
from agentrt.report import from_run

TARGET_RATIO = 1.5
_AGENTRT = [sys.executable, "-m", "agentrt"]


def _write_chain(directory: Path, steps: int) -> Path:
    path = directory / f"chain-{steps}.json"
    plan = {
        "name": "chain",
        "steps": [{"id": f"s{i}", "depends_on": [f"s{i - 1}"] if i else []} for i in range(steps)],
    }
    path.write_text(json.dumps(plan))
    return path


def _library_s(path: Path, *, with_report: bool = False) -> float:
    t0 = time.perf_counter()
    plan = load_plan(path)
    agent = Agent(resolve_substrate("fixed"), name=plan.name, seed=0)
    result = run(agent.run, plan, clock=VirtualClock())
    data = result.to_dict()
    if with_report:  # what `agentrt run --json` prints
        data["report"] = from_run(result).to_dict()
    json.dumps(data)
    elapsed = time.perf_counter() - t0
    assert result.status == "succeeded", result.error
    return elapsed


def _cli_s(*args: str, argv: list[str] | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv or [*_AGENTRT, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"agentrt {' '.join(args)} exited {proc.returncode}: {proc.stderr!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="Median of this many runs.")
    args = parser.parse_args()
    logging_off()
    with tempfile.TemporaryDirectory(prefix="agentrt-bench-cli-") as tmp:
        path = _write_chain(Path(tmp), args.steps)
        run_args = ("run", str(path), "-s", "fixed", "--virtual")
        _library_s(path)  # warm-up: imports, caches
        library = statistics.median(_library_s(path) for _ in range(args.repeat))
        same_output = statistics.median(
            _library_s(path, with_report=True) for _ in range(args.repeat)
        )
        importing = [sys.executable, "-c", "import agentrt.cli"]
        startup = statistics.median(_cli_s(argv=importing) for _ in range(args.repeat))
        as_json = statistics.median(_cli_s(*run_args, "--json") for _ in range(args.repeat))
        text = statistics.median(_cli_s(*run_args) for _ in range(args.repeat))
    rows = [
        ["library: load_plan + run + to_dict", f"{library:.3f}", "1.00x", "-"],
        [
            "library: + attribution report (the --json output)",
            f"{same_output:.3f}",
            f"{same_output / library:.2f}x",
            "-",
        ],
        ["start-up: python -c 'import agentrt.cli'", f"{startup:.3f}", "-", "-"],
        [
            "agentrt run --virtual --json",
            f"{as_json:.3f}",
            f"{as_json / library:.2f}x",
            f"{(as_json - startup) / library:.2f}x",
        ],
        [
            "agentrt run --virtual (tables)",
            f"{text:.3f}",
            f"{text / library:.2f}x",
            f"{(text - startup) / library:.2f}x",
        ],
    ]
    print_table(
        f"command line vs library: {args.steps:,}-step chain, virtual time, median of "
        f"{args.repeat}",
        ["what", "wall s", "vs library", "vs library, start-up excluded"],
        rows,
    )
    verdict = "met" if as_json / library <= TARGET_RATIO else "missed"
    print(
        f"target: agentrt run --json within {TARGET_RATIO}x of the library: "
        f"{as_json / library:.2f}x ({verdict}); {(as_json - startup) / library:.2f}x without "
        f"start-up; {as_json / same_output:.2f}x of the library doing the same output"
    )


if __name__ == "__main__":
    main()
