"""``agentrt check SPEC.yaml``: the SLO gate for CI (entry point command).

Runs every check of a check spec (`substrates.fleet.checkspec`) in virtual time (``--real``:
real time), prints target / measured / verdict, writes JUnit XML with ``--junit FILE`` (one
testcase per target), and exits 0 when every target is met, 1 on any breach, 2 on a bad spec.
Registered as ``check = "substrates.fleet.check:check_command"`` in ``agentrt.commands``.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from agentrt import cli_options as opt
from agentrt.cli_tasks import map_tasks, wants_progress
from agentrt.errors import AgentrtError, ConfigError
from agentrt.interrupts import Interrupted
from agentrt.log import configure_logging
from agentrt.plan import load_plan
from agentrt.registry import default_registry
from agentrt.render import Column, print_table, terminal_console
from substrates.fleet.checkspec import Check, CheckSpec, measure_load
from substrates.fleet.fleetbuild import FleetInterrupted, measure_fleet_spec
from substrates.fleet.specfile import read_spec
from substrates.fleet.study import LoadInterrupted, run_load_study
from substrates.fleet.targets import Target

__all__ = [
    "CheckOutcome",
    "Verdict",
    "check_command",
    "check_task",
    "run_check",
    "run_checks",
    "write_junit",
]

_out = terminal_console(piped_width=160)

#: How a fleet check is measured: (fleet spec path, virtual, seed) -> target -> value.
FleetMeasure = Callable[[str, bool, int | None], Callable[[Target], float | None]]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One target of one check: what was measured and whether it met the target."""

    target: Target
    measured: float | None

    @property
    def passed(self) -> bool:
        """Whether the measurement meets the target (no measurement never does)."""
        return self.target.met_by(self.measured)

    def to_dict(self) -> dict[str, Any]:
        """The JSON row of ``agentrt check --json``."""
        return {
            "target": self.target.text,
            "measured": self.measured,
            "measured_text": self.target.describe(self.measured),
            "passed": self.passed,
        }


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """A check's verdicts, and how long it took (simulated and wall seconds)."""

    name: str
    verdicts: tuple[Verdict, ...]
    sim_s: float
    wall_s: float

    @property
    def passed(self) -> bool:
        """Whether every target was met."""
        return all(v.passed for v in self.verdicts)


def run_check(
    check: Check, *, name: str, virtual: bool, seed: int | None, fleet: FleetMeasure | None = None
) -> CheckOutcome:
    """Run one check and measure its targets.

    Raises:
        AgentrtError: a bad plan, substrate or fleet spec.
    """
    if check.fleet is not None:  # the fleet spec's own seed unless the check gives one
        measure_fleet = fleet if fleet is not None else _fleet_measure()
        wall0 = time.perf_counter()
        measure = measure_fleet(check.fleet, virtual, check.seed)
        verdicts = tuple(Verdict(t, measure(t)) for t in check.targets)
        return CheckOutcome(name, verdicts, sim_s=float("nan"), wall_s=time.perf_counter() - wall0)
    if check.plan is None or check.substrate is None:  # the schema refuses this
        raise ConfigError("a check runs `plan:` on `substrate:`, or a `fleet:` spec")
    seed = check.seed if check.seed is not None else seed
    plan = load_plan(check.plan, tools=default_registry().tool_args_model)
    report = run_load_study(
        plan,
        check.substrate,
        agents=check.agents,
        rate=check.arrival_rate,
        duration_s=check.duration_s,
        virtual=virtual,
        seed=seed,
        faults=check.faults,
        slo_s=check.slo_s,
        options=dict(check.options),
    )
    verdicts = tuple(Verdict(t, measure_load(report, t)) for t in check.targets)
    return CheckOutcome(name, verdicts, sim_s=report.sim_s, wall_s=report.wall_s)


def _fleet_measure() -> FleetMeasure:
    return measure_fleet_spec


def check_task(
    *, check: Check, name: str, virtual: bool, seed: int | None, fleet: FleetMeasure | None = None
) -> CheckOutcome:
    """`run_check` as an executor task: a signal's cancellation surfaces as `Interrupted`.

    Raises:
        Interrupted: SIGINT or SIGTERM cancelled the check's run.
        AgentrtError: a bad plan, substrate or fleet spec.
    """
    try:
        return run_check(check, name=name, virtual=virtual, seed=seed, fleet=fleet)
    except (LoadInterrupted, FleetInterrupted) as exc:
        raise exc.interrupted from None


