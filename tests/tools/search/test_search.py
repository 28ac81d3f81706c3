from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

import tools.search.query as query_mod
from agentrt import (
    ConfigError,
    RetryableToolError,
    ToolError,
    ToolResult,
    VirtualClock,
    current_clock,
    run,
)
from tools.search import (
    CACHE_DIR_ENV,
    SearchArgs,
    SearchTool,
    check_query,
    default_cache_dir,
    fts5_available,
    make_search,
)

DOCS = {
    "retries.md": "# Retries\n\nRetry failed calls with exponential backoff and jitter.\n",
    "storage.txt": "Storage notes\n\nThe index lives in SQLite; WAL mode keeps readers fast.\n",
    "guide.rst": "User guide\n==========\n\nInstall the package, then run the demo command.\n",
    "pkg/config.py": (
        '"""Configuration loading."""\n\n'
        "def parse_config(path):\n"
        '    """Parse a TOML configuration file into settings."""\n\n'
        "class Settings:\n"
        '    """Validated settings."""\n\n'
        "    def merge(self, other):\n"
        '        """Merge two settings objects; the other one wins."""\n\n'
        "def _private():\n"
        '    """Hidden helper about zeppelins."""\n'
    ),
    "pkg/broken.py": "def oops(:\n    '''never parsed'''\n",
    "café.md": "# Café crème 🍰\n\nNotes from 東京 タワー and a crème brûlée recipe.\n",
    ".hidden/secret.md": "# Secret\n\nzeppelins everywhere\n",
    "image.png": "not a document",
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    for rel, text in DOCS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def hits_of(result: ToolResult) -> list[dict[str, Any]]:
    assert isinstance(result.data, dict)
    return cast(list[dict[str, Any]], result.data["hits"])


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def test_fts5_is_available() -> None:
    # The whole tool rests on it; if this fails, this Python's SQLite lacks FTS5.
    assert fts5_available()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("exponential backoff", "retries.md"),
        ("toml configuration", "pkg/config.py"),
        ('"Settings.merge"', "pkg/config.py"),
        ("sqlite readers", "storage.txt"),
        ("demo command", "guide.rst"),
        ("retr*", "retries.md"),
        ('"crème brûlée"', "café.md"),
    ],
)
async def test_known_queries_rank_the_right_document_first(
    folder: Path, query: str, expected: str
) -> None:
    tool = SearchTool(folder)
    hits = await tool.search(query)
    await tool.aclose()
    assert hits[0].path == expected


async def test_scores_are_ordered_and_snippets_mark_the_term(tmp_path: Path) -> None:
    for i in range(1, 6):  # doc i mentions "latency" i times, in the same amount of text
        text = " ".join(["latency"] * i + ["filler"] * (10 - i))
        (tmp_path / f"d{i}.txt").write_text(f"doc {i}\n{text}\n")
    for i in range(6):  # without the term, so it is rare enough to carry weight (IDF > 0)
        (tmp_path / f"other{i}.txt").write_text("unrelated words only\n")
    tool = SearchTool(tmp_path)
    result = await tool.call(SearchArgs(query="latency", k=5))
    await tool.aclose()
    hits = hits_of(result)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == 5
    assert [h["path"] for h in hits] == ["d5.txt", "d4.txt", "d3.txt", "d2.txt", "d1.txt"]
    assert all("**latency**" in h["snippet"] for h in hits)
    assert "1. d5.txt" in result.output
    assert "**latency**" in result.output


async def test_what_is_indexed(folder: Path) -> None:
    tool = SearchTool(folder)
    stats = await tool.update()
    # .md .txt .rst .py (the broken one is tracked, not indexed); not .png, not hidden folders.
    assert stats.added == 6
    assert stats.documents == 5
    assert await tool.search("zeppelins") == []  # private docstring and hidden folder skipped
    assert await tool.search("oops") == []
    (hit,) = await tool.search("settings merge")
    assert hit.title == "pkg.config: Configuration loading."
    await tool.aclose()


