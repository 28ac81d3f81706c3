"""What-if replay: a recorded trajectory's exact turns, tokens and tool calls on other substrates.

Each substrate is an emulated engine (or a route of them) built with the trajectory as its
content, so it answers every model call with the recorded turn, timed for the request's real
prompt length. The agent's tool loop runs for real around it; the tools take their recorded
durations and return their recorded outputs (`RecordedTool`), or run for real (``rerun``).
A trajectory of several conversations (a plan's model calls) is played one conversation after
another, in recorded order, with a plan's own tool steps between them.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
from opentelemetry.trace import TracerProvider
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console

from agentrt.agent import Agent
from agentrt.clock import current_clock
from agentrt.errors import AgentrtError, ConfigError, ToolError, UnknownNameError
from agentrt.registry import Registry, default_registry
from agentrt.render import Column, print_table
from agentrt.result import RunResult, StepResult
from agentrt.substrate import Substrate, ToolSpec
from agentrt.tool import Tool, ToolResult
from agentrt.trajectory import ToolRecord, Trajectory, TurnRecord

__all__ = [
    "RecordedTool",
    "Replay",
    "SubstrateReplay",
    "TurnTimes",
    "print_replay",
    "recorded_turns",
    "recorded_tools",
    "registered_tools",
    "replay",
    "replay_substrates",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class TurnTimes(BaseModel):
    """One turn of a replay: the model call and the tool calls it asked for."""

    model_config = _FROZEN

    turn: int = Field(description="1-based, over the whole trajectory.")
    thread: int
    index: int
    model_s: float = Field(description="The model call's latency.")
    ttft_s: float
    tool_s: float = Field(description="Wall time of the tool calls it asked for (concurrent).")
    input_tokens: int
    output_tokens: int
    tool_calls: tuple[str, ...] = Field(description="Names of the tools it asked for.")


class SubstrateReplay(BaseModel):
    """A trajectory replayed on one substrate: where the time went, turn by turn."""

    model_config = _FROZEN

    name: str
    status: str = Field(description="'succeeded' unless a conversation's run failed.")
    error: str | None = None
    e2e_s: float
    model_s: float
    tool_s: float
    other_s: float = Field(description="The rest: the agent loop's own time.")
    turns: tuple[TurnTimes, ...]


class Replay(BaseModel):
    """A trajectory on several substrates; ``speedup[name]`` is the slowest e2e over this one's.

    ``trajectory`` holds the recorded run's counts and times (`Trajectory.counts`) and its agent.
    """

    model_config = _FROZEN

    trajectory: dict[str, str | int | float | None]
    clock: str
    substrates: dict[str, SubstrateReplay]
    speedup: dict[str, float]


class _AnyArgs(BaseModel):
    """Arguments of a recorded tool: whatever the model sent; the schema is the recorded one."""

    model_config = ConfigDict(extra="allow")
    recorded_schema: ClassVar[dict[str, Any]] = {}

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The recorded JSON schema, so the replayed prompt offers the same tools."""
        return dict(cls.recorded_schema)


