from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt import Plan, PlanError, Step, load_plan
from agentrt.plan import render_template, template_refs

ISSUE_EXAMPLE = """\
name: fix-bug
steps:
  - id: plan
    kind: think
    prompt: "Read the failing test and plan a fix."
    max_output_tokens: 200
  - id: run-tests
    kind: debug
    depends_on: [plan]
    tool: debug
    args: {target: tests/}
"""


def test_the_documented_yaml_format_loads(tmp_path: Path) -> None:
    path = tmp_path / "fix-bug.yaml"
    path.write_text(ISSUE_EXAMPLE)
    plan = load_plan(path)
    assert plan.name == "fix-bug"
    assert plan.order == ("plan", "run-tests")
    run_tests = plan.step("run-tests")
    assert run_tests.kind == "debug"
    assert run_tests.tool == "debug"
    assert run_tests.args == {"target": "tests/"}
    assert run_tests.depends_on == ("plan",)
    assert plan.step("plan").max_output_tokens == 200


def test_json_plans_load_the_same(tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load(ISSUE_EXAMPLE)
    path = tmp_path / "fix-bug.json"
    path.write_text(json.dumps(data, indent=2))
    assert load_plan(path) == Plan.from_yaml(ISSUE_EXAMPLE)


def test_plans_build_in_python_and_round_trip_through_json() -> None:
    plan = Plan(
        name="p",
        steps=[
            Step(id="a", prompt="hello", timeout_s=5, optional=True, slo="interactive"),
            Step(id="b", kind="review", depends_on="a", prompt="about {{ a }}"),
        ],
        deadline_s=30,
    )
    assert plan.step("b").depends_on == ("a",)
    assert Plan.from_json(plan.model_dump_json()) == plan


def test_defaults_apply_to_steps_that_leave_them_unset() -> None:
    plan = Plan.model_validate(
        {
            "name": "p",
            "defaults": {"timeout_s": 7, "retry": {"max_attempts": 5}},
            "steps": [{"id": "a"}, {"id": "b", "timeout_s": 2, "retry": {"max_attempts": 1}}],
        }
    )
    assert plan.timeout_for(plan.step("a")) == 7
    assert plan.retry_for(plan.step("a")).max_attempts == 5
    assert plan.timeout_for(plan.step("b")) == 2
    assert plan.retry_for(plan.step("b")).max_attempts == 1
    assert plan.step("a").output_tokens_hint == 256


def test_unknown_dependency_is_named() -> None:
    with pytest.raises(PlanError, match=r"step 'b' depends on unknown step\(s\) 'nope'") as info:
        Plan(name="p", steps=[Step(id="a"), Step(id="b", depends_on=["nope"])])
    assert info.value.step_ids == ("b",)


def test_a_cycle_is_printed() -> None:
    with pytest.raises(PlanError, match="cycle") as info:
        Plan(
            name="p",
            steps=[
                Step(id="start"),
                Step(id="a", depends_on=["start", "c"]),
                Step(id="b", depends_on=["a"]),
                Step(id="c", depends_on=["b"]),
            ],
        )
    message = str(info.value)
    cycle = message.split("cycle: ")[1].split(" -> ")
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    assert set(info.value.step_ids) == {"a", "b", "c"}


def test_a_self_dependency_is_a_cycle() -> None:
    with pytest.raises(PlanError, match="cycle: a -> a"):
        Plan(name="p", steps=[Step(id="a", depends_on=["a"])])


def test_duplicate_ids_are_named() -> None:
    with pytest.raises(PlanError, match="duplicate step ids: a, b"):
        Plan(name="p", steps=[Step(id="a"), Step(id="b"), Step(id="a"), Step(id="b")])


@pytest.mark.parametrize("kind", ["search", "debug"])
def test_a_tool_kind_without_a_tool_is_refused(kind: str) -> None:
    with pytest.raises(PlanError, match=f"step 'x' is a {kind} step but names no tool"):
        Plan(name="p", steps=[Step(id="x", kind=kind)])


def test_a_template_must_refer_to_a_dependency() -> None:
    with pytest.raises(PlanError, match=r"step 'b' refers to \{\{ a \}\} but does not depend on"):
        Plan(name="p", steps=[Step(id="a"), Step(id="b", prompt="use {{ a }}")])


def test_templates_may_refer_to_indirect_dependencies_and_args() -> None:
    plan = Plan(
        name="p",
        steps=[
            Step(id="a"),
            Step(id="b", depends_on=["a"]),
            Step(id="c", depends_on=["b"], tool="t", kind="act", args={"q": ["{{ a.text }}"]}),
        ],
    )
    assert plan.ancestors("c") == {"a", "b"}


def test_template_in_args_is_checked_too() -> None:
    with pytest.raises(PlanError, match="refers to"):
        Plan(name="p", steps=[Step(id="a"), Step(id="b", tool="t", args={"q": "{{ a }}"})])


def test_malformed_template_reference() -> None:
    with pytest.raises(PlanError, match="malformed template reference"):
        Plan(name="p", steps=[Step(id="a", prompt="{{ a.b.c }}")])


def test_render_template() -> None:
    outputs = {"a": {"output": "OUT", "text": "TEXT", "tool": "TOOL"}}
    assert render_template("{{a}} {{ a.text }} {{ a.tool }} {{ a.output }}", outputs) == (
        "OUT TEXT TOOL OUT"
    )
    assert render_template("{{ missing }}", outputs) == ""
    assert [r.step_id for r in template_refs("{{ x }} and {{ y.tool }}")] == ["x", "y"]


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsteps:\n  - id: a\n   kind: think\n")
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert str(info.value).startswith(f"{path}:4: malformed YAML")
    assert info.value.line == 4


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"name": "x",\n "steps": [\n  {"id": "a",}\n ]}')
    with pytest.raises(PlanError, match=rf"^{path}:3: malformed JSON"):
        load_plan(path)


