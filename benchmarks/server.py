"""``agentrt serve`` itself: requests per second and added latency against an instant engine.

Run: ``python benchmarks/server.py [--requests N] [--tokens K] [--concurrency 1,10,100]``.

The engine is `InstantEngine` below: a streaming substrate that emits its K tokens at once, so
every millisecond measured is the server's (starlette + uvicorn, SSE framing, JSON) plus the
loopback and a bare HTTP/1.1 client (one kept-alive connection per stream, no SSE parsing).
Server and client run in one process (uvicorn in a thread, its own event loop; the client in the
main thread), so they share the GIL: the figures are a floor for a server on its own cores.
"Added latency" is the client's time from sending the request to reading the end of the stream
(just past ``[DONE]``): the engine adds nothing.

The floor is `floor_app`: a bare starlette endpoint on the same uvicorn (same connection guard)
streaming the same chunks, measured in the same run. Both servers run twice, interleaved, and
each keeps its better run per level, so a burst of load elsewhere on the machine hits both alike.
Targets: at one stream, a median added latency under 10 ms; at every level, a median latency
and a throughput within 2x of the floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from _common import logging_off, print_table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from agentrt import InferenceRequest, InferenceResult, Timing, TokenChunk, Usage
from substrates.http.server import create_app, serve_in_thread

TARGET_ADDED_MS = 10.0
COLUMNS = ["server", "streams", "requests", "req/s", "tokens/s", "TTFT p50 ms", "added p50 ms",
           "p99 ms", "p50 / floor"]  # fmt: skip
#: ``agentrt serve`` against the floor (a bare starlette endpoint on the same uvicorn), per level.
TARGET_RATIO = 2.0


def floor_app() -> Starlette:
    """The floor: a bare starlette SSE endpoint with the same chunks, no engine, no validation.

    It reads and parses the JSON body, then streams the same number of ``chat.completion.chunk``
    events (one per token, a finish chunk, a usage chunk, ``[DONE]``), each JSON-encoded as it is
    sent, as any Python OpenAI-compatible server must at least do.
    """

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        n = int(body.get("max_tokens") or 16)
        head = {"id": "chatcmpl-floor", "object": "chat.completion.chunk", "created": 0,
                "model": body["model"]}  # fmt: skip

        async def events() -> AsyncIterator[bytes]:
            for i in range(n):
                delta = {"role": "assistant", "content": " tok"} if i == 0 else {"content": " tok"}
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                yield _sse({**head, "choices": [choice]})
            yield _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
            usage = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}
            yield _sse({**head, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def _sse(data: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class _Instant:
    def __init__(self, request: InferenceRequest) -> None:
        self._n = request.max_output_tokens

    async def _chunks(self) -> AsyncIterator[TokenChunk]:
        for i in range(self._n):
            yield TokenChunk(text=" tok", index=i, t_s=0.0)

    def __aiter__(self) -> AsyncIterator[TokenChunk]:
        return self._chunks()

    def result(self) -> InferenceResult:
        return InferenceResult(
            text=" tok" * self._n,
            usage=Usage(input_tokens=8, output_tokens=self._n),
            timing=Timing(),
            substrate="instant",
            model="instant",
            finish_reason="length",
        )


class InstantEngine:
    """A streaming substrate that answers every request at once: isolates the server's cost."""

    name = "instant"
    model = "instant"

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        return _Instant(request).result()

    @asynccontextmanager
    async def _open(self, request: InferenceRequest) -> AsyncIterator[_Instant]:
        yield _Instant(request)

    def stream(self, request: InferenceRequest):  # type: ignore[no-untyped-def]
        return self._open(request)

    async def aclose(self) -> None:
        return None


