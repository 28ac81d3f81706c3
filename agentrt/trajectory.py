"""Trajectories: the turns of an agent run (model replies, tool calls, tool results), to replay.

A trajectory file is JSON Lines, one record per line, written as the run goes (each line is
flushed when its turn ends, so a crashed run leaves a readable prefix):

* a ``header`` first: format ``version``, ``agent``, ``model``, ``substrate``, the ``tools``
  offered (their `ToolSpec`) and the initial ``messages``;
* a ``turn`` per model call: ``text`` and/or ``tool_calls``, ``input_tokens``/``output_tokens``,
  the measured ``e2e_s``/``ttft_s``, the ``substrate``;
* a ``tool`` per tool result: ``tool_call_id``, ``name``, ``arguments``, ``output``, ``ok``,
  ``duration_s``;
* a ``finish`` at the end: ``run_id``, ``status``, ``e2e_s``.

Turns are keyed for replay by their *conversation* (``thread``) and their ``index`` in it: a
request whose conversation holds n assistant messages asks for turn n + 1. A conversation is
known by its opening (the messages before the first assistant message): an agent's run is one
thread; each model call of a plan is its own thread (its prompt), and a turn that opens a new
thread carries its opening ``messages`` and ``tools``.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Annotated, Literal, Protocol, runtime_checkable

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from agentrt.errors import ConfigError
from agentrt.substrate import (
    FinishReason,
    InferenceRequest,
    InferenceResult,
    Message,
    ToolCall,
    ToolSpec,
)
from agentrt.tool import ToolResult

__all__ = [
    "TRAJECTORY_VERSION",
    "FinishRecord",
    "Recorder",
    "ToolRecord",
    "Trajectory",
    "TrajectoryHeader",
    "TrajectoryRecorder",
    "TurnRecord",
    "opening_key",
    "read_trajectory",
    "write_trajectory",
]

#: The format version this agentrt writes and reads.
TRAJECTORY_VERSION = 1

_FROZEN = ConfigDict(frozen=True, extra="forbid")


@runtime_checkable
class Recorder(Protocol):
    """**Protocol:** receives every turn of a run as it finishes (``Agent(..., recorder=...)``).

    The agent calls ``model_turn`` after each model call, ``tool_result`` after each tool call
    (``duration_s`` on the run's clock), and ``finish`` once at the end of the run. A recorder
    must be cheap and must not raise.
    """

    def model_turn(self, request: InferenceRequest, result: InferenceResult) -> None:
        """A model call finished."""
        ...

    def tool_result(self, call: ToolCall, result: ToolResult, duration_s: float) -> None:
        """A tool call finished (``result.ok`` False for an error sent back to the model)."""
        ...

    def finish(self, run_id: str, status: str, e2e_s: float) -> None:
        """The run ended."""
        ...


class TrajectoryHeader(BaseModel):
    """The first record: the run's facts and the opening of its first conversation."""

    model_config = _FROZEN

    type: Literal["header"] = "header"
    version: int = Field(default=TRAJECTORY_VERSION, description="The file format version.")
    agent: str | None = Field(default=None, description="The agent or plan name.")
    model: str | None = Field(default=None, description="The model of the first turn.")
    substrate: str | None = Field(default=None, description="The substrate of the first turn.")
    tools: tuple[ToolSpec, ...] = Field(default=(), description="Tools offered (thread 0).")
    messages: tuple[Message, ...] = Field(default=(), description="Initial messages (thread 0).")


class TurnRecord(BaseModel):
    """One model call: what the model answered and how long it took where it was recorded."""

    model_config = _FROZEN

    type: Literal["turn"] = "turn"
    thread: NonNegativeInt = Field(default=0, description="The conversation (0: the header's).")
    index: Annotated[int, Field(ge=1)] = Field(
        description="Turn number in its conversation: assistant messages before it, plus one."
    )
    step_id: str | None = Field(default=None, description="The step that made the call.")
    messages: tuple[Message, ...] = Field(
        default=(), description="The opening of a new thread (its first turn only)."
    )
    tools: tuple[ToolSpec, ...] = Field(
        default=(), description="The tools offered in a new thread (its first turn only)."
    )
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = "stop"
    input_tokens: NonNegativeInt = 0
    output_tokens: NonNegativeInt = 0
    e2e_s: NonNegativeFloat = Field(default=0.0, description="The call's measured time.")
    ttft_s: NonNegativeFloat = 0.0
    substrate: str = ""
    model: str = ""

    @model_validator(mode="after")
    def _check_calls(self) -> TurnRecord:
        if self.finish_reason == "tool_calls" and not self.tool_calls:
            raise ValueError("finish_reason 'tool_calls' needs at least one tool call")
        return self


class ToolRecord(BaseModel):
    """One tool call's result and its measured duration."""

    model_config = _FROZEN

    type: Literal["tool"] = "tool"
    thread: NonNegativeInt | None = Field(
        default=None, description="The thread whose turn asked for it; None = a plan's tool step."
    )
    tool_call_id: str
    name: str
    arguments: str = "{}"
    output: str = ""
    ok: bool = True
    duration_s: NonNegativeFloat = 0.0


class FinishRecord(BaseModel):
    """The last record: how the run ended."""

    model_config = _FROZEN

    type: Literal["finish"] = "finish"
    run_id: str
    status: str
    e2e_s: NonNegativeFloat


_Record = Annotated[
    TrajectoryHeader | TurnRecord | ToolRecord | FinishRecord, Field(discriminator="type")
]
_RECORD: TypeAdapter[TrajectoryHeader | TurnRecord | ToolRecord | FinishRecord] = TypeAdapter(
    _Record
)


def opening_key(messages: Sequence[Message]) -> str:
    """The key of a conversation: a digest of its messages before the first assistant message.

    Example:
        >>> user = Message(role="user", content="Fix the bug.")
        >>> reply = Message(role="assistant", content="ok")
        >>> opening_key([user]) == opening_key([user, reply])
        True
    """
    digest = hashlib.sha256()
    for message in messages:
        if message.role == "assistant":
            break
        digest.update(message.model_dump_json().encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


class Trajectory(BaseModel):
    """A whole trajectory in memory: the header, the turns and tool results in order, the end.

    Example:
        >>> head = TrajectoryHeader(messages=(Message(role="user", content="hi"),))
        >>> t = Trajectory(header=head, records=(TurnRecord(index=1, text="hello"),))
        >>> t.counts()["turns"], t.thread_turns(0)[0].text
        (1, 'hello')
    """

    model_config = _FROZEN

    header: TrajectoryHeader
    records: tuple[TurnRecord | ToolRecord, ...] = ()
    finish: FinishRecord | None = None

    @property
    def turns(self) -> tuple[TurnRecord, ...]:
        """The model turns, in recorded order."""
        return tuple(r for r in self.records if isinstance(r, TurnRecord))

    @property
    def tool_results(self) -> tuple[ToolRecord, ...]:
        """The tool results, in recorded order."""
        return tuple(r for r in self.records if isinstance(r, ToolRecord))

    def threads(self) -> list[int]:
        """The threads that hold turns, in the order they first appear."""
        return list(dict.fromkeys(t.thread for t in self.turns))

    def thread_turns(self, thread: int) -> list[TurnRecord]:
        """The turns of one thread, in recorded order."""
        return [t for t in self.turns if t.thread == thread]

    def opening(self, thread: int) -> tuple[tuple[Message, ...], tuple[ToolSpec, ...]]:
        """A thread's opening messages and the tools it offers."""
        if thread == 0:
            return self.header.messages, self.header.tools
        first = next((t for t in self.turns if t.thread == thread), None)
        return (first.messages, first.tools) if first is not None else ((), ())

    def counts(self) -> dict[str, int | float]:
        """Turns, tool calls, tokens and the recorded times, for reports."""
        turns = self.turns
        tools = self.tool_results
        return {
            "turns": len(turns),
            "threads": len(self.threads()),
            "tool_calls": sum(len(t.tool_calls) for t in turns),
            "tool_results": len(tools),
            "input_tokens": sum(t.input_tokens for t in turns),
            "output_tokens": sum(t.output_tokens for t in turns),
            "recorded_model_s": sum(t.e2e_s for t in turns),
            "recorded_tool_s": sum(t.duration_s for t in tools),
            "recorded_e2e_s": self.finish.e2e_s if self.finish is not None else 0.0,
        }


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])