async def test_incremental_update(folder: Path) -> None:
    tool = SearchTool(folder, auto_update=False)
    first = await tool.update()
    assert (first.added, first.parsed) == (6, 6)
    again = await tool.update()
    assert (again.parsed, again.unchanged) == (0, 6)

    (folder / "new.md").write_text("# New\n\nA fresh note about quokkas.\n")
    (folder / "retries.md").write_text("# Retries\n\nNow we give up at once: no wombats.\n")
    (folder / "storage.txt").unlink()
    stats = await tool.update()
    assert (stats.added, stats.changed, stats.removed, stats.unchanged) == (1, 1, 1, 4)
    assert [h.path for h in await tool.search("quokkas")] == ["new.md"]
    assert [h.path for h in await tool.search("wombats")] == ["retries.md"]
    assert await tool.search("exponential") == []  # the old text of a changed file is gone
    assert await tool.search("sqlite") == []  # a deleted file is forgotten

    guide = folder / "guide.rst"
    os.utime(guide, ns=(time.time_ns(), guide.stat().st_mtime_ns + 10**9))  # touched only
    touched = await tool.update()
    assert (touched.parsed, touched.unchanged) == (0, 6)
    await tool.aclose()


async def test_auto_update_sees_changes_on_every_call(folder: Path) -> None:
    tool = SearchTool(folder)  # auto_update=True: each call re-scans the folder
    assert await tool.search("quokkas") == []
    (folder / "new.md").write_text("quokkas")
    assert [h.path for h in await tool.search("quokkas")] == ["new.md"]
    (folder / "new.md").unlink()
    assert await tool.search("quokkas") == []
    await tool.aclose()


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ('"unbalanced', "double quote is not closed"),
        ("AND", "AND needs a word on each side"),
        ("json AND", "ends too early"),
        ("(json", "ends too early"),
        ("NOT json", "NOT needs a word"),
        ("foo:bar", "'foo' reads as a column filter"),
        ("a-b", "'b' reads as a column filter"),
        ("*", "'*' must follow a word"),
        ("what's new?", '"\'" is query syntax'),
        ("c++", "'+' is query syntax"),
        ("   ", "the search query is empty"),
    ],
)
async def test_malformed_query_is_a_tool_error(folder: Path, query: str, problem: str) -> None:
    tool = SearchTool(folder)
    with pytest.raises(ToolError) as info:
        await tool.call(SearchArgs(query=query))
    await tool.aclose()
    assert type(info.value) is ToolError  # not retryable: the query must change
    assert problem in str(info.value)
    if query.strip():
        assert "quote" in str(info.value)  # says how to fix it
        with pytest.raises(ToolError) as twin_info:  # the twin fails the same way
            check_query(query)
        assert str(twin_info.value) == str(info.value)


async def test_the_suggested_fix_works(folder: Path) -> None:
    tool = SearchTool(folder)
    with pytest.raises(ToolError, match=r'e\.g\. "what\'s" "new\?"'):
        await tool.search("what's new?")
    assert await tool.search('"what\'s" "new?"') == []  # valid now, just no match
    await tool.aclose()


async def test_unicode_round_trips(folder: Path) -> None:
    tool = SearchTool(folder)
    for query in ("cafe", "CAFÉ", "creme brulee", "東京", "タワー"):
        hits = await tool.search(query)
        assert [h.path for h in hits] == ["café.md"], query
    (hit,) = await tool.search("cafe")
    assert hit.title == "Café crème 🍰"
    assert "**Café**" in hit.snippet
    assert "東京" in (await tool.search("タワー"))[0].snippet
    await tool.aclose()


async def test_in_memory_and_on_disk(folder: Path, tmp_path: Path) -> None:
    memory = SearchTool(folder)
    assert memory.index_path is None
    assert (await memory.update()).added == 6
    await memory.aclose()
    # Nothing written next to the documents.
    assert files_in(folder) == ["café.md", "guide.rst", "image.png", "retries.md", "storage.txt"]

    index = tmp_path / "idx" / "search.sqlite3"
    disk = SearchTool(folder, index=index)
    assert (await disk.update()).added == 6
    await disk.aclose()
    assert index.is_file()
    reopened = SearchTool(folder, index=index)
    stats = await reopened.update()
    assert (stats.parsed, stats.unchanged) == (0, 6)  # persisted: nothing re-parsed
    assert (await reopened.search("exponential"))[0].path == "retries.md"
    await reopened.aclose()


