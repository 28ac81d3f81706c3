from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import pytest

from agentrt import ConfigError, ToolError, ToolResult, VirtualClock, current_clock, run
from tools.search import (
    SEARCH_LATENCY,
    SearchArgs,
    SearchLatency,
    SearchTool,
    SearchTwin,
    make_search_twin,
)


def hits_of(result: ToolResult) -> list[dict[str, Any]]:
    assert isinstance(result.data, dict)
    return cast(list[dict[str, Any]], result.data["hits"])


def test_twin_is_a_drop_in_for_the_real_tool(tmp_path: Path) -> None:
    twin, real = SearchTwin(), SearchTool(tmp_path)
    assert (twin.name, twin.description, twin.args_model) == (
        real.name,
        real.description,
        real.args_model,
    )
    assert twin.name == "search"


def test_twin_latency_runs_on_the_virtual_clock() -> None:
    latency = SearchLatency(base_s=0.5, per_doc_s=0.001, sigma=0.2)
    twin = SearchTwin(latency=latency, corpus_docs=500)

    async def main() -> tuple[float, list[float]]:
        durations = []
        for query in ("json encoder", "argparse", "virtual time"):
            result = await twin.call(SearchArgs(query=query))
            assert result.duration_s is not None
            durations.append(result.duration_s)
        return current_clock().current_time(), durations

    wall = time.perf_counter()
    now, durations = run(main, clock=VirtualClock())
    assert time.perf_counter() - wall < 1.0
    assert now == pytest.approx(sum(durations))
    assert all(0.3 < d < 3.0 for d in durations)  # median 1.0 s, log-spread 0.2
    assert len(set(durations)) == 3


def test_twin_is_reproducible_by_seed() -> None:
    def durations(seed: int | None) -> list[float]:
        twin = SearchTwin(seed=seed)

        async def main() -> list[float]:
            return [(await twin.call(SearchArgs(query="json"))).duration_s or 0 for _ in range(5)]

        return run(main, clock=VirtualClock())

    assert durations(7) == durations(7)
    assert durations(7) != durations(8)
    assert durations(None) == durations(0)
    assert SEARCH_LATENCY.median_s(360) == pytest.approx(0.43e-3 + 2.55e-6 * 360)


def test_twin_scripted_and_canned_hits() -> None:
    twin = SearchTwin(
        script={
            "backoff": [{"path": "docs/retries.md", "snippet": "exponential **backoff**"}],
            "": [{"path": "docs/index.md", "title": "Index", "score": 1.5}],
        }
    )
    canned = SearchTwin()
    empty = SearchTwin(script={"nothing": []})

    async def main() -> None:
        result = await twin.call(SearchArgs(query="Retry BACKOFF policy"))
        assert [h["path"] for h in hits_of(result)] == ["docs/retries.md"]
        assert hits_of(result)[0]["score"] == 10.0
        fallback = await twin.call(SearchArgs(query="anything"))
        assert hits_of(fallback)[0]["score"] == 1.5
        hits = hits_of(await canned.call(SearchArgs(query="json encoder", k=2)))
        assert len(hits) == 2
        assert hits[0]["path"] == "stdlib/json/encoder.py"
        assert "**JSON**" in hits[0]["snippet"]
        none = await empty.call(SearchArgs(query="json"))
        assert hits_of(none) == []
        assert "no documents match" in none.output
        with pytest.raises(ToolError, match="quote the terms"):
            await canned.call(SearchArgs(query="c++"))

    run(main, clock=VirtualClock())


def test_twin_factory_reads_a_script_file(tmp_path: Path) -> None:
    script = tmp_path / "hits.yaml"
    script.write_text("encoder:\n  - path: stdlib/json/encoder.py\n    snippet: JSON encoder\n")
    twin = make_search_twin(script=str(script), seed=1)

    async def main() -> str:
        return (await twin.call(SearchArgs(query="json encoder"))).output

    assert "stdlib/json/encoder.py" in run(main, clock=VirtualClock())
    script.write_text("encoder:\n  - title: no path\n")
    with pytest.raises(ConfigError, match="needs a 'path'"):
        make_search_twin(script=str(script))
    script.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="must map query substrings"):
        make_search_twin(script=str(script))
    with pytest.raises(ConfigError, match="cannot read"):
        make_search_twin(script=str(tmp_path / "missing.yaml"))
