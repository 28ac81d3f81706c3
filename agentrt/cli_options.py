"""Command-line options shared by ``run``, ``compare``, ``load``, ``serve`` and ``predict``.

Each option is defined once here, as an ``Annotated`` type a command's signature reuses, so the
same flag has the same name, placeholder, help and default everywhere. A command takes the
engine options like this (``serve`` can adopt them the same way)::

    from agentrt import cli_options as opt

    def my_command(
        model: opt.Model = None, chips: opt.Chips = None, ..., option: opt.Options = None,
        seed: opt.Seed = opt.SEED_DEFAULT,
    ) -> None:
        options = opt.engine_options(option, model=model, chips=chips, ...)

`engine_options` checks the values (finite, in range) and merges them over ``-o KEY=VALUE``;
a bad value is a `ConfigError` naming the flag. `Command` and `Group` are the click classes
that show no type placeholder after a flag (``--virtual``, not ``--virtual <bool>``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from agentrt.errors import ConfigError
from agentrt.redact import redact

__all__ = [
    "SEED_DEFAULT",
    "AsJson",
    "Chips",
    "Command",
    "Ep",
    "ExecutorName",
    "Faults",
    "Group",
    "LatencyMs",
    "MaxBatch",
    "Model",
    "NetworkRttMs",
    "Options",
    "OutputTokens",
    "Pp",
    "Precision",
    "Seed",
    "SpecDecode",
    "Stack",
    "Tp",
    "Trace",
    "Virtual",
    "check_number",
    "engine_options",
    "fail",
    "parse_options",
]

#: The default ``--seed`` of every command: runs repeat exactly unless you pass another seed.
SEED_DEFAULT = 0

Seed = Annotated[
    int,
    typer.Option(
        metavar="N",
        help="Seed for engines, jitter, retries, faults and arrivals; the same seed repeats a "
        "run exactly.",
    ),
]
Virtual = Annotated[
    bool, typer.Option("--virtual", help="Run in virtual time: no waiting, same timings.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
Options = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        "-o",
        metavar="KEY=VALUE",
        help="Substrate option, e.g. -o base_url=http://host:8000/v1 (repeatable).",
    ),
]
Trace = Annotated[
    str,
    typer.Option(
        envvar="AGENTRT_TRACE",
        metavar="TARGET",
        help="Where traces go: otlp, otlp-grpc, jaeger-json:PATH, console or none.",
    ),
]
ExecutorName = Annotated[
    str,
    typer.Option(
        "--executor",
        metavar="EXECUTOR",
        help="Where the simulations run: local, processes[:N], ray (a local Ray cluster), ray:N "
        "or ray:ADDRESS (a running cluster, e.g. ray:auto); ray needs pip install 'agentrt[ray]'.",
    ),
]
Faults = Annotated[
    str | None,
    typer.Option(metavar="SPEC", help="Inject faults, e.g. errors=0.1,outage=120s+30s."),
]
LatencyMs = Annotated[
    float | None, typer.Option(metavar="MS", help="Substrate `fixed`: milliseconds per call.")
]
OutputTokens = Annotated[
    int | None, typer.Option(metavar="N", help="Substrate `fixed`: tokens generated per call.")
]
Model = Annotated[
    str | None,
    typer.Option(metavar="NAME", help="Emulated engines: model profile (default llama-3.1-70b)."),
]
Chips = Annotated[
    int | None, typer.Option(metavar="N", help="Emulated engines: chips (wafers, GPUs).")
]
Tp = Annotated[int | None, typer.Option(metavar="N", help="Emulated engines: tensor-parallel.")]
Pp = Annotated[int | None, typer.Option(metavar="N", help="Emulated engines: pipeline stages.")]
Precision = Annotated[
    str | None, typer.Option(metavar="P", help="Emulated engines: bf16, fp8 or fp4.")
]
MaxBatch = Annotated[
    int | None,
    typer.Option(metavar="N", help="Emulated engines: most requests decoded together."),
]
NetworkRttMs = Annotated[
    float | None,
    typer.Option(metavar="MS", help="Emulated engines: client-endpoint round trip."),
]
SpecDecode = Annotated[
    str | None,
    typer.Option(
        metavar="D:A",
        help="Emulated engines: speculative decoding DRAFT:ACCEPT[:eagle|mtp|MODEL], off, or on "
        "(the stack's draft where it ships one off, as trtllm does; default: the stack's).",
    ),
]
Stack = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Emulated engines: serving stack, e.g. cs-current, cs-2024-08, vllm, trtllm "
        "(default: the hardware's; `agentrt substrates` lists them).",
    ),
]
Ep = Annotated[
    int | None,
    typer.Option(metavar="N", help="Emulated engines: expert-parallel degree (MoE models)."),
]


def check_number(
    flag: str,
    value: float | None,
    *,
    minimum: float = 0.0,
    exclusive: bool = True,
    unit: str = "",
) -> None:
    """Refuse a non-finite or out-of-range number given for ``flag`` (None passes).

    Example:
        >>> check_number("--deadline", float("nan"))
        Traceback (most recent call last):
        ...
        agentrt.errors.ConfigError: --deadline must be a finite number > 0, not nan

    Raises:
        ConfigError: the value is inf, nan or below ``minimum`` (or equal, if ``exclusive``).
    """
    if value is None:
        return
    low = value <= minimum if exclusive else value < minimum
    if not math.isfinite(value) or low:
        bound = f"{'>' if exclusive else '>='} {minimum:g}{unit}"
        raise ConfigError(f"{flag} must be a finite number {bound}, not {value:g}")


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """``-o KEY=VALUE`` pairs as a dict (``-`` in keys becomes ``_``).

    Example:
        >>> parse_options(["max-batch=8", "model=llama-3.1-8b"])
        {'max_batch': '8', 'model': 'llama-3.1-8b'}

    Raises:
        ConfigError: a pair without ``=`` or a key.
    """
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


def engine_options(
    option: list[str] | None = None,
    *,
    latency_ms: float | None = None,
    output_tokens: int | None = None,
    model: str | None = None,
    chips: int | None = None,
    tp: int | None = None,
    pp: int | None = None,
    precision: str | None = None,
    max_batch: int | None = None,
    network_rtt_ms: float | None = None,
    spec_decode: str | None = None,
    stack: str | None = None,
    ep: int | None = None,
) -> dict[str, Any]:
    """The substrate options of a command line: ``-o`` pairs, then the named flags over them.

    Example:
        >>> engine_options(["model=x"], chips=2, latency_ms=None)
        {'model': 'x', 'chips': 2}

    Raises:
        ConfigError: a bad ``-o`` pair or a number out of range (named by its flag).
    """
    check_number("--latency-ms", latency_ms, exclusive=False)
    check_number("--network-rtt-ms", network_rtt_ms, exclusive=False)
    for flag, count in (
        ("--output-tokens", output_tokens),
        ("--chips", chips),
        ("--tp", tp),
        ("--pp", pp),
        ("--max-batch", max_batch),
        ("--ep", ep),
    ):
        if count is not None and count < 1:
            raise ConfigError(f"{flag} must be at least 1, not {count}")
    options: dict[str, Any] = parse_options(option)
    named = {
        "latency_ms": latency_ms,
        "output_tokens": output_tokens,
        "model": model,
        "chips": chips,
        "tp": tp,
        "pp": pp,
        "precision": precision,
        "max_batch": max_batch,
        "network_rtt_ms": network_rtt_ms,
        "spec_decode": spec_decode,
        "stack": stack,
        "ep": ep,
    }
    options.update({k: v for k, v in named.items() if v is not None})
    return options


def _no_flag_placeholders(params: list[Any]) -> list[Any]:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""  # typer would show "<bool>" after the flag
    return params


class Command(TyperCommand):
    """A typer command whose help shows no ``<bool>`` after flags (``--help`` included)."""

    def get_params(self, ctx: Any) -> list[Any]:  # noqa: D102
        return _no_flag_placeholders(super().get_params(ctx))


class Group(TyperGroup):
    """The group counterpart of `Command` (for ``--version`` and ``--help``)."""

    def get_params(self, ctx: Any) -> list[Any]:  # noqa: D102
        return _no_flag_placeholders(super().get_params(ctx))


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: MESSAGE`` on one line of stderr (secrets redacted) and return the exit.

    Every command reports bad input this way: ``raise fail(str(exc)) from None``. The message is
    printed as text, never as rich markup (``list[str]`` stays as written).
    """
    from rich.console import Console
    from rich.markup import escape

    one_line = " ".join(redact(message).split())
    Console(stderr=True).print(
        f"[bold red]error:[/] {escape(one_line)}", highlight=False, soft_wrap=True
    )
    return typer.Exit(code)
