"""Durable runs: `Journal`, the SQLite file each finished step is committed to, and its records.

A journal holds runs (``Agent(..., journal=Journal("runs.db"))``): for each, its state, the hash of
its plan (or task and tools), how to rebuild it (``launch``: what ``agentrt resume`` reads), the
trace id of its first execution, and every finished step (its `StepResult`, its conversation turn
and its tool output), each committed with ``synchronous=FULL`` before any step that depends on it
starts. ``await agent.resume(run_id)`` continues a run: finished steps are not run again (their
outputs feed the steps after them) and steps that were in flight run again, with the same
`idempotency_key` for their tool calls. See docs/journal.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, final

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from agentrt.errors import AgentrtError, ConfigError, UnknownNameError
from agentrt.result import StepResult

__all__ = [
    "SCHEMA_VERSION",
    "Journal",
    "JournalError",
    "JournalMismatch",
    "RunInfo",
    "JournalState",
    "idempotency_key",
    "storable_options",
]

#: The journal file format this agentrt writes (and the newest it reads).
SCHEMA_VERSION = 1
_APPLICATION = "agentrt-journal"

JournalState = Literal["running", "succeeded", "failed", "interrupted"]

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs(
    run_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    launch TEXT NOT NULL,
    steps_total INTEGER,
    trace_id TEXT,
    span_id TEXT,
    pid INTEGER,
    host TEXT,
    executions INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    started REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE steps(
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    result TEXT NOT NULL,
    payload TEXT NOT NULL,
    written REAL NOT NULL,
    PRIMARY KEY (run_id, step_id)
);
"""

_KEY: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "agentrt_idempotency_key", default=None
)


def idempotency_key() -> str | None:
    """The idempotency key of the tool call running now, or None outside a tool call.

    The key is ``"RUN_ID:STEP_ID"``: the same when a resumed run calls the tool again for a step
    that was in flight when the process died (or when a retry repeats the call), so a tool that
    changes the world (writes a file, sends a payment) can remember the keys it has done and do
    each at most once. Every tool call of a run with a journal has one; in a run without, only
    the calls of tools that ask for keys (``wants_idempotency_key = True``, as function tools
    with an ``idempotency_key`` parameter do): setting it costs a fifth of a microsecond a call.

    Example:
        >>> from agentrt.testing import FunctionTool
        >>> seen = []
        >>> tool = FunctionTool("pay", lambda args: seen.append(idempotency_key()) or "paid")
        >>> idempotency_key() is None
        True
    """
    value = _KEY.get()
    return None if value is None else f"{value[0]}:{value[1]}"


def wants_key(tool: object) -> bool:
    """Whether ``tool`` asks for idempotency keys outside journaled runs too."""
    return bool(getattr(tool, "wants_idempotency_key", False))


#: Option names whose values are never written to a journal.
_SECRET_NAMES = ("key", "token", "secret", "password")


def storable_options(options: Mapping[str, Any]) -> dict[str, JsonValue]:
    """The substrate options fit to store in a journal (to rebuild a run): no secrets.

    Options named like a secret (``key``, ``token``, ``secret``, ``password``) are left out, and
    so is any value that carries a credential (a URL with a password, a secret query value):
    give them again when resuming (``agentrt resume RUN_ID -o api_key=...``, or the
    environment variable the substrate reads).

    Example:
        >>> storable_options({"base_url": "http://h:8000/v1", "api_key": "sk-1", "model": "m",
        ...                   "proxy": "http://user:pw@proxy:3128"})
        {'base_url': 'http://h:8000/v1', 'model': 'm'}
    """
    from agentrt.redact import redact

    kept: dict[str, JsonValue] = {}
    for name, value in options.items():
        if any(word in name.lower() for word in _SECRET_NAMES):
            continue
        if isinstance(value, str) and redact(value) != value:
            continue
        kept[name] = json.loads(json.dumps(value, default=str))
    return kept


#: How long opening a journal waits for another process's lock.
_OPEN_TIMEOUT_S = 10.0


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds the file for now."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class JournalError(AgentrtError):
    """Reading or writing a journal failed (a full disk, a file another program locked).

    A run whose step cannot be committed stops with this error: it would no longer be durable.
    """


class JournalMismatch(ConfigError):
    """A run was resumed with a plan (or task and tools) other than the one it was started with.

    Attributes:
        run_id: the run.
        journaled: the hash the journal holds.
        given: the hash of what was given now.
    """

    def __init__(self, run_id: str, journaled: str, given: str) -> None:
        self.run_id = run_id
        self.journaled = journaled
        self.given = given
        super().__init__(
            f"run {run_id!r} was started from a plan with hash {journaled[:16]} but this plan "
            f"hashes to {given[:16]}: a changed plan cannot resume it; start a new run id "
            "(or resume with the original plan)"
        )


