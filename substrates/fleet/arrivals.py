"""Arrival processes: when agents arrive (Poisson, step spike, ramp, on/off, diurnal, replay).

Each process is a pydantic model with a ``kind`` (so a fleet spec builds it from YAML through
`parse_arrivals`) and yields arrival times, in seconds from the start, given a duration and a
seed: the same seed gives the same times. Time-varying rates (step, ramp, diurnal) are
non-homogeneous Poisson processes drawn by thinning (Lewis & Shedler 1979: draw at the peak rate,
keep each arrival with probability rate(t) / peak); on/off is a two-state Markov-modulated
Poisson process (MMPP); replay reads the times from a CSV file. Arrivals are open-loop: they do
not wait for anything to finish.

Example:
    >>> spike = parse_arrivals({"kind": "step", "base_rate": 1, "peak_rate": 20, "at_s": 60})
    >>> times = list(spike.times(120.0, seed=1))
    >>> len([t for t in times if t < 60]) < len([t for t in times if t >= 60])
    True
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, TypeAdapter

from agentrt.errors import ConfigError

__all__ = [
    "ArrivalProcess",
    "DiurnalArrivals",
    "OnOffArrivals",
    "PoissonArrivals",
    "RampArrivals",
    "ReplayArrivals",
    "StepArrivals",
    "parse_arrivals",
]


class _Rated(BaseModel):
    """A (possibly time-varying) Poisson process drawn by thinning at its peak rate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def rate_at(self, t_s: float) -> float:
        """Mean arrivals per second at ``t_s`` seconds from the start."""
        raise NotImplementedError

    def max_rate(self) -> float:
        """The largest `rate_at` over all time (the thinning envelope)."""
        raise NotImplementedError

    def times(self, duration_s: float, *, seed: int | None = None) -> Iterator[float]:
        """Arrival times in ``[0, duration_s)``, increasing; the same ``seed``, the same times."""
        rng = random.Random(seed)
        peak = self.max_rate()
        if peak <= 0:
            return
        t = 0.0
        while True:
            t += rng.expovariate(peak)
            if t >= duration_s:
                return
            # Always draw, so the accepted times depend only on the seed, not on float ties.
            keep = rng.random() * peak < self.rate_at(t)
            if keep:
                yield t


class PoissonArrivals(_Rated):
    """Arrivals at a constant mean ``rate`` per second (exponential gaps)."""

    kind: Literal["poisson"] = "poisson"
    rate: PositiveFloat = Field(description="Mean arrivals per second.")

    def rate_at(self, t_s: float) -> float:
        """Constant."""
        return self.rate

    def max_rate(self) -> float:
        """The rate."""
        return self.rate


class StepArrivals(_Rated):
    """A spike: ``base_rate``, then ``peak_rate`` from ``at_s`` until ``until_s``."""

    kind: Literal["step"] = "step"
    base_rate: NonNegativeFloat = Field(description="Arrivals per second before and after.")
    peak_rate: NonNegativeFloat = Field(description="Arrivals per second in the spike.")
    at_s: NonNegativeFloat = Field(description="When the spike starts.")
    until_s: PositiveFloat | None = Field(default=None, description="When it ends; None: never.")

    def rate_at(self, t_s: float) -> float:
        """``peak_rate`` inside the spike, else ``base_rate``."""
        inside = t_s >= self.at_s and (self.until_s is None or t_s < self.until_s)
        return self.peak_rate if inside else self.base_rate

    def max_rate(self) -> float:
        """The larger of the two rates."""
        return max(self.base_rate, self.peak_rate)


class RampArrivals(_Rated):
    """A linear ramp from ``start_rate`` to ``end_rate`` over ``[at_s, at_s + ramp_s]``."""

    kind: Literal["ramp"] = "ramp"
    start_rate: NonNegativeFloat
    end_rate: NonNegativeFloat
    at_s: NonNegativeFloat = 0.0
    ramp_s: PositiveFloat = Field(description="How long the ramp takes.")

    def rate_at(self, t_s: float) -> float:
        """Interpolated linearly; ``start_rate`` before the ramp and ``end_rate`` after it."""
        frac = min(1.0, max(0.0, (t_s - self.at_s) / self.ramp_s))
        return self.start_rate + (self.end_rate - self.start_rate) * frac

    def max_rate(self) -> float:
        """The larger end of the ramp."""
        return max(self.start_rate, self.end_rate)


