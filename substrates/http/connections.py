"""How ``agentrt serve`` takes connections: their limits and guard, uvicorn's config, the socket.

Connections are guarded (`ConnectionLimits`): a request head must arrive within a timeout, idle
keep-alive connections close after another, and the number of open connections stays below the
process's descriptor limit, the oldest idle or half-open connection making room for a new one.

``agentrt serve`` binds its socket with `bind`, configures uvicorn with `uvicorn_config` and runs
it; `serve_in_thread` does the same in a thread, for tests, benchmarks and notebooks.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from substrates.http._wire import dumps

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

__all__ = [
    "ConnectionLimits",
    "bind",
    "default_max_connections",
    "fd_limit",
    "serve_in_thread",
    "uvicorn_config",
]

#: Descriptors kept free for everything but client connections (the listening socket, the event
#: loop, logs and trace files, imports): an eighth of the limit, at least this many (at most
#: half of a tiny limit).
_FD_HEADROOM = 64
#: No more connections than this whatever the descriptor limit (``ulimit -n`` may be a million).
_MAX_CONNECTIONS_CAP = 65536


def default_max_connections() -> int:
    """Open connections allowed by default: the soft ``RLIMIT_NOFILE`` less headroom.

    Example:
        >>> import resource
        >>> default_max_connections() < resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        True
    """
    soft = fd_limit()
    headroom = max(soft // 8, min(_FD_HEADROOM, soft // 2))
    return max(1, min(soft - headroom, _MAX_CONNECTIONS_CAP))


def fd_limit() -> int:
    """The process's soft descriptor limit (``ulimit -n``); unlimited counts as 2**20.

    Example:
        >>> fd_limit() > 0
        True
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


@dataclass(frozen=True)
class ConnectionLimits:
    """How ``agentrt serve`` guards its connections against slow or idle clients (slowloris).

    A connection must deliver a complete request head within ``header_timeout_s`` of opening (or,
    on a kept-alive connection, of the first byte of its next request), else it is closed. An
    idle kept-alive connection closes after ``keep_alive_timeout_s``. At most ``max_connections``
    are open: a new one beyond that closes the oldest connection that has no request in progress
    (half-open or idle), or, when every connection is serving a request, is answered 503 and
    closed. Request heads are limited to ``max_head_bytes`` (h11's incomplete-event limit).

    Example:
        >>> ConnectionLimits(max_connections=100).resolved_max_connections()
        100

    Args:
        max_connections: open connections at most; default `default_max_connections`.
        header_timeout_s: seconds for a request head to arrive.
        keep_alive_timeout_s: seconds an idle kept-alive connection stays open.
        max_head_bytes: largest request head (request line and headers).
    """

    max_connections: int | None = None
    header_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 5.0
    max_head_bytes: int = 16 * 1024

    def resolved_max_connections(self) -> int:
        """``max_connections``, or the default derived from the descriptor limit."""
        return default_max_connections() if self.max_connections is None else self.max_connections


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\nretry-after: 1\r\ncontent-length: %d\r\n\r\n%s"
)


def _busy_response() -> bytes:
    body = dumps(
        {
            "error": {
                "message": "too many open connections; retry shortly",
                "type": "server_error",
                "param": None,
                "code": "too_many_connections",
            }
        }
    )
    return _BUSY % (len(body), body)


