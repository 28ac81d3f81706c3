"""``agentrt serve`` against hostile clients and bad command lines, for real on loopback.

The server runs as a subprocess (the real CLI) with a lowered descriptor limit; every socket is on
127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

AGENTRT = str(Path(sys.executable).with_name("agentrt"))
MODEL = "llama-3.1-8b"
FD_LIMIT = 256


def _low_fd_limit() -> None:  # runs in the child, before exec
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))


@contextlib.contextmanager
def _serve(*args: str, stderr: list[str] | None = None) -> Iterator[str]:
    """Run ``agentrt serve`` at a lowered descriptor limit; yield its URL, then stop it and
    append what it printed on stderr to ``stderr``."""
    proc = subprocess.Popen(
        [
            AGENTRT,
            "serve",
            "-s",
            "h100",
            "--model",
            MODEL,
            "--port",
            "0",
            "-o",
            "jitter=0",
            "--log-level",
            "warning",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_low_fd_limit,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "serving ... at http://127.0.0.1:PORT/v1 (...)"
        found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        assert found, line
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung server
            proc.kill()
            _, err = proc.communicate(timeout=30)
        if stderr is not None:
            stderr.append(err)


def _half_open(port: int) -> socket.socket | None:
    """A connection that starts a request head and never finishes it."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    except OSError:
        return None
    return s


