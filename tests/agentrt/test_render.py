"""What the terminal prints: never a cut number or id at any width, and sums that add up."""

from __future__ import annotations

import functools
import io
import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console

import agentrt
from agentrt import Agent, Plan, Step, VirtualClock
from agentrt.errors import RetryableError
from agentrt.plan import RetryPolicy
from agentrt.render import (
    print_comparison,
    print_report,
    print_run,
    print_waterfall,
    split_exactly,
    sum_line,
)
from agentrt.report import CATEGORIES, LABELS, from_run
from agentrt.substrate import InferenceRequest, InferenceResult, Timing, Usage
from agentrt.testing import FixedLatencySubstrate, FunctionSubstrate

ROOT = Path(__file__).resolve().parents[2]
AGENTRT = str(Path(sys.executable).with_name("agentrt"))
WIDTHS = (80, 100, 140)


def whole(text: str, token: str) -> bool:
    """``token`` appears in ``text`` with no digit, dot or word character glued to either side."""
    return re.search(rf"(?<![\w.]){re.escape(token)}(?![\w]|\.\d)", text) is not None


def render(fn: Any, *args: Any, width: int) -> str:
    buffer = io.StringIO()
    fn(Console(file=buffer, width=width, color_system=None), *args)
    return buffer.getvalue()


def assert_fits(text: str, width: int) -> None:
    assert "…" not in text, text
    for line in text.splitlines():
        assert cell_len(line) <= width, f"{cell_len(line)} > {width}: {line!r}"


# -- the arithmetic ------------------------------------------------------------------------------


def test_split_exactly_adds_up_and_moves_each_term_by_less_than_a_unit() -> None:
    values = [0.33333, 1.00004, 0.00004, 0.00049, 2.5, 0.0]
    total = sum(values)
    units = split_exactly(values, total, unit=1e-4)
    assert sum(units) == round(total / 1e-4)
    for value, count in zip(values, units, strict=True):
        assert abs(count * 1e-4 - value) < 1e-4


def test_split_exactly_puts_a_mismatch_on_the_residue() -> None:
    assert split_exactly([1.0, 2.0, -0.5], 2.5, unit=0.1, residue=2) == [10, 20, -5]


def _result(text: str, *, prefill_s: float, decode_s: float, comm_s: float) -> InferenceResult:
    return InferenceResult(
        text=text,
        usage=Usage(input_tokens=10, output_tokens=5),
        timing=Timing(network_s=0.00004, prefill_s=prefill_s, decode_s=decode_s, comm_s=comm_s),
        substrate="edge-case-substrate",
        model="m",
    )


def mixed_run() -> agentrt.RunResult:
    """Small and large categories, a step retried once, an optional step that fails."""
    failures = {"flaky": 1}

    async def answer(request: InferenceRequest) -> InferenceResult:
        step = request.step_id or ""
        if step == "broken":
            await anyio_sleep(0.0123456)
            raise ValueError("the model call failed")
        if failures.get(step, 0) > 0:
            failures[step] -= 1
            await anyio_sleep(0.25)
            raise RetryableError("transient")
        timing = {"prefill_s": 0.00031, "decode_s": 1.23456789, "comm_s": 0.00049}
        await anyio_sleep(0.00004 + sum(timing.values()))
        return _result("ok", **timing)

    plan = Plan(
        name="mixed",
        steps=[
            Step(id="first"),
            Step(
                id="flaky",
                depends_on=["first"],
                retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.5, jitter_s=0.0),
            ),
            Step(id="broken", depends_on=["first"], optional=True),
            Step(id="answer", kind="answer", depends_on=["flaky", "broken"]),
        ],
    )
    agent = Agent(FunctionSubstrate(answer, name="edge-case-substrate"))
    return agentrt.run(agent.run, plan, clock=VirtualClock())


async def anyio_sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


def parse_sum_line(text: str) -> tuple[Decimal, dict[str, Decimal], dict[str, int]]:
    joined = " ".join(text.split())
    found = re.search(r"end-to-end ([\d.]+) ms = ((?:\w+ [\d.]+ ms \(\d+%\)(?: \+ )?)+)", joined)
    assert found, joined
    terms = re.findall(r"(\w+) ([\d.]+) ms \((\d+)%\)", found.group(2))
    return (
        Decimal(found.group(1)),
        {name: Decimal(ms) for name, ms, _ in terms},
        {name: int(p) for name, _, p in terms},
    )


