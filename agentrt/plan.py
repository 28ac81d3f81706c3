"""Plans: a `Plan` is a DAG of `Step`s, validated when built, loadable from YAML or JSON."""

from __future__ import annotations

import json
import re
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PositiveFloat,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from agentrt.errors import PlanError

__all__ = [
    "Plan",
    "RetryPolicy",
    "Step",
    "StepDefaults",
    "StepKind",
    "TemplateRef",
    "load_plan",
    "render_template",
    "template_refs",
]

_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
_FROZEN = ConfigDict(frozen=True, extra="forbid")
# {{ step }} or {{ step.text }} / {{ step.tool }} / {{ step.output }}
_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)(?:\.(output|text|tool))?$")


class StepKind(StrEnum):
    """The built-in step kinds. Any other identifier is a custom kind."""

    THINK = "think"
    SEARCH = "search"
    DEBUG = "debug"
    ANSWER = "answer"


#: Kinds that need a tool to do their job.
_TOOL_KINDS = frozenset({StepKind.SEARCH, StepKind.DEBUG})
#: Default output length by kind: a tool call is short, prose is longer.
_DEFAULT_OUTPUT_TOKENS = {"search": 48, "debug": 48}
_FALLBACK_OUTPUT_TOKENS = 256


class RetryPolicy(BaseModel):
    """How a step's attempts are retried: only errors marked retryable, with exponential back-off.

    The wait before attempt ``n+1`` is ``min(max_backoff_s, initial_backoff_s * multiplier**(n-1))``
    plus a seeded random jitter of up to ``jitter_s``, and never less than a server's Retry-After.

    Example:
        >>> RetryPolicy(max_attempts=5, initial_backoff_s=0.2).max_attempts
        5
    """

    model_config = _FROZEN

    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    initial_backoff_s: Annotated[float, Field(ge=0)] = 0.5
    max_backoff_s: Annotated[float, Field(ge=0)] = 10.0
    multiplier: Annotated[float, Field(ge=1)] = 2.0
    jitter_s: Annotated[float, Field(ge=0)] = 0.1


