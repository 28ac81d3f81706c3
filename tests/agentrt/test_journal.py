from __future__ import annotations

import functools
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentrt import (
    Agent,
    ConfigError,
    InferenceRequest,
    InferenceResult,
    Plan,
    Step,
    Timing,
    ToolCall,
    UnknownNameError,
    Usage,
    VirtualClock,
    run,
)
from agentrt.errors import BadResponse
from agentrt.journal import Journal, JournalMismatch, idempotency_key
from agentrt.testing import FunctionSubstrate, FunctionTool


def vrun(fn: Any, *args: Any, **kw: Any) -> Any:
    return run(functools.partial(fn, *args, **kw), clock=VirtualClock())


def chain_plan(n: int = 4, *, tool: bool = True) -> Plan:
    steps = tuple(
        Step(
            id=f"s{i}",
            prompt=f"after {{{{ s{i - 1} }}}}" if i else "start",
            depends_on=(f"s{i - 1}",) if i else (),
            tool="note" if tool else None,
            args={"x": f"s{i}"},
        )
        for i in range(n)
    )
    return Plan(name="chain", steps=steps)


class World:
    """A model and a note tool that log what they were asked to do."""

    def __init__(self, *, fail_on: str | None = None) -> None:
        self.fail_on = fail_on
        self.model_calls: list[str] = []
        self.tool_keys: list[str | None] = []

    def model(self, request: InferenceRequest) -> str:
        step = request.step_id or ""
        self.model_calls.append(step)
        if step == self.fail_on:
            raise BadResponse(f"{step} broke")
        return f"<{step}:{len(request.prompt_text)}>"

    def note(self, args: Any) -> str:
        self.tool_keys.append(idempotency_key())
        return f"noted {args.x}"

    def agent(self, journal: Journal, **kw: Any) -> Agent:
        return Agent(
            FunctionSubstrate(self.model),
            tools=[FunctionTool("note", self.note)],
            journal=journal,
            **kw,
        )


@pytest.fixture
def journal(tmp_path: Path) -> Any:
    with Journal(tmp_path / "runs.db") as j:
        yield j


def outputs(result: Any) -> list[tuple[str, str, str]]:
    return [(s.id, s.status, s.output) for s in result.steps]


