"""The search tool's emulated twin for virtual-time runs, and the latency model it plays."""

from __future__ import annotations

import math
import random
import re
import shutil
import statistics
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import anyio
from pydantic import TypeAdapter, ValidationError

from agentrt.errors import ConfigError
from agentrt.tool import ToolResult
from tools._twin_script import read_script
from tools.search.query import SearchHit, check_query, hits_result
from tools.search.tool import SearchArgs, SearchTool

__all__ = [
    "DEFAULT_CORPUS_DOCS",
    "SEARCH_LATENCY",
    "SEARCH_RESCAN_LATENCY",
    "SearchLatency",
    "SearchTwin",
    "make_search_twin",
    "measure_search_latency",
]


@dataclass(frozen=True, slots=True)
class SearchLatency:
    """Latency of one search call: ``(base_s + per_doc_s * docs) * lognormal(0, sigma)``.

    The bracket is the median; the lognormal factor is the call-to-call spread.

    Attributes:
        base_s: fixed cost of a call (thread hop, query parse, result formatting).
        per_doc_s: cost per document in the index.
        sigma: standard deviation of log(latency / median); 0 for no jitter.
    """

    base_s: float
    per_doc_s: float
    sigma: float = 0.0

    def median_s(self, docs: int) -> float:
        """The median latency for an index of ``docs`` documents."""
        return self.base_s + self.per_doc_s * docs

    def sample_s(self, rng: random.Random, docs: int) -> float:
        """One latency draw."""
        jitter = rng.lognormvariate(0.0, self.sigma) if self.sigma > 0 else 1.0
        return self.median_s(docs) * jitter


#: Fitted on the real tool over the default corpus, index built and cached (no re-scan): the
#: mean of three runs of `measure_search_latency` (medians 0.38-1.30 ms at 56-106 documents,
#: 1.08-1.46 ms at 361). Command, machine and all numbers: docs/tools.md.
SEARCH_LATENCY: Final = SearchLatency(base_s=0.43e-3, per_doc_s=2.55e-6, sigma=0.65)
#: The same for a folder tool with ``auto_update=True``: the folder is re-scanned before every
#: query, so the cost grows with its files (medians 1.0-1.2 ms at 25 files, 4.5-4.7 at 200).
SEARCH_RESCAN_LATENCY: Final = SearchLatency(base_s=0.75e-3, per_doc_s=19.5e-6, sigma=0.14)
#: Documents in the default corpus on CPython 3.11 (stdlib docstrings + agentrt docs).
DEFAULT_CORPUS_DOCS: Final = 360

_CANNED: Final = (
    SearchHit(
        path="stdlib/json/encoder.py",
        title="json.encoder: Implementation of JSONEncoder",
        score=0.0,
        snippet="JSONEncoder Extensible JSON encoder for Python data structures. Supports the "
        "following objects and types by default: dict, list, tuple, str, int, float, True…",
    ),
    SearchHit(
        path="stdlib/json/decoder.py",
        title="json.decoder: Implementation of JSONDecoder",
        score=0.0,
        snippet="JSONDecoder Simple JSON decoder. Performs the following translations in "
        "decoding by default: object → dict, array → list, string → str…",
    ),
    SearchHit(
        path="stdlib/argparse.py",
        title="argparse: Command-line parsing library",
        score=0.0,
        snippet="This module is an optparse-inspired command-line parsing library that handles "
        "both optional and positional arguments…",
    ),
    SearchHit(
        path="stdlib/functools.py",
        title="functools: functools.py - Tools for working with functions and callable objects",
        score=0.0,
        snippet="lru_cache Least-recently-used cache decorator. If maxsize is set to None, the "
        "LRU features are disabled and the cache can grow without bound…",
    ),
    SearchHit(
        path="stdlib/subprocess.py",
        title="subprocess: Subprocesses with accessible I/O streams",
        score=0.0,
        snippet="This module allows you to spawn processes, connect to their input/output/error "
        "pipes, and obtain their return codes…",
    ),
    SearchHit(
        path="stdlib/unittest/case.py",
        title="unittest.case: Test case implementation",
        score=0.0,
        snippet="TestCase A class whose instances are single test cases. If the fixture may be "
        "used for many test cases, create as many test methods as are needed…",
    ),
    SearchHit(
        path="agentrt/docs/time.md",
        title="Real and virtual time",
        score=0.0,
        snippet="Every sleep, timeout, retry back-off and timestamp in agentrt comes from the "
        "running event loop's clock, read with agentrt.current_clock()…",
    ),
    SearchHit(
        path="stdlib/re/__init__.py",
        title="re: Support for regular expressions (RE).",
        score=0.0,
        snippet="This module provides regular expression matching operations similar to those "
        "found in Perl. It supports both 8-bit and Unicode strings…",
    ),
)
_WORD = re.compile(r"\w+")
_OPERATORS = frozenset({"AND", "OR", "NOT", "NEAR"})
_HITS: Final = TypeAdapter(list[SearchHit])