def test_validation_errors_point_at_the_offending_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nsteps:\n  - id: a\n  - id: b\n    timeout_s: -3\n")
    with pytest.raises(PlanError, match=rf"^{path}:5: steps.1.timeout_s"):
        load_plan(path)


def test_dag_errors_from_files_point_at_the_step(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nsteps:\n  - id: a\n  - id: b\n    depends_on: [zzz]\n")
    with pytest.raises(PlanError, match=rf"^{path}:4: step 'b' depends on unknown"):
        load_plan(path)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no such plan file"):
        load_plan(tmp_path / "absent.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(PlanError, match="must be a mapping"):
        load_plan(path)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(PlanError, match=r"steps.0.promt: .*did you mean 'prompt'"):
        Plan.from_yaml("name: x\nsteps:\n  - id: a\n    promt: typo\n")


@st.composite
def dags(draw: st.DrawFn) -> list[Step]:
    n = draw(st.integers(1, 25))
    steps = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        steps.append(Step(id=f"s{i}", depends_on=[f"s{d}" for d in deps]))
    order = draw(st.permutations(steps))
    return list(order)


@settings(max_examples=60, deadline=None)
@given(dags())
def test_topological_order_respects_every_dependency(steps: list[Step]) -> None:
    plan = Plan(name="p", steps=steps)
    position = {sid: i for i, sid in enumerate(plan.order)}
    assert sorted(position) == sorted(s.id for s in steps)
    for step in steps:
        for dep in step.depends_on:
            assert position[dep] < position[step.id]


@settings(max_examples=60, deadline=None)
@given(dags(), st.data())
def test_any_back_edge_is_reported_as_a_real_cycle(steps: list[Step], data: st.DataObject) -> None:
    by_id = {s.id: s for s in steps}
    if len(steps) < 2:
        return
    # Pick a dependency chain a <- ... <- b and add the back edge a -> b.
    child = data.draw(st.sampled_from([s for s in steps if s.depends_on] or steps))
    if not child.depends_on:
        return
    parent = child.depends_on[0]
    mutated = [
        s.model_copy(update={"depends_on": (*s.depends_on, child.id)}) if s.id == parent else s
        for s in steps
    ]
    with pytest.raises(PlanError, match="cycle") as info:
        Plan(name="p", steps=mutated)
    cycle = str(info.value).split("cycle: ")[1].split(" -> ")
    edges = {s.id: set(s.depends_on) for s in mutated}
    # Printed in execution order: each step depends on the one before it.
    for before, after in itertools.pairwise(cycle):
        assert before in edges[after]
    assert cycle[0] == cycle[-1]
    assert set(cycle) <= set(by_id)
