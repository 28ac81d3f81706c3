"""Seeded fault injection around any substrate: errors, timeouts, spikes, outages, slow-downs.

`FaultInjector` wraps a `Substrate` and, call by call, decides from a seeded random stream and the
run's clock whether to fail or delay it. Failures are agentrt's retryable errors
(`SubstrateUnavailable`, `SubstrateTimeout`), so an agent's retry policy and a `Router`'s
fail-over handle them exactly as they would a real outage. Delays are added to the result's
``network_s`` (the time between client and endpoint) and named in its ``attributes``.

Times (outage windows, the slow-down ramp) are seconds after the wrapper's *origin*: the run's
clock reading at its first call, or an explicit ``origin_s``.

The same faults as a string, for ``--faults`` and plan files (`parse_faults`)::

    errors=0.1,timeouts=0.01:30s,spike=0.01:2s,outage=120s+30s,slowdown=2x@600s

Example:
    >>> from agentrt.testing import FixedLatencySubstrate
    >>> sub = wrap(FixedLatencySubstrate(latency_s=0.1), "errors=0.1,outage=120s+30s", seed=1)
    >>> sub.error_rate, sub.outages
    (0.1, ((120.0, 30.0),))
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, final

import anyio

from agentrt import current_clock
from agentrt.errors import ConfigError, SubstrateTimeout, SubstrateUnavailable
from agentrt.substrate import InferenceRequest, InferenceResult, Substrate

__all__ = ["FaultInjector", "FaultSpec", "parse_duration", "parse_faults", "wrap"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str, *, what: str = "duration") -> float:
    """Seconds in ``text``: ``30``, ``30s``, ``500ms``, ``2m`` or ``1h``.

    Example:
        >>> parse_duration("2m"), parse_duration("250ms")
        (120.0, 0.25)

    Raises:
        ConfigError: not a non-negative duration.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"{what}: {text!r} is not a duration (e.g. 30s, 500ms, 2m, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _rate(text: str, *, what: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a rate (e.g. 0.1 or 10%)") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"{what}: the rate must lie in [0, 1], got {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """Parsed ``--faults`` options; the keyword arguments of `FaultInjector`."""

    error_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_s: float = 30.0
    spike_rate: float = 0.0
    spike_s: float = 1.0
    outages: tuple[tuple[float, float], ...] = ()
    slowdown: tuple[float, float] | None = None
    seed: int | None = None


def parse_faults(spec: str) -> FaultSpec:
    """Parse a fault spec: comma-separated ``key=value`` items.

    Items: ``errors=RATE``, ``timeouts=RATE[:AFTER]``, ``spike=RATE:DURATION``,
    ``outage=START+DURATION`` (repeatable), ``slowdown=FACTORx@RAMP`` (latency grows linearly to
    FACTOR times by RAMP after the origin), ``seed=N``. Rates are fractions or percentages.

    Example:
        >>> parse_faults("errors=10%,outage=2m+30s,spike=0.01:2s").outages
        ((120.0, 30.0),)

    Raises:
        ConfigError: an unknown key or a malformed value; the message says which and why.
    """
    fields: dict[str, Any] = {"outages": []}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ConfigError(f"--faults: expected KEY=VALUE, got {item!r}")
        where = f"--faults {key}"
        if key == "errors":
            fields["error_rate"] = _rate(value, what=where)
        elif key == "timeouts":
            rate, _, after = value.partition(":")
            fields["timeout_rate"] = _rate(rate, what=where)
            if after:
                fields["timeout_s"] = parse_duration(after, what=where)
        elif key == "spike":
            rate, colon, length = value.partition(":")
            if not colon:
                raise ConfigError(f"{where}: expected RATE:DURATION (e.g. 0.01:2s), got {value!r}")
            fields["spike_rate"] = _rate(rate, what=where)
            fields["spike_s"] = parse_duration(length, what=where)
        elif key == "outage":
            start, plus, length = value.partition("+")
            if not plus:
                raise ConfigError(
                    f"{where}: expected START+DURATION (e.g. 120s+30s), got {value!r}"
                )
            fields["outages"].append(
                (parse_duration(start, what=where), parse_duration(length, what=where))
            )
        elif key == "slowdown":
            factor, at, ramp = value.partition("@")
            try:
                times = float(factor.rstrip("xX"))
            except ValueError:
                times = -1.0
            if not at or times < 1:
                raise ConfigError(
                    f"{where}: expected FACTORx@RAMP with FACTOR >= 1 (e.g. 2x@600s), got {value!r}"
                )
            fields["slowdown"] = (times, parse_duration(ramp, what=where))
        elif key == "seed":
            try:
                fields["seed"] = int(value)
            except ValueError:
                raise ConfigError(f"{where}: {value!r} is not an integer") from None
        else:
            raise ConfigError(
                f"--faults: unknown key {key!r}; known keys: errors, timeouts, spike, outage, "
                "slowdown, seed"
            )
    fields["outages"] = tuple(fields["outages"])
    return FaultSpec(**fields)


@final
class FaultInjector:
    """A `Substrate` that injects seeded faults into the calls it passes to ``substrate``.

    Per call, in this order: an outage window open at the current time raises
    `SubstrateUnavailable`; else with probability ``error_rate`` it raises `SubstrateUnavailable`;
    else with ``timeout_rate`` it waits ``timeout_s`` and raises `SubstrateTimeout`; else with
    ``spike_rate`` it delays the call by ``spike_s``; and a ``slowdown`` stretches every call by a
    factor growing linearly from 1 at the origin to ``FACTOR`` at ``RAMP`` seconds.

    Args:
        substrate: the substrate to wrap; its name is kept.
        seed: seeds the fault decisions, so runs repeat exactly.
        error_rate: probability that a call fails at once.
        timeout_rate: probability that a call hangs ``timeout_s`` and then times out.
        timeout_s: how long an injected timeout takes.
        spike_rate: probability of a latency spike.
        spike_s: the extra latency of a spike.
        outages: ``(start_s, duration_s)`` windows in which every call fails.
        slowdown: ``(factor, ramp_s)``: the gradual slow-down, or None.
        origin_s: the origin on the run's clock; default the time of the first call.
    """

    def __init__(
        self,
        substrate: Substrate,
        *,
        seed: int | None = None,
        error_rate: float = 0.0,
        timeout_rate: float = 0.0,
        timeout_s: float = 30.0,
        spike_rate: float = 0.0,
        spike_s: float = 1.0,
        outages: Iterable[tuple[float, float]] = (),
        slowdown: tuple[float, float] | None = None,
        origin_s: float | None = None,
    ) -> None:
        for label, rate in (
            ("error", error_rate),
            ("timeout", timeout_rate),
            ("spike", spike_rate),
        ):
            if not 0 <= rate <= 1:
                raise ConfigError(f"{label}_rate must lie in [0, 1], got {rate}")
        if timeout_s < 0 or spike_s < 0:
            raise ConfigError("timeout_s and spike_s must be >= 0")
        windows = tuple((float(s), float(d)) for s, d in outages)
        if any(s < 0 or d <= 0 for s, d in windows):
            raise ConfigError(f"outage windows need start >= 0 and duration > 0, got {windows}")
        if slowdown is not None and (slowdown[0] < 1 or slowdown[1] <= 0):
            raise ConfigError(f"slowdown needs factor >= 1 and ramp > 0, got {slowdown}")
        self.inner = substrate
        self.name = substrate.name
        self.remote = bool(getattr(substrate, "remote", False))
        self.error_rate = error_rate
        self.timeout_rate = timeout_rate
        self.timeout_s = timeout_s
        self.spike_rate = spike_rate
        self.spike_s = spike_s
        self.outages = windows
        self.slowdown = slowdown
        self.origin_s = origin_s
        self.injected: Counter[str] = Counter()
        self._rng = random.Random(seed)

    def elapsed_s(self) -> float:
        """Seconds since the origin on the run's clock (fixing the origin on first use)."""
        now = current_clock().current_time()
        if self.origin_s is None:
            self.origin_s = now
        return now - self.origin_s

    def in_outage(self, t: float) -> bool:
        """Whether ``t`` seconds after the origin falls in an outage window."""
        return any(start <= t < start + length for start, length in self.outages)

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Pass the call on, or fail or delay it as the faults say."""
        t = self.elapsed_s()
        rng = self._rng
        # Draw every decision each call so one fault's rate never shifts another's stream.
        u_error, u_timeout, u_spike = rng.random(), rng.random(), rng.random()
        if self.in_outage(t):
            self.injected["outage"] += 1
            raise SubstrateUnavailable(f"{self.name}: injected outage at t={t:.3f} s")
        if u_error < self.error_rate:
            self.injected["error"] += 1
            raise SubstrateUnavailable(f"{self.name}: injected error at t={t:.3f} s")
        if u_timeout < self.timeout_rate:
            self.injected["timeout"] += 1
            await anyio.sleep(self.timeout_s)
            raise SubstrateTimeout(f"{self.name}: injected timeout after {self.timeout_s} s")
        delay = 0.0
        attributes: dict[str, str | int | float | bool] = {}
        if u_spike < self.spike_rate:
            self.injected["spike"] += 1
            delay += self.spike_s
            attributes["agentrt.fault.spike_s"] = self.spike_s
            await anyio.sleep(self.spike_s)
        clock = current_clock()
        t0 = clock.current_time()
        result = await self.inner.infer(request)
        if self.slowdown is not None:
            factor, ramp = self.slowdown
            stretch = (factor - 1) * min(1.0, t / ramp)
            extra = stretch * (clock.current_time() - t0)
            if extra > 0:
                self.injected["slowdown"] += 1
                attributes["agentrt.fault.slowdown_s"] = extra
                delay += extra
                await anyio.sleep(extra)
        if not attributes:
            return result
        timing = result.timing.model_copy(
            update={
                "network_s": result.timing.network_s + delay,
                "ttft_s": result.timing.ttft_s + delay,
            }
        )
        return result.model_copy(
            update={"timing": timing, "attributes": {**result.attributes, **attributes}}
        )

    async def aclose(self) -> None:
        """Close the wrapped substrate."""
        await self.inner.aclose()

    def __repr__(self) -> str:
        return f"FaultInjector({self.inner!r}, injected={dict(self.injected)})"


def wrap(substrate: Substrate, spec: str, *, seed: int | None = None) -> FaultInjector:
    """Wrap ``substrate`` with the faults of a ``--faults`` spec (entry point ``agentrt.wrappers``).

    A ``seed=`` item in the spec wins over ``seed``.

    Raises:
        ConfigError: the spec is malformed.
    """
    parsed = parse_faults(spec)
    return FaultInjector(
        substrate,
        seed=parsed.seed if parsed.seed is not None else seed,
        error_rate=parsed.error_rate,
        timeout_rate=parsed.timeout_rate,
        timeout_s=parsed.timeout_s,
        spike_rate=parsed.spike_rate,
        spike_s=parsed.spike_s,
        outages=parsed.outages,
        slowdown=parsed.slowdown,
    )