@final
class SearchTwin:
    """The search tool's emulated twin: measured latency on the run's clock, scripted hits.

    Same name (``search``), description and `SearchArgs` as `tools.search.SearchTool`, so a plan
    runs unchanged; malformed queries raise the same `ToolError` (checked by the same FTS5
    parser). Each call sleeps a latency drawn from ``latency`` with ``anyio.sleep``, so in
    virtual time it costs no wall time, and reports it as ``duration_s``. The default,
    `SEARCH_LATENCY`, was measured on the real tool over the cached default corpus: median
    0.43 ms + 2.55 us per document (1.35 ms at 360 documents), lognormal spread sigma 0.65
    (`measure_search_latency`; numbers and machine in docs/tools.md).

    Hits come from ``script``: the first key (in order) found in the query, case-insensitively,
    gives the hits; the key ``""`` matches every query; no matching key means no hits. Without
    a script, a small canned set of real stdlib and agentrt documents is ranked by how many
    query words each contains.

    Example:
        >>> import agentrt
        >>> twin = SearchTwin(script={"json": [{"path": "json.md", "snippet": "JSON"}]}, seed=1)
        >>> args = SearchArgs(query="json encoder")
        >>> result = agentrt.run(twin.call, args, clock=agentrt.VirtualClock())
        >>> result.data["hits"][0]["path"], result.duration_s > 0
        ('json.md', True)

    Args:
        script: query substring -> hits (`SearchHit` or dicts with ``path`` and optionally
            ``title``, ``snippet``, ``score``; missing scores count down from 10).
        latency: the latency model.
        corpus_docs: documents the emulated index holds (the model's ``docs``).
        seed: seeds the latency jitter (None means 0: runs are reproducible by default).

    Raises:
        ConfigError: a malformed script.
    """

    name = SearchTool.name
    description = SearchTool.description
    args_model = SearchArgs

    def __init__(
        self,
        *,
        script: Mapping[str, Sequence[SearchHit | Mapping[str, object]]] | None = None,
        latency: SearchLatency = SEARCH_LATENCY,
        corpus_docs: int = DEFAULT_CORPUS_DOCS,
        seed: int | None = None,
    ) -> None:
        if corpus_docs < 0:
            raise ConfigError(f"corpus_docs must be >= 0, got {corpus_docs}")
        self.latency = latency
        self.corpus_docs = corpus_docs
        self._rng = random.Random(seed or 0)
        self._script = None if script is None else _parse_script(script)
        self.calls = 0

    async def call(self, args: SearchArgs) -> ToolResult:
        """Sleep the modelled latency on the run's clock, then return the scripted hits."""
        query = check_query(args.query)
        latency_s = self.latency.sample_s(self._rng, self.corpus_docs)
        self.calls += 1
        await anyio.sleep(latency_s)
        hits = self._scripted(query) if self._script is not None else _canned(query)
        return hits_result(query, hits[: args.k], duration_s=latency_s)

    async def aclose(self) -> None:
        """Nothing to release."""

    def _scripted(self, query: str) -> list[SearchHit]:
        assert self._script is not None
        lowered = query.lower()
        return next((hits for key, hits in self._script if key.lower() in lowered), [])


def _parse_script(
    script: Mapping[str, Sequence[SearchHit | Mapping[str, object]]],
) -> list[tuple[str, list[SearchHit]]]:
    parsed: list[tuple[str, list[SearchHit]]] = []
    for key, entries in script.items():
        raw = [hit.model_dump() if isinstance(hit, SearchHit) else dict(hit) for hit in entries]
        for i, hit in enumerate(raw):
            hit.setdefault("title", hit.get("path", ""))
            hit.setdefault("snippet", "")
            hit.setdefault("score", round(10.0 - i, 4))
        try:
            parsed.append((str(key), _HITS.validate_python(raw)))
        except ValidationError as exc:
            raise ConfigError(
                f"bad search-twin script entry {key!r}: {exc.errors()[0]['msg']} at "
                f"{exc.errors()[0]['loc']}; each hit needs a 'path' (and may have 'title', "
                "'snippet', 'score')"
            ) from exc
    return parsed


def _canned(query: str) -> list[SearchHit]:
    """Rank the canned documents by how many distinct query words each contains."""
    words = {w.lower() for w in _WORD.findall(query) if w not in _OPERATORS}
    ranked: list[tuple[int, int, SearchHit]] = []
    for i, hit in enumerate(_CANNED):
        text = set(_WORD.findall(f"{hit.path} {hit.title} {hit.snippet}".lower()))
        if matched := len(words & text):
            ranked.append((matched, -i, hit))
    ranked.sort(key=lambda item: item[:2], reverse=True)
    return [
        hit.model_copy(update={"score": 5.0 * matched, "snippet": _mark(hit.snippet, words)})
        for matched, _, hit in ranked
    ]


