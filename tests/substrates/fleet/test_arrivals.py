from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from pydantic import ValidationError

from agentrt.errors import ConfigError
from substrates.fleet.arrivals import (
    DiurnalArrivals,
    OnOffArrivals,
    PoissonArrivals,
    RampArrivals,
    ReplayArrivals,
    StepArrivals,
    parse_arrivals,
)


def count(times: list[float], start: float, end: float) -> int:
    return sum(1 for t in times if start <= t < end)


def test_poisson_rate_and_determinism() -> None:
    process = PoissonArrivals(rate=5.0)
    times = list(process.times(2000.0, seed=7))
    assert abs(len(times) - 10_000) < 500
    assert times == sorted(times)
    assert times[0] >= 0
    assert times[-1] < 2000.0
    assert times == list(process.times(2000.0, seed=7))
    assert times != list(process.times(2000.0, seed=8))


def test_step_spike_rates_before_and_during() -> None:
    spike = parse_arrivals({"kind": "step", "base_rate": 1, "peak_rate": 20, "at_s": 600})
    assert isinstance(spike, StepArrivals)
    times = list(spike.times(1200.0, seed=3))
    assert abs(count(times, 0, 600) - 600) < 90
    assert abs(count(times, 600, 1200) - 12_000) < 600


def test_step_spike_ends_at_until() -> None:
    spike = StepArrivals(base_rate=0.0, peak_rate=10.0, at_s=100.0, until_s=200.0)
    times = list(spike.times(400.0, seed=1))
    assert count(times, 0, 100) == 0
    assert count(times, 200, 400) == 0
    assert abs(count(times, 100, 200) - 1000) < 150


def test_ramp_integral_and_monotone_halves() -> None:
    ramp = RampArrivals(start_rate=0.0, end_rate=20.0, at_s=0.0, ramp_s=1000.0)
    times = list(ramp.times(1000.0, seed=2))
    assert abs(len(times) - 10_000) < 600  # the integral of the ramp
    quarters = [count(times, q * 250, (q + 1) * 250) for q in range(4)]
    assert quarters == sorted(quarters)
    assert ramp.rate_at(-5.0) == 0.0
    assert ramp.rate_at(5000.0) == 20.0


def test_diurnal_mean_over_whole_periods_and_crest() -> None:
    day = DiurnalArrivals(mean_rate=4.0, amplitude=0.8, period_s=500.0)
    times = list(day.times(5000.0, seed=4))
    assert abs(len(times) - 20_000) < 1000
    # sin > 0 in the first half of each period: busier than the second half.
    first = sum(count(times, p * 500, p * 500 + 250) for p in range(10))
    assert first > 1.5 * (len(times) - first)


def test_onoff_mean_rate_and_burstiness() -> None:
    bursts = OnOffArrivals(on_rate=20.0, off_rate=0.0, mean_on_s=10.0, mean_off_s=30.0)
    times = list(bursts.times(8000.0, seed=5))
    assert abs(len(times) / 8000.0 - bursts.mean_rate()) < 0.15 * bursts.mean_rate()
    windows = [count(times, w * 10, (w + 1) * 10) for w in range(800)]
    # A Poisson process has variance == mean per window; on/off bursts are far more variable.
    assert statistics.variance(windows) > 5 * statistics.mean(windows)
    assert times == list(bursts.times(8000.0, seed=5))


def test_zero_rate_gives_no_arrivals() -> None:
    assert list(StepArrivals(base_rate=0.0, peak_rate=0.0, at_s=0.0).times(100.0, seed=1)) == []


def test_unknown_kind_and_bad_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="kind"):
        parse_arrivals({"kind": "burst", "rate": 1})
    with pytest.raises(ValidationError, match="rate"):
        parse_arrivals({"kind": "poisson", "rate": -1})
    with pytest.raises(ValidationError, match="extra"):
        parse_arrivals({"kind": "poisson", "rate": 1, "rat": 2})


def test_replay_reads_header_comments_shift_and_scale(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("timestamp,user\n# a comment\n100.0,a\n100.5,b\n\n102,c\n105,d\n")
    assert list(ReplayArrivals(path=path).times(10.0)) == [0.0, 0.5, 2.0, 5.0]
    assert list(ReplayArrivals(path=path, time_scale=0.5).times(2.0)) == [0.0, 0.25, 1.0]
    assert list(ReplayArrivals(path=path, start="zero").times(101.0)) == [100.0, 100.5]
    built = parse_arrivals({"kind": "replay", "path": str(path)})
    assert isinstance(built, ReplayArrivals)


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("1.0\n2.0\nsoon\n", ":3:", "not a time"),
        ("t\n1.0\n0.5\n", ":3:", "sort the file"),
        ("1.0\n-2\n", ":2:", ">= 0"),
        ("1.0\nnan\n", ":2:", "finite"),
        ("a,b\n1.0,2.0\n3.0\n", ":3:", "no column 1"),
    ],
)
def test_replay_bad_rows_name_file_and_line(
    tmp_path: Path, text: str, where: str, words: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    column = 1 if "no column" in words else 0
    with pytest.raises(ConfigError, match=words) as info:
        list(ReplayArrivals(path=path, column=column).times(100.0))
    assert f"bad.csv{where}" in str(info.value)
    assert "\n" not in str(info.value)


def test_replay_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ReplayArrivals(path=tmp_path / "none.csv").read()
    empty = tmp_path / "empty.csv"
    empty.write_text("timestamp\n")
    with pytest.raises(ConfigError, match="no arrival times"):
        ReplayArrivals(path=empty).read()
