"""The tool loop's cost per turn in agentrt and in peer agent frameworks, in one run.

Run (the peers live in their own venv, never in the project's dev one):

    python3 -m venv .venv-peers
    .venv-peers/bin/pip install -e . -r benchmarks/peers-requirements.txt
    .venv-peers/bin/python benchmarks/peers.py [--turns 50] [--reps 9] [--only NAME,...]
        [--growth 10,200]

The standard peer scenario (issue 15): ``--turns`` sequential turns, each one model call that asks
for one tool call, then the tool; then one last model call that answers with text. The model is
instant: a fake that returns the next of a list of replies built before the timed run, in each
framework's own types, driven through the framework's documented extension point:

| row | the agent | the fake model |
|---|---|---|
| agentrt | ``Agent(substrate, tools=[lookup]).run("task", max_turns=60)`` | a substrate |
| smolagents | ``ToolCallingAgent`` (answers through its ``final_answer`` tool) | a ``Model`` |
| Burr | a model action and a tool action, with transitions | a function |
| LangGraph | ``create_react_agent`` | a ``BaseChatModel`` |
| PydanticAI | ``Agent`` with a ``tool_plain`` | ``FunctionModel`` |
| OpenAI Agents SDK | ``Agent`` + ``Runner.run`` | a ``Model`` |
| LlamaIndex Workflows | a ``Workflow``: model step, tool step, messages in the store | a function |

The tool is an async function (smolagents: a sync one, which it calls inline). Every run checks
that the model was called turns + 1 times, the tool turns times, and the answer came back. Each
framework runs in its own subprocess (no shared globals, imports not timed); a few warm-up runs,
then ``gc.freeze()`` (so the garbage collector does not walk the import-time heap again during a
timed run), then ``--reps`` timed runs; the table shows the median (and the min) of the run's
wall time / turns. The machine's other load shows as a median far above the min: rerun then.
"traced" runs the same with spans through an OpenTelemetry SDK ``BatchSpanProcessor`` to an
``InMemorySpanExporter`` (finished spans cleared between runs, outside the timed region), where
the framework emits OpenTelemetry spans without extra packages: agentrt, PydanticAI (its
``Instrumentation`` capability) and Burr (``OpenTelemetryBridge``); the OpenAI Agents SDK row uses
its own tracing with an in-memory trace processor. A framework that is not installed is skipped,
and so is agentrt on a tree whose ``Agent.run`` predates the tool loop.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import inspect
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

#: name -> (distribution to report the version of, module that must import).
PEERS: dict[str, tuple[str, str]] = {
    "agentrt": ("agentrt", "agentrt"),
    "smolagents": ("smolagents", "smolagents"),
    "Burr": ("apache-burr", "burr"),
    "LangGraph": ("langgraph", "langgraph"),
    "PydanticAI": ("pydantic-ai-slim", "pydantic_ai"),
    "OpenAI Agents SDK": ("openai-agents", "agents"),
    "LlamaIndex Workflows": ("llama-index-workflows", "workflows"),
}
TRACED = {"agentrt", "PydanticAI", "Burr", "OpenAI Agents SDK"}
WARM_UP_RUNS = 3

#: One run: called with the replies built for it, returns what the agent answered.
Run = Callable[[], Any]


class Script:
    """The fake model's side: replies by turn, and counts of model and tool calls."""

    def __init__(self, turns: int, make_call: Callable[[int], Any], make_text: Callable[[], Any]):
        self.turns = turns
        self._make_call = make_call
        self._make_text = make_text
        self.replies: list[Any] = []
        self.model_calls = 0
        self.tool_calls = 0

    def reset(self) -> None:
        """Fresh replies (frameworks may keep or change them) and counters, before a run."""
        self.replies = [self._make_call(i) for i in range(self.turns)] + [self._make_text()]
        self.model_calls = self.tool_calls = 0

    def next(self) -> Any:
        reply = self.replies[self.model_calls]
        self.model_calls += 1
        return reply

    def tool(self, key: str) -> str:
        self.tool_calls += 1
        return f"value of {key}"

    def check(self, answer: Any) -> None:
        got = (self.model_calls, self.tool_calls, str(answer))
        assert got == (self.turns + 1, self.turns, "done"), f"bad run: {got}"


# -- the frameworks ------------------------------------------------------------------------
# Each builder returns (script, run); ``provider`` is an OpenTelemetry TracerProvider or None.