def test_a_new_journal_is_wal_and_empty(tmp_path: Path) -> None:
    with Journal(tmp_path / "runs.db") as journal:
        assert journal.runs() == []
    db = sqlite3.connect(tmp_path / "runs.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert dict(db.execute("SELECT key, value FROM meta"))["schema"] == "1"


def test_files_that_are_not_journals_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database at all" * 100)
    with pytest.raises(ConfigError, match="not an agentrt journal"):
        Journal(text)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t(x)")
    with pytest.raises(ConfigError, match="not an agentrt journal"):
        Journal(other)
    newer = tmp_path / "newer.db"
    Journal(newer).close()
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    db.commit()
    with pytest.raises(ConfigError, match="schema 99, written by a newer agentrt"):
        Journal(newer)


def test_opening_waits_for_another_process_lock_instead_of_calling_the_file_no_journal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    Journal(path).close()
    # Another connection holds the file exclusively (as a writer that is checkpointing does).
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO meta VALUES ('held', 'yes')")
    holder.execute("COMMIT")
    release = threading.Timer(0.3, holder.close)
    release.start()
    try:
        with Journal(path) as journal:  # waits for the lock, then opens the same journal
            assert journal.runs() == []
    finally:
        release.join(timeout=10)


def test_a_journaled_plan_records_every_step_and_its_state(journal: Journal) -> None:
    world = World()
    result = vrun(world.agent(journal).run, chain_plan(), run_id="r1")
    assert result.status == "succeeded"
    (info,) = journal.runs()
    assert (info.run_id, info.state, info.kind, info.steps_done, info.steps_total) == (
        "r1",
        "succeeded",
        "plan",
        4,
        4,
    )
    assert info.launch["substrate"] == "function"
    assert info.launch["tools"] == ["note"]
    assert world.tool_keys == ["r1:s0", "r1:s1", "r1:s2", "r1:s3"]


def test_resuming_a_succeeded_run_returns_its_result_without_running(journal: Journal) -> None:
    first = vrun(World().agent(journal).run, chain_plan(), run_id="r1")
    world = World()
    again = vrun(world.agent(journal).resume, "r1")
    assert world.model_calls == []
    assert world.tool_keys == []
    assert again == first


def test_resume_skips_finished_steps_and_feeds_their_outputs(journal: Journal) -> None:
    reference = vrun(World().agent(journal).run, chain_plan(), run_id="ref")
    broken = World(fail_on="s2")
    failed = vrun(broken.agent(journal).run, chain_plan(), run_id="r1")
    assert failed.status == "failed"
    assert journal.run("r1").state == "failed"
    assert journal.run("r1").steps_done == 2

    world = World()
    resumed = vrun(world.agent(journal).resume, "r1")
    assert resumed.status == "succeeded"
    assert world.model_calls == ["s2", "s3"]  # s0 and s1 are not run again
    assert world.tool_keys == ["r1:s2", "r1:s3"]
    assert [o[1:] for o in outputs(resumed)] == [o[1:] for o in outputs(reference)]
    info = journal.run("r1")
    assert (info.state, info.steps_done, info.executions) == ("succeeded", 4, 2)


def test_a_cancelled_run_is_interrupted_and_resumes(journal: Journal) -> None:
    world = World()

    async def stall(request: InferenceRequest) -> str:
        if request.step_id == "s1":
            await anyio.sleep_forever()
        return world.model(request)

    note = FunctionTool("note", world.note)
    agent = Agent(FunctionSubstrate(stall), tools=[note], journal=journal)

    async def cancel_soon() -> None:
        with anyio.move_on_after(5):
            await agent.run(chain_plan(), run_id="r1")

    run(cancel_soon, clock=VirtualClock())
    assert journal.run("r1").state == "interrupted"
    assert journal.run("r1").steps_done == 1
    resumed = World()
    result = vrun(resumed.agent(journal).resume, "r1")
    assert result.status == "succeeded"
    assert resumed.model_calls == ["s1", "s2", "s3"]


def test_a_changed_plan_is_refused_naming_both_hashes(journal: Journal) -> None:
    vrun(World(fail_on="s1").agent(journal).run, chain_plan(), run_id="r1")
    changed = chain_plan(5)
    with pytest.raises(JournalMismatch, match="start a new run id") as caught:
        vrun(World().agent(journal).run, changed, run_id="r1")
    assert caught.value.journaled[:16] in str(caught.value)
    assert caught.value.given[:16] in str(caught.value)
    assert caught.value.journaled != caught.value.given


def test_an_unknown_run_id_suggests_close_ones(journal: Journal) -> None:
    vrun(World().agent(journal).run, chain_plan(), run_id="nightly-42")
    with pytest.raises(UnknownNameError, match="did you mean 'nightly-42'"):
        vrun(World().agent(journal).resume, "nightly-24")


def test_a_policy_cannot_be_journaled(journal: Journal) -> None:
    class OneStep:
        name = "one"

        async def next_steps(self, state: Any) -> list[Step]:
            return []

    with pytest.raises(ConfigError, match="cannot run with a journal"):
        World().agent(journal).prepare(OneStep())


def test_the_resumed_run_links_to_the_original_run_span(
    journal: Journal, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    broken = World(fail_on="s2").agent(journal, tracer_provider=provider)
    vrun(broken.run, chain_plan(), run_id="r1")
    first_root = next(s for s in exporter.get_finished_spans() if s.parent is None)
    exporter.clear()
    vrun(World().agent(journal, tracer_provider=provider).resume, "r1")
    root = next(s for s in exporter.get_finished_spans() if s.parent is None)
    assert root.context.trace_id != first_root.context.trace_id
    (link,) = root.links
    assert link.context.trace_id == first_root.context.trace_id
    assert link.context.span_id == first_root.context.span_id
    info = journal.run("r1")
    assert info.trace_id == format(first_root.context.trace_id, "032x")


# -- the tool loop ---------------------------------------------------------------------------


def _reply(text: str = "", *calls: tuple[str, str]) -> InferenceResult:
    return InferenceResult(
        text=text,
        usage=Usage(input_tokens=3, output_tokens=2),
        timing=Timing.build(output_tokens=2, decode_s=0.1),
        substrate="f",
        model="f",
        finish_reason="tool_calls" if calls else "stop",
        tool_calls=tuple(
            ToolCall(id=f"c-{x}", name=name, arguments=json.dumps({"x": x})) for name, x in calls
        ),
    )


class Chat:
    """A model whose reply depends only on the conversation so far, and a logging tool."""

    def __init__(self, *, hang_on: str | None = None) -> None:
        self.hang_on = hang_on
        self.turns: list[int] = []
        self.tool_calls: list[tuple[str, str | None]] = []

    def model(self, request: InferenceRequest) -> InferenceResult:
        turn = 1 + sum(m.role == "assistant" for m in request.messages)
        self.turns.append(turn)
        if turn == 1:
            return _reply("", ("note", "a"), ("note", "b"))
        if turn == 2:
            return _reply("one more", ("note", "c"))
        seen = [m.content for m in request.messages if m.role == "tool"]
        return _reply("done: " + ", ".join(seen))

    async def note(self, args: Any) -> str:
        self.tool_calls.append((args.x, idempotency_key()))
        if args.x == self.hang_on:
            await anyio.sleep_forever()
        return f"noted {args.x}"

    def agent(self, journal: Journal) -> Agent:
        return Agent(
            FunctionSubstrate(self.model), tools=[FunctionTool("note", self.note)], journal=journal
        )


@pytest.mark.parametrize(
    ("hang_on", "turns_after", "calls_after"),
    [("b", [2, 3], ["b", "c"]), ("c", [3], ["c"])],
)
def test_a_conversation_resumes_without_repeating_finished_calls(
    journal: Journal, hang_on: str, turns_after: list[int], calls_after: list[str]
) -> None:
    reference = vrun(Chat().agent(journal).run, "Note a, b, c.", run_id="ref")
    assert reference.output == "done: noted a, noted b, noted c"

    stalled = Chat(hang_on=hang_on)
    cut = vrun(stalled.agent(journal).run, "Note a, b, c.", run_id="r1", deadline_s=30)
    assert cut.status == "failed"
    key = dict(stalled.tool_calls)[hang_on]

    chat = Chat()
    resumed = vrun(chat.agent(journal).resume, "r1")
    assert resumed.status == "succeeded"
    assert chat.turns == turns_after
    assert [x for x, _ in chat.tool_calls] == calls_after
    assert dict(chat.tool_calls)[hang_on] == key  # the same key for the re-run call
    assert resumed.output == reference.output
    assert resumed.messages == reference.messages
    assert [s.id for s in resumed.steps] == [s.id for s in reference.steps]
    assert journal.run("r1").kind == "conversation"


def test_a_conversation_with_another_task_is_refused(journal: Journal) -> None:
    vrun(Chat(hang_on="c").agent(journal).run, "Note a, b, c.", run_id="r1", deadline_s=30)
    with pytest.raises(JournalMismatch):
        vrun(Chat().agent(journal).run, "Note d.", run_id="r1")


def test_a_run_live_in_another_process_is_not_resumed(journal: Journal) -> None:
    import os

    vrun(World(fail_on="s1").agent(journal).run, chain_plan(), run_id="r1")
    db = sqlite3.connect(journal.path)
    db.execute("UPDATE runs SET state = 'running', pid = ? WHERE run_id = 'r1'", (os.getppid(),))
    db.commit()
    db.close()
    assert journal.run("r1").state == "running"
    with pytest.raises(ConfigError, match=f"is running in process {os.getppid()}"):
        vrun(World().agent(journal).resume, "r1")


def test_function_tools_that_declare_the_key_receive_it(journal: Journal) -> None:
    from agentrt import function_tool

    seen: list[str] = []

    @function_tool(name="note")
    def note(x: str, idempotency_key: str) -> str:
        """Note x once.

        Args:
            x: what to note.
        """
        seen.append(idempotency_key)
        return f"noted {x}"

    assert "idempotency_key" not in note.args_model.model_json_schema()["properties"]
    agent = Agent(FunctionSubstrate(lambda r: "ok"), tools=[note], journal=journal)
    assert vrun(agent.run, chain_plan(2), run_id="r9").status == "succeeded"
    assert seen == ["r9:s0", "r9:s1"]
    direct = run(note.call, {"x": "y"})
    assert direct.output == "noted y"
    assert seen[-1].startswith("direct:")


def test_a_journal_that_cannot_be_written_stops_the_run(journal: Journal) -> None:
    from agentrt import JournalError

    journal._db.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(journal.path)
    other.execute("BEGIN IMMEDIATE")  # another program holds the write lock
    try:
        with pytest.raises(JournalError, match="database is locked"):
            vrun(World().agent(journal).run, chain_plan(), run_id="r1")
    finally:
        other.rollback()
        other.close()
    assert vrun(World().agent(journal).run, chain_plan(), run_id="r2").status == "succeeded"


def test_without_a_journal_only_tools_that_ask_get_keys() -> None:
    from agentrt import function_tool

    plain: list[str | None] = []
    asked: list[str] = []

    @function_tool
    def pay(x: str, idempotency_key: str) -> str:
        """Pay x."""
        asked.append(idempotency_key)
        return "paid"

    def look_fn(args: Any) -> str:
        plain.append(idempotency_key())
        return "seen"

    look = FunctionTool("look", look_fn)
    plan = Plan(
        name="p",
        steps=(
            Step(id="a", prompt="a", tool="look", args={}),
            Step(id="b", prompt="b", tool="pay", args={"x": "1"}, depends_on=("a",)),
        ),
    )
    agent = Agent(FunctionSubstrate(lambda r: "ok"), tools=[look, pay])
    assert vrun(agent.run, plan, run_id="r0").status == "succeeded"
    assert plain == [None]
    assert asked == ["r0:b"]
