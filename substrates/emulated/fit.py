"""Fitting the model's named parameters to the published points, one hardware family at a time.

Which parameters are fitted is data: each hardware profile (and serving-stack profile, where
the catalog has them) lists them in ``fit``, as a path into itself
(``efficiency.flop_efficiency``) or into any profile (``stack:vllm.efficiency.X``,
``hardware:h100.efficiency.flop_efficiency``); ``PATH = KIND:NAME.PATH`` makes this profile's
value follow another profile's fitted one (H200 shares the H100 fit). A parameter is called by
its full path, ``KIND:NAME.PATH``; its family is the ``kind`` of the profile holding it.

`fit_family` minimises the sum of squared ``log(predicted / measured)`` over the given points
by damped Gauss-Newton (Levenberg-Marquardt) in log-parameter space, each value kept within the
profile schema's bounds and a factor of `SEARCH_RANGE` of its value in the file. It starts from
the files' values, uses no randomness, and prices every trial by building a modified catalog
(`with_values`) and calling `substrates.emulated.calibration.predict_point`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from agentrt.errors import ConfigError
from substrates.emulated.calibration import CalibrationPoint, predict_point
from substrates.emulated.leastsq import least_squares
from substrates.emulated.profiles import Efficiency, ProfileCatalog

__all__ = [
    "SEARCH_RANGE",
    "FitResult",
    "Parameter",
    "fit_family",
    "fit_parameters",
    "with_values",
]

#: A fitted value stays within this factor of its value in the data file (either way).
SEARCH_RANGE = 100.0

#: Catalog tables by the kind named in a parameter path.
_TABLES = {"hardware": "hardware", "stack": "stacks"}

#: Residual given to a trial the model refuses (a deployment that no longer fits, say).
_REFUSED = 10.0

#: A direction in log-parameter space that moves the log predictions by less than this (per
#: unit step, over all points) is not determined by the points.
_RANK_TOLERANCE = 1e-3


@dataclass(frozen=True, slots=True)
class Parameter:
    """One fitted parameter.

    Attributes:
        path: ``KIND:NAME.PATH``, e.g. ``hardware:h100.efficiency.flop_efficiency``.
        family: the ``kind`` of the profile holding it (whose points fit it).
        value: its value in the data file.
        lower: smallest value the fit may give it.
        upper: largest value the fit may give it.
        targets: every path set to the fitted value: ``path`` and the entries sharing it.
    """

    path: str
    family: str
    value: float
    lower: float
    upper: float
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FitResult:
    """The outcome of one fit.

    Attributes:
        family: the hardware kind fitted.
        parameters: what was fitted.
        values: the fitted values, in the order of ``parameters``.
        rows: the calibration rows fitted to.
        residuals: ``log(predicted / measured)`` at the fitted values, in the order of ``rows``.
        rank: how many independent directions of the parameters the rows determine.
        sensitivity: per parameter, how much the rows' log predictions move per unit of its
            log (the Jacobian column's norm); zero when no row reads it.
        evaluations: predictions of the whole set of rows made.
    """

    family: str
    parameters: tuple[Parameter, ...]
    values: tuple[float, ...]
    rows: tuple[int, ...]
    residuals: tuple[float, ...]
    rank: int
    sensitivity: tuple[float, ...]
    evaluations: int

    @property
    def underdetermined(self) -> bool:
        """Whether the rows leave some parameter direction at the file's value."""
        return self.rank < len(self.parameters)

    @property
    def unmoved(self) -> tuple[str, ...]:
        """Paths of parameters no fitted row depends on (a stack may override them, say)."""
        return tuple(
            p.path
            for p, s in zip(self.parameters, self.sensitivity, strict=True)
            if s < _RANK_TOLERANCE
        )

    @property
    def at_bound(self) -> tuple[str, ...]:
        """Paths of parameters that ended on a bound of their search range."""
        return tuple(
            p.path
            for p, v in zip(self.parameters, self.values, strict=True)
            if math.isclose(v, p.lower, rel_tol=1e-6) or math.isclose(v, p.upper, rel_tol=1e-6)
        )

    def catalog(self, catalog: ProfileCatalog) -> ProfileCatalog:
        """``catalog`` with the fitted values in place."""
        return with_values(catalog, self.parameters, self.values)


def _split(path: str) -> tuple[str, str, list[str]]:
    kind, _, rest = path.strip().partition(":")
    name, _, tail = rest.partition(".")
    if kind not in _TABLES or not name or not tail:
        raise ConfigError(
            f"fit parameter {path!r}: expected KIND:NAME.PATH with KIND one of "
            f"{', '.join(_TABLES)}, e.g. 'hardware:h100.efficiency.flop_efficiency'"
        )
    return kind, name.lower(), tail.split(".")


def _table(catalog: ProfileCatalog, kind: str) -> Mapping[str, BaseModel]:
    table: Mapping[str, BaseModel] = getattr(catalog, _TABLES[kind], {})
    return table


def _constraints(annotation: object) -> list[object]:
    """The ``annotated_types`` constraints of a type argument (e.g. a table's value type)."""
    found = list(getattr(annotation, "metadata", ()))
    for meta in getattr(annotation, "__metadata__", ()):  # Annotated[float, Field(le=1)]
        found += list(getattr(meta, "metadata", ())) or [meta]
    return found


def _walk(catalog: ProfileCatalog, path: str) -> tuple[object, list[object]]:
    """The value at ``path``, and the constraints (``annotated_types``) its field declares.

    A path crosses model fields and table keys (a stack's ``efficiency`` overrides are a table
    of `Efficiency` field names, so they take that field's constraints).
    """
    kind, name, tail = _split(path)
    table = _table(catalog, kind)
    if name not in table:
        raise ConfigError(
            f"fit parameter {path!r}: no {kind} profile {name!r}; known: {', '.join(sorted(table))}"
        )
    node: object = table[name]
    rules: list[object] = []
    parent = ""
    for part in tail:
        if isinstance(node, BaseModel) and part in type(node).model_fields:
            info = type(node).model_fields[part]
            rules = list(info.metadata) + [
                m for arg in get_args(info.annotation)[1:] for m in _constraints(arg)
            ]
            node = getattr(node, part)
        elif isinstance(node, Mapping) and part in node:
            if parent == "efficiency" and part in Efficiency.model_fields:
                rules = list(Efficiency.model_fields[part].metadata)
            node = node[part]
        else:
            known = type(node).model_fields if isinstance(node, BaseModel) else node
            listing = ", ".join(sorted(map(str, known))) if isinstance(known, Mapping) else ""
            raise ConfigError(
                f"fit parameter {path!r}: no field {part!r}; fields: {listing or 'none'}"
            )
        parent = part
    if not isinstance(node, int | float) or isinstance(node, bool):
        raise ConfigError(f"fit parameter {path!r} is not a number")
    return node, rules


def _bounds(value: float, rules: Sequence[object]) -> tuple[float, float]:
    lower, upper = value / SEARCH_RANGE, value * SEARCH_RANGE
    for rule in rules:
        limit = getattr(rule, type(rule).__name__.lower(), None)
        if isinstance(limit, int | float) and isinstance(rule, Le | Lt):
            upper = min(upper, float(limit))
        elif isinstance(limit, int | float) and isinstance(rule, Ge | Gt):
            lower = max(lower, float(limit))
    return lower, max(lower, upper)


def _replace(node: object, tail: Sequence[str], value: float) -> object:
    head = tail[0]
    if isinstance(node, BaseModel):
        child = value if len(tail) == 1 else _replace(getattr(node, head), tail[1:], value)
        return node.model_copy(update={head: child})
    if isinstance(node, Mapping):
        child = value if len(tail) == 1 else _replace(node[head], tail[1:], value)
        return {**node, head: child}
    raise ConfigError(f"cannot set {'.'.join(tail)!r} inside {type(node).__name__}")


def with_values(
    catalog: ProfileCatalog, parameters: Sequence[Parameter], values: Sequence[float]
) -> ProfileCatalog:
    """A copy of ``catalog`` with each parameter (and every entry sharing it) set.

    Args:
        catalog: the profiles.
        parameters: what to set.
        values: their new values, in the same order.

    Returns:
        The modified catalog; ``catalog`` itself is unchanged.
    """
    tables: dict[str, dict[str, Any]] = {}
    for parameter, value in zip(parameters, values, strict=True):
        for target in parameter.targets:
            kind, name, tail = _split(target)
            table = tables.setdefault(kind, dict(_table(catalog, kind)))
            if name not in table:
                raise ConfigError(f"fit parameter {target!r}: no {kind} profile {name!r}")
            table[name] = _replace(table[name], tail, float(value))
    if not tables:
        return catalog
    return catalog.model_copy(update={_TABLES[kind]: t for kind, t in tables.items()})


def _declared(catalog: ProfileCatalog) -> dict[str, list[str]]:
    """Fitted parameter path -> the paths set to its value (itself first, then its sharers).

    ``PATH`` declares this profile's parameter, ``KIND:NAME.PATH`` any profile's (a stack may
    declare the hardware parameters it is fitted with; declaring one twice is one parameter),
    ``PATH = KIND:NAME.PATH`` makes this profile's ``PATH`` follow a declared parameter.
    """
    free: dict[str, list[str]] = {}
    shared: list[tuple[str, str, str]] = []  # (owner, source, target)
    for kind in _TABLES:
        for name, profile in sorted(_table(catalog, kind).items()):
            for entry in getattr(profile, "fit", ()):
                local, _, source = (part.strip() for part in entry.partition("="))
                path = local if ":" in local else f"{kind}:{name}.{local}"
                _walk(catalog, path)
                if source:
                    shared.append((f"{kind} {name}", source, path))
                else:
                    free.setdefault(path, [path])
    for owner, source, target in shared:
        kind, name, tail = _split(source)
        key = f"{kind}:{name}.{'.'.join(tail)}"
        if key not in free:
            raise ConfigError(
                f"{owner}: fit entry shares {source!r}, which no profile fits; add "
                f"{'.'.join(tail)!r} to the fit list of {kind} {name}"
            )
        free[key].append(target)
    return free


def fit_parameters(catalog: ProfileCatalog) -> dict[str, tuple[Parameter, ...]]:
    """Every parameter the data files declare as fitted, by family.

    Args:
        catalog: the profiles (their ``fit`` lists).

    Returns:
        Family (the ``kind`` of the hardware or stack profile holding the value) -> its
        parameters, sorted by path.

    Raises:
        ConfigError: an entry names no number, shares a parameter nobody fits, shares across
            two families, or starts at zero (the message names the entry and the fix).
    """
    by_family: dict[str, list[Parameter]] = {}
    for path, targets in sorted(_declared(catalog).items()):
        families = set()
        for target in targets:
            kind, name, _ = _split(target)
            families.add(str(getattr(_table(catalog, kind)[name], "kind", kind)))
        if len(families) > 1:
            raise ConfigError(
                f"fit parameter {path!r} is shared by the {', '.join(sorted(families))} "
                "families; share a parameter only inside one family"
            )
        value, rules = _walk(catalog, path)
        assert isinstance(value, int | float)  # _walk checked
        if value <= 0:
            raise ConfigError(
                f"fit parameter {path!r} is {value:g} (unset, or moved to another profile such "
                "as a stack?): remove it from the fit list, or give it a positive starting "
                "value in the file (the fit works in log space)"
            )
        lower, upper = _bounds(float(value), rules)
        family = families.pop()
        by_family.setdefault(family, []).append(
            Parameter(path, family, float(value), lower, upper, tuple(targets))
        )
    return {family: tuple(found) for family, found in sorted(by_family.items())}


class _Residuals:
    """``log(predicted / measured)`` of a set of points at a parameter vector, cached."""

    def __init__(
        self,
        catalog: ProfileCatalog,
        parameters: Sequence[Parameter],
        points: Sequence[CalibrationPoint],
        cache: dict[tuple[int, tuple[float, ...]], float],
    ) -> None:
        self._catalog, self._parameters, self._points = catalog, parameters, points
        self._cache = cache
        self.evaluations = 0

    def __call__(self, log_values: np.ndarray) -> np.ndarray:
        key = tuple(float(v) for v in log_values)
        missing = [p for p in self._points if (p.row, key) not in self._cache]
        if missing:
            self.evaluations += 1
            values = [math.exp(v) for v in key]
            catalog = with_values(self._catalog, self._parameters, values)
            for p in missing:
                self._cache[(p.row, key)] = _log_error(p, catalog)
        return np.array([self._cache[(p.row, key)] for p in self._points])


def _log_error(point: CalibrationPoint, catalog: ProfileCatalog) -> float:
    try:
        predicted = predict_point(point.metric, point.scenario, catalog)
    except ConfigError:
        return _REFUSED
    if not (predicted > 0 and math.isfinite(predicted)):
        return _REFUSED
    return math.log(predicted / point.measured)


def fit_family(
    family: str,
    points: Sequence[CalibrationPoint],
    catalog: ProfileCatalog,
    *,
    parameters: Sequence[Parameter] | None = None,
    cache: dict[tuple[int, tuple[float, ...]], float] | None = None,
) -> FitResult:
    """Fit one family's parameters to some of its points (least squares on log error).

    Args:
        family: the hardware kind (``gpu``, ``wafer``, ``lpu``, ``rdu``, ...).
        points: the points to fit to; each needs a scenario.
        catalog: the profiles, with the starting values.
        parameters: what to fit; default the family's entries of `fit_parameters`.
        cache: predictions to reuse between fits of the same catalog and parameters (key: the
            row and the parameters' log values).

    Returns:
        The fitted values, residuals and how well the points determine them.
    """
    params = tuple(
        parameters if parameters is not None else fit_parameters(catalog).get(family, ())
    )
    residuals = _Residuals(catalog, params, points, {} if cache is None else cache)
    x0 = np.array([math.log(p.value) for p in params])
    lo = np.array([math.log(p.lower) for p in params])
    hi = np.array([math.log(p.upper) for p in params])
    if params and points:
        x, r, jac = least_squares(residuals, x0, lo, hi)
        singular = np.linalg.svd(jac, compute_uv=False)
        rank = int(np.sum(singular > _RANK_TOLERANCE))
        sensitivity = tuple(float(v) for v in np.linalg.norm(jac, axis=0))
    else:
        x, r, rank, sensitivity = x0, residuals(x0), 0, tuple(0.0 for _ in params)
    return FitResult(
        family=family,
        parameters=params,
        values=tuple(math.exp(float(v)) for v in x),
        rows=tuple(p.row for p in points),
        residuals=tuple(float(v) for v in r),
        rank=rank,
        sensitivity=sensitivity,
        evaluations=residuals.evaluations,
    )
