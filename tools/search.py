"""The search tool: an SQLite FTS5 index with BM25 ranking over a folder of documents."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import sqlite3
import sys
import sysconfig
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Final, TypeVar, final

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from agentrt.clock import current_clock
from agentrt.errors import ConfigError, RetryableToolError, ToolError
from agentrt.log import get_logger
from agentrt.tool import ToolResult

__all__ = [
    "CACHE_DIR_ENV",
    "CORPUS_VERSION",
    "DEFAULT_STDLIB_FILES",
    "SearchArgs",
    "SearchHit",
    "SearchTool",
    "UpdateStats",
    "check_query",
    "default_cache_dir",
    "fts5_available",
    "hits_result",
    "make_search",
    "quote_terms",
]

T = TypeVar("T")
_log = get_logger(__name__)

#: Environment variable naming the cache folder (the index lives in ``$AGENTRT_CACHE_DIR/search``).
CACHE_DIR_ENV: Final = "AGENTRT_CACHE_DIR"
#: Bump when what the default corpus holds changes, so stale caches are not reused.
CORPUS_VERSION: Final = 1
#: How many stdlib modules the default corpus takes (all of them on CPython 3.11: about 400).
DEFAULT_STDLIB_FILES: Final = 500
_SCHEMA_VERSION: Final = "1"
_SUFFIXES: Final = frozenset({".md", ".txt", ".rst", ".py"})
_SKIP_DIRS: Final = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages"})
# Tests and tooling rather than library documentation (encodings: 120 near-identical codecs).
_SKIP_STDLIB: Final = _SKIP_DIRS | {
    "test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "pydoc_data",
    "encodings", "distutils", "__phello__",
}  # fmt: skip
_MAX_FILE_BYTES: Final = 4_000_000
_EMPTY_QUERY: Final = "the search query is empty; give one or more words, e.g. 'json encoder'"
_DOCS_DDL: Final = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5("
    "path, title, body, tokenize = 'unicode61 remove_diacritics 2')"
)
# bm25() weights per column (path, title, body): a query word in a path or title says more about
# what the document is than one occurrence in its body. bm25() is negative: lower ranks better.
_QUERY_SQL: Final = (
    "SELECT path, title, bm25(docs, 4.0, 8.0, 1.0) AS rank, "
    "snippet(docs, 2, '**', '**', '…', 16) FROM docs WHERE docs MATCH ? ORDER BY rank LIMIT ?"
)


class SearchArgs(BaseModel):
    """Arguments of a search: an FTS5 query and how many hits to return."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    query: str = Field(
        min_length=1,
        description='Words (all must match), "a phrase", a OR b, a NOT b, prefix*, title:word.',
    )
    k: int = Field(default=5, ge=1, le=50, description="How many hits to return, best first.")


