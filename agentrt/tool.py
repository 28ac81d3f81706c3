"""The `Tool` protocol and the data it exchanges: `ToolResult` (and the model's `ToolCall`).

`ToolCall` (what a model asks for: id, name, arguments as JSON text) lives with the rest of the
conversation data in `agentrt.substrate` and is re-exported here.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic.json_schema import GenerateJsonSchema

from agentrt._docstring import parse_docstring
from agentrt.substrate import ToolCall, ToolSpec

__all__ = ["Tool", "ToolCall", "ToolResult", "tool_spec"]


class ToolResult(BaseModel):
    """What a tool returns.

    ``ok=False`` is a result the agent can reason about (a failing test run is a *successful*
    tool call whose result says the tests failed); a tool that cannot do its job at all raises
    `agentrt.errors.ToolError` instead.

    Example:
        >>> ToolResult(output="3 passed").ok
        True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    output: str = Field(description="Text the model sees as the tool's answer.")
    ok: bool = True
    data: JsonValue = Field(default=None, description="Structured result for programs.")
    duration_s: float | None = Field(
        default=None,
        ge=0,
        description="Time the tool says it spent (emulated twins); None = measured by the caller.",
    )


@runtime_checkable
class Tool(Protocol):
    """**Protocol:** a named action with a pydantic argument model and one async call.

    Example:
        >>> from pydantic import BaseModel
        >>> class EchoArgs(BaseModel):
        ...     text: str
        >>> class Echo:
        ...     name = "echo"
        ...     description = "Repeat the text."
        ...     args_model = EchoArgs
        ...     async def call(self, args: EchoArgs) -> ToolResult:
        ...         return ToolResult(output=args.text)
        ...     async def aclose(self) -> None: ...
        >>> isinstance(Echo(), Tool)
        True
    """

    name: str
    description: str
    # A class, not an instance: the agent validates a step's ``args`` with it before the call.
    args_model: type[BaseModel]

    async def call(self, args: Any) -> ToolResult:
        """Run the tool with validated arguments (an instance of ``args_model``)."""
        ...

    async def aclose(self) -> None:
        """Release resources; safe to call more than once."""
        ...


class _ToolSchema(GenerateJsonSchema):
    """Pydantic's JSON schema without the titles it derives from field names (tokens, no news)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


_SPECS: weakref.WeakKeyDictionary[Any, ToolSpec] = weakref.WeakKeyDictionary()


def tool_spec(tool: Tool) -> ToolSpec:
    """The `ToolSpec` a model sees for ``tool``: its name, description and argument schema.

    The schema is pydantic's JSON schema of ``tool.args_model`` without the titles pydantic derives
    from names, and with only the first part of the model's docstring (computed once per tool):
    each field's ``description`` is what tells the model what to pass.

    Example:
        >>> from pydantic import BaseModel
        >>> class GrepArgs(BaseModel):
        ...     pattern: str
        >>> class Grep:
        ...     name = "grep"
        ...     description = "Search files."
        ...     args_model = GrepArgs
        ...     async def call(self, args: GrepArgs) -> ToolResult: ...
        ...     async def aclose(self) -> None: ...
        >>> spec = tool_spec(Grep())
        >>> spec.parameters["required"], spec.parameters["properties"]["pattern"]
        (['pattern'], {'type': 'string'})
    """
    try:
        return _SPECS[tool]
    except (KeyError, TypeError):
        pass
    schema = tool.args_model.model_json_schema(schema_generator=_ToolSchema)
    schema.pop("title", None)
    if isinstance(doc := schema.get("description"), str):  # the model's docstring: no examples
        schema["description"] = parse_docstring(doc).description
    spec = ToolSpec(name=tool.name, description=tool.description, parameters=schema)
    with contextlib.suppress(TypeError):  # not weak-referenceable: computed each time
        _SPECS[tool] = spec
    return spec