def run_checks(
    spec_path: Path,
    *,
    virtual: bool = True,
    fleet: FleetMeasure | None = None,
    executor: str | None = None,
    show: bool = False,
) -> list[CheckOutcome]:
    """Read the check spec at ``spec_path`` and run its checks, each a task on ``executor``.

    The outcomes come in the spec's order whatever ran where; ``show`` draws a progress bar.
    ``fleet`` (a test's stand-in measure) runs in this process: use the local executor.

    Raises:
        ConfigError: a bad spec (exit 2 on the command line).
        TaskFailed: a check could not run; names it.
        Interrupted: a signal cancelled a check.
    """
    spec = read_spec(spec_path, CheckSpec, what="check spec")
    base = spec_path.parent
    params: list[dict[str, Any]] = [
        {"check": c.resolve(base), "name": c.label(i), "virtual": virtual, "seed": spec.seed}
        for i, c in enumerate(spec.checks)
    ]
    if fleet is not None:
        for p in params:
            p["fleet"] = fleet
    return map_tasks(
        executor,
        check_task,
        params,
        description=f"check {spec_path.name}",
        show=show,
        label=lambda p: f"check {p['name']}",
    )


def write_junit(outcomes: Sequence[CheckOutcome], path: Path, *, suite: str) -> None:
    """Write JUnit XML: a testsuite per check, a testcase per target, a failure per breach."""
    root = ET.Element("testsuites", name=suite)
    for outcome in outcomes:
        failures = sum(not v.passed for v in outcome.verdicts)
        node = ET.SubElement(
            root,
            "testsuite",
            name=outcome.name,
            tests=str(len(outcome.verdicts)),
            failures=str(failures),
            errors="0",
            time=_seconds(outcome.wall_s),
        )
        for verdict in outcome.verdicts:
            case = ET.SubElement(
                node, "testcase", classname=f"{suite}.{outcome.name}", name=verdict.target.text
            )
            measured = verdict.target.describe(verdict.measured)
            ET.SubElement(case, "system-out").text = f"measured {measured}"
            if not verdict.passed:
                failure = ET.SubElement(
                    case,
                    "failure",
                    type="SLOBreach",
                    message=f"measured {measured}; target {verdict.target.describe_limit()}",
                )
                failure.text = f"{outcome.name}: {verdict.target.text}: measured {measured}"
    root.set("tests", str(sum(len(o.verdicts) for o in outcomes)))
    root.set("failures", str(sum(not v.passed for o in outcomes for v in o.verdicts)))
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _seconds(value: float) -> str:
    return "0" if value != value else f"{value:.3f}"  # NaN: not measured


def check_command(
    spec_path: Annotated[
        Path, typer.Argument(metavar="SPEC", help="Check spec file (.yaml): checks and targets.")
    ],
    junit: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="Also write JUnit XML to FILE (one testcase per target)."
        ),
    ] = None,
    real: Annotated[
        bool, typer.Option("--real", help="Run in real time (default: virtual time, no waiting).")
    ] = False,
    as_json: opt.AsJson = False,
    executor: opt.ExecutorName = "local",
) -> None:
    """Run SPEC's checks and compare with its SLO targets; exit 1 on any breach, 2 on a bad spec."""
    configure_logging(level="off")
    try:
        outcomes = run_checks(
            spec_path, virtual=not real, executor=executor, show=wants_progress(as_json=as_json)
        )
    except AgentrtError as exc:
        raise opt.fail(str(exc)) from None
    except Interrupted as exc_:
        raise opt.fail(f"interrupted by {exc_.signal_name}", exc_.exit_code) from None
    if junit is not None:
        write_junit(outcomes, junit, suite=spec_path.stem)
    breaches = sum(not v.passed for o in outcomes for v in o.verdicts)
    if as_json:
        data = {
            "spec": str(spec_path),
            "passed": breaches == 0,
            "breaches": breaches,
            "checks": [
                {
                    "name": o.name,
                    "passed": o.passed,
                    "sim_s": None if o.sim_s != o.sim_s else o.sim_s,
                    "targets": [v.to_dict() for v in o.verdicts],
                }
                for o in outcomes
            ],
        }
        _out.print_json(json.dumps(data))
    else:
        rows = [
            [o.name, v.target.text, v.target.describe(v.measured), "pass" if v.passed else "FAIL"]
            for o in outcomes
            for v in o.verdicts
        ]
        print_table(
            _out,
            [Column("check", "left"), Column("target", "left"), Column("measured"),
             Column("verdict", "left")],
            rows,
            title=f"agentrt check {spec_path.name}",
        )  # fmt: skip
        total = sum(len(o.verdicts) for o in outcomes)
        _out.print(
            f"{total - breaches} of {total} targets met"
            + (f"; {breaches} breached" if breaches else ""),
            highlight=False,
        )
    if breaches:
        raise typer.Exit(1)
