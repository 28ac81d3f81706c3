"""Calibration of the performance model: every published point with its prediction and error."""

from __future__ import annotations

import csv
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agentrt.errors import ConfigError
from substrates.emulated.profiles import ProfileCatalog, load_catalog
from substrates.emulated.scenario import parse_scenario, predict_point

__all__ = [
    "DATA_FILE",
    "EXCLUSION_REASONS",
    "FAMILY_TOLERANCE",
    "TOLERANCE",
    "Calibration",
    "CalibrationPoint",
    "Use",
    "calibrate",
    "format_exclusions",
    "format_table",
    "predict_point",
]

#: The published points, with agentrt's columns (use, scenario, note) after the source columns.
DATA_FILE = Path(__file__).resolve().parent / "data" / "published_tuning.csv"

#: Largest relative error accepted on a fitted or checked point of a GPU or a wafer.
TOLERANCE = 0.15

#: Wider tolerance by hardware kind: the LPU and RDU points are hosted-API speeds of
#: deployments whose chip count, precision and software are only partly published, and the
#: other families have no points yet (docs/performance-model.md, "Other architecture families").
FAMILY_TOLERANCE: dict[str, float] = {"hbm": 0.25, "lpu": 0.25, "rdu": 0.25, "fpga": 0.25}

#: ``fit``: a parameter was fitted to it; ``check``: predicted without fitting to it;
#: ``excluded``: its hardware or deployment is unknown, so there is nothing physical to predict
#: (the note starts with one of `EXCLUSION_REASONS`); ``gap``: known hardware and deployment the
#: model cannot predict yet (the note says what is missing); ``input``: a published number used
#: as data (a price), not predicted.
Use = Literal["fit", "check", "excluded", "gap", "input"]
_USES: tuple[Use, ...] = ("fit", "check", "excluded", "gap", "input")

#: The only reasons to exclude a point; an excluded row's note starts with one of them.
EXCLUSION_REASONS = ("hardware unknown", "deployment unknown")


@dataclass(frozen=True, slots=True)
class CalibrationPoint:
    """One published measurement next to the model's prediction.

    Attributes:
        row: the ``row`` id in the CSV (stable across copies of the table).
        system: who measured or served it.
        chip: hardware as published.
        model: model as published.
        metric: what was measured (``output_tokens_per_s_per_user``, ``ttft_s``, ...).
        unit: its unit.
        measured: the published value.
        predicted: the model's value, or None when the point cannot be predicted.
        use: how the point is used.
        source: where it was published.
        note: what the point fitted, what was assumed, or why it is excluded.
        tolerance: largest accepted relative error for this point (by hardware kind).
        scenario: the ``agentrt_scenario`` it is predicted under ("" when none).
        family: the kind of its hardware profile (``gpu``, ``wafer``, ...), or None.
        model_name: the model profile its scenario names, or None.
    """

    row: int
    system: str
    chip: str
    model: str
    metric: str
    unit: str
    measured: float
    predicted: float | None
    use: Use
    source: str
    note: str
    tolerance: float = TOLERANCE
    scenario: str = ""
    family: str | None = None
    model_name: str | None = None

    @property
    def relative_error(self) -> float | None:
        """``(predicted - measured) / measured``, or None without a prediction."""
        if self.predicted is None:
            return None
        return (self.predicted - self.measured) / self.measured

    @property
    def scored(self) -> bool:
        """Whether the point counts towards the tolerance (fitted or checked)."""
        return self.use in ("fit", "check") and self.predicted is not None


@dataclass(frozen=True, slots=True)
class Calibration:
    """The whole calibration table.

    Attributes:
        points: every row of the table, in file order.
        tolerance: largest accepted relative error on GPU and wafer points (each point carries
            its own, wider for the families in `FAMILY_TOLERANCE`).
    """

    points: tuple[CalibrationPoint, ...]
    tolerance: float

    @property
    def scored(self) -> tuple[CalibrationPoint, ...]:
        """Fitted and checked points with a prediction."""
        return tuple(p for p in self.points if p.scored)

    @property
    def largest_error(self) -> CalibrationPoint | None:
        """The scored point with the largest absolute relative error."""
        return max(self.scored, key=lambda p: abs(p.relative_error or 0.0), default=None)

    @property
    def exclusions(self) -> dict[str, tuple[int, ...]]:
        """Rows excluded because their hardware or deployment is unknown, by reason."""
        rows: dict[str, list[int]] = {reason: [] for reason in EXCLUSION_REASONS}
        for p in self.points:
            reason = _exclusion_reason(p)
            if reason is not None:
                rows[reason].append(p.row)
        return {reason: tuple(found) for reason, found in rows.items() if found}

    @property
    def gaps(self) -> tuple[CalibrationPoint, ...]:
        """Points with known hardware and deployment that the model does not predict yet.

        The ``gap`` rows, and any ``excluded`` row whose note gives no `EXCLUSION_REASONS`.
        """
        return tuple(
            p
            for p in self.points
            if p.use == "gap" or (p.use == "excluded" and _exclusion_reason(p) is None)
        )

    @property
    def failures(self) -> tuple[CalibrationPoint, ...]:
        """Scored points outside their tolerance."""
        return tuple(p for p in self.scored if abs(p.relative_error or 0.0) > p.tolerance)


def _exclusion_reason(point: CalibrationPoint) -> str | None:
    if point.use != "excluded":
        return None
    return next((r for r in EXCLUSION_REASONS if point.note.startswith(r)), None)


def _use(text: str) -> Use:
    for use in _USES:
        if text == use:
            return use
    raise ConfigError(f"agentrt_use must be one of {', '.join(_USES)}, got {text!r}")


def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the calibration table: {exc}") from exc