def test_the_printed_sum_line_adds_up_exactly_and_names_failed_and_retry_time() -> None:
    result = mixed_run()
    report = from_run(result)
    text = render(print_report, report, width=200)
    total, terms, shares = parse_sum_line(text)
    assert sum(terms.values()) == total  # to the printed digit
    assert sum(shares.values()) == 100
    assert total == Decimal(f"{result.e2e_s * 1000:.1f}")
    # The retried step's failed attempt and back-off are "retry"; nothing small is dropped.
    assert terms["retry"] == Decimal("750.0")
    assert terms["prefill"] > 0
    assert terms["comm"] > 0
    # The failed optional step is off the critical path here; its own row says where it went.
    broken = next(s for s in report.steps if s.id == "broken")
    assert broken.failed_s == pytest.approx(broken.latency_s)
    assert broken.overhead_s == pytest.approx(0.0, abs=1e-9)


def test_every_printed_row_adds_up_to_its_printed_latency() -> None:
    text = render(print_report, from_run(mixed_run()), width=200)
    header = next(line for line in text.splitlines() if "latency" in line and "share" in line)
    names = [c.strip() for c in header.strip("┃").split("┃")]
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert len(rows) == 4
    for row in rows:
        cells = dict(zip(names, (c.strip() for c in row.strip("│").split("│")), strict=True))
        parts = sum(Decimal(cells[LABELS[name]]) for name in CATEGORIES if LABELS[name] in cells)
        assert parts == Decimal(cells["latency"]), row


def test_a_failed_model_call_on_the_critical_path_is_failed_time_not_overhead() -> None:
    async def fail(request: InferenceRequest) -> InferenceResult:
        await anyio_sleep(2.0)
        raise ValueError("boom")

    plan = Plan(name="p", steps=[Step(id="only")])
    result = agentrt.run(Agent(FunctionSubstrate(fail)).run, plan, clock=VirtualClock())
    report = from_run(result)
    assert report.categories["failed_s"] == pytest.approx(2.0)
    assert report.categories["overhead_s"] == pytest.approx(0.0, abs=1e-9)
    assert sum_line(report) == "2000.0 ms = failed 2000.0 ms (100%)"


def test_a_step_tried_once_has_no_retry_time_in_real_time() -> None:
    plan = Plan(name="p", steps=[Step(id=f"s{i}") for i in range(5)])
    agent = Agent(FixedLatencySubstrate(latency_s=0.001))
    result = agentrt.run(agent.run, plan)
    assert [s.retry_s for s in result.steps] == [0.0] * 5
    assert all(s.retry_s == 0.0 for s in from_run(result).steps)


# -- widths ------------------------------------------------------------------------------------


def long_run() -> agentrt.RunResult:
    plan = Plan(
        name="long",
        steps=[
            Step(id="outline-the-whole-investigation"),
            Step(
                id="search-the-documentation-index", depends_on=["outline-the-whole-investigation"]
            ),
            Step(id="answer", kind="answer", depends_on=["search-the-documentation-index"]),
        ],
    )
    sub = FixedLatencySubstrate(latency_s=98.7654321, name="llama-3.1-70b@h100-sxm-x8")
    return agentrt.run(Agent(sub).run, plan, clock=VirtualClock())


@pytest.mark.parametrize("width", WIDTHS)
def test_the_run_report_and_waterfall_never_cut_a_number_or_id(width: int) -> None:
    result = long_run()
    report = from_run(result)
    text = render(print_run, result, width=width)
    text += render(print_report, report, width=width)
    text += render(print_waterfall, report, width=width)
    assert_fits(text, width)
    for step in result.steps:
        assert whole(text, step.id)
        for value in (step.start_s, step.latency_s):
            assert whole(text, f"{(value or 0.0) * 1000:.1f}"), (value, text)
    assert whole(text, "llama-3.1-70b@h100-sxm-x8")
    assert whole(text, result.run_id)
    assert parse_sum_line(text)[0] == Decimal(f"{result.e2e_s * 1000:.1f}")


@pytest.mark.parametrize("width", WIDTHS)
def test_the_comparison_never_cuts_a_number(width: int) -> None:
    from agentrt.compare import compare

    plan = Plan(name="long", steps=[Step(id="a-step-with-a-long-name"), Step(id="answer")])
    subs = {
        "llama-3.1-70b@wse3": FixedLatencySubstrate(1234.5678, name="llama-3.1-70b@wse3"),
        "llama-3.1-70b@h100": FixedLatencySubstrate(98765.4321, name="llama-3.1-70b@h100"),
    }
    comparison = agentrt.run(functools.partial(compare, trials=2), plan, subs, clock=VirtualClock())
    text = render(print_comparison, comparison, width=width)
    assert_fits(text, width)
    for name, summary in comparison.substrates.items():
        assert whole(text, name)
        assert whole(text, f"{summary.e2e_p50_s * 1000:.1f}")


