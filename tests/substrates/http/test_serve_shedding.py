"""A pool that sheds load behind ``agentrt serve``: 429 (and 503 when draining), with Retry-After.

Admission control never loses a request: the client is told to come back, in OpenAI's shape,
whole and streamed alike (the stream is opened before its headers go out).
"""

from __future__ import annotations

import httpx
import openai
import pytest

from substrates.emulated import build_engine
from substrates.fleet.pool import Pool
from substrates.http.server import create_app, serve_in_thread

BODY = {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _pool(**options: object) -> Pool:
    return Pool(
        lambda i: build_engine("h100", model="llama-3.1-8b", seed=i, jitter=0, stall_prob=0),
        name="gpu", **options,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_cold_pool_that_rejects_answers_429_with_retry_after(stream: bool) -> None:
    pool = _pool(min_replicas=0, initial=0, when_cold="reject")  # scaled to zero
    with serve_in_thread(create_app(pool, model="llama-3.1-8b")) as url:
        answer = httpx.post(f"{url}/v1/chat/completions", json={**BODY, "stream": stream})
    assert answer.status_code == 429
    assert answer.json()["error"]["type"] == "rate_limit_error"
    assert int(answer.headers["Retry-After"]) >= 1
    assert pool.snapshot().rejected == 1


def test_a_draining_pool_answers_503_and_the_openai_client_sees_rate_limits() -> None:
    pool = _pool(min_replicas=0, initial=0, when_cold="reject")
    with serve_in_thread(create_app(pool, model="llama-3.1-8b")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="llama-3.1-8b", messages=[{"role": "user", "content": "hi"}]
            )
        pool.drain()
        answer = httpx.post(f"{url}/v1/chat/completions", json=BODY)
    assert answer.status_code == 503
    assert "Retry-After" in answer.headers


def test_a_warm_pool_serves_through_serve() -> None:
    pool = _pool(initial=1)
    with serve_in_thread(create_app(pool, model="llama-3.1-8b")) as url:
        answer = httpx.post(f"{url}/v1/chat/completions", json=BODY)
        streamed = httpx.post(f"{url}/v1/chat/completions", json={**BODY, "stream": True})
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert streamed.status_code == 200
    assert "data: [DONE]" in streamed.text
    assert pool.snapshot().served == 2