class SearchHit(BaseModel):
    """One document that matched, with its BM25 score (higher is better) and a snippet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="Where the document is, relative to the corpus.")
    title: str
    score: float = Field(description="BM25 relevance; higher is better.")
    snippet: str = Field(description="Text around the matched words, marked with **.")


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


def quote_terms(text: str) -> str:
    """Quote every word of free text, so no character in it is read as FTS5 syntax.

    Example:
        >>> quote_terms("json: c++")
        '"json:" "c++"'
    """
    return " ".join('"' + word.replace('"', '""') + '"' for word in text.split())


def _query_error(query: str, exc: sqlite3.Error) -> ToolError:
    """The error for a query FTS5 refused, naming the problem and the fix."""
    msg = str(exc)
    fix = f"quote the terms, e.g. {quote_terms(query)}"
    bad = f"bad search query {query!r}"
    if msg == "interrupted":
        return RetryableToolError(f"the search for {query!r} was interrupted (timed out)")
    if msg.startswith("unterminated string"):
        return ToolError(f"{bad}: a double quote is not closed; close the phrase or {fix}")
    if m := re.fullmatch(r'fts5: syntax error near "(.*)"', msg):
        near = m.group(1)
        if near == "":
            return ToolError(
                f"{bad}: it ends too early (a trailing AND/OR/NOT, an unclosed '(' or a "
                f"'column:' with no word); complete it or {fix}"
            )
        if near in ("AND", "OR", "NOT"):
            return ToolError(
                f"{bad}: {near} needs a word on each side (json {near} xml); to search for "
                f'the word itself, quote it: "{near.lower()}"'
            )
        return ToolError(f"{bad}: {near!r} is query syntax outside quotes; {fix}")
    if m := re.fullmatch(r"no such column: (.*)", msg):
        return ToolError(
            f"{bad}: {m.group(1)!r} reads as a column filter ('word:' or '-word'; the columns "
            f"are path, title and body); {fix}"
        )
    if msg.startswith("unknown special query"):
        return ToolError(f"{bad}: '*' must follow a word (json*); {fix}")
    return _sqlite_error(exc, f"searching for {query!r}")


def _sqlite_error(exc: sqlite3.Error, doing: str) -> ToolError:
    """Map any other SQLite error (locked, corrupt, full disk) to a tool error."""
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return RetryableToolError(f"{doing}: the index is locked by another process; try again")
    return ToolError(f"{doing}: SQLite error {type(exc).__name__}: {exc}")


def check_query(query: str) -> str:
    """Return the query stripped, or raise the `ToolError` the index would raise for it.

    The emulated twin calls this so malformed queries fail the same way in virtual time.

    Raises:
        ToolError: the query is empty or not valid FTS5 syntax; the message says how to fix it.
    """
    stripped = query.strip()
    if not stripped:
        raise ToolError(_EMPTY_QUERY)
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(_DOCS_DDL)
        conn.execute("SELECT rowid FROM docs WHERE docs MATCH ?", (stripped,)).fetchall()
    except sqlite3.OperationalError as exc:
        if "fts5" in str(exc) and "no such module" in str(exc):
            return stripped  # no FTS5 here: nothing to check against
        raise _query_error(stripped, exc) from exc
    finally:
        conn.close()
    return stripped


def hits_result(
    query: str, hits: Sequence[SearchHit], *, duration_s: float | None = None
) -> ToolResult:
    """The `ToolResult` for a search: readable hits as ``output``, the hits as ``data``."""
    if not hits:
        output = (
            f"no documents match {query!r} (every word must match: try fewer words, "
            "'a OR b', or a prefix like pars*)"
        )
    else:
        noun = "hit" if len(hits) == 1 else "hits"
        lines = [f"{len(hits)} {noun} for {query!r} (BM25 score, higher is better):"]
        for i, hit in enumerate(hits, 1):
            lines += [f"{i}. {hit.path}  [score {hit.score:.2f}]  {hit.title}", f"   {hit.snippet}"]
        output = "\n".join(lines)
    data: dict[str, JsonValue] = {"query": query, "hits": [hit.model_dump() for hit in hits]}
    return ToolResult(output=output, data=data, duration_s=duration_s)


# --- documents ------------------------------------------------------------------------------


def _python_doc(rel: str, data: bytes) -> tuple[str, str] | None:
    """(title, body) from a module's docstrings and its public classes' and functions'."""
    with warnings.catch_warnings():
        # Old modules hold invalid escapes, whose DeprecationWarning must not fail the build
        # under -W error. (catch_warnings is process-wide: another thread's warning raised in
        # this short window is silenced too; Python 3.14 makes it context-local.)
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(data, filename=rel)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None
    module = rel.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    module_doc = ast.get_docstring(tree) or ""
    parts = [f"{module}\n{module_doc}"] if module_doc else []
    todo: list[tuple[str, ast.AST]] = [("", tree)]
    while todo:
        prefix, node = todo.pop(0)
        for child in getattr(node, "body", []):
            if not isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if child.name.startswith("_"):
                continue
            qualname = prefix + child.name
            if doc := ast.get_docstring(child):
                parts.append(f"{qualname}\n{doc}")
            if isinstance(child, ast.ClassDef):
                todo.append((qualname + ".", child))
    if not parts:
        return None
    summary = module_doc.strip().splitlines()[0] if module_doc.strip() else ""
    return (f"{module}: {summary}" if summary else module), "\n\n".join(parts)