# -- every table the CLI prints, at every width ----------------------------------------------------

PLAN = """
name: wide
steps:
  - id: outline-the-whole-investigation
  - id: search-the-documentation-index
    depends_on: [outline-the-whole-investigation]
  - id: answer
    kind: answer
    depends_on: [search-the-documentation-index]
"""


def agentrt_cli(*args: str, width: int) -> str:
    proc = subprocess.run(
        [AGENTRT, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": str(width)},
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def cli_json(*args: str) -> Any:
    return json.loads(agentrt_cli(*args, "--json", width=200))


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "wide.yaml"
    path.write_text(PLAN)
    return path


@pytest.mark.parametrize("width", WIDTHS)
def test_run_and_report_commands_fit_the_terminal(
    width: int, plan_file: Path, tmp_path: Path
) -> None:
    trace = tmp_path / "t.json"
    args = [str(plan_file), "-s", "h100", "--model", "llama-3.1-405b", "--virtual", "--seed", "1"]
    text = agentrt_cli("run", *args, "--trace", f"jaeger-json:{trace}", width=width)
    data = cli_json("run", *args)
    report = agentrt_cli("report", str(trace), width=width)
    for out in (text, report):
        assert_fits(out, width)
        for step in data["steps"]:
            assert whole(out, step["id"])
            assert whole(out, f"{step['latency_s'] * 1000:.1f}")
    assert "on h100" in report  # which substrate this run was on
    total, terms, _ = parse_sum_line(report)
    assert sum(terms.values()) == total


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_and_load_commands_fit_the_terminal(width: int, plan_file: Path) -> None:
    args = [str(plan_file), "--substrates", "wse3,h100", "--trials", "2", "--virtual"]
    text = agentrt_cli("compare", *args, width=width)
    assert_fits(text, width)
    for name, summary in cli_json("compare", *args)["substrates"].items():
        assert whole(text, name)
        assert whole(text, f"{summary['e2e_p50_s'] * 1000:.1f}")
    load = ["load", str(plan_file), "-s", "wse3", "--agents", "5", "--arrival-rate", "2"]
    text = agentrt_cli(*load, "--virtual", width=width)
    assert_fits(text, width)
    assert whole(text, "5")


@pytest.mark.parametrize("width", WIDTHS)
def test_predict_calibrate_and_substrates_fit_the_terminal(width: int) -> None:
    predict = ["predict", "-s", "h100", "--model", "llama-3.1-405b"]
    text = agentrt_cli(*predict, width=width)
    assert_fits(text, width)
    assert whole(text, f"{cli_json(*predict)['ttft_s']:.6g}")
    text = agentrt_cli("calibrate", width=width)
    assert_fits(text, width)
    for point in cli_json("calibrate")["points"]:
        assert whole(text, str(point["row"]))
        for word in point["model"].split():  # a long name may wrap, at spaces only
            assert whole(text, word), point["model"]
        assert whole(text, f"{point['measured']:.4g}")
    text = agentrt_cli("substrates", width=width)
    assert_fits(text, width)
    data = cli_json("substrates")
    for preset in data["presets"]:
        assert whole(text, preset["name"])
        for model in preset["models"]:
            assert whole(text, model)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_demo_fits_the_terminal(width: int) -> None:
    text = agentrt_cli("demo", "--virtual", "--trace", "none", width=width)
    assert_fits(text, width)
    for step in ("plan", "run-tests", "search-docs", "patch", "re-test", "answer"):
        assert whole(text, step)
    joined = " ".join(text.split())
    assert joined.count("agent coding-agent@wse3 on wse3") == 1
    assert joined.count("agent coding-agent@h100 on h100") == 1
    for total, terms, shares in (parse_sum_line(part) for part in text.split("critical path:")[1:]):
        assert sum(terms.values()) == total
        assert sum(shares.values()) == 100


def test_a_trace_of_a_failed_call_attributes_failed_time_and_names_the_substrate() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from agentrt.report import from_jaeger
    from agentrt.telemetry.jaeger import spans_to_jaeger

    async def fail(request: InferenceRequest) -> InferenceResult:
        await anyio_sleep(2.0)
        raise ValueError("boom")

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent = Agent(FunctionSubstrate(fail, name="edge"), tracer_provider=provider)
    plan = Plan(name="p", steps=[Step(id="only")])
    agentrt.run(agent.run, plan, clock=VirtualClock())
    [report] = from_jaeger(spans_to_jaeger(exporter.get_finished_spans()))
    assert report.categories["failed_s"] == pytest.approx(2.0)
    assert report.categories["overhead_s"] == pytest.approx(0.0, abs=1e-6)
    assert report.substrates == ("edge",)
