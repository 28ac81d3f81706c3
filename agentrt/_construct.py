"""Building pydantic models from parts that are already valid, without validating them again.

The tool loop builds a request, two messages and two step results per turn, each from values
that are valid by construction (the previous request's messages, a result the substrate returned,
a model validated once per run). Validating them again costs more than the rest of a turn, and
validating a request re-validates its whole conversation: work proportional to the history on
every turn. ``BaseModel.model_construct`` skips validation but still walks every field in Python
(slower than validating, for models this size); `trusted` fills a precomputed dict of defaults.
Only for values the caller knows are valid: nothing is checked.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["trusted"]

M = TypeVar("M", bound=BaseModel)

_setattr = object.__setattr__


@functools.cache
def _defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """Every field's default; a field with a default factory or none is left out (must be given)."""
    return {
        name: field.default
        for name, field in cls.model_fields.items()
        if not field.is_required() and field.default_factory is None
    }


def trusted(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of ``cls`` holding ``values`` (plus defaults), unvalidated.

    ``values`` must name every field without a plain default, hold valid values, and is kept
    (not copied): pass a fresh dict.

    Example:
        >>> from agentrt.substrate import Message
        >>> m = trusted(Message, {"role": "tool", "content": "3 hits", "tool_call_id": "c1"})
        >>> m == Message(role="tool", content="3 hits", tool_call_id="c1")
        True
    """
    obj = cls.__new__(cls)
    fields_set = set(values)
    defaults = _defaults(cls)
    if len(values) != len(cls.model_fields):
        values = {**defaults, **values}
    _setattr(obj, "__dict__", values)
    _setattr(obj, "__pydantic_fields_set__", fields_set)
    _setattr(obj, "__pydantic_extra__", None)
    _setattr(obj, "__pydantic_private__", None)
    return obj