def _key(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return arguments


class _Results:
    """The recorded results, taken by (name, arguments) first, else by name, in recorded order."""

    def __init__(self, records: Sequence[ToolRecord]) -> None:
        self._by_call: dict[tuple[str, str], deque[int]] = {}
        self._by_name: dict[str, deque[int]] = {}
        self._records = list(records)
        self._taken: set[int] = set()
        for i, r in enumerate(records):
            self._by_call.setdefault((r.name, _key(r.arguments)), deque()).append(i)
            self._by_name.setdefault(r.name, deque()).append(i)

    def take(self, name: str, arguments: str) -> ToolRecord | None:
        for queue in (self._by_call.get((name, _key(arguments))), self._by_name.get(name)):
            while queue:
                i = queue.popleft()
                if i not in self._taken:
                    self._taken.add(i)
                    return self._records[i]
        return None


class RecordedTool:
    """A `Tool` that answers with a recorded result after its recorded duration.

    Example:
        >>> import agentrt
        >>> from agentrt.trajectory import ToolRecord
        >>> spec = ToolSpec(name="search")
        >>> rec = ToolRecord(tool_call_id="c1", name="search", arguments='{"q": "x"}',
        ...                  output="3 hits", duration_s=0.25)
        >>> tool = recorded_tools([spec], [rec])["search"]
        >>> async def call() -> tuple[str, float]:
        ...     result = await tool.call(tool.args_model.model_validate({"q": "x"}))
        ...     return result.output, agentrt.current_clock().current_time()
        >>> agentrt.run(call, clock=agentrt.VirtualClock())
        ('3 hits', 0.25)
    """

    def __init__(self, spec: ToolSpec, results: _Results) -> None:
        self.name = spec.name
        self.description = spec.description
        schema = {**spec.parameters, "title": spec.name}
        self.args_model: type[BaseModel] = type(
            f"{spec.name}_recorded_args", (_AnyArgs,), {"recorded_schema": schema}
        )
        self._results = results

    async def call(self, args: Any) -> ToolResult:
        """Sleep the recorded duration and return the recorded output."""
        arguments = json.dumps(args.model_dump() if isinstance(args, BaseModel) else args)
        record = self._results.take(self.name, arguments)
        if record is None:
            raise ToolError(f"the trajectory has no more recorded results of {self.name!r}")
        await anyio.sleep(record.duration_s)
        return ToolResult(output=record.output, ok=record.ok, duration_s=record.duration_s)

    async def aclose(self) -> None:
        """Nothing to release."""


def recorded_tools(specs: Sequence[ToolSpec], records: Sequence[ToolRecord]) -> dict[str, Tool]:
    """A `RecordedTool` per offered tool, all drawing on the same recorded results.

    Only the offered tools: a call the recorded model made to a tool it was not offered failed
    then, and fails again in the replay.
    """
    results = _Results(records)
    tools: dict[str, Tool] = {}
    for spec in specs:
        tools.setdefault(spec.name, RecordedTool(spec, results))
    return tools


def registered_tools(
    names: Sequence[str], *, virtual: bool, registry: Registry | None = None
) -> dict[str, Tool]:
    """The registered tools of these names; in virtual time their ``-twin`` where one exists.

    Raises:
        UnknownNameError: a name is not a registered tool.
    """
    registry = registry or default_registry()
    known = set(registry.names("agentrt.tools"))
    tools: dict[str, Tool] = {}
    for name in sorted(set(names)):
        twin = f"{name}-twin"
        tools[name] = registry.tool(twin if virtual and twin in known else name)
    return tools


def replay_substrates(
    path: str | Path,
    names: Sequence[str],
    *,
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Substrate]:
    """Each named substrate built with the trajectory at ``path`` as its content.

    Raises:
        UnknownNameError: no such substrate.
        ConfigError: a substrate that cannot play a trajectory (not an emulated engine).
    """
    registry = default_registry()
    subs: dict[str, Substrate] = {}
    for name in names:
        try:
            subs[name] = registry.substrate(
                name, seed=seed, trajectory=str(path), **dict(options or {})
            )
        except UnknownNameError:
            raise
        except ConfigError as exc:
            if "trajectory" not in str(exc):
                raise
            raise ConfigError(
                f"substrate {name!r} cannot play a trajectory (emulated engines and routes of "
                "them can, e.g. wse3, h100, route:fleet.yaml)"
            ) from None
    return subs


async def _play_tool_step(record: ToolRecord, tools: Mapping[str, Tool] | None) -> str | None:
    """A plan's own tool step (no model asked for it): recorded duration, or the real tool.

    Returns why the real tool failed, or None.
    """
    tool = tools.get(record.name) if tools is not None else None
    if tool is None:
        await anyio.sleep(record.duration_s)
        return None
    try:
        args = tool.args_model.model_validate_json(record.arguments or "{}")
        await tool.call(args)
    except (ValidationError, AgentrtError) as exc:
        return f"tool step {record.tool_call_id} ({record.name}): {type(exc).__name__}: {exc}"
    return None


def _turn_rows(run: RunResult, turns: Sequence[TurnRecord], first: int) -> list[TurnTimes]:
    """A row per chat step of ``run``, each with the tool steps that followed it."""
    rows: list[TurnTimes] = []
    spans: list[list[StepResult]] = []
    steps = sorted((s for s in run.steps if s.start_s is not None), key=lambda s: s.start_s or 0)
    for step in steps:
        if step.kind == "chat":
            spans.append([step])
        elif spans:
            spans[-1].append(step)
    for k, (chat, *tool_steps) in enumerate(spans):
        recorded = turns[k] if k < len(turns) else None
        tool_s = 0.0
        if tool_steps:
            tool_s = max(s.end_s or 0.0 for s in tool_steps) - min(
                s.start_s or 0.0 for s in tool_steps
            )
        rows.append(
            TurnTimes(
                turn=first + k,
                thread=recorded.thread if recorded else -1,
                index=k + 1,
                model_s=chat.latency_s,
                ttft_s=chat.timing.ttft_s if chat.timing is not None else 0.0,
                tool_s=tool_s,
                input_tokens=chat.input_tokens,
                output_tokens=chat.output_tokens,
                tool_calls=tuple(s.tool or s.id for s in tool_steps),
            )
        )
    return rows


def recorded_turns(trajectory: Trajectory) -> list[TurnTimes]:
    """The recorded run's own turns (its tool time per turn: its longest tool call)."""
    durations = {r.tool_call_id: r.duration_s for r in trajectory.tool_results}
    return [
        TurnTimes(
            turn=k,
            thread=t.thread,
            index=t.index,
            model_s=t.e2e_s,
            ttft_s=t.ttft_s,
            tool_s=max((durations.get(c.id, 0.0) for c in t.tool_calls), default=0.0),
            input_tokens=t.input_tokens,
            output_tokens=t.output_tokens,
            tool_calls=tuple(c.name for c in t.tool_calls),
        )
        for k, t in enumerate(trajectory.turns, start=1)
    ]


async def _replay_one(
    trajectory: Trajectory,
    name: str,
    substrate: Substrate,
    *,
    rerun: Mapping[str, Tool] | None,
    seed: int | None,
    tracer_provider: TracerProvider | None,
) -> SubstrateReplay:
    clock = current_clock()
    t0 = clock.current_time()
    rows: list[TurnTimes] = []
    errors: list[str] = []
    standalone = 0.0
    played: set[int] = set()
    for record in trajectory.records:
        if isinstance(record, ToolRecord):
            if record.thread is None:
                start = clock.current_time()
                failed = await _play_tool_step(record, rerun)
                standalone += clock.current_time() - start
                if failed is not None:
                    errors.append(failed)
            continue
        if record.thread in played:
            continue
        played.add(record.thread)
        messages, specs = trajectory.opening(record.thread)
        if not messages:
            where = (
                "the header" if record.thread == 0 else f"the first turn of thread {record.thread}"
            )
            raise ConfigError(
                f"conversation {record.thread} has no opening messages to replay: {where} "
                "must give `messages` (the task the model was given)"
            )
        turns = trajectory.thread_turns(record.thread)
        if not specs:  # a file that lists no tools: offer the ones its turns call
            called = (c.name for t in turns for c in t.tool_calls)
            specs = tuple(ToolSpec(name=n) for n in dict.fromkeys(called))
        asked = trajectory.thread_tool_results(record.thread)
        tools = dict(rerun) if rerun is not None else recorded_tools(specs, asked)
        offered = [tools[s.name] for s in specs if s.name in tools]
        agent = Agent(
            substrate,
            tools=offered,
            name=trajectory.header.agent or "replay",
            seed=seed,
            tracer_provider=tracer_provider,
        )
        run = await agent.run(list(messages), max_turns=len(turns))
        if run.status != "succeeded":
            errors.append(f"conversation {record.thread}: {run.error or run.status}")
        rows += _turn_rows(run, turns, first=len(rows) + 1)
    e2e = clock.current_time() - t0
    model = sum(r.model_s for r in rows)
    tool = sum(r.tool_s for r in rows) + standalone
    return SubstrateReplay(
        name=name,
        status="failed" if errors else "succeeded",
        error="; ".join(errors) or None,
        e2e_s=e2e,
        model_s=model,
        tool_s=tool,
        other_s=max(0.0, e2e - model - tool),
        turns=tuple(rows),
    )


async def replay(
    trajectory: Trajectory,
    substrates: Mapping[str, Substrate],
    *,
    rerun_tools: Mapping[str, Tool] | None = None,
    seed: int | None = None,
    tracer_provider: TracerProvider | None = None,
    on_substrate: Callable[[str], None] | None = None,
) -> Replay:
    """Replay ``trajectory`` on each substrate, one after another, and compare where time went.

    Args:
        trajectory: the recorded run.
        substrates: name -> a substrate playing the trajectory (see `replay_substrates`).
        rerun_tools: run these tools for real instead of their recorded results.
        seed: seeds the agents.
        tracer_provider: where the replays' spans go; default the global one.
        on_substrate: called before each substrate's replay (for progress).
    """
    if not substrates:
        raise ConfigError("replay needs at least one substrate, e.g. --substrates wse3,h100")
    results: dict[str, SubstrateReplay] = {}
    for name, substrate in substrates.items():
        if on_substrate is not None:
            on_substrate(name)
        results[name] = await _replay_one(
            trajectory,
            name,
            substrate,
            rerun=rerun_tools,
            seed=seed,
            tracer_provider=tracer_provider,
        )
    slowest = max(r.e2e_s for r in results.values())
    speedup = {n: slowest / r.e2e_s if r.e2e_s > 0 else float("inf") for n, r in results.items()}
    return Replay(
        trajectory={"agent": trajectory.header.agent, **trajectory.counts()},
        clock=type(current_clock()).__name__.removesuffix("Clock").lower(),
        substrates=results,
        speedup=speedup,
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def _label(name: str) -> str:
    """A substrate's column header: ``route:path/fleet.yaml`` shows as ``route:fleet``."""
    kind, colon, arg = name.partition(":")
    shorten = colon and ("/" in arg or arg.endswith((".yaml", ".yml")))
    return f"{kind}:{Path(arg).stem}" if shorten else name


def _calls(names: Sequence[str]) -> str:
    """``search x2, debug``: each tool once, with how many times the turn asked for it."""
    counts = Counter(names)
    return ", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts.items()) or "-"


def print_replay(console: Console, result: Replay, trajectory: Trajectory, *, title: str) -> None:
    """The per-turn table (recorded, then each substrate) and the where-the-time-went summary.

    Tool columns are per substrate only when the tools' times differ between substrates (real
    tools re-run); played from the recording they are the same everywhere and shown once.
    """
    names = list(result.substrates)
    runs = [result.substrates[n] for n in names]
    recorded = recorded_turns(trajectory)
    per_sub_tools = len({tuple(round(t.tool_s, 6) for t in r.turns) for r in runs}) > 1
    columns = [Column("turn"), Column("calls", "left", wrap=True), Column("out\ntok")]
    labels = [_label(n) for n in names]
    columns += [Column("recorded\nmodel"), *(Column(f"{n}\nmodel") for n in labels)]
    columns += [Column(f"{n}\ntool") for n in labels] if per_sub_tools else [Column("tool")]
    rows: list[list[str]] = []
    for k, rec in enumerate(recorded):
        turns = [r.turns[k] if k < len(r.turns) else None for r in runs]
        row = [str(rec.turn), _calls(rec.tool_calls), str(rec.output_tokens)]
        row += [_ms(rec.model_s), *(_ms(t.model_s) if t else "-" for t in turns)]
        if per_sub_tools:
            row += [_ms(t.tool_s) if t else "-" for t in turns]
        else:
            shown = turns[0].tool_s if turns and turns[0] is not None else rec.tool_s
            row.append(_ms(shown) if rec.tool_calls else "-")
        rows.append(row)
    print_table(console, columns, rows, title=f"{title} (ms)")
    counts = trajectory.counts()
    summary = [
        ["end-to-end", _ms(counts["recorded_e2e_s"]), *(_ms(r.e2e_s) for r in runs)],
        ["model", _ms(counts["recorded_model_s"]), *(_ms(r.model_s) for r in runs)],
        ["tools", _ms(counts["recorded_tool_s"]), *(_ms(r.tool_s) for r in runs)],
        ["other (loop)", "-", *(_ms(r.other_s) for r in runs)],
        ["model share", "-", *(f"{r.model_s / r.e2e_s:.0%}" if r.e2e_s else "-" for r in runs)],
        ["speed-up (e2e)", "-", *(f"{result.speedup[n]:.2f}x" for n in names)],
    ]
    console.print()
    print_table(
        console,
        [Column("", "left"), Column("recorded"), *(Column(n) for n in labels)],
        summary,
        title=f"where the time went ({result.clock} time, ms)",
    )
    threads = int(counts["threads"])
    if threads > 1:
        console.print(
            f"{threads} conversations (a plan's model calls) were played one after another; to "
            "keep a plan's concurrency, run the plan on an engine that plays the trajectory: "
            "agentrt run PLAN -s wse3 -o trajectory=FILE",
            highlight=False,
        )