def _closed_by_server(s: socket.socket, within_s: float) -> bool:
    s.settimeout(within_s)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_slowloris_cannot_lock_clients_out() -> None:
    """More half-open connections than descriptors: a normal client is still served, and the
    half-open ones are closed after the header timeout."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    err: list[str] = []
    with _serve("--header-timeout", "2", "--keep-alive-timeout", "1", stderr=err) as url:
        port = int(url.rsplit(":", 1)[1])
        attackers = [s for s in (_half_open(port) for _ in range(FD_LIMIT + 100)) if s]
        try:
            assert len(attackers) > FD_LIMIT // 2  # the attack did take the connections
            with httpx.Client(base_url=url, timeout=20) as http:
                assert http.get("/health").json()["status"] == "ok"
                done = http.post("/v1/chat/completions", json=chat)
            assert done.status_code == 200, done.text
            assert done.json()["usage"]["completion_tokens"] == 3
            deadline = time.monotonic() + 60
            still_open = [
                s
                for s in attackers
                if not _closed_by_server(s, max(0.1, deadline - time.monotonic()))
            ]
            assert still_open == []
        finally:
            for s in attackers:
                s.close()
        # A kept-alive connection that starts its next request and stalls is closed too.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b'"status"' not in head:
                head += s.recv(4096)
            assert head.startswith(b"HTTP/1.1 200")
            s.sendall(b"GET /hea")
            assert _closed_by_server(s, 60)
    assert "Traceback" not in err[0]
    assert "Invalid file descriptor" not in err[0]


def test_huge_max_tokens_is_400_at_once_and_health_still_answers() -> None:
    huge = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1_000_000_000}  # fmt: skip
    with _serve() as url, httpx.Client(base_url=url, timeout=20) as http:
        for stream in (False, True):
            r = http.post("/v1/chat/completions", json={**huge, "stream": stream})
            assert r.status_code == 400
            error = r.json()["error"]
            assert error["code"] == "context_length_exceeded"
            assert error["type"] == "invalid_request_error"
            found = re.fullmatch(
                r"This model's maximum context length is 131072 tokens\. However, you requested "
                r"(\d+) tokens \((\d+) in the messages, 1000000000 in the completion\)\. "
                r"Please reduce the length of the messages or completion\.",
                error["message"],
            )
            assert found, error["message"]
            prompt = int(found.group(2))
            assert int(found.group(1)) == prompt + 1_000_000_000
        assert http.get("/health").json()["status"] == "ok"
        legal = {**huge, "max_tokens": 131072 - prompt, "stream": True}  # the most that fits
        with http.stream("POST", "/v1/chat/completions", json=legal) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["choices"][0]["delta"]["role"] == "assistant"
        assert http.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "--port must be between 0 and 65535"),
        (["--model", "nope"], "unknown model profile 'nope'"),
        (["-o", "nonsense"], "--option expects KEY=VALUE"),
        (["-o", "jitter=abc"], "jitter='abc'"),
        (["-o", "chips=-1"], "chips"),
        (["--header-timeout", "nan"], "--header-timeout must be"),
        (["--max-connections", "100000000"], "--max-connections must be between 1 and"),
        (["--host", "no such host.invalid"], "cannot listen on host"),
        # the engine options every command shares (agentrt.cli_options)
        (["--tp", "0"], "--tp must be at least 1, not 0"),
        (["--network-rtt-ms", "inf"], "--network-rtt-ms must be a finite number"),
        (["--seed", "x"], "Invalid value for '--seed'"),
    ],
)
def test_bad_serve_options_are_one_line_exit_2(args: list[str], message: str) -> None:
    done = subprocess.run(
        [AGENTRT, "serve", "-s", "h100", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ")
    assert message in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_busy_port_is_one_line_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [AGENTRT, "serve", "-s", "h100", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr == f"error: port {port} is in use; pick another with --port\n"


def test_serve_help_points_at_every_substrate() -> None:
    done = subprocess.run(
        [AGENTRT, "serve", "--help"], capture_output=True, text=True, timeout=60,
        env={"COLUMNS": "200", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 0
    assert "agentrt substrates" in done.stdout
    for flag in ("--header-timeout", "--keep-alive-timeout", "--max-connections"):
        assert flag in done.stdout


def _request(body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload)
    )


async def _stream(port: int, body: dict[str, object], *, hang_up_early: bool) -> bytes:
    import anyio

    async with await anyio.connect_tcp("127.0.0.1", port) as conn:
        await conn.send(_request(body))
        received = b""
        while not received.endswith(b"\r\n0\r\n\r\n"):
            received += await conn.receive()
            if hang_up_early and b"data:" in received:
                break  # the client goes away mid-stream
        return received


async def test_many_streams_and_mid_stream_disconnects_leave_it_healthy() -> None:
    import anyio

    from substrates.emulated import build_engine
    from substrates.http.server import create_app, serve_in_thread

    engine = build_engine("wse3", model=MODEL, jitter=0, stall_prob=0)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40,
            "stream": True}  # fmt: skip
    results: list[bytes] = []
    with serve_in_thread(create_app(engine, max_concurrency=1000)) as url:
        port = int(url.rsplit(":", 1)[1])

        async def one(i: int) -> None:
            results.append(await _stream(port, body, hang_up_early=i % 3 == 0))

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(300):
                    tg.start_soon(one, i)
        complete = [r for r in results if r.endswith(b"\r\n0\r\n\r\n")]
        assert len(complete) >= 200  # a hung-up one may have had its whole stream already
        assert all(b"data: [DONE]" in r for r in complete)
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(200):  # the hung-up streams are noticed within a few token gaps
                health = (await http.get("/health")).json()
                if health["active"] == 0:
                    break
                await anyio.sleep(0.05)
            assert health == {"status": "ok", "model": MODEL, "active": 0}
            done = await http.post("/v1/chat/completions", json={**body, "stream": False})
            assert done.status_code == 200


async def test_full_of_busy_connections_answers_503() -> None:
    import anyio

    from substrates.emulated import build_engine
    from substrates.http.server import ConnectionLimits, create_app, serve_in_thread

    engine = build_engine("h100", model=MODEL, jitter=0, stall_prob=0)
    slow = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300,
            "stream": True}  # fmt: skip
    limits = ConnectionLimits(max_connections=2)
    with serve_in_thread(create_app(engine), limits=limits) as url:
        port = int(url.rsplit(":", 1)[1])
        busy = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
        try:
            for conn in busy:  # two streams in progress: no connection can make room
                await conn.send(_request(slow))
                assert (await conn.receive()).startswith(b"HTTP/1.1 200")
            with anyio.fail_after(30):
                async with await anyio.connect_tcp("127.0.0.1", port) as third:
                    answer = b""
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                        while True:
                            answer += await third.receive()
            assert answer.startswith(b"HTTP/1.1 503")
            assert b'"code":"too_many_connections"' in answer
        finally:
            for conn in busy:
                await conn.aclose()


@pytest.mark.parametrize(("limit", "connections"), [(64, 32), (256, 192), (1024, 896)])
def test_default_connection_limit_leaves_descriptors_spare(limit: int, connections: int) -> None:
    from substrates.http.server import default_max_connections

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        assert default_max_connections() == connections
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_request_beyond_the_deployments_kv_cache_is_400_before_streaming() -> None:
    from substrates.emulated import build_engine
    from substrates.http.server import create_app, serve_in_thread

    engine = build_engine("h100", model="llama-3.1-70b", jitter=0, stall_prob=0)
    assert engine.kv_capacity_tokens < 20_000 < engine.context_length_tokens
    body = {"model": "llama-3.1-70b", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 20_000}  # fmt: skip
    with serve_in_thread(create_app(engine)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            for stream in (False, True):
                r = await http.post("/v1/chat/completions", json={**body, "stream": stream})
                assert r.status_code == 400
                error = r.json()["error"]
                assert error["code"] == "kv_capacity_exceeded"
                assert f"KV cache holds {engine.kv_capacity_tokens} tokens" in error["message"]
            fits = {**body, "max_tokens": 5}
            assert (await http.post("/v1/chat/completions", json=fits)).status_code == 200


async def test_a_long_legal_stream_holds_little_server_memory() -> None:
    """The longest stream the model allows: the server holds pieces, not the text split up
    front (that alone was ~8 MB per stream: a string per token)."""
    import tracemalloc

    import anyio

    from substrates.emulated import build_engine
    from substrates.http.server import create_app, serve_in_thread

    engine = build_engine("wse3", model=MODEL, jitter=0, stall_prob=0)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 131_000, "stream": True}  # fmt: skip
    with serve_in_thread(create_app(engine)) as url:
        port = int(url.rsplit(":", 1)[1])
        tracemalloc.start()
        try:
            async with await anyio.connect_tcp("127.0.0.1", port) as conn:
                await conn.send(_request(body))
                received = b""
                with anyio.fail_after(60):
                    while received.count(b"data:") < 300:
                        received += await conn.receive()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert received.startswith(b"HTTP/1.1 200")
    assert peak < 3_000_000, peak


async def test_a_slow_body_gets_408_and_frees_its_connection() -> None:
    import anyio

    from substrates.emulated import build_engine
    from substrates.http.server import ConnectionLimits, create_app, serve_in_thread

    engine = build_engine("h100", model=MODEL, jitter=0, stall_prob=0)
    app = create_app(engine, body_timeout_s=0.5)
    with serve_in_thread(app, limits=ConnectionLimits(max_connections=2)) as url:
        port = int(url.rsplit(":", 1)[1])
        with anyio.fail_after(30):
            # Two clients send a head promising 1,000 bytes, then one byte: they hold both
            # connections with a request in progress until the body timeout answers them.
            slow = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
            for conn in slow:
                await conn.send(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
                )
            for conn in slow:
                answer = b""
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        answer += await conn.receive()
                await conn.aclose()
                assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
                assert b'"code":"request_timeout"' in answer
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                assert (await http.get("/health")).status_code == 200


def test_the_socket_listens_before_serve_says_it_is_serving() -> None:
    # `agentrt serve` prints its URL before uvicorn starts: a client connecting at once must
    # wait in the kernel's queue, not be refused (seen under load as ECONNREFUSED).
    from substrates.http.connections import bind

    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
        for client in clients:
            client.close()
    finally:
        sock.close()
