"""`agentrt tco` and examples/power_budget.py: wall and CPU seconds, and simulations run.

Runs each command as a user would (a subprocess) and prints, per command: wall seconds, CPU
seconds (user + system of the child, less sensitive to other load on the machine), and the
simulations the sizing ran (from ``--json``'s ``simulations``, or counted by wrapping
`tcorun.simulate`). The ``before`` columns are the same commands measured on main at 2216f68
(sizing without early stops, floor probe or first guess), on the same 2-core machine.

The first row of each pair runs in one process (``--executor local``), as before; the second
with the default, which sizes substrates in parallel processes (no CPU column: the workers are
the fork server's children, not the command's).

Run: ``python benchmarks/tco.py [--quick]`` (``--quick``: small commands, for the smoke test).
Target: the headline command and the example in seconds; the same answers as before.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import logging_off, print_table

ROOT = Path(__file__).resolve().parents[1]
AGENTRT = [sys.executable, "-m", "agentrt", "tco"]
#: power_budget.py with `tcorun.simulate` counted (the count goes to stderr).
COUNTED_EXAMPLE = """
import sys, runpy, substrates.fleet.tcosize as size
calls = [0]
real = size.simulate
def counted(*args, **kwargs):
    calls[0] += 1
    return real(*args, **kwargs)
size.simulate = counted
sys.argv = ["power_budget.py", *sys.argv[1:]]
try:
    runpy.run_path("examples/power_budget.py", run_name="__main__")
finally:
    print("simulations", calls[0], file=sys.stderr)
"""
RESEARCH = ["examples/plans/research.yaml", "--load", "5/s", "--slo", "p95(e2e) <= 30s"]
#: Below the GPUs' floor (one task alone takes ~25 s on H100, ~22 s on B200).
TIGHT = ["examples/plans/research.yaml", "--load", "5/s", "--slo", "p95(e2e) <= 10s"]
#: Measured on main at 2216f68 with the same commands on the same (shared, loaded) machine, the
#: better of two runs: (wall s, CPU s, simulations; the old sizer simulated each count once).
BEFORE: dict[str, tuple[float, float, int]] = {
    "tco research 5/s p95<=30s": (40.8, 38.0, 21),
    "tco research 5/s p95<=10s": (34.4, 33.9, 17),
    "power_budget.py": (16.7, 16.7, 25),
}


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(argv: list[str]) -> tuple[float, float, int, str]:
    """(wall s, CPU s, simulations, stdout) of one command run from the repository root."""
    cpu0, wall0 = _cpu_children(), time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    wall, cpu = time.perf_counter() - wall0, _cpu_children() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    sims = 0
    if "--json" in argv:
        data = json.loads(proc.stdout)
        sims = data.get("simulations") or sum(s["simulations"] for s in data["substrates"])
    for line in proc.stderr.splitlines():
        if line.startswith("simulations "):
            sims = int(line.split()[1])
    return wall, cpu, sims, proc.stdout


def commands(quick: bool) -> list[tuple[str, list[str]]]:
    """The measured commands: (label, argv)."""
    if quick:
        small = ["examples/plans/research.yaml", "--load", "1/s", "--slo", "p95(e2e) <= 60s",
                 "--duration", "30", "--substrates", "wse3,b200", "--json"]  # fmt: skip
        return [("tco research 1/s (quick)", [*AGENTRT, *small])]
    trajectory = ["docs/trajectories/research-h100.jsonl", "--load", "1/s", "--slo",
                  "p95(e2e) <= 60s", "--substrates", "wse3,b200", "--json"]  # fmt: skip
    fleet = ["examples/fleets/autoscale-h100.yaml", "--slo", "p95(e2e) <= 120s", "--json"]
    local = ["--executor", "local"]
    return [
        ("tco research 5/s p95<=30s", [*AGENTRT, *RESEARCH, "--json", *local]),
        ("  same, default --executor auto", [*AGENTRT, *RESEARCH, "--json"]),
        ("tco research 5/s p95<=10s", [*AGENTRT, *TIGHT, "--json", *local]),
        ("power_budget.py", [sys.executable, "-c", COUNTED_EXAMPLE, *local]),
        ("  same, default: a process per core", [sys.executable, "examples/power_budget.py"]),
        ("tco trajectory 1/s p95<=60s", [*AGENTRT, *trajectory]),
        ("tco fleet autoscale-h100 p95<=120s", [*AGENTRT, *fleet]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small command (smoke test)")
    args = parser.parse_args()
    logging_off()
    rows = []
    for label, argv in commands(args.quick):
        wall, cpu, sims, _ = measure(argv)
        before = BEFORE.get(label)
        was = (f"{before[0]:.1f}", f"{before[1]:.1f}", str(before[2] or "-")) if before else (
            "-", "-", "-")  # fmt: skip
        # Workers forked by the fork server are not the command's children: no CPU for them.
        parallel = label.strip().startswith("same, default")
        rows.append([label, *was, f"{wall:.1f}", "-" if parallel else f"{cpu:.1f}", sims or "-"])
    print_table(
        "agentrt tco: sizing by simulation, before (main 2216f68) and now",
        ["command", "before wall s", "before CPU s", "before sims", "wall s", "CPU s", "sims"],
        rows,
    )
    print("target: the headline command and power_budget.py in seconds, with the same answers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
