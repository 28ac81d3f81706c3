"""Tools from typed functions: `function_tool` and the `TypedTool` it makes.

The signature is the argument model (a pydantic model built from the parameters, their defaults and
``Annotated``/``Field`` metadata), the docstring is the description (its ``Args:`` section
describes each parameter), and the return value becomes the `ToolResult`.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, TypeVar, cast, final, overload

import anyio
import anyio.to_thread
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PydanticSchemaGenerationError,
    PydanticUserError,
    ValidationError,
    create_model,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticSerializationError, to_json, to_jsonable_python

from agentrt._docstring import parse_docstring
from agentrt.clock import VirtualClock, current_clock
from agentrt.errors import AgentrtError, ConfigError, RetryableToolError, ToolError
from agentrt.journal import idempotency_key
from agentrt.tool import ToolResult

__all__ = ["TypedTool", "function_tool"]

P = ParamSpec("P")
R = TypeVar("R")

#: A parameter of this name gets the call's `agentrt.journal.idempotency_key` (not in the schema).
KEY_PARAMETER = "idempotency_key"
#: What OpenAI-compatible endpoints accept as a tool name.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_JSON_TYPES = (
    "use JSON-shaped types: str, int, float, bool, None, list, dict, Literal, an Enum, "
    "a pydantic model, a dataclass or a TypedDict"
)


@final
class TypedTool(Generic[P, R]):
    """A `Tool` made from a typed function by `function_tool`; still callable as the function.

    ``args_model`` is built from the signature. `call` takes an ``args_model`` instance (or a
    dict, which it validates), calls the function (a sync one in a worker thread, or inline in
    virtual time, where its work takes no time) and converts what it returns: a `ToolResult` as
    is, a ``str`` as the output, anything else as JSON (``output`` the JSON text, ``data`` the
    JSON value). An exception the function raises becomes a `ToolError` naming the tool (an
    `AgentrtError` passes unchanged).

    Example:
        >>> @function_tool
        ... def add(a: int, b: int = 1) -> int:
        ...     '''Add two integers.'''
        ...     return a + b
        >>> add(2, 3), add.name, add.description
        (5, 'add', 'Add two integers.')
        >>> import anyio
        >>> anyio.run(add.call, add.args_model(a=2)).output
        '3'
    """

    name: str
    description: str
    args_model: type[BaseModel]

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
        thread: bool = True,
    ) -> None:
        functools.update_wrapper(self, fn)
        self._fn = fn
        label = getattr(fn, "__qualname__", repr(fn))
        self.name = name if name is not None else getattr(fn, "__name__", "")
        if not _NAME.match(self.name):
            raise ConfigError(
                f"function_tool({label}): tool name {self.name!r} must be 1-64 letters, digits, "
                "'_' or '-'; pass name=..."
            )
        if timeout_s is not None and not timeout_s > 0:
            raise ConfigError(f"function_tool({label}): timeout_s must be > 0, got {timeout_s}")
        doc = parse_docstring(inspect.getdoc(fn))
        self.description = description if description is not None else doc.description
        if not self.description:
            raise ConfigError(
                f"function_tool({label}): no description; give the function a docstring "
                "(the model reads it) or pass description=..."
            )
        self.args_model, plan = _args_model(fn, label, self.name, doc.params)
        self._positional = tuple(field for field, keyword in plan if keyword is None)
        self._keywords = tuple((field, keyword) for field, keyword in plan if keyword is not None)
        self.timeout_s = timeout_s
        self._is_async = inspect.iscoroutinefunction(inspect.unwrap(fn))
        #: Whether calls get the idempotency key even in runs without a journal.
        self.wants_idempotency_key = KEY_PARAMETER in inspect.signature(fn).parameters
        self._thread = thread

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the original function."""
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<TypedTool {self.name!r} of {self._fn!r}>"

    async def call(self, args: Any) -> ToolResult:
        """Run the function with ``args`` (an ``args_model`` instance, or a dict to validate)."""
        if not isinstance(args, self.args_model):
            try:
                args = self.args_model.model_validate(args)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "arguments"
                more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
                raise ToolError(
                    f"invalid arguments for tool {self.name!r}: {where}: {first['msg']}{more}"
                ) from exc
        positional = [getattr(args, field) for field in self._positional]
        keywords = {keyword: getattr(args, field) for field, keyword in self._keywords}
        if self.wants_idempotency_key:
            keywords[KEY_PARAMETER] = idempotency_key() or f"direct:{uuid.uuid4().hex}"
        try:
            if self._is_async and self.timeout_s is None:  # the common case, one frame less
                value = await self._fn(*positional, **keywords)  # type: ignore[misc]
            elif self.timeout_s is None:
                value = await self._run(positional, keywords)
            else:
                with anyio.move_on_after(self.timeout_s) as scope:
                    value = await self._run(positional, keywords)
                if scope.cancelled_caught:
                    raise RetryableToolError(
                        f"tool {self.name!r} ran longer than its timeout_s={self.timeout_s:g} s"
                    )
        except AgentrtError:
            raise
        except Exception as exc:
            raise ToolError(f"tool {self.name!r} raised {type(exc).__name__}: {exc}") from exc
        return _to_result(value, self.name)

    async def _run(self, positional: list[Any], keywords: dict[str, Any]) -> Any:
        if self._is_async:
            return await cast(Callable[..., Awaitable[Any]], self._fn)(*positional, **keywords)
        if not self._thread or isinstance(current_clock(), VirtualClock):
            # In virtual time a thread's work takes no time, and while the loop waited for it
            # the clock would jump to the next deadline (timeout_s, the step's) and fire it.
            return self._fn(*positional, **keywords)
        call = functools.partial(self._fn, *positional, **keywords)
        # A blocking function must not hold the event loop; on cancellation (or timeout_s) the
        # caller moves on and the thread's eventual result is dropped.
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

    async def aclose(self) -> None:
        """Nothing to release."""


@overload
def function_tool(fn: Callable[P, R], /) -> TypedTool[P, R]: ...


@overload
def function_tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
    thread: bool = True,
) -> Callable[[Callable[P, R]], TypedTool[P, R]]: ...


def function_tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
    thread: bool = True,
) -> TypedTool[P, R] | Callable[[Callable[P, R]], TypedTool[P, R]]:
    """Make a `Tool` of a typed function (async or sync); bare or with options.

    Every parameter needs a type annotation with a JSON schema; defaults make a parameter
    optional; ``Annotated[int, Field(ge=1)]`` (or ``= Field(...)``) adds constraints; the
    docstring's first part is the tool's description and its ``Args:`` section (Google style;
    NumPy ``Parameters`` and Sphinx ``:param x:`` too) describes each parameter. Anything wrong
    is one `ConfigError` at decoration time, naming the function and the fix. A parameter named
    ``idempotency_key`` (a ``str``) is not shown to the model: each call gets the call's
    `agentrt.journal.idempotency_key`, the same when a resumed run repeats the call (called
    outside a run, a fresh random key).

    Example:
        >>> from typing import Annotated, Literal
        >>> from pydantic import Field
        >>> @function_tool(timeout_s=30)
        ... async def search(query: str, k: Annotated[int, Field(ge=1, le=50)] = 5,
        ...                  order: Literal["score", "date"] = "score") -> list[str]:
        ...     '''Search the documentation.
        ...
        ...     Args:
        ...         query: words that must all match.
        ...         k: how many hits to return.
        ...         order: how to sort them.
        ...     '''
        ...     return [f"{query} {i}" for i in range(k)]
        >>> search.args_model.model_json_schema()["properties"]["k"]["description"]
        'how many hits to return.'

    Args:
        fn: the function (when used bare: ``@function_tool``).
        name: the tool's name; default the function's ``__name__``.
        description: what the tool does; default the docstring's text before its sections.
        timeout_s: a limit on one call; past it the call raises `RetryableToolError`.
        thread: run a sync function in a worker thread (the default), so it cannot block the
            event loop; False calls it inline (only for functions that never block). In virtual
            time a sync function always runs inline: its work takes no virtual time.

    Raises:
        ConfigError: a parameter without annotation, ``*args``/``**kwargs``, a type with no
            JSON schema, a bad name, or no description.
    """

    def decorate(f: Callable[P, R]) -> TypedTool[P, R]:
        return TypedTool(f, name=name, description=description, timeout_s=timeout_s, thread=thread)

    return decorate if fn is None else decorate(fn)


