"""Plan files: bounded reads, YAML and JSON parsing within limits, line numbers for errors.

`agentrt.plan` builds and validates a `Plan` from the data these functions return; this module
knows only text, files and their limits (re-exported as ``agentrt.plan.MAX_*``).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from agentrt.errors import PlanError

__all__ = [
    "MAX_PLAN_BYTES",
    "MAX_PLAN_DEPTH",
    "MAX_PLAN_STEPS",
    "MAX_PLAN_VALUES",
    "MAX_YAML_ALIASES",
    "Lines",
    "check_length",
    "check_size",
    "parse_json",
    "parse_yaml",
    "read_plan_text",
]

#: Largest plan file `load_plan` reads, in bytes (16 MiB: ~300,000 short steps of YAML).
MAX_PLAN_BYTES = 16 * 1024 * 1024
#: Most steps in one plan.
MAX_PLAN_STEPS = 50_000
#: Deepest nesting of mappings and lists in a plan file (a plan itself needs about 6).
MAX_PLAN_DEPTH = 64
#: Most mappings and lists a plan may reuse through YAML aliases (``*name``).
MAX_YAML_ALIASES = 1_000
#: Most values (scalars, mappings, lists) in a plan once YAML aliases are expanded.
MAX_PLAN_VALUES = 2_000_000

# libyaml's loader when PyYAML has it (10-50x faster); line numbers come from composing the
# text again, only when there is an error to report.
_FastLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """The mapping a YAML (or JSON) plan text holds, with libyaml when available.

    Raises:
        PlanError: malformed YAML, too deep, or not a mapping; with ``source:line`` when known.
    """
    check_length(text, source)
    try:
        data = yaml.load(text, Loader=_FastLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        if "maximum nesting depth" in str(exc.problem):
            raise PlanError(too_deep(), path=source, line=line) from None
        detail = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        if exc.context_mark is not None and exc.problem_mark is not None:
            started = exc.context_mark.line + 1
            if started != line:
                detail += f" (the construct started at line {started})"
        raise PlanError(f"malformed YAML: {detail}", path=source, line=line) from exc
    except yaml.YAMLError as exc:
        raise PlanError(f"malformed YAML: {exc}", path=source) from exc
    except RecursionError:  # the pure-Python loader, without libyaml
        raise PlanError(too_deep(), path=source) from None
    if not isinstance(data, dict):
        raise PlanError(
            "a plan file must be a mapping with `name` and `steps`", path=source, line=1
        )
    return data


def parse_json(text: str, source: str) -> dict[str, Any]:
    """The object a JSON plan text holds (the C decoder; no line numbers unless it fails).

    Raises:
        PlanError: malformed JSON, too deep, or not an object.
    """
    check_length(text, source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"malformed JSON: {exc.msg}", path=source, line=exc.lineno) from exc
    except RecursionError:
        raise PlanError(too_deep(), path=source) from None
    if not isinstance(data, dict):
        raise PlanError(
            "a plan file must be an object with `name` and `steps`", path=source, line=1
        )
    return data


def read_plan_text(p: Path) -> str:
    """The file's text, read with a bound: never a device, a FIFO or more than MAX_PLAN_BYTES."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as exc:
        raise PlanError("no such plan file", path=str(p)) from exc
    except OSError as exc:
        raise PlanError(f"cannot read the plan file: {exc.strerror or exc}", path=str(p)) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise PlanError(f"{what}; a plan is a .yaml or .json file", path=str(p))
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise PlanError(f"cannot read the plan file: {exc.strerror or exc}", path=str(p)) from exc
    finally:
        os.close(fd)
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanError(too_large(), path=str(p))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(f"cannot read the plan file: not UTF-8 text ({exc})", path=str(p)) from exc


def check_length(text: str, source: str) -> None:
    if len(text) > MAX_PLAN_BYTES:  # characters: at least as many bytes in UTF-8
        raise PlanError(too_large(), path=source)