class StepDefaults(BaseModel):
    """Plan-wide defaults for fields a step leaves unset."""

    model_config = _FROZEN

    timeout_s: PositiveFloat = Field(default=120.0, description="Per-attempt timeout.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)


class Step(BaseModel):
    """One step of a plan: a model call, optionally followed by a tool call.

    Every step asks the substrate for one inference (the model's turn: think, decide a tool call,
    answer). A step with a ``tool`` then runs that tool with ``args``. ``prompt`` and string
    ``args`` may refer to the results of steps this one depends on: ``{{ plan }}`` is step
    ``plan``'s output (its tool output if it ran a tool, else its text), ``{{ plan.text }}`` the
    model text, ``{{ plan.tool }}`` the tool output.

    Example:
        >>> Step(id="run-tests", kind="debug", depends_on=["plan"], tool="debug",
        ...      args={"target": "tests/"}).tool
        'debug'
    """

    model_config = _FROZEN

    id: Annotated[str, Field(pattern=_ID_PATTERN, max_length=128)]
    kind: Annotated[str, Field(pattern=_ID_PATTERN, max_length=64)] = StepKind.THINK.value
    depends_on: tuple[str, ...] = ()
    prompt: str | None = Field(default=None, description="Prompt template for the model call.")
    tool: str | None = None
    args: dict[str, JsonValue] = Field(default_factory=dict)
    max_output_tokens: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Output-length hint; default 48 for tool kinds, 256 otherwise."
    )
    prompt_tokens: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Expected prompt length in tokens (hint for emulated engines)."
    )
    timeout_s: PositiveFloat | None = Field(default=None, description="Per-attempt timeout.")
    retry: RetryPolicy | None = None
    optional: bool = Field(default=False, description="If true, failing does not fail the run.")
    substrate: str | None = Field(default=None, description="Substrate hint for routers.")
    slo: str | None = Field(default=None, description="SLO class, e.g. 'interactive', 'batch'.")

    @field_validator("depends_on", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @property
    def output_tokens_hint(self) -> int:
        """``max_output_tokens``, or the default for this step's kind."""
        if self.max_output_tokens is not None:
            return self.max_output_tokens
        return _DEFAULT_OUTPUT_TOKENS.get(self.kind, _FALLBACK_OUTPUT_TOKENS)

    def default_prompt(self) -> str:
        """The prompt used when the step gives none."""
        if self.tool is not None:
            return f"Call the {self.tool} tool for step {self.id}."
        return f"Carry out the {self.kind} step {self.id}."


class TemplateRef(BaseModel):
    """One ``{{ ... }}`` reference found in a template."""

    model_config = _FROZEN

    raw: str
    step_id: str | None
    field: Literal["output", "text", "tool"] | None


def template_refs(template: str) -> list[TemplateRef]:
    """The ``{{ ... }}`` references in a template; ``step_id`` is None when one is malformed."""
    refs: list[TemplateRef] = []
    for match in _TEMPLATE.finditer(template):
        raw = match.group(1)
        ref = _REF.match(raw)
        if ref is None:
            refs.append(TemplateRef(raw=raw, step_id=None, field=None))
        else:
            field = ref.group(2)
            refs.append(
                TemplateRef(raw=raw, step_id=ref.group(1), field=field)  # type: ignore[arg-type]
            )
    return refs


def render_template(template: str, outputs: Mapping[str, Mapping[str, str]]) -> str:
    """Substitute ``{{ step }}`` references with step results.

    Args:
        template: text with ``{{ step_id }}`` / ``{{ step_id.text }}`` / ``{{ step_id.tool }}``.
        outputs: per step id, a mapping with keys ``output``, ``text`` and ``tool``. A step that has
            no result (failed optional step) renders as an empty string.

    Example:
        >>> render_template("Fix: {{ plan }}", {"plan": {"output": "patch x"}})
        'Fix: patch x'
    """

    def substitute(match: re.Match[str]) -> str:
        ref = _REF.match(match.group(1))
        if ref is None:
            return match.group(0)
        step = outputs.get(ref.group(1), {})
        return step.get(ref.group(2) or "output", "")

    return _TEMPLATE.sub(substitute, template)


class Plan(BaseModel):
    """A named DAG of steps. Built plans are valid: checks run in the constructor.

    Example:
        >>> plan = Plan(name="fix-bug", steps=[
        ...     Step(id="plan", kind="think", prompt="Read the failing test and plan a fix."),
        ...     Step(id="run-tests", kind="debug", depends_on=["plan"], tool="debug"),
        ... ])
        >>> [s.id for s in plan.steps]
        ['plan', 'run-tests']

    Raises:
        PlanError: duplicate ids, an unknown dependency, a cycle, a search/debug step without a
            tool, or a template referring to a step it does not depend on. The message names the
            offending ids; ``PlanError.step_ids`` holds them.
    """

    model_config = _FROZEN

    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: str | None = None
    steps: tuple[Step, ...] = Field(min_length=1)
    defaults: StepDefaults = Field(default_factory=StepDefaults)
    deadline_s: PositiveFloat | None = Field(default=None, description="Whole-run deadline.")
    substrate: str | None = Field(
        default=None,
        description="Substrate for the command line when --substrate is not given: a registered "
        "name such as 'wse3', or 'route:fleet.yaml'. Code passes an instance to Agent instead.",
    )
    substrate_options: dict[str, JsonValue] = Field(
        default_factory=dict, description="Options for that substrate (as -o key=value)."
    )
    faults: str | None = Field(
        default=None,
        description="Faults to inject around the substrate on the command line, e.g. "
        "'errors=0.1,outage=120s+30s' (as --faults).",
    )
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    _order: tuple[str, ...] = PrivateAttr(default=())
    _by_id: dict[str, Step] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_dag(self) -> Plan:
        problems: list[str] = []
        bad: list[str] = []
        counts = Counter(s.id for s in self.steps)
        duplicates = sorted(step_id for step_id, n in counts.items() if n > 1)
        if duplicates:
            problems.append(f"duplicate step ids: {', '.join(duplicates)}")
            bad += duplicates
        ids = {s.id for s in self.steps}
        for step in self.steps:
            unknown = [d for d in step.depends_on if d not in ids]
            if unknown:
                problems.append(
                    f"step {step.id!r} depends on unknown step(s) {', '.join(map(repr, unknown))}"
                    f" (known: {', '.join(sorted(ids))})"
                )
                bad.append(step.id)
            if step.kind in _TOOL_KINDS and step.tool is None:
                problems.append(
                    f"step {step.id!r} is a {step.kind} step but names no tool; "
                    f"add `tool: {step.kind}` (and its args)"
                )
                bad.append(step.id)
        if problems:
            raise PlanError("; ".join(problems), step_ids=tuple(dict.fromkeys(bad)))
        order, cycle = _topological_order(self.steps)
        if cycle:
            raise PlanError(
                "the steps form a cycle: " + " -> ".join(cycle), step_ids=tuple(cycle[:-1])
            )
        self._by_id = {s.id: s for s in self.steps}
        for step in self.steps:
            for text in _templates_of(step):
                for ref in template_refs(text):
                    if ref.step_id is None:
                        problems.append(
                            f"step {step.id!r} has a malformed template reference "
                            f"'{{{{ {ref.raw} }}}}'; write {{{{ step_id }}}} or "
                            f"{{{{ step_id.text|tool|output }}}}"
                        )
                        bad.append(step.id)
                    elif not self._depends_on(step, ref.step_id):
                        problems.append(
                            f"step {step.id!r} refers to {{{{ {ref.raw} }}}} but does not depend "
                            f"on step {ref.step_id!r}; add it to depends_on"
                        )
                        bad.append(step.id)
        if problems:
            raise PlanError("; ".join(problems), step_ids=tuple(dict.fromkeys(bad)))
        self._order = order
        return self

    def _depends_on(self, step: Step, target: str) -> bool:
        if target in step.depends_on:
            return True
        return target in self.ancestors(step.id)

    @property
    def order(self) -> tuple[str, ...]:
        """Step ids in a topological order (dependencies first, file order among equals)."""
        return self._order

    def step(self, step_id: str) -> Step:
        """The step with this id.

        Raises:
            KeyError: no such step.
        """
        return self._by_id[step_id]

    def ancestors(self, step_id: str) -> frozenset[str]:
        """Every step that ``step_id`` depends on, directly or through others."""
        seen: set[str] = set()
        stack = list(self._by_id[step_id].depends_on)
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self._by_id[current].depends_on)
        return frozenset(seen)

    def timeout_for(self, step: Step) -> float:
        """The per-attempt timeout of ``step``."""
        return step.timeout_s if step.timeout_s is not None else self.defaults.timeout_s

    def retry_for(self, step: Step) -> RetryPolicy:
        """The retry policy of ``step``."""
        return step.retry if step.retry is not None else self.defaults.retry

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<string>") -> Plan:
        """Build a plan from YAML text (JSON is YAML too).

        Raises:
            PlanError: malformed YAML or an invalid plan, with ``source:line`` when known.
        """
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            detail = " ".join(str(p) for p in (exc.context, exc.problem) if p)
            if exc.context_mark is not None and exc.problem_mark is not None:
                started = exc.context_mark.line + 1
                if started != line:
                    detail += f" (the construct started at line {started})"
            raise PlanError(f"malformed YAML: {detail}", path=source, line=line) from exc
        except yaml.YAMLError as exc:
            raise PlanError(f"malformed YAML: {exc}", path=source) from exc
        if not isinstance(data, dict):
            raise PlanError(
                "a plan file must be a mapping with `name` and `steps`", path=source, line=1
            )
        return cls._from_data(data, source=source, node=node)

    @classmethod
    def from_json(cls, text: str, *, source: str = "<string>") -> Plan:
        """Build a plan from JSON text.

        Raises:
            PlanError: malformed JSON or an invalid plan, with ``source:line`` when known.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"malformed JSON: {exc.msg}", path=source, line=exc.lineno) from exc
        if not isinstance(data, dict):
            raise PlanError(
                "a plan file must be an object with `name` and `steps`", path=source, line=1
            )
        # JSON is YAML 1.2: composing it gives line numbers for validation errors.
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            node = None
        return cls._from_data(data, source=source, node=node)

    @classmethod
    def _from_data(cls, data: dict[str, Any], *, source: str, node: yaml.Node | None) -> Plan:
        try:
            plan = cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = tuple(first["loc"])
            where = ".".join(str(p) for p in loc) or "plan"
            more = (
                f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
            )
            raise PlanError(
                f"{where}: {first['msg']}{more}", path=source, line=_line_of(node, loc)
            ) from exc
        except PlanError as exc:
            line = _line_of_step(node, data, exc.step_ids[0]) if exc.step_ids else None
            raise PlanError(str(exc), step_ids=exc.step_ids, path=source, line=line) from exc
        return plan


def load_plan(path: str | Path) -> Plan:
    """Load a plan from a ``.yaml``/``.yml`` or ``.json`` file.

    Example:
        ``plan = load_plan("examples/plans/fix-bug.yaml")``

    Raises:
        PlanError: the file is missing, unreadable, malformed or describes an invalid plan; the
            message starts with ``path:line``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PlanError("no such plan file", path=str(p)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"cannot read the plan file: {exc}", path=str(p)) from exc
    if p.suffix.lower() == ".json":
        return Plan.from_json(text, source=str(p))
    return Plan.from_yaml(text, source=str(p))


