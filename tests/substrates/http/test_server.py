"""``agentrt serve``: the official openai client against an emulated engine on loopback."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator

import anyio
import httpx
import openai
import pytest

from agentrt import InferenceRequest
from substrates.emulated import build_engine
from substrates.emulated.predict import predict_request
from substrates.http.server import ChatCompletionRequest, create_app, serve_in_thread

MODEL = "llama-3.1-8b"


def _engine():  # h100 + 8B: ~15 ms to the first token, ~133 tokens/s
    return build_engine("h100", model=MODEL, jitter=0, stall_prob=0)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, object]]:
    engine = _engine()
    with serve_in_thread(create_app(engine, max_concurrency=64, max_body_bytes=4096)) as url:
        yield url, engine


async def test_openai_client_streams_at_the_engines_pace(server: tuple[str, object]) -> None:
    url, engine = server
    prompt, tokens = "Say hello to the test, in many words.", 60
    predicted = predict_request(
        engine.deployment,  # type: ignore[attr-defined]
        InferenceRequest.from_prompt(prompt).estimated_prompt_tokens(),
        tokens,
    )
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused") as client:
        ttfts, rates = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
            arrivals: list[float] = []
            text, usage = [], None
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content is not None:
                        arrivals.append(time.perf_counter())
                        text.append(choice.delta.content)
            assert len(arrivals) == tokens  # content arrives in chunks, one per token
            assert usage is not None
            assert usage.completion_tokens == tokens
            ttfts.append(arrivals[0] - t0)
            rates.append((tokens - 1) / (arrivals[-1] - arrivals[0]))
    ttft, rate = statistics.median(ttfts), statistics.median(rates)
    want_rate = 1 / predicted.tpot_s
    assert abs(ttft - predicted.ttft_s) <= max(0.10 * predicted.ttft_s, 0.015), (ttft, predicted)
    assert abs(rate - want_rate) <= 0.10 * want_rate, (rate, want_rate)


async def test_non_streaming_completion_models_and_health(server: tuple[str, object]) -> None:
    url, _ = server
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused") as client:
        done = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert done.choices[0].finish_reason == "length"
        assert done.usage is not None
        assert done.usage.completion_tokens == 5
        assert len(done.choices[0].message.content or "") > 0
        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL]
    async with httpx.AsyncClient(base_url=url) as http:
        health = await http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'{"model": "llama-3.1-8b"}', "messages"),
        (b'{"model": "llama-3.1-8b", "messages": []}', "messages"),
        (
            b'{"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "x"}], '
            b'"max_tokens": 0}',
            "max_tokens",
        ),
        (
            b'{"model": "llama-3.1-8b", "messages": [{"role": "wizard", "content": "x"}]}',
            "messages.0.role",
        ),
        (b"[1, 2]", None),
    ],
)
async def test_invalid_requests_get_openai_style_400(
    server: tuple[str, object], body: bytes, param: str | None
) -> None:
    url, _ = server
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] == param


async def test_unknown_model_is_404_and_openai_client_raises(server: tuple[str, object]) -> None:
    url, _ = server
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            await client.chat.completions.create(
                model="gpt-9", messages=[{"role": "user", "content": "hi"}]
            )


async def test_body_size_limit_is_413(server: tuple[str, object]) -> None:
    url, _ = server
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 10_000}]}
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/v1/chat/completions", content=json.dumps(big))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


async def test_concurrency_limit_answers_429_with_retry_after() -> None:
    app = create_app(_engine(), max_concurrency=2)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40,
            "stream": True}  # fmt: skip
    with serve_in_thread(app) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            statuses: list[int] = []
            retry_after: list[str | None] = []

            async def one() -> None:
                async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                    statuses.append(r.status_code)
                    retry_after.append(r.headers.get("retry-after"))
                    await r.aread()

            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(one)
            # Once the streams are over, the slots are free again.
            after = await http.post("/v1/chat/completions", json={**body, "stream": False})
    assert sorted(statuses) == [200, 200, 429, 429, 429]
    assert retry_after.count("1") == 3
    assert after.status_code == 200


def test_chat_request_joins_text_parts() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    messages = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": parts}]
    chat = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    req = chat.to_inference("id-1", default_max_tokens=7)
    assert [(m.role, m.content) for m in req.messages] == [("system", "be brief"), ("user", "ab")]
    assert req.max_output_tokens == 7
