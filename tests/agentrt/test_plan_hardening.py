"""Plan loading under hostile input: limits, linear validation, tool arguments, did-you-mean."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from agentrt import Plan, PlanError, RetryPolicy, Step, load_plan
from agentrt.errors import UnknownNameError
from agentrt.plan import (
    MAX_PLAN_BYTES,
    MAX_PLAN_DEPTH,
    MAX_PLAN_STEPS,
    MAX_YAML_ALIASES,
    StepDefaults,
)
from agentrt.registry import default_registry


class EchoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    times: int = Field(default=1, ge=1, le=10)


def echo_tools(name: str) -> type[BaseModel] | None:
    if name == "echo":
        return EchoArgs
    raise UnknownNameError("tool", name, ["echo"])


# --- limits ---------------------------------------------------------------------------------


def test_a_file_over_the_size_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.write(b"name: x\nsteps:\n  - id: a\n    prompt: '")
        f.truncate(MAX_PLAN_BYTES + 10)  # sparse: cheap to make, too big to load
    with pytest.raises(PlanError, match=r"larger than 16 MiB \(agentrt.plan.MAX_PLAN_BYTES\)"):
        load_plan(path)


def test_text_over_the_size_limit_is_refused_in_python_too() -> None:
    text = "name: x\nsteps:\n  - id: a\n    prompt: " + "y" * MAX_PLAN_BYTES + "\n"
    with pytest.raises(PlanError, match=r"MAX_PLAN_BYTES"):
        Plan.from_yaml(text)
    with pytest.raises(PlanError, match=r"MAX_PLAN_BYTES"):
        Plan.from_json(text)


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "dir"])
def test_devices_fifos_and_directories_are_refused(tmp_path: Path, special: str) -> None:
    if special == "fifo":
        path = tmp_path / "plan.yaml"
        os.mkfifo(path)  # no writer: reading it would block forever
    elif special == "dir":
        path = tmp_path
    else:
        path = Path(special)
    with pytest.raises(PlanError, match=r"(not a regular file|a directory); a plan is a"):
        load_plan(path)


def test_too_many_steps_names_the_limit() -> None:
    steps = [{"id": f"s{i}"} for i in range(MAX_PLAN_STEPS + 1)]
    with pytest.raises(PlanError, match=r"at most 50,000 \(agentrt.plan.MAX_PLAN_STEPS\)"):
        Plan.from_json(json.dumps({"name": "x", "steps": steps}))


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path, suffix: str) -> None:
    n = 100_000
    path = tmp_path / f"deep{suffix}"
    nested = "[" * n + "]" * n
    path.write_text('{"name": "x", "steps": [{"id": "a", "args": {"x": ' + nested + "}}]}")
    with pytest.raises(PlanError, match=r"nests deeper than 64 levels"):
        load_plan(path)


def test_block_nesting_just_past_the_limit_is_refused() -> None:
    levels = MAX_PLAN_DEPTH  # under args (already 4 deep): over the limit
    body = "".join(" " * (6 + 2 * i) + f"k{i}:\n" for i in range(levels))
    text = "name: x\nsteps:\n  - id: a\n    args:\n" + body + " " * (6 + 2 * levels) + "v\n"
    with pytest.raises(PlanError, match="nests deeper than"):
        Plan.from_yaml(text)


def test_a_yaml_alias_bomb_is_refused_before_it_expands() -> None:
    lines = ["name: x", "steps:", "  - id: a", "    args:", "      a: &a [x,x,x,x,x,x,x,x,x]"]
    for i in range(9):
        prev, cur = chr(97 + i), chr(98 + i)
        lines.append(f"      {cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(PlanError, match=r"expands to more than 2,000,000 values"):
        Plan.from_yaml("\n".join(lines) + "\n")


def test_too_many_aliases_are_refused() -> None:
    refs = ", ".join(["*r"] * (MAX_YAML_ALIASES + 1))
    text = f"name: x\nsteps:\n  - id: a\n    args:\n      r: &r [1]\n      all: [{refs}]\n"
    with pytest.raises(PlanError, match=r"more than 1,000 mappings or lists through YAML aliases"):
        Plan.from_yaml(text)


def test_a_few_aliases_are_fine() -> None:
    text = "name: x\nsteps:\n  - id: a\n    retry: &r {max_attempts: 2}\n  - id: b\n    retry: *r\n"
    assert Plan.from_yaml(text).step("b").retry == RetryPolicy(max_attempts=2)


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(PlanError, match="YAML alias refers to a mapping or list that holds it"):
        Plan.from_yaml("name: x\nsteps:\n  - &s {id: a, args: {x: [*s]}}\n")


def test_error_lines_name_a_few_ids_and_count_the_rest() -> None:
    steps = [{"id": f"s{i}", "depends_on": [f"missing{i}"]} for i in range(2_000)]
    with pytest.raises(PlanError) as info:
        Plan.model_validate({"name": "x", "steps": steps})
    message = str(info.value)
    assert len(message) < 1_000
    assert "(and 1,995 more problems)" in message
    assert len(info.value.step_ids) == 2_000


def test_an_unknown_dependency_does_not_list_every_known_step() -> None:
    steps = [{"id": f"s{i}", "depends_on": [f"s{i - 1}"] if i else []} for i in range(20_000)]
    steps[-1]["depends_on"] = ["s1x"]
    with pytest.raises(PlanError) as info:
        Plan.model_validate({"name": "x", "steps": steps})
    assert len(str(info.value)) < 300
    assert "step 's19999' depends on unknown step(s) 's1x'" in str(info.value)


def test_a_near_miss_dependency_gets_a_did_you_mean() -> None:
    with pytest.raises(PlanError, match=r"unknown step\(s\) 'plna' \(did you mean 'plan'\?\)"):
        Plan(name="x", steps=[Step(id="plan"), Step(id="b", depends_on=["plna"])])


def test_reference_checks_never_walk_ancestors_per_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 2,000 steps that each refer to the first took 12.8 s through Plan.ancestors per reference.
    def forbidden(self: Plan, step_id: str) -> frozenset[str]:
        raise AssertionError("validation must not call Plan.ancestors")

    monkeypatch.setattr(Plan, "ancestors", forbidden)
    steps = [Step(id="s0")] + [
        Step(id=f"s{i}", depends_on=[f"s{i - 1}"], prompt="{{ s0 }} and {{ s0.text }}")
        for i in range(1, 2_000)
    ]
    plan = Plan(name="x", steps=steps)
    assert len(plan.order) == 2_000
    bad = [*steps[:-1], Step(id="late", prompt="{{ s5 }}")]
    with pytest.raises(PlanError, match=r"step 'late' refers to \{\{ s5 \}\} but does not depend"):
        Plan(name="x", steps=bad)


def test_indirect_references_still_pass_and_fail_correctly() -> None:
    ok = Plan(
        name="x",
        steps=[
            Step(id="a"),
            Step(id="b", depends_on=["a"]),
            Step(id="c", depends_on=["b"], prompt="{{ a }}"),
            Step(id="d", depends_on=["a"]),
            Step(id="e", depends_on=["c", "d"], prompt="{{ b.text }} {{ d }} {{ a.tool }}"),
        ],
    )
    assert ok.order[-1] == "e"
    with pytest.raises(PlanError, match="step 'd' refers to"):
        Plan(
            name="x",
            steps=[
                Step(id="a"),
                Step(id="b", depends_on=["a"]),
                Step(id="d", depends_on=["a"], prompt="{{ b }}"),
            ],
        )


# --- non-finite numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: RetryPolicy(initial_backoff_s=math.inf),
        lambda: RetryPolicy(max_backoff_s=math.nan),
        lambda: StepDefaults(timeout_s=math.inf),
        lambda: Step(id="a", timeout_s=math.inf),
        lambda: Plan(name="x", steps=[Step(id="a")], deadline_s=math.inf),
    ],
)
def test_infinite_and_nan_times_are_refused(build: object) -> None:
    with pytest.raises(ValueError, match="finite"):
        build()  # type: ignore[operator]


def test_infinite_times_in_files_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: x\ndeadline_s: .inf\nsteps:\n  - id: a\n")
    with pytest.raises(PlanError, match=rf"^{path}:2: deadline_s: must be a finite number"):
        load_plan(path)


# --- unknown fields -------------------------------------------------------------------------


def test_a_misspelt_step_field_in_python_is_a_plan_error_with_a_hint() -> None:
    with pytest.raises(PlanError) as info:
        Step(id="b", depend_on=["a"])  # type: ignore[call-arg]
    message = str(info.value)
    assert "step 'b' has no field 'depend_on' (did you mean 'depends_on'?)" in message
    assert "https://" not in message
    assert info.value.step_ids == ("b",)


def test_a_misspelt_plan_field_gets_a_hint() -> None:
    with pytest.raises(PlanError, match=r"no field 'deadline' \(did you mean 'deadline_s'\?\)"):
        Plan(name="x", steps=[Step(id="a")], deadline=3)  # type: ignore[call-arg]


def test_misspelt_fields_in_files_point_at_the_key(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nsteps:\n  - id: a\n  - id: b\n    depend_on: [a]\n")
    with pytest.raises(PlanError, match=rf"^{path}:5: steps.1.depend_on: .*'depends_on'"):
        load_plan(path)
    path.write_text("name: x\ndefaults:\n  retry: {max_atempts: 2}\nsteps:\n  - id: a\n")
    with pytest.raises(PlanError, match=rf"^{path}:3: .*'max_atempts'.*'max_attempts'"):
        load_plan(path)


# --- tool arguments -------------------------------------------------------------------------


def test_a_misspelt_argument_names_the_line_the_fields_and_a_near_miss(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nsteps:\n  - id: a\n    tool: echo\n    args:\n      txt: hi\n")
    with pytest.raises(PlanError) as info:
        load_plan(path, tools=echo_tools)
    assert str(info.value) == (
        f"{path}:6: step 'a': tool 'echo' has no argument 'txt' (did you mean 'text'?); "
        "its arguments: text, times"
    )


def test_bad_values_and_missing_arguments_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(
        '{"name": "x",\n "steps": [\n  {"id": "a", "tool": "echo",\n'
        '   "args": {"text": "hi", "times": 99}}]}'
    )
    with pytest.raises(PlanError, match=rf"^{path}:4: step 'a': argument 'times' of tool 'echo'"):
        load_plan(path, tools=echo_tools)
    with pytest.raises(PlanError, match="argument 'text' of tool 'echo': required, but missing"):
        Plan(name="x", steps=[Step(id="a", tool="echo")]).check_tools(echo_tools)


def test_templated_arguments_are_checked_by_name_not_by_value() -> None:
    plan = Plan(
        name="x",
        steps=[
            Step(id="a"),
            Step(
                id="b", depends_on=["a"], tool="echo", args={"text": "{{ a }}", "times": "{{ a }}"}
            ),
        ],
    )
    plan.check_tools(echo_tools)  # "{{ a }}" is not an int yet: it is rendered when b runs
    with pytest.raises(PlanError, match="no argument 'count'"):
        Plan(
            name="x",
            steps=[
                Step(id="a"),
                Step(id="b", depends_on=["a"], tool="echo", args={"text": "x", "count": "{{ a }}"}),
            ],
        ).check_tools(echo_tools)


def test_an_unknown_tool_names_the_available_ones(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nsteps:\n  - id: a\n    tool: ehco\n")
    with pytest.raises(PlanError) as info:
        load_plan(path, tools=echo_tools)
    assert str(info.value) == (
        f"{path}:4: step 'a' uses an unknown tool: unknown tool 'ehco' (did you mean 'echo'?); "
        "known tools: echo"
    )


def test_the_registry_knows_each_tools_argument_model_without_building_it() -> None:
    registry = default_registry()
    debug = registry.tool_args_model("debug")
    search = registry.tool_args_model("search")
    assert debug is not None
    assert "pytest" in debug.model_fields
    assert search is not None
    assert "query" in search.model_fields
    # Twins take exactly the arguments of the tool they imitate.
    assert registry.tool_args_model("debug-twin") is debug
    assert registry.tool_args_model("search-twin") is search
    with pytest.raises(UnknownNameError, match="known tools: debug, debug-twin, search"):
        registry.tool_args_model("nope")


def test_the_old_readme_debug_arguments_are_caught_at_load(tmp_path: Path) -> None:
    path = tmp_path / "fix.yaml"
    path.write_text(
        "name: fix\nsteps:\n  - id: plan\n  - id: run-tests\n    kind: debug\n"
        "    depends_on: [plan]\n    tool: debug\n    args: {target: tests/}\n"
    )
    with pytest.raises(PlanError) as info:
        load_plan(path, tools=default_registry().tool_args_model)
    message = str(info.value)
    assert message.startswith(f"{path}:8: step 'run-tests': tool 'debug' has no argument 'target'")
    assert "code, script, pytest" in message
    # The model's own checks run too: exactly one of code, script and pytest.
    path.write_text(
        "name: fix\nsteps:\n  - id: t\n    tool: debug\n    args: {code: 'print(1)', pytest: x}\n"
    )
    with pytest.raises(PlanError, match="give exactly one of code, script and pytest"):
        load_plan(path, tools=default_registry().tool_args_model)


@pytest.mark.parametrize("name", ["fix-bug.yaml", "research.yaml"])
def test_the_example_plans_pass_tool_validation(name: str) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "plans"
    load_plan(examples / name, tools=default_registry().tool_args_model)


def test_the_readme_plan_passes_tool_validation() -> None:
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", readme, flags=re.S)
    assert block is not None
    plan = Plan.from_yaml(block.group(1))
    plan.check_tools(default_registry().tool_args_model)