def build_agentrt(turns: int, provider: Any) -> tuple[Script, Run]:
    from agentrt import Agent, InferenceResult, Timing, ToolCall, Usage, function_tool

    if "max_turns" not in inspect.signature(Agent.run).parameters:
        raise Skip("Agent.run(task, max_turns=N) is not on this branch yet (the tool loop)")

    def result(text: str, calls: tuple[ToolCall, ...]) -> InferenceResult:
        return InferenceResult(
            text=text, usage=Usage(input_tokens=8, output_tokens=4), timing=Timing(),
            substrate="scripted", model="scripted", tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop",
        )  # fmt: skip

    def call(i: int) -> InferenceResult:
        return result("", (ToolCall(id=f"c{i}", name="lookup", arguments=f'{{"key": "k{i}"}}'),))

    script = Script(turns, call, lambda: result("done", ()))

    class Scripted:
        name = "scripted"

        async def infer(self, request: Any) -> InferenceResult:
            return script.next()  # type: ignore[no-any-return]

        async def aclose(self) -> None:
            return None

    @function_tool
    async def lookup(key: str) -> str:
        """Look a key up.

        Args:
            key: the key.
        """
        return script.tool(key)

    agent = Agent(Scripted(), tools=[lookup], tracer_provider=provider)

    async def run() -> str:
        result = await agent.run("task", max_turns=turns + 10)  # type: ignore[arg-type,call-arg]
        assert result.status == "succeeded", result.error
        return result.output  # type: ignore[attr-defined,no-any-return]

    return script, run


def build_smolagents(turns: int, provider: Any) -> tuple[Script, Run]:
    from smolagents import ToolCallingAgent, tool
    from smolagents.models import (
        ChatMessage,
        ChatMessageToolCall,
        ChatMessageToolCallFunction,
        MessageRole,
        Model,
    )
    from smolagents.monitoring import LogLevel

    def reply(name: str, arguments: dict[str, str], i: int) -> ChatMessage:
        function = ChatMessageToolCallFunction(name=name, arguments=arguments)
        call = ChatMessageToolCall(id=f"c{i}", type="function", function=function)
        return ChatMessage(role=MessageRole.ASSISTANT, content=None, tool_calls=[call])

    script = Script(
        turns,
        lambda i: reply("lookup", {"key": f"k{i}"}, i),
        lambda: reply("final_answer", {"answer": "done"}, turns),
    )

    class Scripted(Model):
        def generate(self, messages: Any, stop_sequences: Any = None, response_format: Any = None,
                     tools_to_call_from: Any = None, **kwargs: Any) -> ChatMessage:  # fmt: skip
            return script.next()  # type: ignore[no-any-return]

    @tool
    def lookup(key: str) -> str:
        """Look a key up.

        Args:
            key: the key.
        """
        return script.tool(key)

    agent = ToolCallingAgent(
        tools=[lookup], model=Scripted(model_id="scripted"), max_steps=turns + 10,
        verbosity_level=LogLevel.OFF,
    )  # fmt: skip
    return script, lambda: agent.run("task")


def _dict_replies(turns: int) -> Script:
    """Replies as plain dicts, for frameworks that leave the model call to the user."""

    def call(i: int) -> dict[str, Any]:
        tool_call = {"id": f"c{i}", "name": "lookup", "arguments": {"key": f"k{i}"}}
        return {"role": "assistant", "content": "", "tool_calls": [tool_call]}

    return Script(turns, call, lambda: {"role": "assistant", "content": "done", "tool_calls": []})


def build_burr(turns: int, provider: Any) -> tuple[Script, Run]:
    from burr.core import ApplicationBuilder, State, action, default, when

    script = _dict_replies(turns)

    async def lookup(key: str) -> str:
        return script.tool(key)

    tools = {"lookup": lookup}

    @action(reads=["messages"], writes=["messages", "pending"])
    async def call_model(state: State) -> State:
        reply = script.next()
        return state.append(messages=reply).update(pending=reply["tool_calls"])

    @action(reads=["pending"], writes=["messages", "pending"])
    async def run_tools(state: State) -> State:
        for call in state["pending"]:
            output = await tools[call["name"]](**call["arguments"])
            state = state.append(messages={"role": "tool", "tool_call_id": call["id"],
                                           "content": output})  # fmt: skip
        return state.update(pending=[])

    @action(reads=["messages"], writes=[])
    async def answer(state: State) -> State:
        return state

    hooks = []
    if provider is not None:
        from burr.integrations.opentelemetry import OpenTelemetryBridge

        hooks.append(OpenTelemetryBridge(tracer=provider.get_tracer("burr")))

    async def run() -> str:
        app = (
            ApplicationBuilder()
            .with_actions(call_model=call_model, run_tools=run_tools, answer=answer)
            .with_transitions(
                ("call_model", "answer", when(pending=[])),
                ("call_model", "run_tools", default),
                ("run_tools", "call_model", default),
            )
            .with_state(messages=[{"role": "user", "content": "task"}], pending=[])
            .with_entrypoint("call_model")
            .with_hooks(*hooks)
            .build()
        )
        _, _, state = await app.arun(halt_after=["answer"])
        return str(state["messages"][-1]["content"])

    return script, run