def _guarded_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """The h11 protocol of uvicorn with a request-head timeout and a connection limit.

    uvicorn has no header-read timeout: a client that opens a connection and never finishes its
    request head holds a descriptor forever, until the process cannot accept anyone. Each
    server gets its own class, so its waiting connections are its own.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    max_connections = limits.resolved_max_connections()
    header_timeout = limits.header_timeout_s
    busy = _busy_response()
    # Connections without a request in progress, oldest first: the ones to close for room.
    waiting: dict[H11Protocol, None] = {}

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            if len(self.connections) > max_connections and not _evict_one():
                transport.write(busy)  # type: ignore[attr-defined]
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request on a kept-alive connection has begun
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the head is in: the request is the application's now

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                waiting[self] = None  # idle between requests: first to go when full

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            waiting[self] = None
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            waiting.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            waiting.pop(self, None)
            if not self.transport.is_closing():
                self.transport.close()

    def _evict_one() -> bool:
        for victim in waiting:
            del waiting[victim]
            victim._disarm()  # type: ignore[attr-defined]
            victim.transport.close()
            return True
        return False

    return GuardedH11Protocol


def uvicorn_config(
    app: Starlette,
    *,
    host: str,
    port: int,
    limits: ConnectionLimits,
    log_level: str,
) -> uvicorn.Config:
    """The uvicorn config for serving ``app``, its connections guarded within ``limits``.

    Run it on a socket from `bind`: ``uvicorn.Server(config).run(sockets=[sock])``.

    Args:
        app: the ASGI app (`substrates.http.server.create_app`).
        host: the address uvicorn's start-up log names (the socket decides where it listens).
        port: the port it names; 0 names the socket's.
        limits: the connection limits and timeouts.
        log_level: uvicorn's log level (critical, error, warning, info, debug, trace).
    """
    import uvicorn

    max_connections = limits.resolved_max_connections()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_guarded_protocol(limits),
        log_level=log_level,
        lifespan="off",
        access_log=False,
        timeout_keep_alive=max(1, round(limits.keep_alive_timeout_s)),
        h11_max_incomplete_event_size=limits.max_head_bytes,
        # asyncio accepts up to `backlog` sockets per wake-up, and a connection is counted (and
        # an idle one closed for it) a few loop iterations later: keep those in flight well
        # within the spare descriptors. The kernel's queue stays long (`_ListeningSocket`).
        backlog=max(4, min(128, (fd_limit() - max_connections) // 8)),
        timeout_graceful_shutdown=1,
    )


@contextmanager
def serve_in_thread(
    app: Starlette,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout_s: float = 10.0,
    limits: ConnectionLimits | None = None,
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread (own event loop) and yield its base URL.

    For tests, benchmarks and notebooks: ``port=0`` picks a free port. Leaving the block stops the
    server (open streams get up to a second to finish) and joins the thread. Connections are
    guarded as by ``agentrt serve`` (``limits``, default `ConnectionLimits`).

    Example:
        >>> from substrates.emulated import build_engine
        >>> from substrates.http.server import create_app
        >>> with serve_in_thread(create_app(build_engine("h100", model="llama-3.1-8b"))) as url:
        ...     url.startswith("http://127.0.0.1:")
        True
    """
    import uvicorn

    config = uvicorn_config(
        app, host=host, port=port, limits=limits or ConnectionLimits(), log_level="critical"
    )
    server = uvicorn.Server(config)
    sock = bind(host, port)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"agentrt-serve-{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout_s)
            sock.close()
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.005)
    bound = sock.getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()


class _ListeningSocket(socket.socket):
    """A listening socket whose kernel queue is always long.

    asyncio passes one number as both the ``listen()`` queue and the connections it accepts per
    wake-up; the second must be small (see `uvicorn_config`), the first need not be: a burst
    of clients waits in the kernel's queue, costing no descriptor, instead of being refused.
    """

    def listen(self, backlog: int = 0) -> None:  # the argument is deliberately ignored
        super().listen(_KERNEL_BACKLOG)


_KERNEL_BACKLOG = 2048


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (the first address ``host`` resolves to), listening.

    Example:
        >>> sock = bind("127.0.0.1", 0)
        >>> sock.getsockname()[0]
        '127.0.0.1'
        >>> sock.close()

    Raises:
        OSError: the address cannot be resolved (`socket.gaierror`) or bound.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = _ListeningSocket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        # Listening from here on: a client that connects as soon as "serving ... at URL" is
        # printed waits in the kernel's queue until uvicorn starts, instead of being refused.
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock
