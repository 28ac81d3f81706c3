"""The search tool: `SearchTool` (SQLite FTS5 with BM25 over a folder), its args, its factory."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar, final

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field

from agentrt.clock import current_clock
from agentrt.errors import ConfigError, RetryableToolError, ToolError
from agentrt.tool import ToolResult
from tools.search.corpus import DEFAULT_STDLIB_FILES, Source, default_corpus
from tools.search.index import Index, UpdateStats
from tools.search.query import EMPTY_QUERY, SearchHit, hits_result

__all__ = ["SearchArgs", "SearchTool", "make_search"]

T = TypeVar("T")


class SearchArgs(BaseModel):
    """Arguments of a search: an FTS5 query and how many hits to return."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    query: str = Field(
        min_length=1,
        description='Words (all must match), "a phrase", a OR b, a NOT b, prefix*, title:word.',
    )
    k: int = Field(default=5, ge=1, le=50, description="How many hits to return, best first.")


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
        self._setup([Source(root)], index, auto_update, timeout_s, build_timeout_s)

    def _setup(
        self,
        sources: Sequence[Source],
        index: str | os.PathLike[str] | None,
        auto_update: bool,
        timeout_s: float,
        build_timeout_s: float,
    ) -> None:
        if timeout_s <= 0 or build_timeout_s <= 0:
            raise ConfigError("timeout_s and build_timeout_s must be > 0")
        self._sources = tuple(sources)
        self._index = Index(None if index is None else Path(index).expanduser())
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
        sources, index = default_corpus(cache_dir, stdlib_max_files)
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
            raise ToolError(EMPTY_QUERY)
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
                "for; in a virtual-time run use its emulated twin: tools.search.SearchTwin "
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