def build_langgraph(turns: int, provider: Any) -> tuple[Script, Run]:
    import warnings

    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent

    script = Script(
        turns,
        lambda i: AIMessage(content="", tool_calls=[
            {"name": "lookup", "args": {"key": f"k{i}"}, "id": f"c{i}", "type": "tool_call"}
        ]),
        lambda: AIMessage(content="done"),
    )  # fmt: skip

    class Scripted(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "scripted"

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                      **kwargs: Any) -> ChatResult:  # fmt: skip
            return ChatResult(generations=[ChatGeneration(message=script.next())])

        async def _agenerate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                             **kwargs: Any) -> ChatResult:  # fmt: skip
            return ChatResult(generations=[ChatGeneration(message=script.next())])

    @tool
    async def lookup(key: str) -> str:
        """Look a key up.

        Args:
            key: the key.
        """
        return script.tool(key)

    with warnings.catch_warnings():  # moved to langchain.agents (not installed here) in 1.0
        warnings.simplefilter("ignore")
        agent = create_react_agent(Scripted(), [lookup])

    async def run() -> str:
        config = {"recursion_limit": 3 * turns + 10}
        state = await agent.ainvoke({"messages": [("user", "task")]}, config)
        return str(state["messages"][-1].content)

    return script, run


def build_pydantic_ai(turns: int, provider: Any) -> tuple[Script, Run]:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import FunctionModel
    from pydantic_ai.usage import UsageLimits

    script = Script(
        turns,
        lambda i: ModelResponse(parts=[ToolCallPart("lookup", {"key": f"k{i}"}, f"c{i}")]),
        lambda: ModelResponse(parts=[TextPart("done")]),
    )
    capabilities: list[Any] = []
    if provider is not None:
        from pydantic_ai.capabilities.instrumentation import Instrumentation
        from pydantic_ai.models.instrumented import InstrumentationSettings

        settings = InstrumentationSettings(tracer_provider=provider)
        capabilities.append(Instrumentation(settings=settings))
    agent = Agent(FunctionModel(lambda messages, info: script.next()), capabilities=capabilities)

    @agent.tool_plain
    async def lookup(key: str) -> str:
        """Look a key up.

        Args:
            key: the key.
        """
        return script.tool(key)

    limits = UsageLimits(request_limit=turns + 10)

    async def run() -> str:
        return (await agent.run("task", usage_limits=limits)).output

    return script, run


def build_openai_agents(turns: int, provider: Any) -> tuple[Script, Run]:
    from agents import Agent, Runner, function_tool, set_trace_processors, set_tracing_disabled
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.tracing import TracingProcessor
    from agents.usage import Usage
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    def call(i: int) -> ModelResponse:
        item = ResponseFunctionToolCall(type="function_call", call_id=f"c{i}", name="lookup",
                                        arguments=f'{{"key": "k{i}"}}', id=f"fc{i}")  # fmt: skip
        return ModelResponse(output=[item], usage=Usage(), response_id=None)

    def text() -> ModelResponse:
        part = ResponseOutputText(type="output_text", text="done", annotations=[])
        item = ResponseOutputMessage(id="m", type="message", role="assistant",
                                     status="completed", content=[part])  # fmt: skip
        return ModelResponse(output=[item], usage=Usage(), response_id=None)

    script = Script(turns, call, text)

    class Scripted(Model):
        async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
            return script.next()  # type: ignore[no-any-return]

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    class InMemory(TracingProcessor):
        def __init__(self) -> None:
            self.finished: list[Any] = []

        def on_trace_start(self, trace: Any) -> None: ...
        def on_trace_end(self, trace: Any) -> None: ...
        def on_span_start(self, span: Any) -> None: ...

        def on_span_end(self, span: Any) -> None:
            self.finished.append(span)

        def shutdown(self) -> None: ...
        def force_flush(self) -> None: ...

    # Its own tracing, not OpenTelemetry (``provider`` only says whether to trace): off, or to
    # memory, never to the vendor's endpoint.
    set_trace_processors([InMemory()])
    set_tracing_disabled(provider is None)

    @function_tool
    async def lookup(key: str) -> str:
        """Look a key up.

        Args:
            key: the key.
        """
        return script.tool(key)

    agent = Agent(name="agent", instructions="Use the tools.", model=Scripted(), tools=[lookup])

    async def run() -> str:
        return str((await Runner.run(agent, "task", max_turns=turns + 10)).final_output)

    return script, run


