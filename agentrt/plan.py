"""Plans: a `Plan` is a DAG of `Step`s, validated when built, loadable from YAML or JSON."""

from __future__ import annotations

import difflib
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

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

from agentrt._plan_file import (
    MAX_PLAN_BYTES,
    MAX_PLAN_DEPTH,
    MAX_PLAN_STEPS,
    MAX_PLAN_VALUES,
    MAX_YAML_ALIASES,
    Lines,
    check_size,
    parse_json,
    parse_yaml,
    read_plan_text,
)
from agentrt.errors import ConfigError, PlanError

__all__ = [
    "MAX_PLAN_BYTES",
    "MAX_PLAN_DEPTH",
    "MAX_PLAN_STEPS",
    "MAX_PLAN_VALUES",
    "MAX_YAML_ALIASES",
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

#: Ids (or problems) an error message names before it counts the rest.
_MAX_LISTED = 5

_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
# Infinite or NaN timeouts, back-offs and deadlines are mistakes, never "no limit".
_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
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
    """One step of a plan: a model call, optionally followed by a tool call, or a small tool loop.

    Every step asks the substrate for one inference (the model's turn: think, decide a tool call,
    answer). A step with a ``tool`` then runs that tool with ``args``. A step with ``tools``
    instead offers them to the model and runs the tool-calling loop (at most ``max_turns`` model
    calls) from its prompt; its output is the model's final text. ``prompt`` and string
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
    tools: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        default=(), description="Tools the model may call: the step runs a small tool loop."
    )
    max_turns: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Model calls of a step with tools; default the run's max_turns."
    )
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

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        # A PlanError (not a ValueError) escapes pydantic as it is: one line with a hint.
        if isinstance(data, dict) and not _STEP_FIELDS.issuperset(data):
            step_id = data.get("id")
            raise PlanError(
                _unknown_field("step", data, Step.model_fields),
                step_ids=(step_id,) if isinstance(step_id, str) else (),
            )
        return data

    @field_validator("depends_on", "tools", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _tool_or_tools(self) -> Step:
        if self.tool is not None and self.tools:
            raise PlanError(
                f"step {self.id!r} has both tool (run after the model call, with args) and tools "
                "(offered to the model); keep one",
                step_ids=(self.id,),
            )
        if self.max_turns is not None and not self.tools:
            raise PlanError(
                f"step {self.id!r} sets max_turns but offers no tools; add tools: [...] or drop "
                "max_turns",
                step_ids=(self.id,),
            )
        if len(set(self.tools)) != len(self.tools):
            raise PlanError(f"step {self.id!r} names a tool twice in tools", step_ids=(self.id,))
        return self

    @property
    def output_tokens_hint(self) -> int:
        """``max_output_tokens``, or the default for this step's kind."""
        if self.max_output_tokens is not None:
            return self.max_output_tokens
        return _DEFAULT_OUTPUT_TOKENS.get(self.kind, _FALLBACK_OUTPUT_TOKENS)

    def default_prompt(self) -> str:
        """The prompt used when the step gives none."""
        if self.tools:
            tools = ", ".join(self.tools)
            return f"Carry out the {self.kind} step {self.id}, using the tools {tools}."
        if self.tool is not None:
            return f"Call the {self.tool} tool for step {self.id}."
        return f"Carry out the {self.kind} step {self.id}."


_STEP_FIELDS = frozenset(Step.model_fields)


def _unknown_field(what: str, data: Mapping[str, Any], fields: Iterable[str]) -> str:
    """``what has no field 'x'; did you mean 'y'? (its fields: ...)`` for the first unknown key."""
    known = list(fields)
    key = next(str(k) for k in data if k not in known)
    label = what
    if what == "step" and isinstance(data.get("id"), str):
        label = f"step {data['id']!r}"
    return (
        f"{label} has no field {key!r}{_did_you_mean(key, known)}; its fields: {', '.join(known)}"
    )


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _listing(items: Sequence[str], *, quote: bool = False) -> str:
    """The first few items, then a count of the rest: ``a, b, c ... and 99,997 more``."""
    shown = [repr(i) if quote else i for i in items[:_MAX_LISTED]]
    rest = len(items) - len(shown)
    return ", ".join(shown) + (f" ... and {rest:,} more" if rest > 0 else "")


def _joined(problems: Sequence[str]) -> str:
    more = len(problems) - _MAX_LISTED
    text = "; ".join(problems[:_MAX_LISTED])
    return text + (f" (and {more:,} more problems)" if more > 0 else "")


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
    _refs: dict[str, tuple[str, ...]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and not _PLAN_FIELDS.issuperset(data):
            raise PlanError(_unknown_field("a plan", data, Plan.model_fields))
        return data

    @model_validator(mode="after")
    def _check_dag(self) -> Plan:
        # Every check here is O(steps + edges): plans of MAX_PLAN_STEPS steps load in seconds.
        problems: list[str] = []
        bad: list[str] = []
        counts = Counter(s.id for s in self.steps)
        duplicates = sorted(step_id for step_id, n in counts.items() if n > 1)
        if duplicates:
            problems.append(f"duplicate step ids: {_listing(duplicates)}")
            bad += duplicates
        ids = counts.keys()
        for step in self.steps:
            unknown = [d for d in step.depends_on if d not in ids]
            if unknown:
                bad.append(step.id)
                # Suggestions cost a scan of every id: only for the problems the message shows.
                hint = _did_you_mean(unknown[0], ids) if len(problems) < _MAX_LISTED else ""
                problems.append(
                    f"step {step.id!r} depends on unknown step(s) "
                    f"{_listing(unknown, quote=True)}{hint}"
                )
            if step.kind in _TOOL_KINDS and step.tool is None and not step.tools:
                problems.append(
                    f"step {step.id!r} is a {step.kind} step but names no tool; "
                    f"add `tool: {step.kind}` (and its args)"
                )
                bad.append(step.id)
        if problems:
            raise PlanError(_joined(problems), step_ids=tuple(dict.fromkeys(bad)))
        order, cycle = _topological_order(self.steps)
        if cycle:
            raise PlanError(
                "the steps form a cycle: " + " -> ".join(cycle), step_ids=tuple(cycle[:-1])
            )
        self._by_id = {s.id: s for s in self.steps}
        self._refs = _check_references(self._by_id, order)
        self._order = order
        return self

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

    def references(self, step_id: str) -> tuple[str, ...]:
        """The steps whose results ``step_id``'s prompt and args refer to (found once, when built).

        Example:
            >>> plan = Plan(name="p", steps=[Step(id="a"), Step(id="b", depends_on=["a"],
            ...                                                  prompt="Use {{ a.text }}")])
            >>> plan.references("b"), plan.references("a")
            (('a',), ())
        """
        return self._refs.get(step_id, ())

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

    def check_tools(self, args_model: Callable[[str], type[BaseModel] | None]) -> None:
        """Check each step's tool name and ``args`` against the tool's argument model.

        A string argument holding a ``{{ step }}`` reference is only rendered when the step
        runs, so its value is not type-checked here; its name still is.

        Example:
            >>> from pydantic import BaseModel
            >>> class EchoArgs(BaseModel):
            ...     text: str
            >>> plan = Plan(name="p", steps=[Step(id="a", tool="echo", args={"txt": "hi"})])
            >>> try:
            ...     plan.check_tools({"echo": EchoArgs}.__getitem__)
            ... except PlanError as exc:
            ...     print(exc)
            step 'a': tool 'echo' has no argument 'txt' (did you mean 'text'?); its arguments: text

        Args:
            args_model: the argument model of a tool by name (e.g.
                `agentrt.registry.Registry.tool_args_model`); None skips that tool's arguments.
                An unknown name raises `KeyError` or `agentrt.errors.ConfigError`.

        Raises:
            PlanError: an unknown tool or invalid arguments; ``step_ids`` names the step.
        """
        problem = _first_tool_problem(self, args_model)
        if problem is not None:
            raise PlanError(problem[1], step_ids=(self.steps[problem[0]].id,))

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<string>") -> Plan:
        """Build a plan from YAML text (JSON is YAML too).

        Raises:
            PlanError: malformed YAML, a limit exceeded (`MAX_PLAN_DEPTH`, `MAX_YAML_ALIASES`,
                `MAX_PLAN_VALUES`, `MAX_PLAN_STEPS`) or an invalid plan, with ``source:line``
                when known.
        """
        data = parse_yaml(text, source)
        return cls._from_data(data, source=source, text=text)

    @classmethod
    def from_json(cls, text: str, *, source: str = "<string>") -> Plan:
        """Build a plan from JSON text.

        Raises:
            PlanError: malformed JSON, a limit exceeded or an invalid plan, with
                ``source:line`` when known.
        """
        data = parse_json(text, source)
        return cls._from_data(data, source=source, text=text, shared=False)

    @classmethod
    def _from_data(
        cls, data: dict[str, Any], *, source: str, text: str | None = None, shared: bool = True
    ) -> Plan:
        check_size(data, source, shared=shared)
        lines = Lines(text)
        steps = data.get("steps")
        if isinstance(steps, list):
            if len(steps) > MAX_PLAN_STEPS:
                raise PlanError(
                    f"the plan has {len(steps):,} steps; at most {MAX_PLAN_STEPS:,} "
                    "(agentrt.plan.MAX_PLAN_STEPS) are allowed: split it into several plans",
                    path=source,
                )
            # Unknown keys first, with the line of the key itself and a did-you-mean.
            for index, raw in enumerate(steps):
                if isinstance(raw, dict) and not _STEP_FIELDS.issuperset(raw):
                    key = next(str(k) for k in raw if k not in _STEP_FIELDS)
                    raise PlanError(
                        f"steps.{index}.{key}: " + _unknown_field("step", raw, Step.model_fields),
                        path=source,
                        line=lines.of(("steps", index, key)),
                    )
        if not _PLAN_FIELDS.issuperset(data):
            key = next(str(k) for k in data if k not in _PLAN_FIELDS)
            raise PlanError(
                _unknown_field("a plan", data, Plan.model_fields),
                path=source,
                line=lines.of((key,)),
            )
        try:
            plan = cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = tuple(first["loc"])
            where = ".".join(str(p) for p in loc) or "plan"
            more = (
                f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
            )
            message = first["msg"]
            if first["type"] == "extra_forbidden" and loc:
                fields = _nested_fields(loc)
                message = f"unknown field {loc[-1]!r}{_did_you_mean(str(loc[-1]), fields)}"
                message += f"; its fields: {', '.join(fields)}" if fields else ""
            elif first["type"] == "finite_number":
                message = "must be a finite number (not inf or nan)"
            raise PlanError(f"{where}: {message}{more}", path=source, line=lines.of(loc)) from exc
        except PlanError as exc:
            line = lines.of_step(data, exc.step_ids[0]) if exc.step_ids else None
            raise PlanError(str(exc), step_ids=exc.step_ids, path=source, line=line) from exc
        return plan


_PLAN_FIELDS = frozenset(Plan.model_fields)


def load_plan(
    path: str | Path, *, tools: Callable[[str], type[BaseModel] | None] | None = None
) -> Plan:
    """Load a plan from a ``.yaml``/``.yml`` or ``.json`` file.

    The file must be a regular file of at most `MAX_PLAN_BYTES`; the plan may hold at most
    `MAX_PLAN_STEPS` steps, nest at most `MAX_PLAN_DEPTH` levels and reuse at most
    `MAX_YAML_ALIASES` mappings or lists through YAML aliases.

    Example:
        ``plan = load_plan("examples/plans/fix-bug.yaml", tools=registry.tool_args_model)``

    Args:
        path: the plan file.
        tools: when given, each step's tool and ``args`` are checked with `Plan.check_tools`.

    Raises:
        PlanError: the file is missing, unreadable, too large, malformed or describes an invalid
            plan; the message starts with ``path:line``.
    """
    p = Path(path)
    text = read_plan_text(p)
    if p.suffix.lower() == ".json":
        plan = Plan.from_json(text, source=str(p))
    else:
        plan = Plan.from_yaml(text, source=str(p))
    if tools is not None:
        problem = _first_tool_problem(plan, tools)
        if problem is not None:
            index, message, loc = problem
            raise PlanError(
                message,
                step_ids=(plan.steps[index].id,),
                path=str(p),
                line=Lines(text).of(("steps", index, *loc)),
            )
    return plan


def _check_references(
    by_id: Mapping[str, Step], order: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """Every ``{{ ref }}`` names a step this one depends on, directly or not.

    Returns the steps each step refers to (only steps that refer to any), for the agent to look
    up when the step runs.

    Direct dependencies are a set lookup. Other references are checked against ancestor sets
    kept as bitsets (one bit per referenced step), built once in topological order: linear in
    steps + edges (times the bitset width), where calling `Plan.ancestors` per reference was
    quadratic.
    """
    problems: list[str] = []
    bad: list[str] = []
    indirect: dict[str, list[TemplateRef]] = {}
    refs: dict[str, dict[str, None]] = {}
    for step in by_id.values():
        for text in _templates_of(step):
            if "{{" not in text:
                continue
            for ref in template_refs(text):
                if ref.step_id is not None:
                    refs.setdefault(step.id, {})[ref.step_id] = None
                if ref.step_id is None:
                    problems.append(
                        f"step {step.id!r} has a malformed template reference "
                        f"'{{{{ {ref.raw} }}}}'; write {{{{ step_id }}}} or "
                        f"{{{{ step_id.text|tool|output }}}}"
                    )
                    bad.append(step.id)
                elif ref.step_id not in step.depends_on:
                    indirect.setdefault(step.id, []).append(ref)
    if indirect:
        targets = {ref.step_id for refs in indirect.values() for ref in refs}
        bit = {t: 1 << i for i, t in enumerate(sorted(t for t in targets if t is not None))}
        pending = Counter(d for s in by_id.values() for d in set(s.depends_on))
        ancestors: dict[str, int] = {}
        for step_id in order:
            deps = set(by_id[step_id].depends_on)
            mask = 0
            for dep in deps:
                mask |= ancestors[dep] | bit.get(dep, 0)
                pending[dep] -= 1
                if pending[dep] == 0:
                    del ancestors[dep]  # no step left needs it: memory stays small on chains
            ancestors[step_id] = mask
            for ref in indirect.get(step_id, ()):
                if ref.step_id is not None and not mask & bit[ref.step_id]:
                    problems.append(
                        f"step {step_id!r} refers to {{{{ {ref.raw} }}}} but does not depend "
                        f"on step {ref.step_id!r}; add it to depends_on"
                    )
                    bad.append(step_id)
    if problems:
        raise PlanError(_joined(problems), step_ids=tuple(dict.fromkeys(bad)))
    return {step_id: tuple(found) for step_id, found in refs.items()}


def _first_tool_problem(
    plan: Plan, args_model: Callable[[str], type[BaseModel] | None]
) -> tuple[int, str, tuple[str | int, ...]] | None:
    """(step index, message, location under the step) of the first bad tool or argument."""
    models: dict[str, type[BaseModel] | None] = {}
    for index, step in enumerate(plan.steps):
        for k, name in enumerate(step.tools):
            try:
                args_model(name)
            except (KeyError, ConfigError) as exc:
                detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
                return index, f"step {step.id!r} offers an unknown tool: {detail}", ("tools", k)
        if step.tool is None:
            continue
        if step.tool not in models:
            try:
                models[step.tool] = args_model(step.tool)
            except (KeyError, ConfigError) as exc:
                detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
                return index, f"step {step.id!r} uses an unknown tool: {detail}", ("tool",)
        model = models[step.tool]
        if model is None:
            continue
        problem = _args_problem(step, model)
        if problem is not None:
            return index, problem[0], ("args", *problem[1])
    return None


def _args_problem(step: Step, model: type[BaseModel]) -> tuple[str, tuple[str | int, ...]] | None:
    fields = list(model.model_fields)
    if model.model_config.get("extra") != "allow":
        # Unknown names first (a model that ignores extras would drop them silently).
        accepted = {*fields, *(f.alias for f in model.model_fields.values() if f.alias)}
        for name in step.args:
            if name not in accepted:
                return (
                    f"step {step.id!r}: tool {step.tool!r} has no argument {name!r}"
                    f"{_did_you_mean(name, fields)}; its arguments: {', '.join(fields)}",
                    (name,),
                )
    try:
        model.model_validate(step.args)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            if _templated(step.args, loc):
                continue  # rendered when the step runs: the model checks it then
            where = f"argument {'.'.join(map(str, loc))!r}" if loc else "arguments"
            detail = error["msg"].removeprefix("Value error, ")
            if error["type"] == "missing":
                detail = "required, but missing"
            return (
                f"step {step.id!r}: {where} of tool {step.tool!r}: {detail}; "
                f"its arguments: {', '.join(fields)}",
                loc,
            )
    return None


def _templated(args: Mapping[str, JsonValue], loc: Sequence[str | int]) -> bool:
    """Whether the value at ``loc`` (or one containing it) is a string with a ``{{`` reference."""
    value: JsonValue = dict(args)
    for key in loc:
        if isinstance(value, str):
            break
        if isinstance(value, dict) and isinstance(key, str) and key in value:
            value = value[key]
            continue
        if not (isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value)):
            return False
        value = value[key]
    return isinstance(value, str) and "{{" in value


def _nested_fields(loc: Sequence[str | int]) -> list[str]:
    """The field names of the model at ``loc[:-1]`` (for did-you-mean on nested extras)."""
    parent = [p for p in loc[:-1] if isinstance(p, str)]
    if parent[-1:] == ["retry"]:
        return list(RetryPolicy.model_fields)
    if parent == ["defaults"]:
        return list(StepDefaults.model_fields)
    return []


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