def _templates_of(step: Step) -> Iterable[str]:
    if step.prompt is not None:
        yield step.prompt
    yield from _strings_in(step.args)


def _strings_in(value: JsonValue) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings_in(v)


def _topological_order(steps: Sequence[Step]) -> tuple[tuple[str, ...], list[str]]:
    """Kahn's algorithm; on a cycle, returns ``((), [a, b, ..., a])``."""
    indegree = {s.id: len(set(s.depends_on)) for s in steps}
    children: dict[str, list[str]] = {s.id: [] for s in steps}
    for s in steps:
        for dep in dict.fromkeys(s.depends_on):
            children[dep].append(s.id)
    ready = deque(s.id for s in steps if indegree[s.id] == 0)
    order: list[str] = []
    while ready:
        current = ready.popleft()
        order.append(current)
        for child in children[current]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if len(order) == len(steps):
        return tuple(order), []
    return (), _find_cycle({s.id: s.depends_on for s in steps if indegree[s.id] > 0})


def _find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """A cycle among the nodes left over by Kahn's algorithm (each has an unresolved edge)."""
    start = next(iter(graph))
    path: list[str] = []
    position: dict[str, int] = {}
    node = start
    while node not in position:
        position[node] = len(path)
        path.append(node)
        node = next(d for d in graph[node] if d in graph)
    # Edges point from a step to what it depends on; print in execution order.
    cycle = [*path[position[node] :], node]
    return list(reversed(cycle))


def _line_of(node: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest existing parent)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                    child = v
                    line = k.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(key, int)
            and 0 <= key < len(node.value)
        ):
            child = node.value[key]
            line = child.start_mark.line + 1
        if child is None:
            return line
        node = child
    return line


def _line_of_step(node: yaml.Node | None, data: Mapping[str, Any], step_id: str) -> int | None:
    steps = data.get("steps")
    if not isinstance(steps, list):
        return None
    for index, raw in enumerate(steps):
        if isinstance(raw, dict) and raw.get("id") == step_id:
            return _line_of(node, ("steps", index))
    return None
