"""``agentrt serve``: parse the options, build the engine, listen, and run the server."""

from __future__ import annotations

import errno
import socket
from typing import Annotated

import anyio
import typer

from agentrt import cli_options as opt
from agentrt.errors import AgentrtError
from agentrt.substrate import StreamingSubstrate
from substrates.http.connections import ConnectionLimits, bind, fd_limit, uvicorn_config
from substrates.http.server import create_app

__all__ = ["serve_command"]


def _fail(message: str) -> typer.Exit:
    """One line on stderr and exit status 2, as the rest of the CLI reports bad input."""
    return opt.fail(message)


def _listen(host: str, port: int) -> socket.socket:
    """`bind`, or `_fail` with what to do instead."""
    try:
        return bind(host, port)
    except (socket.gaierror, UnicodeError) as exc:
        msg = f"cannot listen on host {host!r} ({exc}); pass an address with --host"
        raise _fail(msg) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise _fail(f"port {port} is in use; pick another with --port") from None
        if exc.errno == errno.EACCES:
            raise _fail(
                f"no permission to listen on port {port} (ports below 1024 need root); "
                "pick another with --port"
            ) from None
        raise _fail(f"cannot listen on {host}:{port} ({exc.strerror}); check --host") from None


def serve_command(
    substrate: Annotated[
        str,
        typer.Option(
            "--substrate",
            "-s",
            metavar="NAME",
            help="Any engine preset (wse3, h100, b200, tpu-v6e, groq-lpu, ...): see "
            "`agentrt substrates`.",
        ),
    ],
    model: opt.Model = None,
    chips: opt.Chips = None,
    tp: opt.Tp = None,
    pp: opt.Pp = None,
    precision: opt.Precision = None,
    max_batch: opt.MaxBatch = None,
    network_rtt_ms: opt.NetworkRttMs = None,
    spec_decode: opt.SpecDecode = None,
    stack: opt.Stack = None,
    ep: opt.Ep = None,
    option: opt.Options = None,
    seed: opt.Seed = opt.SEED_DEFAULT,
    host: Annotated[str, typer.Option(metavar="ADDR", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(metavar="N", help="Port to listen on (0-65535; 0 = any free).")
    ] = 8000,
    max_concurrency: Annotated[
        int, typer.Option(metavar="N", help="Requests in flight; beyond: 429.")
    ] = 1024,
    max_body_bytes: Annotated[
        int, typer.Option(metavar="BYTES", help="Largest request body; beyond: 413.")
    ] = (1 << 20),
    max_connections: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Open connections; default the descriptor limit (ulimit -n) less an eighth.",
            show_default=False,
        ),
    ] = None,
    header_timeout: Annotated[
        float, typer.Option(metavar="S", help="Seconds for a request head to arrive.")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(metavar="S", help="Seconds for a request body to arrive; beyond: 408.")
    ] = 30.0,
    keep_alive_timeout: Annotated[
        float, typer.Option(metavar="S", help="Seconds an idle kept-alive connection stays open.")
    ] = 5.0,
    log_level: Annotated[
        str,
        typer.Option(
            metavar="LEVEL", help="uvicorn's log level: critical, error, warning, info, debug."
        ),
    ] = "info",
) -> None:
    """Serve an emulated engine as an OpenAI-compatible API (POST /v1/chat/completions)."""
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - depends on the installation
        raise _fail("agentrt serve needs the serve extra: pip install 'agentrt[serve]'") from None
    from agentrt.registry import default_registry

    if not 0 <= port <= 65535:
        raise _fail(f"--port must be between 0 and 65535, got {port}")
    for flag, count in (("--max-concurrency", max_concurrency),
                        ("--max-body-bytes", max_body_bytes)):  # fmt: skip
        if count < 1:
            raise _fail(f"{flag} must be at least 1, got {count}")
    for flag, seconds in (("--header-timeout", header_timeout),
                          ("--body-timeout", body_timeout),
                          ("--keep-alive-timeout", keep_alive_timeout)):  # fmt: skip
        if not 0 < seconds < 86400:  # also refuses nan and inf
            raise _fail(
                f"{flag} must be a number of seconds above 0 and below 86400, got {seconds}"
            )
    limit = fd_limit()
    if max_connections is not None and not 1 <= max_connections < limit:
        raise _fail(
            f"--max-connections must be between 1 and the descriptor limit ({limit}, "
            f"ulimit -n) less some headroom, got {max_connections}; raise `ulimit -n` first"
        )
    levels = ("critical", "error", "warning", "info", "debug", "trace")
    if log_level.lower() not in levels:
        raise _fail(f"--log-level must be one of {', '.join(levels)}, got {log_level!r}")
    try:
        options = opt.engine_options(
            option,
            model=model,
            chips=chips,
            tp=tp,
            pp=pp,
            precision=precision,
            max_batch=max_batch,
            network_rtt_ms=network_rtt_ms,
            spec_decode=spec_decode,
            stack=stack,
            ep=ep,
        )
    except AgentrtError as exc:
        raise _fail(str(exc)) from None
    try:
        engine = default_registry().substrate(substrate, seed=seed, **options)
    except (AgentrtError, ValueError, TypeError) as exc:
        raise _fail(str(exc).replace("\n", " ")) from None
    if not isinstance(engine, StreamingSubstrate):
        raise _fail(
            f"substrate {substrate!r} cannot stream, so it cannot be served; pick an engine "
            "preset (see `agentrt substrates`)"
        )
    limits = ConnectionLimits(
        max_connections=max_connections,
        header_timeout_s=header_timeout,
        keep_alive_timeout_s=keep_alive_timeout,
    )
    sock = _listen(host, port)
    app = create_app(
        engine,
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout,
        max_concurrency=max_concurrency,
    )
    config = uvicorn_config(app, host=host, port=port, limits=limits, log_level=log_level.lower())
    server = uvicorn.Server(config)
    bound = sock.getsockname()
    where = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else str(bound[0])
    served = getattr(engine, "model", None) or engine.name
    typer.echo(
        f"serving {served} on {engine.name} at http://{where}:{bound[1]}/v1 "
        f"(at most {limits.resolved_max_connections()} connections; Ctrl-C stops)",
        err=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        anyio.run(engine.aclose)
