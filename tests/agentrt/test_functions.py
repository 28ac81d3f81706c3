"""`function_tool`: tools from typed functions (schemas, calls, conversions, errors)."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import threading
from collections.abc import Callable
from typing import Annotated, Any, Literal

import anyio
import pytest
from pydantic import BaseModel, Field, ValidationError
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

import agentrt
from agentrt import (
    ConfigError,
    InferenceRequest,
    InferenceResult,
    RetryableToolError,
    Timing,
    Tool,
    ToolCall,
    ToolError,
    ToolResult,
    Usage,
)
from agentrt import function_tool as function_tool_from_root
from agentrt._docstring import parse_docstring
from agentrt.functions import TypedTool, function_tool
from agentrt.tool import tool_spec

# -- types the signatures use (module level, so string annotations resolve) ------------------


class Point(BaseModel):
    x: int
    y: int = 0


@dataclasses.dataclass
class Span:
    start: int
    end: int


class Filters(TypedDict):
    lang: str
    year: int


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class NotJson:
    """A plain class: pydantic has no schema for it."""


def props(tool: Tool) -> dict[str, Any]:
    return dict(tool_spec(tool).parameters["properties"])


# -- schemas -------------------------------------------------------------------------------


def test_the_schema_comes_from_the_signature_and_the_google_docstring() -> None:
    @function_tool
    async def search(query: str, k: int = 5, exact: bool = False) -> list[str]:
        """Search the documentation.

        Returns the best hits first.

        Args:
            query: words that must all match.
            k (int): how many hits to return,
                best first.
            exact: match the phrase exactly.

        Returns:
            The hits.
        """
        return [query] * k

    spec = tool_spec(search)
    assert spec.name == "search"
    assert spec.description == "Search the documentation.\n\nReturns the best hits first."
    assert spec.parameters == {
        "type": "object",
        "additionalProperties": False,
        "required": ["query"],
        "properties": {
            "query": {"type": "string", "description": "words that must all match."},
            "k": {"type": "integer", "default": 5, "description": "how many hits to return, "
                  "best first."},
            "exact": {"type": "boolean", "default": False,
                      "description": "match the phrase exactly."},
        },
    }  # fmt: skip
    assert spec.to_openai()["function"]["parameters"] == spec.parameters


def test_constraints_from_annotated_and_field_defaults_and_explicit_descriptions_win() -> None:
    @function_tool
    def page(
        k: Annotated[int, Field(ge=1, le=50, description="explicit")],
        offset: int = Field(0, ge=0),
        order: Literal["score", "date"] = "score",
    ) -> str:
        """Page through hits.

        Args:
            k: the docstring's words, overridden by Field(description=...).
            offset: where to start.
            order: how to sort.
        """
        return f"{k} {offset} {order}"

    p = props(page)
    assert p["k"] == {"type": "integer", "minimum": 1, "maximum": 50, "description": "explicit"}
    assert p["offset"] == {
        "type": "integer", "minimum": 0, "default": 0, "description": "where to start."
    }  # fmt: skip
    assert p["order"]["enum"] == ["score", "date"]
    with pytest.raises(ValidationError):
        page.args_model(k=0)
    with pytest.raises(ValidationError):
        page.args_model(k=1, order="size")


def test_structured_parameters_nested_models_dataclasses_typeddicts_enums_optionals() -> None:
    @function_tool
    def draw(
        at: Point,
        span: Span,
        filters: Filters,
        color: Color,
        tags: list[str],
        note: str | None = None,
    ) -> dict[str, Any]:
        """Draw something."""
        return {"x": at.x, "len": span.end - span.start, "lang": filters["lang"], "c": color.value}

    schema = tool_spec(draw).parameters
    assert set(schema["$defs"]) == {"Point", "Span", "Filters", "Color"}
    assert schema["required"] == ["at", "span", "filters", "color", "tags"]
    assert schema["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    args = draw.args_model.model_validate_json(
        '{"at": {"x": 3}, "span": {"start": 1, "end": 4}, "filters": {"lang": "py", "year": 2026},'
        ' "color": "blue", "tags": []}'
    )
    result = anyio.run(draw.call, args)
    assert result.data == {"x": 3, "len": 3, "lang": "py", "c": "blue"}


def test_numpy_and_sphinx_docstrings_describe_parameters_too() -> None:
    @function_tool
    def numpy_style(a: int, b: int) -> int:
        """Add.

        Parameters
        ----------
        a, b : int
            the numbers
            to add.

        Returns
        -------
        int
        """
        return a + b

    @function_tool
    def sphinx_style(a: int, b: int) -> int:
        """Multiply.

        :param a: the first
            factor.
        :param int b: the second.
        :returns: the product.
        """
        return a * b

    assert tool_spec(numpy_style).description == "Add."
    assert props(numpy_style)["b"]["description"] == "the numbers to add."
    assert tool_spec(sphinx_style).description == "Multiply."
    assert props(sphinx_style)["a"]["description"] == "the first factor."
    assert props(sphinx_style)["b"]["description"] == "the second."


def test_a_description_line_ending_in_a_colon_is_not_a_section() -> None:
    doc = parse_docstring("Sum the numbers of:\n\n    a list.\n\nArgs:\n    xs: the list.\n")
    assert doc.description == "Sum the numbers of:\n\n    a list."
    assert doc.params == {"xs": "the list."}


def test_options_name_description_and_reserved_parameter_names() -> None:
    @function_tool(name="fetch-json", description="Fetch a JSON document.")
    def fetch(json: str, model_name: str, _hidden: int = 1) -> str:
        """Ignored, description= wins."""
        return f"{json}/{model_name}/{_hidden}"

    spec = tool_spec(fetch)
    assert (spec.name, spec.description) == ("fetch-json", "Fetch a JSON document.")
    assert list(spec.parameters["properties"]) == ["json", "model_name", "_hidden"]
    args = fetch.args_model.model_validate({"json": "a", "model_name": "b", "_hidden": 2})
    assert anyio.run(fetch.call, args).output == "a/b/2"


def test_keyword_only_and_positional_only_parameters_are_passed_right() -> None:
    @function_tool
    def f(a: int, /, b: int, *, c: int = 3) -> list[int]:
        """Return the arguments."""
        return [a, b, c]

    result = anyio.run(f.call, {"a": 1, "b": 2})
    assert result.data == [1, 2, 3]
    assert result.output == "[1,2,3]"


def test_existing_tool_classes_expose_described_schemas() -> None:
    from tools.debug import DebugTwin
    from tools.search import SearchTwin

    for tool in (SearchTwin(), DebugTwin()):
        spec = tool_spec(tool)
        fields = spec.parameters["properties"]
        undocumented = [k for k, v in fields.items() if "description" not in v]
        assert not undocumented, (spec.name, undocumented)
        assert ">>>" not in spec.parameters.get("description", "")
        assert all("title" not in v for v in spec.parameters["properties"].values())


# -- the decorated object ------------------------------------------------------------------


def test_the_decorated_function_stays_callable_and_is_a_tool() -> None:
    @function_tool
    def add(a: int, b: int = 1) -> int:
        """Add two integers."""
        return a + b

    @function_tool()
    async def aadd(a: int, b: int = 1) -> int:
        """Add two integers, asynchronously."""
        return a + b

    assert add(2, 3) == 5
    assert anyio.run(aadd, 2) == 3
    assert add.__name__ == "add"
    assert add.__doc__ == "Add two integers."
    assert isinstance(add, Tool)
    assert isinstance(aadd, Tool)
    assert isinstance(add, TypedTool)
    assert function_tool_from_root is function_tool
    assert "function_tool" in agentrt.__all__
    assert anyio.run(add.aclose) is None


async def test_sync_functions_run_in_a_worker_thread_async_ones_on_the_loop() -> None:
    loop_thread = threading.get_ident()

    @function_tool
    def where() -> int:
        """Which thread runs me."""
        return threading.get_ident()

    @function_tool(thread=False)
    def inline() -> int:
        """Which thread runs me, inline."""
        return threading.get_ident()

    @function_tool
    async def awhere() -> int:
        """Which thread runs me, async."""
        return threading.get_ident()

    assert (await where.call(where.args_model())).data != loop_thread
    assert (await inline.call({})).data == loop_thread
    assert (await awhere.call({})).data == loop_thread


def test_in_virtual_time_a_sync_function_runs_inline_and_no_deadline_jumps_past_it() -> None:
    # In a thread, the virtual clock would jump to the deadline while the loop waits for it.
    @function_tool(timeout_s=5)
    def busy(x: int) -> list[int]:
        """Work for a while of real time."""
        threading.Event().wait(0.05)
        return [x, threading.get_ident()]

    async def main() -> tuple[ToolResult, float, float]:
        clock = agentrt.current_clock()
        t0 = clock.current_time()
        with anyio.fail_after(1):
            result = await busy.call({"x": 7})
        return result, t0, clock.current_time()

    result, t0, t1 = agentrt.run(main, clock=agentrt.VirtualClock())
    assert result.data == [7, threading.get_ident()]
    assert t1 == t0


async def test_blocking_sync_calls_run_concurrently() -> None:
    # Three calls that each wait for the other two: they only finish if they run at once.
    barrier = threading.Barrier(3, timeout=10)

    @function_tool
    def meet(i: int) -> int:
        """Wait for the others."""
        barrier.wait()
        return i

    results: list[int] = []

    async def one(i: int) -> None:
        results.append((await meet.call({"i": i})).data)  # type: ignore[arg-type]

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(one, i)
    assert sorted(results) == [0, 1, 2]


async def test_a_model_tool_call_round_trips_through_the_tool() -> None:
    @function_tool
    async def weather(city: str, unit: Literal["C", "F"] = "C") -> dict[str, Any]:
        """Today's weather.

        Args:
            city: the city's name.
            unit: degrees Celsius or Fahrenheit.
        """
        return {"city": city, "temp": 21 if unit == "C" else 70, "unit": unit}

    call = ToolCall(id="c1", name="weather", arguments='{"city": "Oslo", "unit": "F"}')
    args = weather.args_model.model_validate(call.parsed_arguments())
    result = await weather.call(args)
    assert json.loads(result.output) == {"city": "Oslo", "temp": 70, "unit": "F"}
    assert result.ok


# -- return values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "output", "data"),
    [
        ("plain text", "plain text", "plain text"),
        (42, "42", 42),
        (None, "null", None),
        ({"a": [1, 2]}, '{"a":[1,2]}', {"a": [1, 2]}),
        (Point(x=1), '{"x":1,"y":0}', {"x": 1, "y": 0}),
        (Span(1, 2), '{"start":1,"end":2}', {"start": 1, "end": 2}),
        (Color.RED, '"red"', "red"),
        ("naïve ✓", "naïve ✓", "naïve ✓"),
    ],
)
async def test_return_values_become_text_and_json(value: Any, output: str, data: Any) -> None:
    @function_tool
    def give() -> Any:
        """Return the value."""
        return value

    result = await give.call({})
    assert (result.output, result.data, result.ok) == (output, data, True)


async def test_a_returned_tool_result_is_kept_as_is() -> None:
    mine = ToolResult(output="2 failed", ok=False, data={"failed": 2})

    @function_tool
    async def run_tests() -> ToolResult:
        """Run the tests."""
        return mine

    assert await run_tests.call({}) is mine


async def test_a_value_that_is_not_json_is_a_tool_error_naming_the_fix() -> None:
    @function_tool
    def bad() -> object:
        """Return something odd."""
        return NotJson()

    with pytest.raises(ToolError, match=r"'bad' returned a NotJson, which is not JSON; return"):
        await bad.call({})


# -- errors at call time -------------------------------------------------------------------


async def test_exceptions_become_tool_errors_and_agentrt_errors_pass_unchanged() -> None:
    @function_tool
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        return a / b

    @function_tool
    async def flaky() -> str:
        """Fail transiently."""
        raise RetryableToolError("index locked; try again")

    with pytest.raises(ToolError, match="tool 'divide' raised ZeroDivisionError") as info:
        await divide.call({"a": 1, "b": 0})
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    with pytest.raises(RetryableToolError, match="index locked"):
        await flaky.call({})


async def test_invalid_arguments_are_a_tool_error() -> None:
    @function_tool
    def square(x: int) -> int:
        """Square x."""
        return x * x

    for bad, problem in (
        ({"x": "seven"}, "x: Input should be a valid integer"),
        ({}, "x: Field required"),
        ({"x": 1, "y": 2}, "y: Extra inputs are not permitted"),
    ):
        with pytest.raises(ToolError) as info:
            await square.call(bad)
        assert str(info.value).startswith(f"invalid arguments for tool 'square': {problem}")
        assert "\n" not in str(info.value)


async def test_timeout_s_stops_a_slow_call_async_or_in_a_thread() -> None:
    release = threading.Event()

    @function_tool(timeout_s=0.05)
    async def slow() -> str:
        """Never answer."""
        await anyio.sleep_forever()
        return "never"

    @function_tool(timeout_s=0.05)
    def blocking() -> str:
        """Block until released."""
        release.wait(10)
        return "late"

    try:
        with pytest.raises(RetryableToolError, match=r"tool 'slow' ran longer than its timeout_s"):
            await slow.call({})
        with pytest.raises(RetryableToolError, match=r"'blocking' ran longer than its timeout_s"):
            await blocking.call({})
    finally:
        release.set()


# -- errors at decoration time -------------------------------------------------------------


def _no_annotation(x, y: int) -> int:  # type: ignore[no-untyped-def]
    """Doc."""
    return 0


def _star_args(*names: str) -> int:
    """Doc."""
    return 0


def _star_kwargs(**options: str) -> int:
    """Doc."""
    return 0


def _plain_class(thing: NotJson) -> int:
    """Doc."""
    return 0


def _callable(fn: Callable[[int], int]) -> int:
    """Doc."""
    return 0


def _undocumented(x: int) -> int:
    return x


def _unresolvable(x: Missing) -> int:  # type: ignore[name-defined]  # noqa: F821
    """Doc."""
    return 0


@pytest.mark.parametrize(
    ("fn", "options", "message"),
    [
        (_no_annotation, {}, r"function_tool\(_no_annotation\): parameter 'x' has no type "
         r"annotation; annotate it \(e.g. x: str\)"),
        (_star_args, {}, r"function_tool\(_star_args\): \*names cannot be described to a model; "
         "name each parameter"),
        (_star_kwargs, {}, r"\*\*options cannot be described to a model"),
        (_plain_class, {}, r"function_tool\(_plain_class\): parameter 'thing' \(NotJson\) has no "
         r"JSON schema; use JSON-shaped types"),
        (_callable, {}, r"parameter 'fn' .* has no JSON schema"),
        (_undocumented, {}, r"function_tool\(_undocumented\): no description; give the function "
         "a docstring"),
        (_unresolvable, {}, r"function_tool\(_unresolvable\): cannot read the signature's types "
         r"\(name 'Missing' is not defined\); define the types it uses at module level"),
        (_callable, {"name": "has space"}, r"tool name 'has space' must be 1-64 letters"),
        (_callable, {"timeout_s": 0}, r"timeout_s must be > 0, got 0"),
        (Point, {}, r"function_tool\(Point\): decorate a function, not ModelMetaclass"),
    ],
)  # fmt: skip
def test_bad_functions_are_refused_at_decoration_with_one_clear_line(
    fn: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        function_tool(**options)(fn)
    assert "\n" not in str(info.value)


def test_a_bound_method_is_a_tool_without_self() -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def bump(self, by: int = 1) -> int:
            """Add to the counter."""
            self.n += by
            return self.n

    counter = Counter()
    bump = function_tool(counter.bump)
    assert list(props(bump)) == ["by"]
    assert anyio.run(bump.call, {"by": 2}).data == 2
    assert counter.n == 2


# -- through the agent's tool loop ---------------------------------------------------------

_HAS_LOOP = "max_turns" in inspect.signature(agentrt.Agent.run).parameters


class _Replay:
    """A model that answers from a list and keeps the requests it saw."""

    name = "replay"

    def __init__(self, replies: list[tuple[ToolCall, ...] | str]) -> None:
        self.replies = replies
        self.requests: list[InferenceRequest] = []

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        self.requests.append(request)
        reply = self.replies[len(self.requests) - 1]
        calls = () if isinstance(reply, str) else reply
        return InferenceResult(
            text=reply if isinstance(reply, str) else "",
            tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop",
            usage=Usage(input_tokens=10, output_tokens=5),
            timing=Timing(),
            substrate=self.name,
            model="replay",
        )

    async def aclose(self) -> None:
        return None


@pytest.mark.skipif(not _HAS_LOOP, reason="Agent.run(task, max_turns=N) is not on this branch yet")
async def test_an_agent_offers_and_runs_function_tools() -> None:
    @function_tool
    async def lookup(key: str) -> dict[str, str]:
        """Look a key up.

        Args:
            key: the key to look up.
        """
        return {"key": key, "value": key.upper()}

    @function_tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    model = _Replay([
        (ToolCall(id="c1", name="lookup", arguments='{"key": "x"}'),
         ToolCall(id="c2", name="add", arguments='{"a": "two", "b": 1}')),
        (ToolCall(id="c3", name="add", arguments='{"a": 2, "b": 1}'),),
        "x is X and 2 + 1 = 3",
    ])  # fmt: skip
    result = await agentrt.Agent(model, tools=[lookup, add]).run("task", max_turns=5)

    assert result.status == "succeeded", result.error
    assert result.output == "x is X and 2 + 1 = 3"
    assert model.requests[0].tools == (tool_spec(lookup), tool_spec(add))
    answers = {m.tool_call_id: m.content for m in result.messages if m.role == "tool"}
    assert json.loads(answers["c1"]) == {"key": "x", "value": "X"}
    assert "invalid arguments for add" in answers["c2"]  # told to the model, which tries again
    assert answers["c3"] == "3"
