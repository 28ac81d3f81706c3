r"""Reading YAML spec files (fleet specs, check specs) into pydantic models with file:line errors.

One error, one line: ``fleet.yaml:12: pools.wse3.max: Input should be greater than or equal to
1; fix that value``. The line is found by composing the YAML again only when there is an error
(`agentrt._plan_file.Lines`, as plan files do).

Example:
    >>> from pydantic import BaseModel
    >>> class Spec(BaseModel):
    ...     n: int
    >>> parse_spec_text("n: 3", Spec, source="s.yaml").n
    3
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

from agentrt._plan_file import Lines
from agentrt.errors import ConfigError

__all__ = ["MAX_SPEC_BYTES", "SpecSource", "parse_spec_text", "read_spec", "read_spec_source"]

#: Largest spec file read, in bytes (a spec is a page of YAML).
MAX_SPEC_BYTES = 1024 * 1024

M = TypeVar("M", bound=BaseModel)


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line is not None else source


class SpecSource:
    """Where a spec came from, to point later errors (building, running) at a line."""

    def __init__(self, source: str, text: str | None) -> None:
        self.source = source
        self._lines = Lines(text)

    def where(self, loc: tuple[str | int, ...]) -> str:
        """``source:line: a.b.c`` for the value at ``loc``."""
        return f"{_where(self.source, self._lines.of(loc))}: {'.'.join(str(p) for p in loc)}"


def read_spec(path: str | Path, model: type[M], *, what: str) -> M:
    """Read, parse and validate the spec file at ``path`` as ``model``.

    Raises:
        ConfigError: unreadable, not YAML, or not matching the schema; one line with
            ``path:line`` and what to fix.
    """
    return read_spec_source(path, model, what=what)[0]


def read_spec_source(path: str | Path, model: type[M], *, what: str) -> tuple[M, SpecSource]:
    """`read_spec`, and the `SpecSource` that points later errors at the file's lines."""
    p = Path(path)
    try:
        raw = p.read_bytes()[: MAX_SPEC_BYTES + 1] if p.is_file() else None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the {what}: {exc.strerror or exc}") from exc
    if raw is None:
        raise ConfigError(f"{p}: no such {what} file; give the path of a .yaml file")
    if len(raw) > MAX_SPEC_BYTES:
        raise ConfigError(f"{p}: the {what} is larger than 1 MiB; a spec is a page of YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: the {what} is not UTF-8 text") from exc
    return parse_spec_text(text, model, source=str(p), what=what), SpecSource(str(p), text)


def parse_spec_text(text: str, model: type[M], *, source: str, what: str = "spec") -> M:
    """Parse YAML ``text`` and validate it as ``model``; errors name ``source:line``.

    Raises:
        ConfigError: not YAML, not a mapping, or not matching the schema.
    """
    try:
        data: Any = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        detail = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"{_where(source, line)}: malformed YAML: {detail}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: malformed YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: a {what} is a YAML mapping; see docs/fleets.md")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # An unknown key is usually a misspelt one: report it (with the likely spelling)
        # before the "missing" error the misspelling also causes.
        first = min(errors, key=lambda e: e["type"] != "extra_forbidden")
        loc = tuple(first["loc"])
        line = Lines(text).of(loc)
        where = ".".join(str(p) for p in loc) or "(top level)"
        missing = [
            str(e["loc"][-1])
            for e in errors
            if e["type"] == "missing" and tuple(e["loc"][:-1]) == loc[:-1]
        ]
        message = _message(first, missing or sorted(_field_names(model)))
        raise ConfigError(f"{_where(source, line)}: {where}: {message}") from None


def _field_names(model: type[BaseModel]) -> set[str]:
    """Every field name of ``model`` and of the models its fields hold (for "did you mean")."""
    names: set[str] = set()
    todo: list[Any] = [model]
    seen: set[int] = set()
    while todo:
        kind = todo.pop()
        if id(kind) in seen:
            continue
        seen.add(id(kind))
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names.update(kind.model_fields)
            todo.extend(f.annotation for f in kind.model_fields.values())
        else:
            todo.extend(get_args(kind))
    return names


def _message(error: Any, missing: list[str]) -> str:
    """Pydantic's message with the fix spelled out."""
    kind, msg = error["type"], str(error["msg"])
    if kind == "missing":
        return f"missing; add `{error['loc'][-1]}:`"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(error["loc"][-1]), missing, n=1)
        if close:
            return f"unknown key; did you mean `{close[0]}`?"
        return "unknown key; remove it or check its spelling (see docs/fleets.md)"
    if kind in ("value_error", "assertion_error"):
        return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"{msg}; fix that value"