def too_large() -> str:
    return (
        f"the file is larger than {MAX_PLAN_BYTES // (1024 * 1024)} MiB "
        "(agentrt.plan.MAX_PLAN_BYTES); split the plan into several"
    )


def too_deep() -> str:
    return (
        f"the plan nests deeper than {MAX_PLAN_DEPTH} levels (agentrt.plan.MAX_PLAN_DEPTH); "
        "a plan needs about 6"
    )


def check_size(data: object, source: str, *, shared: bool) -> None:
    """Refuse nesting past MAX_PLAN_DEPTH and alias bombs, before pydantic walks the data.

    Iterative (no recursion) and linear in the distinct mappings and lists: a mapping or list
    reached again is a YAML alias; its expanded size is remembered, not walked again.
    """
    if not shared:  # JSON: a tree, nothing to expand; only the depth is checked
        todo: list[tuple[Any, int]] = [(data, 1)]
        while todo:
            value, depth = todo.pop()
            if depth > MAX_PLAN_DEPTH:
                raise PlanError(too_deep(), path=source)
            children = value.values() if type(value) is dict else value
            todo.extend((c, depth + 1) for c in children if type(c) is dict or type(c) is list)
        return
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    on_path: set[int] = set()
    aliases = 0
    stack: list[tuple[Any, int, bool]] = [(data, 1, False)]
    while stack:
        value, depth, finished = stack.pop()
        key = id(value)
        children = value.values() if isinstance(value, dict) else value
        if finished:
            on_path.discard(key)
            size, height = 1, 1
            for child in children:
                if isinstance(child, (dict, list)):
                    size += sizes[id(child)]
                    height = max(height, heights[id(child)] + 1)
                else:
                    size += 1
            sizes[key], heights[key] = size, height
            if size > MAX_PLAN_VALUES:
                raise PlanError(
                    f"the plan expands to more than {MAX_PLAN_VALUES:,} values "
                    "(agentrt.plan.MAX_PLAN_VALUES); are YAML aliases nested?",
                    path=source,
                )
            continue
        if key in on_path:
            raise PlanError("a YAML alias refers to a mapping or list that holds it", path=source)
        if key in sizes:
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise PlanError(
                    f"the plan reuses more than {MAX_YAML_ALIASES:,} mappings or lists through "
                    "YAML aliases (agentrt.plan.MAX_YAML_ALIASES)",
                    path=source,
                )
            if depth + heights[key] - 1 > MAX_PLAN_DEPTH:
                raise PlanError(too_deep(), path=source)
            continue
        if depth > MAX_PLAN_DEPTH:
            raise PlanError(too_deep(), path=source)
        on_path.add(key)
        stack.append((value, depth, True))
        stack.extend((c, depth + 1, False) for c in children if isinstance(c, (dict, list)))


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


class Lines:
    """Line numbers in a plan's text, found by composing it only when an error needs one."""

    def __init__(self, text: str | None) -> None:
        self._text = text
        self._node: yaml.Node | None = None
        self._composed = False

    def _root(self) -> yaml.Node | None:
        if not self._composed:
            self._composed = True
            if self._text is not None:
                try:
                    self._node = yaml.compose(self._text, Loader=_FastLoader)
                except (yaml.YAMLError, RecursionError):  # JSON that YAML reads differently
                    self._node = None
        return self._node

    def of(self, loc: Sequence[str | int]) -> int | None:
        """The 1-based line of the value at ``loc`` (or of its nearest existing parent)."""
        return _line_of(self._root(), loc)

    def of_step(self, data: Mapping[str, Any], step_id: str) -> int | None:
        """The line of the step with this id."""
        steps = data.get("steps")
        if not isinstance(steps, list):
            return None
        for index, raw in enumerate(steps):
            if isinstance(raw, dict) and raw.get("id") == step_id:
                return self.of(("steps", index))
        return None