async def test_bad_folder_and_index_are_config_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        SearchTool(tmp_path / "missing")
    not_an_index = tmp_path / "notes.txt"
    not_an_index.write_text("precious user data " * 100)
    tool = SearchTool(folder, index=not_an_index)
    with pytest.raises(ConfigError, match="choose another index path"):
        await tool.update()
    await tool.aclose()
    assert not_an_index.read_text().startswith("precious")


async def test_slow_query_times_out_and_is_interrupted(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = SearchTool(folder, timeout_s=0.2)
    await tool.update()
    endless = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT ?, ?, 0.0, '' FROM c WHERE x < 0"
    )
    monkeypatch.setattr(query_mod, "_QUERY_SQL", endless)
    with anyio.fail_after(5), pytest.raises(RetryableToolError, match="longer than 0.2 s"):
        await tool.search("retries")
    monkeypatch.undo()
    # The runaway statement was interrupted, so the index is free for the next query at once.
    with anyio.fail_after(2):
        assert (await tool.search("retries"))[0].path == "retries.md"
    await tool.aclose()


async def test_a_build_that_times_out_stops_and_rolls_back(tmp_path: Path) -> None:
    tool = SearchTool.from_default_corpus(cache_dir=tmp_path, build_timeout_s=0.3)
    with pytest.raises(RetryableToolError, match="longer than 0.3 s"):
        await tool.update()  # the stdlib build takes seconds
    await tool.aclose()  # waits (bounded) for the abandoned build thread to let go
    assert tool.index_path is not None
    conn = sqlite3.connect(tool.index_path)
    try:
        (files,) = conn.execute("SELECT count(*) FROM files").fetchone()
    finally:
        conn.close()
    assert files == 0  # stopped and rolled back, not finished in the background


async def test_concurrent_calls_and_close(folder: Path) -> None:
    tool = SearchTool(folder)
    results: dict[str, str] = {}

    async def one(query: str) -> None:
        results[query] = (await tool.search(query))[0].path

    async with anyio.create_task_group() as tg:
        for query in ("exponential", "sqlite", "demo", "toml", "cafe") * 4:
            tg.start_soon(one, query)
    assert results["toml"] == "pkg/config.py"
    await tool.aclose()
    await tool.aclose()
    with pytest.raises(ToolError, match="closed"):
        await tool.search("demo")


def test_real_tool_refuses_virtual_time(folder: Path) -> None:
    tool = SearchTool(folder)

    async def main() -> None:
        assert current_clock().is_virtual
        await tool.call(SearchArgs(query="retries"))

    with pytest.raises(ToolError, match="search-twin"):
        run(main, clock=VirtualClock())


def test_default_cache_dir_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    assert default_cache_dir() == tmp_path / "search"
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "agentrt" / "search"


async def test_default_corpus_builds_once_then_is_cached(tmp_path: Path) -> None:
    first = SearchTool.from_default_corpus(cache_dir=tmp_path)
    built = await first.update()
    assert built.added > 300  # the stdlib's modules (CPython 3.11: ~400) plus agentrt's docs
    hits = await first.search("json encoder")
    assert hits[0].path == "stdlib/json/encoder.py"
    await first.aclose()
    assert first.index_path is not None
    assert first.index_path.parent == tmp_path

    second = SearchTool.from_default_corpus(cache_dir=tmp_path)
    cached = await second.update()
    assert (cached.parsed, cached.unchanged) == (0, built.added)  # a cache hit: nothing parsed
    assert cached.documents == built.documents
    result = await second.call(SearchArgs(query="virtual time", k=3))
    assert "agentrt/docs/time.md" in [h["path"] for h in hits_of(result)]
    await second.aclose()


def test_make_search_factory(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = make_search(corpus=str(folder), index=str(tmp_path / "i.sqlite3"), seed=3)
    assert isinstance(tool, SearchTool)
    assert tool.index_path == tmp_path / "i.sqlite3"
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    default = make_search()  # the bundled corpus, not built until first used
    assert default.index_path is not None
    assert default.index_path.parent == tmp_path / "cache" / "search"
    assert not default.index_path.exists()
    with pytest.raises(ConfigError, match="folder corpus"):
        make_search(index=str(tmp_path / "i.sqlite3"))


# --- the twin ---------------------------------------------------------------------------------