def _text_doc(rel: str, data: bytes) -> tuple[str, str] | None:
    """(title, body) of a text file: the first heading (or line) and the whole text."""
    text = data.decode("utf-8", errors="replace").replace("\x00", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    # A Markdown "# " heading, else the first line with a letter (not an reST over-line).
    plain = next((line for line in lines if any(c.isalnum() for c in line)), lines[0])
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), plain)
    return title[:120], text


def _extract(rel: str, data: bytes) -> tuple[str, str] | None:
    if PurePosixPath(rel).suffix.lower() == ".py":
        return _python_doc(rel, data)
    return _text_doc(rel, data)


@dataclass(frozen=True, slots=True)
class _Source:
    """A folder to index, with the prefix its documents' paths get."""

    root: Path
    label: str = ""
    suffixes: frozenset[str] = _SUFFIXES
    skip_dirs: frozenset[str] = _SKIP_DIRS
    skip_prefixes: tuple[str, ...] = (".",)
    recursive: bool = True
    max_files: int | None = None

    def scan(self) -> dict[str, tuple[Path, str, int, int]]:
        """Stored path -> (file, path relative to root, mtime_ns, size)."""
        files: list[Path] = []
        if self.recursive:
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = [
                    d for d in dirnames
                    if d not in self.skip_dirs and not d.startswith(self.skip_prefixes)
                ]  # fmt: skip
                files += [Path(dirpath, f) for f in filenames if self._wanted(f)]
        elif self.root.is_dir():
            files = [p for p in self.root.iterdir() if self._wanted(p.name) and p.is_file()]
        rels = sorted((p.relative_to(self.root).as_posix(), p) for p in files)
        # Shallow paths first, so a cap keeps top-level modules before deep package internals.
        rels.sort(key=lambda item: item[0].count("/"))
        found: dict[str, tuple[Path, str, int, int]] = {}
        for rel, path in rels[: self.max_files]:
            try:
                st = path.stat()
            except OSError:
                continue
            if st.st_size <= _MAX_FILE_BYTES:
                key = f"{self.label}/{rel}" if self.label else rel
                found[key] = (path, rel, st.st_mtime_ns, st.st_size)
        return found

    def _wanted(self, name: str) -> bool:
        return PurePosixPath(name).suffix.lower() in self.suffixes and not name.startswith(".")


# --- the index ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Index:
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
        self, sources: Sequence[_Source], stop: threading.Event, *, only_first: bool
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
                raise _sqlite_error(exc, "updating the search index") from exc
            self.built = True
            return stats

    def search(self, query: str, k: int, stop: threading.Event) -> list[SearchHit]:
        """The top ``k`` documents for an FTS5 query."""
        with self.lock:
            _check(stop)
            try:
                rows = self._open().execute(_QUERY_SQL, (query, k)).fetchall()
            except sqlite3.Error as exc:
                raise _query_error(query, exc) from exc
        return [
            SearchHit(path=p, title=t, score=-rank, snippet=" ".join(s.split()))
            for p, t, rank, s in rows
        ]

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
        conn.execute(_DOCS_DDL)
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
        if (doc := _extract(rel, data)) is not None:
            conn.execute(
                "INSERT INTO docs (rowid, path, title, body) VALUES (?, ?, ?, ?)", (fid, path, *doc)
            )
    (documents,) = conn.execute("SELECT count(*) FROM docs").fetchone()
    return UpdateStats(added, changed, len(gone), unchanged, documents)


