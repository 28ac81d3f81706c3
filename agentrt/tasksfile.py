r"""The TASKS file of ``agentrt batch``: `BatchTask` per line, read and checked by `read_tasks`.

One JSON object a line: ``{"id": "t1", "task": "text"}`` is a tool-calling run,
``{"id": "t2", "plan": "path.yaml"}`` runs a plan (its path relative to the TASKS file); either
may set ``max_turns`` and ``seed``. The whole file is checked, and every plan loaded, before
anything runs; the first bad line is named as ``FILE:LINE: what and the fix``.

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tasks.jsonl"
    >>> _ = path.write_text('{"id": "a", "task": "Say hi."}\n{"id": "b", "task": "Bye."}\n')
    >>> [t.id for t in read_tasks(path)]
    ['a', 'b']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentrt.errors import ConfigError
from agentrt.plan import Plan, load_plan
from agentrt.registry import default_registry

__all__ = ["BatchTask", "check_tools", "read_tasks"]

_FIELDS = ("id", "task", "plan", "max_turns", "seed")
_SHAPE = (
    'each line is one object like {"id": "t1", "task": "text"} or {"id": "t2", "plan": "p.yaml"}'
)


class BatchTask(BaseModel):
    """One task of a batch: a task text for the tool-calling loop, or a plan.

    Example:
        >>> BatchTask(id="t1", task="Fix the bug.", max_turns=8).target
        'Fix the bug.'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=200, pattern=r"^[^/\s]+$")
    task: str | None = Field(default=None, min_length=1)
    plan: Plan | None = None
    max_turns: int | None = Field(default=None, ge=1)
    seed: int | None = None

    @property
    def target(self) -> str | Plan:
        """What the agent runs: the task text or the plan."""
        target = self.task if self.task is not None else self.plan
        if target is None:
            raise ConfigError(f"task {self.id!r} has neither a task nor a plan")
        return target

    def tool_names(self, tools: Sequence[str]) -> tuple[str, ...]:
        """The tools this task's agent holds: ``tools`` for a task text, a plan's own for a plan."""
        if self.plan is None:
            return tuple(tools)
        return tuple(sorted({n for s in self.plan.steps for n in (s.tool, *s.tools) if n}))


def _line_error(where: str, what: str) -> ConfigError:
    return ConfigError(f"{where}: {what}")


def _parse_line(text: str, where: str, base: Path) -> BatchTask:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _line_error(where, f"not JSON ({exc.msg} at column {exc.colno}); {_SHAPE}") from None
    if not isinstance(raw, dict):
        raise _line_error(where, f"a JSON {type(raw).__name__}, not an object; {_SHAPE}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise _line_error(
            where,
            f"unknown field(s) {', '.join(map(repr, unknown))}; a line holds id, task or plan, "
            "and optionally max_turns and seed",
        )
    if "id" not in raw:
        raise _line_error(where, f"no id; {_SHAPE}")
    if ("task" in raw) == ("plan" in raw):
        raise _line_error(where, f"give exactly one of task and plan; {_SHAPE}")
    fields = dict(raw)
    if "plan" in raw:
        if not isinstance(raw["plan"], str) or not raw["plan"]:
            raise _line_error(where, "plan must be a path to a plan file (.yaml or .json)")
        path = base / raw["plan"]
        try:
            fields["plan"] = load_plan(path, tools=default_registry().tool_args_model)
        except ConfigError as exc:
            raise _line_error(where, f"plan {raw['plan']!r}: {exc}") from None
    try:
        return BatchTask(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "line"
        fix = {
            "id": "ids are 1-200 characters without '/' or spaces",
            "task": "task is a non-empty text",
            "max_turns": "max_turns is a whole number >= 1",
            "seed": "seed is a whole number",
        }.get(field, _SHAPE)
        raise _line_error(
            where, f"{field}: {err['msg']} (got {err.get('input')!r}); {fix}"
        ) from None


def read_tasks(path: str | Path) -> list[BatchTask]:
    """The tasks of a TASKS file (JSON Lines), each checked, plans loaded, ids unique.

    Example:
        ``tasks = read_tasks("examples/batch/tasks.jsonl")``

    Raises:
        ConfigError: the file is missing or empty, or a line is bad; the message starts with
            ``FILE:LINE`` and says how to fix it.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the TASKS file {p}: {exc}; pass a JSON Lines file"
        ) from None
    tasks: list[BatchTask] = []
    seen: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{p}:{number}"
        task = _parse_line(text, where, p.parent)
        if task.id in seen:
            raise _line_error(
                where,
                f"id {task.id!r} is also on line {seen[task.id]}; ids must be unique (they name "
                "the runs in the journal)",
            )
        seen[task.id] = number
        tasks.append(task)
    if not tasks:
        raise ConfigError(f"{p}: no tasks; {_SHAPE}")
    return tasks


def check_tools(names: Sequence[str], tasks: Sequence[BatchTask]) -> None:
    """Refuse tool names that no plug-in registers, before anything runs.

    Raises:
        ConfigError: an unknown tool; the message lists the registered ones.
    """
    known = set(default_registry().names("agentrt.tools"))
    wanted = set(names).union(*(t.tool_names(()) for t in tasks))
    missing = sorted(wanted - known)
    if missing:
        raise ConfigError(
            f"unknown tool(s) {', '.join(missing)}; registered tools: {', '.join(sorted(known))}"
        )
