"""The ``search`` tool (SQLite FTS5 with BM25 ranking over documents) and its emulated twin."""

from __future__ import annotations

from tools.search.corpus import (
    CACHE_DIR_ENV,
    CORPUS_VERSION,
    DEFAULT_STDLIB_FILES,
    default_cache_dir,
)
from tools.search.index import UpdateStats, fts5_available
from tools.search.query import SearchHit, check_query, hits_result, quote_terms
from tools.search.tool import SearchArgs, SearchTool, make_search
from tools.search.twin import (
    DEFAULT_CORPUS_DOCS,
    SEARCH_LATENCY,
    SEARCH_RESCAN_LATENCY,
    SearchLatency,
    SearchTwin,
    make_search_twin,
    measure_search_latency,
)

__all__ = [
    "CACHE_DIR_ENV",
    "CORPUS_VERSION",
    "DEFAULT_CORPUS_DOCS",
    "DEFAULT_STDLIB_FILES",
    "SEARCH_LATENCY",
    "SEARCH_RESCAN_LATENCY",
    "SearchArgs",
    "SearchHit",
    "SearchLatency",
    "SearchTool",
    "SearchTwin",
    "UpdateStats",
    "check_query",
    "default_cache_dir",
    "fts5_available",
    "hits_result",
    "make_search",
    "make_search_twin",
    "measure_search_latency",
    "quote_terms",
]