# --- the tool -------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where the default corpus index is cached.

    ``$AGENTRT_CACHE_DIR/search`` if set, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) +
    ``agentrt/search``.
    """
    if base := os.environ.get(CACHE_DIR_ENV):
        return Path(base) / "search"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "agentrt" / "search"


@final
class SearchTool:
    """Full-text search over a folder of documents: SQLite FTS5 with BM25 ranking.

    Indexes ``.md``, ``.txt`` and ``.rst`` files and the docstrings of ``.py`` files (module,
    public classes and functions). The index is built on the first call and brought up to date
    incrementally (new files indexed, changed ones re-indexed, deleted ones forgotten).

    Example:
        >>> import anyio, tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.md").write_text("Back off exponentially.")
        >>> async def main() -> str:
        ...     tool = SearchTool(folder)
        ...     result = await tool.call(SearchArgs(query="exponential*"))
        ...     await tool.aclose()
        ...     return result.data["hits"][0]["path"]
        >>> anyio.run(main)
        'a.md'

    Args:
        folder: the folder of documents.
        index: the index file; None keeps the index in memory.
        auto_update: re-scan the folder before every query; False scans before the first only.
        timeout_s: limit on one query (and on one re-scan once the index is built).
        build_timeout_s: limit on building the index the first time.

    Raises:
        ConfigError: ``folder`` is not a folder.
    """

    name = "search"
    description = (
        "Full-text search over documentation (SQLite FTS5, BM25 ranking): the best-matching "
        'documents with a score and a snippet. Query: words (all must match), "a phrase", '
        "a OR b, a NOT b, prefix*; quote words that contain punctuation."
    )
    args_model = SearchArgs

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        index: str | os.PathLike[str] | None = None,
        auto_update: bool = True,
        timeout_s: float = 10.0,
        build_timeout_s: float = 120.0,
    ) -> None:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ConfigError(f"search folder {str(root)!r} is not a folder; give a folder path")
        self._setup([_Source(root)], index, auto_update, timeout_s, build_timeout_s)

    def _setup(
        self,
        sources: Sequence[_Source],
        index: str | os.PathLike[str] | None,
        auto_update: bool,
        timeout_s: float,
        build_timeout_s: float,
    ) -> None:
        if timeout_s <= 0 or build_timeout_s <= 0:
            raise ConfigError("timeout_s and build_timeout_s must be > 0")
        self._sources = tuple(sources)
        self._index = _Index(None if index is None else Path(index).expanduser())
        self.auto_update = auto_update
        self.timeout_s = timeout_s
        self.build_timeout_s = build_timeout_s
        self._closed = False

    @classmethod
    def from_default_corpus(
        cls,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        stdlib_max_files: int = DEFAULT_STDLIB_FILES,
        timeout_s: float = 10.0,
        build_timeout_s: float = 120.0,
    ) -> SearchTool:
        """The bundled corpus: the standard library's docstrings plus agentrt's own docs.

        Needs no network. Built on first use (a few seconds) and cached on disk, keyed by the
        Python version and `CORPUS_VERSION`; later uses only check file sizes and mtimes.

        Args:
            cache_dir: where to keep the index; default `default_cache_dir()`. If it cannot be
                created the index is kept in memory (and a warning logged).
            stdlib_max_files: cap on stdlib modules indexed, shallowest first.
            timeout_s: limit on one query.
            build_timeout_s: limit on building the index.
        """
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        sources = [
            _Source(
                stdlib,
                "stdlib",
                frozenset({".py"}),
                _SKIP_STDLIB,
                (".", "config-"),
                max_files=stdlib_max_files,
            )
        ]
        project = Path(__file__).resolve().parent.parent
        if (project / "agentrt").is_dir() and (project / "pyproject.toml").is_file():
            md = frozenset({".md"})
            sources.append(_Source(project, "agentrt", md, recursive=False))
            sources.append(_Source(project / "docs", "agentrt/docs", md, recursive=False))
        impl = sys.implementation.name
        version = ".".join(map(str, sys.version_info[:3]))
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        index: Path | None = folder / f"stdlib-{impl}{version}-corpus{CORPUS_VERSION}.sqlite3"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _log.warning("search_cache_unavailable", cache_dir=str(folder), error=str(exc))
            index = None
        tool = cls.__new__(cls)
        tool._setup(sources, index, False, timeout_s, build_timeout_s)
        return tool

    @property
    def index_path(self) -> Path | None:
        """The index file, or None for an in-memory index."""
        return self._index.location

    async def update(self) -> UpdateStats:
        """Bring the index up to date with the documents now on disk.

        Raises:
            ToolError: in virtual time (use the twin), on a timeout, or on an SQLite failure.
            ConfigError: the index cannot be opened or created.
        """
        stats = await self._run(
            partial(self._index.update, self._sources, only_first=False),
            timeout_s=self.build_timeout_s,
            doing="updating the search index",
        )
        assert stats is not None
        return stats

    async def search(self, query: str, *, k: int = 5) -> list[SearchHit]:
        """The top ``k`` hits for an FTS5 query, best first (the index is refreshed first).

        Raises:
            ToolError: a malformed query (the message says how to fix it), virtual time, a
                timeout, or an SQLite failure.
        """
        query = query.strip()
        if not query:
            raise ToolError(_EMPTY_QUERY)
        timeout = self.timeout_s if self._index.built else self.build_timeout_s
        await self._run(
            partial(self._index.update, self._sources, only_first=not self.auto_update),
            timeout_s=timeout,
            doing="updating the search index",
        )
        return await self._run(
            partial(self._index.search, query, k), timeout_s=self.timeout_s, doing="searching"
        )

    async def call(self, args: SearchArgs) -> ToolResult:
        """Run a search; ``output`` lists the hits, ``data`` holds them as dicts."""
        hits = await self.search(args.query, k=args.k)
        return hits_result(args.query.strip(), hits)

    async def aclose(self) -> None:
        """Close the index (an in-memory index is discarded); safe to call more than once."""
        self._closed = True
        if self._index.conn is not None:
            self._index.interrupt()
            # Bounded: an abandoned build holds the lock until it notices; it closes after that.
            with anyio.move_on_after(self.timeout_s):
                await anyio.to_thread.run_sync(self._index.close, abandon_on_cancel=True)

    async def _run(self, fn: Callable[[threading.Event], T], *, timeout_s: float, doing: str) -> T:
        """Run blocking SQLite work in a worker thread, bounded by ``timeout_s``."""
        if current_clock().is_virtual:
            raise ToolError(
                "the search tool does real I/O in threads, which virtual time cannot account "
                "for; in a virtual-time run use its emulated twin: tools.twins.SearchTwin "
                "(registered as 'search-twin')"
            )
        if self._closed:
            raise ToolError("the search tool is closed; create a new one")
        finished = False
        stop = threading.Event()

        def work() -> T:
            nonlocal finished
            try:
                return fn(stop)
            finally:
                finished = True

        try:
            with anyio.fail_after(timeout_s):
                return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except TimeoutError as exc:
            raise RetryableToolError(
                f"{doing} took longer than {timeout_s:g} s; retry, narrow the query, or raise "
                "the tool's timeout_s"
            ) from exc
        finally:
            if not finished:  # timed out or cancelled: stop the abandoned thread's work
                stop.set()
                self._index.interrupt()


def make_search(
    *,
    corpus: str | None = None,
    index: str | None = None,
    timeout_s: float = 10.0,
    seed: int | None = None,
) -> SearchTool:
    """Registry factory for the ``search`` tool (``seed`` is accepted and unused).

    Args:
        corpus: a folder of documents; None (or ``"default"``) is the bundled corpus (stdlib
            docstrings and agentrt's docs, cached under `default_cache_dir()`).
        index: the index file for a folder corpus; None keeps it in memory.
        timeout_s: limit on one query.
        seed: ignored (the search is deterministic).
    """
    del seed
    if corpus is None or corpus == "default":
        if index is not None:
            raise ConfigError("index= applies to a folder corpus; the default corpus is cached")
        return SearchTool.from_default_corpus(timeout_s=timeout_s)
    return SearchTool(corpus, index=index, timeout_s=timeout_s)