class RunInfo(BaseModel):
    """One run in a journal, as `Journal.runs` lists it.

    ``state`` is ``interrupted`` for a run whose process died (or was cancelled) before it ended.

    Example:
        >>> info = RunInfo(run_id="r1", state="running", kind="plan", name="p", hash="ab",
        ...                steps_done=2, steps_total=5, started=0.0, updated=1.0)
        >>> info.steps_done, info.steps_total
        (2, 5)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    state: JournalState
    kind: Literal["plan", "conversation"]
    name: str = Field(description="The plan's name, or 'conversation'.")
    hash: str = Field(description="sha256 of the plan (or of the task and the tools' specs).")
    steps_done: int
    steps_total: int | None = Field(default=None, description="None for a conversation.")
    started: datetime
    updated: datetime
    executions: int = Field(default=0, description="How many times the run was (re)started.")
    trace_id: str | None = None
    span_id: str | None = None
    launch: dict[str, JsonValue] = Field(
        default_factory=dict, description="How to rebuild the run (what `agentrt resume` reads)."
    )


@final
class Journal:
    """A run journal: an SQLite file (WAL mode, ``synchronous=FULL``) of runs and finished steps.

    Example:
        >>> import tempfile, pathlib
        >>> with Journal(pathlib.Path(tempfile.mkdtemp()) / "runs.db") as journal:
        ...     journal.runs()
        []

    Args:
        path: the file; created if missing.

    Raises:
        ConfigError: the file is not a journal, or a newer agentrt wrote it.
        JournalError: another process kept the file locked for 10 s.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the journal {self.path}: {exc}") from exc
        start = time.monotonic()
        try:
            self._open_when_free()
        except sqlite3.OperationalError as exc:
            self._db.close()
            if not _busy(exc):
                raise ConfigError(
                    f"cannot open the journal {self.path}: {exc}; check the path and its "
                    "permissions"
                ) from exc
            raise JournalError(
                f"the journal {self.path} stayed locked for {time.monotonic() - start:.0f} s "
                f"({exc}); "
                "another process holds it: wait for it, or pass another file"
            ) from exc
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ConfigError(
                f"{self.path} is not an agentrt journal ({exc}); pass a new file or a journal "
                "that `agentrt run --journal` wrote"
            ) from exc
        except ConfigError:
            self._db.close()
            raise

    def _open_when_free(self) -> None:
        """`_open`, retried while another process holds a lock SQLite does not wait for.

        A WAL file being checkpointed or recovered as its last writer closes it answers
        "database is locked" at once, without the connection's busy timeout.
        """
        deadline = time.monotonic() + _OPEN_TIMEOUT_S
        while True:
            try:
                self._open()
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.02)

    def _open(self) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            db.execute("BEGIN IMMEDIATE")
            try:
                if not db.execute("SELECT 1 FROM sqlite_master").fetchone():
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.executemany(
                        "INSERT INTO meta VALUES (?, ?)",
                        [("application", _APPLICATION), ("schema", str(SCHEMA_VERSION))],
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return
        meta = dict(db.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        if meta.get("application") != _APPLICATION:
            raise ConfigError(
                f"{self.path} is an SQLite file but not an agentrt journal; pass a new file or a "
                "journal that `agentrt run --journal` wrote"
            )
        version = int(meta.get("schema", "0"))
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path} is a journal of schema {version}, written by a newer agentrt (this "
                f"one reads schema {SCHEMA_VERSION}); upgrade agentrt to read it"
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the connection; an SQLite failure becomes a `JournalError`."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise JournalError(
                    f"the journal {self.path} failed: {type(exc).__name__}: {exc}; check the disk "
                    "(space, permissions) and that no other program holds the file"
                ) from exc

    def close(self) -> None:
        """Close the file; safe to call more than once."""
        with self._locked():
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Journal {str(self.path)!r}>"

    # -- reading -------------------------------------------------------------------------------

    def runs(self) -> list[RunInfo]:
        """Every run, oldest first."""
        with self._locked():
            rows = self._db.execute(f"{_SELECT_RUNS} ORDER BY r.started, r.run_id").fetchall()
        return [_info(row) for row in rows]

    def run(self, run_id: str) -> RunInfo:
        """One run.

        Raises:
            UnknownNameError: no run has that id (the message suggests the closest ones).
        """
        with self._locked():
            row = self._db.execute(f"{_SELECT_RUNS} WHERE r.run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise self._unknown(run_id)
        return _info(row)

    def finished(self, run_id: str) -> list[StepResult]:
        """The steps of ``run_id`` the journal holds as finished, in the order they finished.

        Raises:
            UnknownNameError: no run has that id.
        """
        self.run(run_id)
        return [StepResult.model_validate_json(result) for _, result, _ in self._steps(run_id)]

    def _unknown(self, run_id: str) -> UnknownNameError:
        with self._locked():
            known = [r[0] for r in self._db.execute("SELECT run_id FROM runs")]
        close = difflib.get_close_matches(run_id, known, n=5, cutoff=0.3)
        return UnknownNameError("run id", run_id, close or known[-20:])

    # -- what `agentrt._journalrun` uses -------------------------------------------------------

    def _row(self, run_id: str) -> tuple[Any, ...] | None:
        with self._locked():
            row: tuple[Any, ...] | None = self._db.execute(
                "SELECT state, hash, result, trace_id, span_id, kind, pid, host FROM runs "
                "WHERE run_id = ?",
                (run_id,),
            ).fetchone()
        return row

    def _steps(self, run_id: str) -> list[tuple[str, str, str]]:
        with self._locked():
            return self._db.execute(
                "SELECT step_id, result, payload FROM steps WHERE run_id = ? ORDER BY seq",
                (run_id,),
            ).fetchall()

    def _begin(
        self,
        run_id: str,
        *,
        kind: str,
        name: str,
        digest: str,
        launch: Mapping[str, JsonValue],
        steps_total: int | None,
        trace_id: str | None,
        span_id: str | None,
    ) -> None:
        now = time.time()
        with self._locked(), self._db:
            self._db.execute("BEGIN IMMEDIATE")
            updated = self._db.execute(
                "UPDATE runs SET state = 'running', pid = ?, host = ?, updated = ?, "
                "executions = executions + 1, trace_id = coalesce(trace_id, ?), "
                "span_id = coalesce(span_id, ?) WHERE run_id = ?",
                (os.getpid(), socket.gethostname(), now, trace_id, span_id, run_id),
            ).rowcount
            if not updated:
                self._db.execute(
                    "INSERT INTO runs (run_id, state, kind, name, hash, launch, steps_total, "
                    "trace_id, span_id, pid, host, executions, started, updated) "
                    "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                    (
                        run_id,
                        kind,
                        name,
                        digest,
                        _dumps(launch),
                        steps_total,
                        trace_id,
                        span_id,
                        os.getpid(),
                        socket.gethostname(),
                        now,
                        now,
                    ),
                )

    def _step(self, run_id: str, step_id: str, result: str, payload: str) -> None:
        now = time.time()
        with self._locked(), self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO steps VALUES (?, ?, "
                "(SELECT count(*) FROM steps WHERE run_id = ?), ?, ?, ?)",
                (run_id, step_id, run_id, result, payload, now),
            )
            self._db.execute("UPDATE runs SET updated = ? WHERE run_id = ?", (now, run_id))

    def _finish(self, run_id: str, state: JournalState, result: str | None) -> None:
        with self._locked(), self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE runs SET state = ?, result = ?, updated = ? WHERE run_id = ?",
                (state, result, time.time(), run_id),
            )


_SELECT_RUNS = (
    "SELECT r.run_id, r.state, r.kind, r.name, r.hash, r.steps_total, r.started, r.updated, "
    "r.executions, r.trace_id, r.span_id, r.launch, r.pid, r.host, "
    "(SELECT count(*) FROM steps s WHERE s.run_id = r.run_id) FROM runs r"
)


def _info(row: Sequence[Any]) -> RunInfo:
    state = row[1]
    if state == "running" and not _alive(row[12], row[13]):
        state = "interrupted"
    return RunInfo(
        run_id=row[0],
        state=state,
        kind=row[2],
        name=row[3],
        hash=row[4],
        steps_total=row[5],
        started=datetime.fromtimestamp(row[6], UTC),
        updated=datetime.fromtimestamp(row[7], UTC),
        executions=row[8],
        trace_id=row[9],
        span_id=row[10],
        launch=json.loads(row[11]),
        steps_done=row[14],
    )


def _alive(pid: int | None, host: str | None) -> bool:
    """Whether the process that runs a run still lives (assumed so on another host)."""
    if pid is None or host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def digest(value: object) -> str:
    """sha256 of ``value``'s canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(_dumps(value).encode()).hexdigest()