def read_trajectory(path: str | Path) -> Trajectory:
    """Read a trajectory file; a bad record is an error naming its file and line.

    Raises:
        ConfigError: the file cannot be read, or a record is not valid (``FILE:LINE: problem``).
    """
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read trajectory {path}: {exc.strerror or exc}") from None
    header: TrajectoryHeader | None = None
    records: list[TurnRecord | ToolRecord] = []
    finish: FinishRecord | None = None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = _RECORD.validate_json(line)
            except ValidationError as exc:
                raise ConfigError(
                    f"{_where(path, number)}: not a trajectory record ({_problem(exc)})"
                ) from None
            if header is None:
                if not isinstance(record, TrajectoryHeader):
                    raise ConfigError(
                        f"{_where(path, number)}: the first record must be the header, "
                        f"not a {record.type!r} record"
                    )
                if record.version != TRAJECTORY_VERSION:
                    raise ConfigError(
                        f"{_where(path, number)}: trajectory format version {record.version}; "
                        f"this agentrt reads version {TRAJECTORY_VERSION}"
                    )
                header = record
            elif isinstance(record, TrajectoryHeader):
                raise ConfigError(f"{_where(path, number)}: a second header record")
            elif finish is not None:
                raise ConfigError(f"{_where(path, number)}: a record after the finish record")
            elif isinstance(record, FinishRecord):
                finish = record
            else:
                records.append(record)
    if header is None:
        raise ConfigError(f"{path}: empty trajectory (no header record)")
    return Trajectory(header=header, records=tuple(records), finish=finish)


def _dump(record: BaseModel) -> str:
    return record.model_dump_json(exclude_defaults=False) + "\n"