def build_llamaindex(turns: int, provider: Any) -> tuple[Script, Run]:
    from workflows import Context, Workflow, step
    from workflows.events import Event, StartEvent, StopEvent

    script = _dict_replies(turns)

    async def lookup(key: str) -> str:
        return script.tool(key)

    tools = {"lookup": lookup}

    class ToolCallEvent(Event):
        id: str
        name: str
        arguments: dict[str, Any]

    class ToolResultEvent(Event):
        id: str
        output: str

    async def model_turn(ctx: Context, messages: list[Any]) -> ToolCallEvent | StopEvent:
        reply = script.next()
        messages.append(reply)
        await ctx.store.set("messages", messages)
        if reply["tool_calls"]:
            call = reply["tool_calls"][0]
            return ToolCallEvent(id=call["id"], name=call["name"], arguments=call["arguments"])
        return StopEvent(result=reply["content"])

    class ToolAgent(Workflow):
        @step
        async def start(self, ctx: Context, ev: StartEvent) -> ToolCallEvent | StopEvent:
            return await model_turn(ctx, [{"role": "user", "content": ev.task}])

        @step
        async def model(self, ctx: Context, ev: ToolResultEvent) -> ToolCallEvent | StopEvent:
            messages = await ctx.store.get("messages")
            messages.append({"role": "tool", "tool_call_id": ev.id, "content": ev.output})
            return await model_turn(ctx, messages)

        @step
        async def tool(self, ev: ToolCallEvent) -> ToolResultEvent:
            return ToolResultEvent(id=ev.id, output=await tools[ev.name](**ev.arguments))

    workflow = ToolAgent(timeout=120)

    async def run() -> str:
        return str(await workflow.run(task="task"))

    return script, run


BUILDERS: dict[str, Callable[[int, Any], tuple[Script, Run]]] = {
    "agentrt": build_agentrt,
    "smolagents": build_smolagents,
    "Burr": build_burr,
    "LangGraph": build_langgraph,
    "PydanticAI": build_pydantic_ai,
    "OpenAI Agents SDK": build_openai_agents,
    "LlamaIndex Workflows": build_llamaindex,
}


# -- measuring -----------------------------------------------------------------------------


class Skip(Exception):
    """This row cannot run here; the message says why."""


async def measure(name: str, turns: int, reps: int, traced: bool) -> list[float]:
    """Microseconds per turn of ``reps`` timed runs of ``name`` (one process, warmed up)."""
    exporter = provider = None
    if traced:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=65536))
    script, run = BUILDERS[name](turns, provider)
    samples = []
    for i in range(WARM_UP_RUNS + reps):
        script.reset()
        if i == WARM_UP_RUNS:
            # Imports and warm-up left a heap that every full collection would walk again: a
            # framework with a big import graph would pay for it at random runs.
            gc.collect()
            gc.freeze()
        t0 = time.perf_counter()
        answer = run()
        if isinstance(answer, Awaitable):
            answer = await answer
        elapsed = time.perf_counter() - t0
        script.check(answer)
        if i >= WARM_UP_RUNS:
            samples.append(elapsed / turns * 1e6)
        if exporter is not None:
            exporter.clear()
    if provider is not None and exporter is not None and name != "OpenAI Agents SDK":
        provider.force_flush()
        assert exporter.get_finished_spans(), f"{name} exported no span"
    return samples