def calibrate(*, path: Path | None = None, catalog: ProfileCatalog | None = None) -> Calibration:
    """Predict every published point of the calibration table and measure the error.

    Args:
        path: the CSV; default the table shipped with agentrt (`DATA_FILE`).
        catalog: the profiles to use; default the built-in ones (plus ``$AGENTRT_PROFILE_PATH``).

    Returns:
        Every point with measured and predicted values, and the largest error.

    Raises:
        ConfigError: the table is malformed (the message names the row).
    """
    table = path or DATA_FILE
    profiles = catalog or load_catalog()
    points = []
    for record in _read_rows(table):
        row = record.get("row", "?")
        try:
            use = _use(record["agentrt_use"])
            scenario = record["agentrt_scenario"].strip()
            measured = float(record["value"])
            predicted = (
                predict_point(record["metric"], scenario, profiles)
                if scenario and use != "input"
                else None
            )
            if use in ("fit", "check") and predicted is None:
                raise ConfigError(f"a {use} point needs a scenario")
            if predicted is not None and not math.isfinite(predicted):
                raise ConfigError(f"prediction is not finite: {predicted}")
            spec = parse_scenario(scenario) if scenario else {}
            hardware = profiles.get_hardware(spec["hw"]) if "hw" in spec else None
            kind = hardware.kind if hardware is not None else "gpu"
            model = profiles.get_model(spec["model"]).name if "model" in spec else None
            points.append(
                CalibrationPoint(
                    row=int(row),
                    system=record["system"],
                    chip=record["chip"],
                    model=record["model"],
                    metric=record["metric"],
                    unit=record["unit"],
                    measured=measured,
                    predicted=predicted,
                    use=use,
                    source=record["source_url"],
                    note=record["agentrt_note"],
                    tolerance=FAMILY_TOLERANCE.get(kind, TOLERANCE),
                    scenario=scenario,
                    family=None if hardware is None else kind,
                    model_name=model,
                )
            )
        except (ConfigError, KeyError, ValueError) as exc:
            raise ConfigError(f"{table}: row {row}: {exc}") from exc
    return Calibration(points=tuple(points), tolerance=TOLERANCE)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or 0.01 <= abs(value) < 100_000:
        return f"{value:.4g}"
    return f"{value:.3g}"


def _family_tolerances() -> str:
    """``+/-25% for fpga, hbm, lpu, rdu``: the wider tolerances, grouped."""
    groups: dict[float, list[str]] = {}
    for kind, tol in sorted(FAMILY_TOLERANCE.items()):
        groups.setdefault(tol, []).append(kind)
    return "; ".join(f"+/-{tol:.0%} for {', '.join(kinds)}" for tol, kinds in groups.items())


def format_exclusions(calibration: Calibration) -> str:
    """The excluded rows counted by reason, then the modelling gaps, one per line.

    Args:
        calibration: the result of `calibrate`.

    Returns:
        The text.
    """
    exclusions = calibration.exclusions
    count = sum(len(rows) for rows in exclusions.values())
    lines = [f"excluded, hardware or deployment unknown: {count} rows"]
    for reason, rows in exclusions.items():
        lines.append(f"  {reason} ({len(rows)}): rows {', '.join(map(str, rows))}")
    gaps = calibration.gaps
    lines.append(f"modelling gaps (known hardware and deployment, not predicted): {len(gaps)} rows")
    lines += [f"  row {p.row} ({p.chip}, {p.model}): {p.note}" for p in gaps]
    return "\n".join(lines)


def format_table(calibration: Calibration, *, include_unscored: bool = True) -> str:
    """Render the calibration as plain text, one line per point, then the largest error.

    Args:
        calibration: the result of `calibrate`.
        include_unscored: also list excluded and input points (with their reasons).

    Returns:
        The table.
    """
    # Columns as wide as their longest value: a model or metric name is never cut.
    shown = [p for p in calibration.points if include_unscored or p.scored]
    chip_w = max([len("chip"), *(len(p.chip) for p in shown)])
    model_w = max([len("model"), *(len(p.model) for p in shown)])
    metric_w = max([len("metric"), *(len(p.metric) for p in shown)])
    header = (
        f"{'row':>4}  {'use':<8} {'chip':<{chip_w}} {'model':<{model_w}} {'metric':<{metric_w}} "
        f"{'measured':>9} {'predicted':>9} {'error':>7}"
    )
    lines = [header, "-" * len(header)]
    for p in shown:
        err = p.relative_error
        error = "-" if err is None else f"{err:+.1%}"
        lines.append(
            f"{p.row:>4}  {p.use:<8} {p.chip:<{chip_w}} {p.model:<{model_w}} "
            f"{p.metric:<{metric_w}} {_fmt(p.measured):>9} {_fmt(p.predicted):>9} {error:>7}"
        )
        if p.use in ("excluded", "gap"):
            lines.append(
                textwrap.fill(
                    p.note,
                    width=len(header),
                    initial_indent=" " * 6 + "why: ",
                    subsequent_indent=" " * 11,
                )
            )
    worst = calibration.largest_error
    scored = calibration.scored
    lines.append("-" * len(header))
    if worst is None or worst.relative_error is None:
        lines.append("no scored points")
    else:
        lines.append(
            f"scored points: {len(scored)} (fit {sum(p.use == 'fit' for p in scored)}, "
            f"check {sum(p.use == 'check' for p in scored)}); within "
            f"+/-{calibration.tolerance:.0%} ({_family_tolerances()}): "
            f"{len(scored) - len(calibration.failures)}; "
            f"largest error: row {worst.row} {worst.relative_error:+.1%} "
            f"({worst.model}, {worst.metric})"
        )
    return "\n".join(lines)
