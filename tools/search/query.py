"""Search queries: FTS5 syntax checks and quoting, BM25-ranked lookup, and the hits it returns."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from agentrt.errors import RetryableToolError, ToolError
from agentrt.tool import ToolResult

__all__ = [
    "DOCS_DDL",
    "EMPTY_QUERY",
    "SearchHit",
    "check_query",
    "hits_result",
    "quote_terms",
    "sqlite_error",
    "top_hits",
]

EMPTY_QUERY: Final = "the search query is empty; give one or more words, e.g. 'json encoder'"
#: The documents table: the index creates it, `check_query` parses queries against it.
DOCS_DDL: Final = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5("
    "path, title, body, tokenize = 'unicode61 remove_diacritics 2')"
)
# bm25() weights per column (path, title, body): a query word in a path or title says more about
# what the document is than one occurrence in its body. bm25() is negative: lower ranks better.
_QUERY_SQL: Final = (
    "SELECT path, title, bm25(docs, 4.0, 8.0, 1.0) AS rank, "
    "snippet(docs, 2, '**', '**', '…', 16) FROM docs WHERE docs MATCH ? ORDER BY rank LIMIT ?"
)


class SearchHit(BaseModel):
    """One document that matched, with its BM25 score (higher is better) and a snippet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="Where the document is, relative to the corpus.")
    title: str
    score: float = Field(description="BM25 relevance; higher is better.")
    snippet: str = Field(description="Text around the matched words, marked with **.")


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
    return sqlite_error(exc, f"searching for {query!r}")


def sqlite_error(exc: sqlite3.Error, doing: str) -> ToolError:
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
        raise ToolError(EMPTY_QUERY)
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(DOCS_DDL)
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


def top_hits(conn: sqlite3.Connection, query: str, k: int) -> list[SearchHit]:
    """The top ``k`` documents for an FTS5 query, best first (BM25)."""
    try:
        rows = conn.execute(_QUERY_SQL, (query, k)).fetchall()
    except sqlite3.Error as exc:
        raise _query_error(query, exc) from exc
    return [
        SearchHit(path=p, title=t, score=-rank, snippet=" ".join(s.split()))
        for p, t, rank, s in rows
    ]