def write_trajectory(trajectory: Trajectory, path: str | Path) -> None:
    """Write ``trajectory`` as JSON Lines (what `read_trajectory` reads back)."""
    records: Iterable[BaseModel] = (
        trajectory.header,
        *trajectory.records,
        *((trajectory.finish,) if trajectory.finish is not None else ()),
    )
    Path(path).write_text("".join(_dump(r) for r in records), encoding="utf-8")


class TrajectoryRecorder:
    """A `Recorder` that writes the run's trajectory to a file, one flushed line per record.

    Example:
        >>> import tempfile, agentrt
        >>> from agentrt.substrate import Timing, Usage
        >>> path = Path(tempfile.mkdtemp()) / "run.jsonl"
        >>> rec = TrajectoryRecorder(path, agent="demo")
        >>> req = agentrt.InferenceRequest.from_prompt("hi")
        >>> res = agentrt.InferenceResult(text="hello", usage=Usage(output_tokens=2),
        ...                               timing=Timing(decode_s=0.1), substrate="x", model="m")
        >>> rec.model_turn(req, res)
        >>> rec.finish("run-1", "succeeded", 0.1)
        >>> read_trajectory(path).turns[0].text
        'hello'

    Args:
        path: the file to write (replaced).
        agent: the agent or plan name for the header.
    """

    def __init__(self, path: str | Path, *, agent: str | None = None) -> None:
        self.path = Path(path)
        self._agent = agent
        self._file: IO[str] | None = None
        self._threads: dict[str, int] = {}
        self._taken: set[tuple[int, int]] = set()
        self._asked: dict[str, int] = {}  # tool_call_id -> thread
        self._next_thread = 0
        self._closed = False
        #: Why the recorder stopped writing (it never raises into the run), or None.
        self.error: str | None = None

    def _write(self, record: BaseModel, *, header: TrajectoryHeader | None = None) -> None:
        if self.error is not None or self._closed:
            return
        try:
            if self._file is None:
                self._file = self.path.open("w", encoding="utf-8")
                # A run that never finishes (a crash) still closes its file when it goes away.
                weakref.finalize(self, self._file.close)
                self._file.write(_dump(header or TrajectoryHeader(agent=self._agent)))
            self._file.write(_dump(record))
            self._file.flush()
        except OSError as exc:
            self.error = f"cannot write trajectory {self.path}: {exc.strerror or exc}"

    def _thread_of(self, request: InferenceRequest, index: int) -> tuple[int, bool]:
        """The request's thread and whether the turn opens it (a repeat opens a new one)."""
        key = opening_key(request.messages)
        thread = self._threads.get(key)
        if thread is not None and (thread, index) not in self._taken:
            return thread, False
        if self._file is not None and self._next_thread == 0:
            self._next_thread = 1  # the header went out without an opening: thread 0 is empty
        thread = self._next_thread
        self._next_thread += 1
        self._threads[key] = thread
        return thread, True

    def model_turn(self, request: InferenceRequest, result: InferenceResult) -> None:
        """Write the turn (and, before the first one, the header)."""
        index = 1 + sum(m.role == "assistant" for m in request.messages)
        thread, opens = self._thread_of(request, index)
        self._taken.add((thread, index))
        opening = tuple(request.messages[: _first_assistant(request.messages)])
        header = None
        if self._file is None and thread == 0:
            header = TrajectoryHeader(
                agent=self._agent,
                model=result.model,
                substrate=result.substrate,
                tools=request.tools,
                messages=opening,
            )
        for call in result.tool_calls:
            self._asked[call.id] = thread
        new_thread = opens and thread > 0
        self._write(
            TurnRecord(
                thread=thread,
                index=index,
                step_id=request.step_id,
                messages=opening if new_thread else (),
                tools=request.tools if new_thread else (),
                text=result.text,
                tool_calls=result.tool_calls,
                finish_reason=result.finish_reason,
                input_tokens=result.usage.input_tokens,
                output_tokens=result.usage.output_tokens,
                e2e_s=result.timing.e2e_s,
                ttft_s=result.timing.ttft_s,
                substrate=result.substrate,
                model=result.model,
            ),
            header=header,
        )

    def tool_result(self, call: ToolCall, result: ToolResult, duration_s: float) -> None:
        """Write the tool's result and duration."""
        self._write(
            ToolRecord(
                thread=self._asked.get(call.id),
                tool_call_id=call.id,
                name=call.name,
                arguments=call.arguments,
                output=result.output,
                ok=result.ok,
                duration_s=max(0.0, duration_s),
            )
        )

    def finish(self, run_id: str, status: str, e2e_s: float) -> None:
        """Write the finish record and close the file."""
        self._write(FinishRecord(run_id=run_id, status=status, e2e_s=max(0.0, e2e_s)))
        self.close()

    def close(self) -> None:
        """Close the file; later records are dropped (the run is over)."""
        if self._file is not None:
            self._file.close()
        self._closed = True


def _first_assistant(messages: Sequence[Message]) -> int:
    return next((i for i, m in enumerate(messages) if m.role == "assistant"), len(messages))