def _mark(text: str, words: set[str]) -> str:
    """Mark the query words in ``text`` the way FTS5's snippet() does."""
    return _WORD.sub(lambda m: f"**{m[0]}**" if m[0].lower() in words else m[0], text)


def make_search_twin(
    *,
    script: str | None = None,
    corpus_docs: int = DEFAULT_CORPUS_DOCS,
    rescan: bool = False,
    seed: int | None = None,
) -> SearchTwin:
    """Registry factory for ``search-twin``.

    Args:
        script: a YAML or JSON file mapping query substrings to lists of hits.
        corpus_docs: documents in the emulated index (with ``rescan``: files in the folder).
        rescan: model a folder tool that re-scans before each query (`SEARCH_RESCAN_LATENCY`).
        seed: seeds the latency jitter.

    Raises:
        ConfigError: the script file cannot be read or is malformed.
    """
    mapping = (
        None
        if script is None
        else read_script(script, "search-twin", "query substrings to lists of hits")
    )
    latency = SEARCH_RESCAN_LATENCY if rescan else SEARCH_LATENCY
    return SearchTwin(script=mapping, latency=latency, corpus_docs=corpus_docs, seed=seed)


_LATENCY_QUERIES: Final = (
    "json encoder", "virtual time", "parse command line arguments", "lru_cache",
    "socket timeout", "regular expression", "thread pool", "unicode normalize",
    "retry backoff", "http client", "tempfile", "context manager",
)  # fmt: skip


async def measure_search_latency(
    *,
    sizes: Sequence[int] = (50, 100, 200, 500),
    folder_sizes: Sequence[int] = (25, 50, 100, 200),
    repeats: int = 30,
) -> dict[str, SearchLatency | dict[int, float]]:
    """Fit `SEARCH_LATENCY` and `SEARCH_RESCAN_LATENCY` on this machine with the real tool.

    ``cached``: the default corpus capped at each of ``sizes`` stdlib modules, built once, then
    12 queries ``repeats`` times; ``rescan``: folders of the first ``folder_sizes`` stdlib
    modules, re-scanned before every query (``auto_update=True``). Fits ``base + per_doc *
    size`` through the median latencies (size: documents, or files for ``rescan``) and
    ``sigma`` from the interquartile range of log(latency / median); also returns the medians
    in ms. Takes about a minute.
    ``python -c "import anyio; from tools.search import measure_search_latency as m;
    print(anyio.run(m))"`` prints the result.
    """

    async def timed(tool: SearchTool) -> list[float]:
        samples = []
        for _ in range(repeats):
            for query in _LATENCY_QUERIES:
                started = anyio.current_time()
                await tool.call(SearchArgs(query=query))
                samples.append(anyio.current_time() - started)
        await tool.aclose()
        return samples

    def fit(points: dict[int, list[float]]) -> tuple[SearchLatency, dict[int, float]]:
        medians = {size: statistics.median(samples) for size, samples in points.items()}
        xs, ys = list(medians), list(medians.values())
        per_doc_s = max(statistics.covariance(xs, ys) / statistics.variance(xs), 0.0)
        base_s = max(statistics.mean(ys) - per_doc_s * statistics.mean(xs), 0.0)
        logs = [math.log(t / medians[size]) for size, samples in points.items() for t in samples]
        # Robust: the interquartile range of a normal is 1.349 sigma; rare stalls (GC, the
        # scheduler) would otherwise dominate a plain standard deviation.
        q1, _, q3 = statistics.quantiles(logs, n=4)
        sigma = round((q3 - q1) / 1.349, 3)
        model = SearchLatency(round(base_s, 6), round(per_doc_s, 9), sigma)
        return model, {size: round(m * 1e3, 3) for size, m in medians.items()}

    def copy_modules(n: int, folder: Path) -> None:
        folder.mkdir()
        for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:n]:
            shutil.copy2(path, folder / path.name)

    tmp = Path(await anyio.to_thread.run_sync(tempfile.mkdtemp))
    try:
        cached: dict[int, list[float]] = {}
        for n in sizes:
            tool = SearchTool.from_default_corpus(cache_dir=tmp / f"cache{n}", stdlib_max_files=n)
            documents = (await tool.update()).documents
            cached[documents] = await timed(tool)
        rescanned: dict[int, list[float]] = {}
        for n in folder_sizes:
            await anyio.to_thread.run_sync(copy_modules, n, tmp / f"folder{n}")
            tool = SearchTool(tmp / f"folder{n}")
            await tool.update()
            rescanned[n] = await timed(tool)
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, tmp)
    cached_fit, cached_ms = fit(cached)
    rescan_fit, rescan_ms = fit(rescanned)
    return {
        "cached": cached_fit,
        "cached_median_ms": cached_ms,
        "rescan": rescan_fit,
        "rescan_median_ms": rescan_ms,
    }