class DiurnalArrivals(_Rated):
    """A daily curve: ``mean_rate * (1 + amplitude * sin(2 pi (t - phase_s) / period_s))``.

    Shorten ``period_s`` to squeeze a day into a short study.
    """

    kind: Literal["diurnal"] = "diurnal"
    mean_rate: PositiveFloat
    amplitude: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.5, description="Swing as a fraction of the mean (0: flat, 1: down to 0)."
    )
    period_s: PositiveFloat = 86_400.0
    phase_s: float = Field(default=0.0, description="When the curve crosses its mean rising.")

    def rate_at(self, t_s: float) -> float:
        """The curve at ``t_s``."""
        angle = 2 * math.pi * (t_s - self.phase_s) / self.period_s
        return self.mean_rate * (1 + self.amplitude * math.sin(angle))

    def max_rate(self) -> float:
        """The crest."""
        return self.mean_rate * (1 + self.amplitude)


class OnOffArrivals(BaseModel):
    """On/off bursts (a two-state MMPP): ``on_rate`` while on, ``off_rate`` while off.

    The on and off periods last exponentially distributed times with means ``mean_on_s`` and
    ``mean_off_s``; the long-run mean rate is their time-weighted average.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["onoff"] = "onoff"
    on_rate: PositiveFloat
    off_rate: NonNegativeFloat = 0.0
    mean_on_s: PositiveFloat
    mean_off_s: PositiveFloat
    start_on: bool = True

    def mean_rate(self) -> float:
        """Long-run arrivals per second."""
        on, off = self.mean_on_s, self.mean_off_s
        return (self.on_rate * on + self.off_rate * off) / (on + off)

    def times(self, duration_s: float, *, seed: int | None = None) -> Iterator[float]:
        """Arrival times in ``[0, duration_s)``, increasing; the same ``seed``, the same times."""
        rng = random.Random(seed)
        on, start = self.start_on, 0.0
        while start < duration_s:
            end = min(
                duration_s, start + rng.expovariate(1 / (self.mean_on_s if on else self.mean_off_s))
            )
            rate = self.on_rate if on else self.off_rate
            t = start
            while rate > 0:
                # Memorylessness: restarting the draw at the state change is exact.
                t += rng.expovariate(rate)
                if t >= end:
                    break
                yield t
            start, on = end, not on


class ReplayArrivals(BaseModel):
    """Arrival times read from a CSV file: one timestamp in seconds per row (first column).

    A header row is allowed. Times are shifted so the first row arrives at 0 (``start: first``)
    or taken as they are (``start: zero``), and multiplied by ``time_scale`` (0.5 replays twice as
    fast). Rows must not go back in time. The seed is ignored.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["replay"] = "replay"
    path: Path
    column: Annotated[int, Field(ge=0)] = Field(default=0, description="Which column holds times.")
    start: Literal["first", "zero"] = "first"
    time_scale: PositiveFloat = 1.0

    def read(self) -> list[float]:
        """The file's times in seconds, shifted and scaled.

        Raises:
            ConfigError: the file is missing, or a row (named ``file:line``) is not a time.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: cannot read the replay file ({exc.strerror})"
            ) from None
        raw: list[float] = []
        for line, row in enumerate(csv.reader(text.splitlines()), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            where = f"{self.path}:{line}"
            if len(row) <= self.column:
                raise ConfigError(f"{where}: no column {self.column} in {row!r}; fix the row")
            cell = row[self.column].strip()
            try:
                value = float(cell)
            except ValueError:
                if not raw and line == 1:
                    continue  # a header row
                raise ConfigError(
                    f"{where}: {cell!r} is not a time in seconds; write a number such as 12.5"
                ) from None
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{where}: time {cell!r} must be a finite number >= 0")
            if raw and value < raw[-1]:
                raise ConfigError(
                    f"{where}: time {value:g} goes back before {raw[-1]:g}; sort the file by time"
                )
            raw.append(value)
        if not raw:
            raise ConfigError(f"{self.path}: no arrival times in the replay file")
        origin = raw[0] if self.start == "first" else 0.0
        return [(t - origin) * self.time_scale for t in raw]

    def times(self, duration_s: float, *, seed: int | None = None) -> Iterator[float]:
        """The file's times below ``duration_s``."""
        for t in self.read():
            if t >= duration_s:
                return
            yield t


#: Any arrival process, told apart by its ``kind``.
ArrivalProcess = Annotated[
    PoissonArrivals
    | StepArrivals
    | RampArrivals
    | OnOffArrivals
    | DiurnalArrivals
    | ReplayArrivals,
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[ArrivalProcess] = TypeAdapter(ArrivalProcess)


def parse_arrivals(data: dict[str, Any]) -> ArrivalProcess:
    """Build an arrival process from a mapping with a ``kind`` (a YAML block).

    Raises:
        pydantic.ValidationError: an unknown kind or a bad field (spec files map it to file:line).
    """
    return _ADAPTER.validate_python(data)
