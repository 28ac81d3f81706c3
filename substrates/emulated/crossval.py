"""Leave-one-model-out cross-validation of the fitted parameters, family by family.

For each scored point (fitted or checked) of a family with fitted parameters, the family's
parameters are refitted (`substrates.emulated.fit.fit_family`) to that family's ``fit`` points
of every *other* model, and the point is predicted under the refit: its ``cv_error`` says how
the model does on a model it was not fitted to. A fold whose remaining points do not determine
every parameter is flagged: there, the undetermined directions keep the files' values, which
were fitted with the held-out model, so its error is optimistic.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from substrates.emulated.calibration import Calibration, CalibrationPoint, predict_point
from substrates.emulated.fit import FitResult, Parameter, fit_family, fit_parameters
from substrates.emulated.profiles import ProfileCatalog

__all__ = [
    "CrossValidatedPoint",
    "CrossValidation",
    "FamilyScore",
    "cross_validate",
]

#: The fitter `cross_validate` calls (a test can pass a spy): family, points, catalog,
#: parameters, prediction cache.
Fitter = Callable[
    [str, Sequence[CalibrationPoint], ProfileCatalog, Sequence[Parameter],
     dict[tuple[int, tuple[float, ...]], float]],
    FitResult,
]  # fmt: skip


def _fit(
    family: str,
    points: Sequence[CalibrationPoint],
    catalog: ProfileCatalog,
    parameters: Sequence[Parameter],
    cache: dict[tuple[int, tuple[float, ...]], float],
) -> FitResult:
    return fit_family(family, points, catalog, parameters=parameters, cache=cache)


@dataclass(frozen=True, slots=True)
class CrossValidatedPoint:
    """A scored point predicted by a fit that never saw its model.

    Attributes:
        point: the calibration point (with its in-sample prediction).
        cv_predicted: its prediction under the refit without its model.
        trained_on: the rows that refit used.
        underdetermined: whether those rows left a parameter direction undetermined.
    """

    point: CalibrationPoint
    cv_predicted: float
    trained_on: tuple[int, ...]
    underdetermined: bool

    @property
    def cv_error(self) -> float:
        """``(cv_predicted - measured) / measured``."""
        return (self.cv_predicted - self.point.measured) / self.point.measured


@dataclass(frozen=True, slots=True)
class FamilyScore:
    """One family's cross-validation summary.

    Attributes:
        family: the hardware kind.
        parameters: how many parameters it fits.
        fit_points: its ``fit`` points.
        scored_points: its ``fit`` and ``check`` points.
        folds: refits made (one per model among its scored points).
        underdetermined_folds: folds whose points did not determine every parameter.
        median_abs_error: median of ``|cv_error|`` over its scored points.
        max_abs_error: the largest ``|cv_error|``.
    """

    family: str
    parameters: int
    fit_points: int
    scored_points: int
    folds: int
    underdetermined_folds: int
    median_abs_error: float
    max_abs_error: float


@dataclass(frozen=True, slots=True)
class CrossValidation:
    """Leave-one-model-out results, and the full refit of each family.

    Attributes:
        points: every scored point with its cross-validated prediction, in table order.
        families: per family, sorted by name.
        refits: per family, the fit to all its ``fit`` points (compare with the files).
    """

    points: tuple[CrossValidatedPoint, ...]
    families: tuple[FamilyScore, ...]
    refits: dict[str, FitResult]

    @property
    def median_abs_error(self) -> float:
        """Median ``|cv_error|`` over every scored point."""
        return statistics.median(abs(p.cv_error) for p in self.points) if self.points else 0.0


def cross_validate(
    calibration: Calibration, catalog: ProfileCatalog, *, fitter: Fitter = _fit
) -> CrossValidation:
    """Refit each family without each model in turn and predict that model's points.

    Args:
        calibration: the table (`substrates.emulated.calibration.calibrate`) under ``catalog``.
        catalog: the profiles: their values start every fit, their ``fit`` lists say what moves.
        fitter: the fit to run (default `substrates.emulated.fit.fit_family`).

    Returns:
        The cross-validated points, per-family summaries and full refits.
    """
    scored = [p for p in calibration.scored if p.family is not None]
    fitted = [p for p in scored if p.use == "fit"]
    parameters = fit_parameters(catalog)
    results: dict[int, CrossValidatedPoint] = {}
    refits: dict[str, FitResult] = {}
    summaries = []
    for family in sorted({p.family for p in scored if p.family is not None}):
        params = parameters.get(family, ())
        members = [p for p in scored if p.family == family]
        training = [p for p in fitted if p.family == family]
        cache: dict[tuple[int, tuple[float, ...]], float] = {}
        refits[family] = fitter(family, training, catalog, params, cache)
        models = sorted({p.model_name or "" for p in members})
        underdetermined = 0
        for model in models:
            kept = [p for p in training if p.model_name != model]
            refit = fitter(family, kept, catalog, params, cache) if params else None
            under = refit is not None and refit.underdetermined
            underdetermined += under
            refitted = refit.catalog(catalog) if refit is not None else catalog
            for p in members:
                if p.model_name == model:
                    predicted = predict_point(p.metric, p.scenario, refitted)
                    results[p.row] = CrossValidatedPoint(
                        p, predicted, tuple(q.row for q in kept), under
                    )
        errors = [abs(results[p.row].cv_error) for p in members]
        summaries.append(
            FamilyScore(
                family=family,
                parameters=len(params),
                fit_points=len(training),
                scored_points=len(members),
                folds=len(models),
                underdetermined_folds=underdetermined,
                median_abs_error=statistics.median(errors),
                max_abs_error=max(errors),
            )
        )
    ordered = tuple(results[p.row] for p in scored)
    return CrossValidation(points=ordered, families=tuple(summaries), refits=refits)