# -- the argument model ----------------------------------------------------------------------


def _args_model(
    fn: Callable[..., Any], label: str, tool_name: str, docs: dict[str, str]
) -> tuple[type[BaseModel], list[tuple[str, str | None]]]:
    """The pydantic model of ``fn``'s parameters, and how to call ``fn`` from an instance.

    The plan lists ``(field, keyword)`` per parameter; keyword None means positional-only.
    """
    if inspect.isclass(fn) or not callable(fn):
        raise ConfigError(f"function_tool({label}): decorate a function, not {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
    except (NameError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"function_tool({label}): cannot read the signature's types ({exc}); define the "
            "types it uses at module level"
        ) from exc
    fields: dict[str, Any] = {}
    plan: list[tuple[str, str | None]] = []
    for param in signature.parameters.values():
        if param.name == KEY_PARAMETER:
            if param.kind is param.POSITIONAL_ONLY:
                raise ConfigError(
                    f"function_tool({label}): {KEY_PARAMETER} is filled in by keyword; do not "
                    "make it positional-only"
                )
            continue  # not the model's to give: the agent passes the call's idempotency key
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            star = "*" if param.kind is param.VAR_POSITIONAL else "**"
            raise ConfigError(
                f"function_tool({label}): {star}{param.name} cannot be described to a model; "
                "name each parameter (or take one list/dict parameter)"
            )
        if param.name not in hints:
            raise ConfigError(
                f"function_tool({label}): parameter {param.name!r} has no type annotation; "
                f"annotate it (e.g. {param.name}: str)"
            )
        annotation = hints[param.name]
        default = ... if param.default is param.empty else param.default
        probe = FieldInfo.from_annotated_attribute(annotation, default)
        if probe.description is None and param.name in docs:
            annotation = typing.Annotated[annotation, Field(description=docs[param.name])]
        field = param.name
        if field.startswith("_") or hasattr(BaseModel, field):
            # Names pydantic reserves (model_*, json, copy, _private): stored under another
            # name, shown to the model and validated under their own (the alias).
            field = f"p_{param.name.lstrip('_')}_"
            annotation = typing.Annotated[annotation, Field(alias=param.name)]
        fields[field] = (annotation, default)
        plan.append((field, None if param.kind is param.POSITIONAL_ONLY else param.name))
    title = "".join(part.capitalize() for part in re.split(r"[_-]", tool_name)) + "Args"
    try:
        model = create_model(
            title,
            __config__=ConfigDict(extra="forbid"),
            __module__=getattr(fn, "__module__", __name__),
            **fields,
        )
        model.model_json_schema()
    except (PydanticUserError, TypeError, ValueError) as exc:
        # An unknown type needs no more words; other refusals say why (typing.TypedDict on 3.11).
        unknown = isinstance(exc, PydanticSchemaGenerationError) or not str(exc).strip()
        reason = "" if unknown else f" ({str(exc).strip().splitlines()[0]})"
        raise ConfigError(
            f"function_tool({label}): {_which_param(fields)} has no JSON schema{reason}; "
            f"{_JSON_TYPES}"
        ) from exc
    return cast(type[BaseModel], model), plan


def _which_param(fields: dict[str, Any]) -> str:
    """The first parameter whose type pydantic cannot describe, for the error message."""
    for name, (annotation, default) in fields.items():
        try:
            create_model("Probe", x=(annotation, default)).model_json_schema()
        except (PydanticUserError, TypeError, ValueError):
            return f"parameter {name!r} ({getattr(annotation, '__name__', annotation)})"
    return "a parameter"


# -- the result ------------------------------------------------------------------------------


def _to_result(value: Any, name: str) -> ToolResult:
    if isinstance(value, ToolResult):
        return value
    if isinstance(value, str):
        return ToolResult(output=value, data=value)
    try:
        data = to_jsonable_python(value)
        text = to_json(data).decode()
    except PydanticSerializationError as exc:
        raise ToolError(
            f"tool {name!r} returned a {type(value).__name__}, which is not JSON; return a str, "
            "a JSON value, a pydantic model or a ToolResult"
        ) from exc
    return ToolResult(output=text, data=data)