def child(name: str, turns: int, reps: int, traced: bool) -> dict[str, Any]:
    import anyio

    dist, module = PEERS[name]
    try:
        __import__(module)
        version = importlib.metadata.version(dist)
    except ImportError:
        return {"skipped": f"{dist} is not installed (benchmarks/peers-requirements.txt)"}
    if name == "agentrt":
        from agentrt.log import configure_logging

        configure_logging(level="off")
    try:
        samples = anyio.run(measure, name, turns, reps, traced)
    except Skip as exc:
        return {"skipped": str(exc), "version": version}
    return {"version": version, "us_per_turn": samples}


def run_child(name: str, turns: int, reps: int, traced: bool) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", name, "--turns", str(turns), "--reps", str(reps)]
    proc = subprocess.run(
        argv + (["--traced"] if traced else []),
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"failed: {last}"}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def median_of(result: dict[str, Any] | None) -> float | None:
    if result is None or "us_per_turn" not in result:
        return None
    return statistics.median(result["us_per_turn"])


def cell(result: dict[str, Any] | None, base: float | None) -> list[str]:
    median = median_of(result)
    if result is None or median is None:
        return ["—", "—"]
    ratio = f"{median / base:.1f}x" if base else "—"
    return [f"{median:,.1f} (min {min(result['us_per_turn']):,.1f})", ratio]


def _version(name: str, result: dict[str, Any]) -> str:
    if name != "agentrt":
        return str(result["version"])
    head = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return f"{result['version']} ({head.stdout.strip()})" if head.returncode == 0 else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50, help="tool-calling turns per run")
    parser.add_argument("--reps", type=int, default=9, help="timed runs per framework")
    parser.add_argument("--only", default="", help="comma-separated rows, e.g. agentrt,Burr")
    parser.add_argument(
        "--growth", default="", help="also untraced µs/turn at these turn counts, e.g. 10,200"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.turns, args.reps, args.traced)))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import print_table

    wanted = [n for n in PEERS if not args.only or n in args.only.split(",")]
    plain = {name: run_child(name, args.turns, args.reps, traced=False) for name in wanted}
    ran = [name for name in wanted if "us_per_turn" in plain[name]]
    traced = {name: run_child(name, args.turns, args.reps, True) for name in ran if name in TRACED}
    base = {"plain": median_of(plain.get("agentrt")), "traced": median_of(traced.get("agentrt"))}
    rows = [
        [name, _version(name, plain[name]), *cell(plain[name], base["plain"]),
         *cell(traced.get(name), base["traced"])]
        for name in ran
    ]  # fmt: skip
    print_table(
        f"tool loop per turn: {args.turns} turns of one model call + one tool call, instant model "
        f"(µs per turn, median of {args.reps} runs)",
        ["framework", "version", "untraced µs/turn", "x agentrt", "traced µs/turn", "x agentrt"],
        rows,
    )
    for name in wanted:
        if name not in ran:
            print(f"{name}: skipped, {plain[name]['skipped']}")
    print("traced: OpenTelemetry SDK, batch processor, in-memory exporter (OpenAI Agents SDK: "
          "its own tracing, in-memory processor); — = not measured")  # fmt: skip
    if args.growth:
        counts = sorted({args.turns, *(int(k) for k in args.growth.split(","))})
        growth = {
            name: [
                median_of(plain[name]) if k == args.turns else median_of(
                    run_child(name, k, max(3, args.reps // 2), traced=False))
                for k in counts
            ]
            for name in ran
        }  # fmt: skip
        print_table(
            "untraced µs per turn by the number of turns (flat = no per-turn work that grows "
            "with the conversation)",
            ["framework", *(f"{k} turns" for k in counts)],
            [
                [name, *(f"{us:,.1f}" if us else "—" for us in by_k)]
                for name, by_k in growth.items()
            ],
        )
    busy = [
        f"{name}{label}"
        for runs, label in ((plain, ""), (traced, " traced"))
        for name, result in runs.items()
        if "us_per_turn" in result
        and statistics.median(result["us_per_turn"]) > 1.15 * min(result["us_per_turn"])
    ]
    if busy:
        print(f"warning: the machine was busy during {', '.join(busy)} (median more than 15% above "
              "the min); rerun for figures to compare")  # fmt: skip
    for key, limit in (("plain", 20), ("traced", 100)):
        label = "untraced" if key == "plain" else "traced"
        if base[key] is None:
            print(f"target: agentrt <= {limit} µs/turn {label} -> not measured")
        else:
            verdict = "meets" if base[key] <= limit else "MISSES"
            print(f"target: agentrt <= {limit} µs/turn {label} -> {verdict} ({base[key]:.1f})")


if __name__ == "__main__":
    main()