async def _load(url: str, concurrency: int, requests: int, tokens: int) -> dict[str, float]:
    body = {
        "model": "instant",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    host, port = url.removeprefix("http://").rsplit(":", 1)
    payload = json.dumps(body).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (host.encode(), len(payload), payload)
    )
    latencies: list[float] = []
    ttfts: list[float] = []

    async def worker(n: int) -> None:
        # A bare HTTP/1.1 client on one kept-alive connection: writes the request, reads the
        # chunked SSE body to its last chunk. An SDK or httpx would cost the shared GIL more
        # than the servers being compared (httpx: ~2 ms a stream; at 100 streams it starves).
        async with await anyio.connect_tcp(host, int(port)) as conn:
            for _ in range(n):
                t0 = time.perf_counter()
                first = 0.0
                await conn.send(request)
                received = b""
                while not received.endswith(b"\r\n0\r\n\r\n"):
                    received += await conn.receive()
                    if not first and b"data:" in received:
                        first = time.perf_counter()
                end = time.perf_counter()
                if not received.startswith(b"HTTP/1.1 200") or b"data: [DONE]" not in received:
                    raise RuntimeError(f"bad response: {received[:200]!r}")
                latencies.append(end - t0)
                ttfts.append(first - t0)

    per_worker = max(1, requests // concurrency)
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker, per_worker)
    wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / wall,
        "tok_s": len(latencies) * tokens / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "ttft_ms": 1000 * statistics.median(ttfts),
    }


def _measure(
    app: Starlette, levels: list[int], requests: int, tokens: int
) -> list[dict[str, float]]:
    with serve_in_thread(app) as url:
        anyio.run(_load, url, 1, 50, tokens)  # warm up: connections, imports
        return [anyio.run(_load, url, c, max(requests, c), tokens) for c in levels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="Requests per level.")
    parser.add_argument("--tokens", type=int, default=16, help="Tokens per streamed response.")
    parser.add_argument("--concurrency", default="1,10,100", help="Comma-separated levels.")
    args = parser.parse_args()
    logging_off()
    levels = [int(c) for c in args.concurrency.split(",")]
    serve = create_app(InstantEngine(), max_concurrency=max(levels) * 2)  # type: ignore[arg-type]
    # Interleaved (floor, serve, floor, serve) and the better of two runs each, so that a burst
    # of load from elsewhere on the machine does not land on one server only.
    floors = [_measure(floor_app(), levels, args.requests, args.tokens) for _ in range(2)]
    serves = [_measure(serve, levels, args.requests, args.tokens) for _ in range(2)]
    rows = []
    worst = 0.0
    for i, c in enumerate(levels):
        floor = min((f[i] for f in floors), key=lambda r: r["p50_ms"])
        ours = min((s[i] for s in serves), key=lambda r: r["p50_ms"])
        ratio = ours["p50_ms"] / floor["p50_ms"]
        worst = max(worst, ratio, floor["rps"] / ours["rps"])
        for label, r in (("floor", floor), ("agentrt serve", ours)):
            rows.append(
                (
                    label,
                    c,
                    int(r["requests"]),
                    f"{r['rps']:,.0f}",
                    f"{r['tok_s']:,.0f}",
                    f"{r['ttft_ms']:.2f}",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                    "1.00" if r is floor else f"{ratio:.2f}",
                )
            )
    print_table(
        f"agentrt serve vs a bare starlette endpoint, instant engine, {args.tokens}-token SSE "
        "streams over loopback",
        COLUMNS,
        rows,
    )
    one = float(rows[1][6]) if levels[0] == 1 else float("nan")
    verdict = "met" if one < TARGET_ADDED_MS else "NOT met"
    print(f"target: added p50 latency at 1 stream < {TARGET_ADDED_MS:.0f} ms: {verdict}")
    verdict = "met" if worst <= TARGET_RATIO else "NOT met"
    print(
        f"target: p50 latency and req/s within {TARGET_RATIO:.0f}x of the floor at every level: "
        f"{verdict} (worst {worst:.2f}x)"
    )


if __name__ == "__main__":
    main()
