"""Reading a function's docstring: its description and its parameters' (Google, NumPy, Sphinx).

Only what `agentrt.functions` needs to describe a tool to a model; no dependency on a docstring
library. A section it does not know ends the description and is otherwise ignored.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

__all__ = ["Docstring", "parse_docstring"]

_GOOGLE_PARAMS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
_GOOGLE_SECTIONS = _GOOGLE_PARAMS | {
    "other parameters", "returns", "return", "yields", "yield", "raises", "except", "examples",
    "example", "note", "notes", "warning", "warnings", "see also", "attributes", "todo",
    "references", "methods", "tip", "hint", "important", "caution", "danger", "attention",
}  # fmt: skip
_GOOGLE_HEADER = re.compile(r"^([A-Z][A-Za-z ]*):\s*$")
_GOOGLE_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_PARAMS = {"parameters", "other parameters", "keyword arguments"}
_NUMPY_RULE = re.compile(r"^\s*-{3,}\s*$")
_NUMPY_ENTRY = re.compile(r"^(\w+(?:\s*,\s*\w+)*)\s*(?::.*)?$")
_SPHINX_FIELD = re.compile(r"^:(\w+)([^:]*):\s*(.*)$")


@dataclass(frozen=True, slots=True)
class Docstring:
    """What a docstring says: the text before its first section, and one line per parameter."""

    description: str
    params: dict[str, str] = field(default_factory=dict)


def parse_docstring(doc: str | None) -> Docstring:
    """The description and parameter descriptions of ``doc``, in any of the three styles.

    Example:
        >>> parsed = parse_docstring('''Add two numbers.
        ...
        ...     Args:
        ...         a: the first.
        ...         b (int): the second, which may be
        ...             negative.
        ...     ''')
        >>> parsed.description, parsed.params["b"]
        ('Add two numbers.', 'the second, which may be negative.')
    """
    if not doc:
        return Docstring("")
    lines = inspect.cleandoc(doc).splitlines()
    end = len(lines)
    params: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        google = _GOOGLE_HEADER.match(line)
        if google and google.group(1).lower() not in _GOOGLE_SECTIONS:
            google = None
        numpy = i + 1 < len(lines) and line.strip() and _NUMPY_RULE.match(lines[i + 1])
        if google:
            end = min(end, i)
            body, i = _indented_block(lines, i + 1)
            if google.group(1).lower() in _GOOGLE_PARAMS:
                params.update(_entries(body, _GOOGLE_ENTRY, same_line=True))
            continue
        if numpy:
            end = min(end, i)
            body, i = _numpy_block(lines, i + 2)
            if line.strip().lower() in _NUMPY_PARAMS:
                params.update(_entries(body, _NUMPY_ENTRY, same_line=False))
            continue
        if line.startswith((":", ">>>")):
            end = min(end, i)
            if (sphinx := _SPHINX_FIELD.match(line)) and sphinx.group(1) in ("param", "parameter"):
                body, i = _indented_block(lines, i + 1)
                name = sphinx.group(2).split()[-1] if sphinx.group(2).split() else ""
                if name:
                    params[name] = _join([sphinx.group(3), *body])
                continue
        i += 1
    return Docstring("\n".join(lines[:end]).strip(), params)


def _indented_block(lines: list[str], start: int) -> tuple[list[str], int]:
    """The lines from ``start`` that are indented or blank (dedented), and where they stop."""
    i = start
    while i < len(lines) and (not lines[i].strip() or lines[i][:1].isspace()):
        i += 1
    body = lines[start:i]
    indents = [len(b) - len(b.lstrip()) for b in body if b.strip()]
    cut = min(indents, default=0)
    return [b[cut:] for b in body], i


def _numpy_block(lines: list[str], start: int) -> tuple[list[str], int]:
    """A NumPy section's lines: up to the next underlined header."""
    i = start
    while i < len(lines) and not (
        lines[i].strip() and i + 1 < len(lines) and _NUMPY_RULE.match(lines[i + 1])
    ):
        i += 1
    return lines[start:i], i


def _entries(body: list[str], entry: re.Pattern[str], *, same_line: bool) -> dict[str, str]:
    """``name: text`` entries of a section (unindented lines), each with its continuation lines."""
    found: dict[str, list[str]] = {}
    names: list[str] = []
    for line in body:
        head = entry.match(line) if line.strip() and not line[:1].isspace() else None
        if head:
            names = [n.strip() for n in head.group(1).split(",")]
            for name in names:
                found[name] = [head.group(2)] if same_line else []
        elif names:
            for name in names:
                found[name].append(line)
    return {name: _join(text) for name, text in found.items()}


def _join(text: list[str]) -> str:
    return " ".join(part.strip() for part in text if part.strip())
