"""The search index: an SQLite FTS5 database of the sources' documents, updated incrementally."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agentrt.errors import ConfigError, ToolError
from tools.search.corpus import Source, extract
from tools.search.query import DOCS_DDL, SearchHit, sqlite_error, top_hits

__all__ = ["Index", "UpdateStats", "fts5_available"]

_SCHEMA_VERSION: Final = "1"


@dataclass(frozen=True, slots=True)
class UpdateStats:
    """What an incremental index update did.

    Attributes:
        added: files indexed for the first time.
        changed: files re-indexed because their content changed.
        removed: files forgotten because they are gone.
        unchanged: files left as they were (same mtime and size, or same hash).
        documents: documents in the index afterwards.
    """

    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    documents: int = 0

    @property
    def parsed(self) -> int:
        """Files read and parsed by this update: 0 means the index was already up to date."""
        return self.added + self.changed


def fts5_available() -> bool:
    """Whether this Python's SQLite was compiled with the FTS5 extension."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return True


@dataclass(slots=True)
class Index:
    """The SQLite database; every method blocks, so `SearchTool` calls them in a worker thread."""

    location: Path | None
    conn: sqlite3.Connection | None = None
    built: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _open(self) -> sqlite3.Connection:
        if self.conn is not None:
            return self.conn
        where = "an in-memory index" if self.location is None else f"the index {self.location}"
        try:
            if self.location is not None:
                self.location.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.location or ":memory:", check_same_thread=False, timeout=5.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open {where}: {exc}; choose another index path") from exc
        try:
            _prepare(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "no such module: fts5" in str(exc):
                raise ConfigError(
                    f"this Python's SQLite {sqlite3.sqlite_version} was built without FTS5, "
                    "which the search tool needs; use a Python whose sqlite3 has it (python.org "
                    "and most distribution builds do)"
                ) from exc
            raise ConfigError(f"cannot use {where}: {exc}; choose another index path") from exc
        self.conn = conn
        return conn

    def update(
        self, sources: Sequence[Source], stop: threading.Event, *, only_first: bool
    ) -> UpdateStats | None:
        """Bring the index up to date with the sources (only the first time, if asked)."""
        with self.lock:
            _check(stop)
            if only_first and self.built:
                return None
            conn = self._open()
            found: dict[str, tuple[Path, str, int, int]] = {}
            for source in sources:
                found.update(source.scan())
            try:
                with conn:
                    stats = _apply(conn, found, stop)
            except sqlite3.Error as exc:
                raise sqlite_error(exc, "updating the search index") from exc
            self.built = True
            return stats

    def search(self, query: str, k: int, stop: threading.Event) -> list[SearchHit]:
        """The top ``k`` documents for an FTS5 query."""
        with self.lock:
            _check(stop)
            return top_hits(self._open(), query, k)

    def interrupt(self) -> None:
        """Abort the statement running in another thread (safe from any thread)."""
        if self.conn is not None:
            self.conn.interrupt()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None


def _prepare(conn: sqlite3.Connection) -> None:
    """Create the schema, or check that an existing database is a search index of this version."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables and "meta" not in tables:
        raise sqlite3.DatabaseError("it is an SQLite database but not an agentrt search index")
    version = None
    if tables:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        version = row[0] if row else None
    with conn:
        if tables and version != _SCHEMA_VERSION:  # an index from another version: rebuild it
            conn.executescript("DROP TABLE IF EXISTS docs; DROP TABLE IF EXISTS files;")
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS files (id INTEGER PRIMARY KEY, path TEXT UNIQUE "
            "NOT NULL, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL)"
        )
        conn.execute(DOCS_DDL)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))


def _check(stop: threading.Event) -> None:
    """Give up if the caller has (a timeout or a cancellation): the thread was abandoned."""
    if stop.is_set():
        raise ToolError("abandoned: the caller timed out or was cancelled")


def _apply(
    conn: sqlite3.Connection, found: dict[str, tuple[Path, str, int, int]], stop: threading.Event
) -> UpdateStats:
    """Index new files, re-index changed ones, forget deleted ones (inside one transaction)."""
    known = {
        path: (fid, mtime, size, sha)
        for path, fid, mtime, size, sha in conn.execute(
            "SELECT path, id, mtime_ns, size, sha256 FROM files"
        )
    }
    added = changed = unchanged = 0
    gone = known.keys() - found.keys()
    for path in gone:
        conn.execute("DELETE FROM docs WHERE rowid = ?", (known[path][0],))
        conn.execute("DELETE FROM files WHERE id = ?", (known[path][0],))
    for path, (file, rel, mtime, size) in found.items():
        _check(stop)  # parsing is Python work that interrupt() cannot stop; this does (rollback)
        old = known.get(path)
        if old is not None and old[1:3] == (mtime, size):
            unchanged += 1
            continue
        try:
            data = file.read_bytes()
        except OSError:
            continue  # vanished or unreadable since the scan; the next update sees it again
        sha = hashlib.sha256(data).hexdigest()
        if old is not None:
            conn.execute(
                "UPDATE files SET mtime_ns = ?, size = ?, sha256 = ? WHERE id = ?",
                (mtime, size, sha, old[0]),
            )
            if old[3] == sha:  # touched, same content
                unchanged += 1
                continue
            conn.execute("DELETE FROM docs WHERE rowid = ?", (old[0],))
            fid, changed = old[0], changed + 1
        else:
            cursor = conn.execute(
                "INSERT INTO files (path, mtime_ns, size, sha256) VALUES (?, ?, ?, ?)",
                (path, mtime, size, sha),
            )
            fid, added = cursor.lastrowid, added + 1
        if (doc := extract(rel, data)) is not None:
            conn.execute(
                "INSERT INTO docs (rowid, path, title, body) VALUES (?, ?, ?, ?)", (fid, path, *doc)
            )
    (documents,) = conn.execute("SELECT count(*) FROM docs").fetchone()
    return UpdateStats(added, changed, len(gone), unchanged, documents)
