"""SLO target expressions for ``agentrt check``: ``p95(e2e) <= 8s``, ``cost_per_task <= $0.01``.

A target is ``METRIC OP VALUE``:

- METRIC: ``pNN(e2e)`` or ``pNN(ttft)`` (any percentile, e.g. ``p50``, ``p95``, ``p99``,
  ``p99.9``), ``slo_attainment``, ``error_rate``, ``cost_per_task``, ``rejected``, ``lost``,
  ``throughput``; a fleet's metric may be scoped to one tenant or pool:
  ``p99(ttft, tenant=interactive)``, ``rejected(pool=h100)``;
- OP: ``<=``, ``<``, ``>=``, ``>``, ``==``;
- VALUE with its unit: durations need one (``8s``, ``500ms``), money may have ``$``
  (``$0.01``), fractions may be percentages (``0.99`` or ``99%``), throughput may have ``/s``.

Example:
    >>> target = parse_target("p95(e2e) <= 8s")
    >>> target.metric, target.quantity, target.limit
    ('p95', 'e2e', 8.0)
    >>> target.met_by(7.5), target.describe(7.5)
    (True, '7.500 s')
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["METRICS", "Target", "TargetError", "parse_target"]

Kind = Literal["duration", "money", "fraction", "count", "rate"]

#: The scalar metrics and what they measure; ``pNN(e2e|ttft)`` are the percentile metrics.
METRICS: dict[str, Kind] = {
    "slo_attainment": "fraction",
    "error_rate": "fraction",
    "cost_per_task": "money",
    "rejected": "count",
    "lost": "count",
    "throughput": "rate",
}
_QUANTITIES = ("e2e", "ttft")
_SCOPES = ("tenant", "pool")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}
_EXPR = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_.]*)\s*(?:\((?P<args>[^)]*)\))?\s*"
    r"(?P<op><=|>=|==|<|>)\s*(?P<value>\S.*?)\s*$"
)
_VALUE = re.compile(
    r"^(?P<dollar>\$)?\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>[a-z%/]*)$"
)
_PERCENTILE = re.compile(r"^p(?P<q>[0-9]+(?:\.[0-9]+)?)$")
_EXAMPLES = (
    "e.g. `p95(e2e) <= 8s`, `p99(ttft) <= 500ms`, `slo_attainment >= 0.99`, "
    "`cost_per_task <= $0.01`"
)


class TargetError(ValueError):
    """A target expression that does not parse; the message names the problem and the fix."""


@dataclass(frozen=True, slots=True)
class Target:
    """One parsed target: ``metric(quantity, scope) op limit`` with the limit in base units.

    Base units: seconds for durations, US dollars for money, a fraction (0-1) for rates of
    runs, a count, runs per second for throughput.
    """

    text: str
    metric: str
    op: str
    limit: float
    kind: Kind
    quantity: str | None = None
    scope: dict[str, str] = field(default_factory=dict)

    @property
    def percentile(self) -> float | None:
        """The percentile of a ``pNN(...)`` metric, else None."""
        match = _PERCENTILE.match(self.metric)
        return float(match["q"]) if match else None

    @property
    def key(self) -> str:
        """The metric as written, normalised: ``p95(e2e)``, ``rejected(pool=h100)``."""
        args = ([self.quantity] if self.quantity else []) + [
            f"{k}={v}" for k, v in self.scope.items()
        ]
        return f"{self.metric}({', '.join(args)})" if args else self.metric

    def met_by(self, measured: float | None) -> bool:
        """Whether ``measured`` meets the target; a missing measurement never does."""
        if measured is None or math.isnan(measured):
            return False
        return _OPS[self.op](measured, self.limit)

    def describe(self, value: float | None) -> str:
        """``value`` in this target's unit (``7.500 s``, ``$0.0042``, ``99.1%``)."""
        if value is None or math.isnan(value):
            return "no data"
        if self.kind == "duration":
            return f"{value * 1000:,.1f} ms" if abs(value) < 1 else f"{value:,.3f} s"
        if self.kind == "money":
            return f"${value:,.4f}" if abs(value) < 100 else f"${value:,.2f}"
        if self.kind == "fraction":
            return f"{value:.2%}"
        if self.kind == "rate":
            return f"{value:,.3f}/s"
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3f}"

    def describe_limit(self) -> str:
        """The target itself, normalised: ``p95(e2e) <= 8.000 s``."""
        return f"{self.key} {self.op} {self.describe(self.limit)}"


def parse_target(text: str) -> Target:
    """Parse one target expression (see the module docstring for the grammar).

    Raises:
        TargetError: the expression does not parse, names an unknown metric, or gives a value
            in the wrong unit; the message says what to write instead.
    """
    match = _EXPR.match(text)
    if match is None:
        raise TargetError(f"cannot read target {text!r}: write METRIC OP VALUE, {_EXAMPLES}")
    name, op, raw_value = match["name"], match["op"], match["value"]
    args = [a.strip() for a in (match["args"] or "").split(",") if a.strip()]
    quantity: str | None = None
    if _PERCENTILE.match(name):
        q = float(_PERCENTILE.match(name)["q"])  # type: ignore[index]
        if not 0 < q < 100:
            raise TargetError(f"target {text!r}: a percentile is between p0 and p100, e.g. p95")
        if not args or "=" in args[0] or args[0] not in _QUANTITIES:
            raise TargetError(
                f"target {text!r}: {name} takes e2e or ttft, e.g. `{name}(e2e) <= 8s`"
            )
        quantity, args = args[0], args[1:]
        kind: Kind = "duration"
    elif name in METRICS:
        kind = METRICS[name]
    else:
        known = ", ".join(["pNN(e2e)", "pNN(ttft)", *METRICS])
        raise TargetError(f"target {text!r}: unknown metric {name!r}; known: {known}")
    scope = _parse_scope(text, args)
    return Target(
        text=text.strip(),
        metric=name,
        op=op,
        limit=_parse_value(text, raw_value, kind),
        kind=kind,
        quantity=quantity,
        scope=scope,
    )


def _parse_scope(text: str, args: list[str]) -> dict[str, str]:
    scope: dict[str, str] = {}
    for arg in args:
        key, eq, value = (s.strip() for s in arg.partition("="))
        if not eq or key not in _SCOPES or not value:
            raise TargetError(
                f"target {text!r}: {arg!r} is not a scope; write tenant=NAME or pool=NAME, "
                "e.g. `p99(ttft, tenant=interactive) <= 500ms`"
            )
        scope[key] = value
    return scope


_UNITS: dict[Kind, dict[str, float]] = {
    "duration": {"s": 1.0, "ms": 1e-3},
    "money": {"": 1.0},
    "fraction": {"": 1.0, "%": 0.01},
    "count": {"": 1.0},
    "rate": {"": 1.0, "/s": 1.0},
}
_HINT: dict[Kind, str] = {
    "duration": "a duration with its unit, e.g. 8s or 500ms",
    "money": "US dollars, e.g. $0.01",
    "fraction": "a fraction or a percentage, e.g. 0.99 or 99%",
    "count": "a whole number, e.g. 0",
    "rate": "runs per second, e.g. 5 or 5/s",
}


def _parse_value(text: str, raw: str, kind: Kind) -> float:
    match = _VALUE.match(raw)
    unit = match["unit"] if match else None
    if match is None or unit not in _UNITS[kind] or (match["dollar"] and kind != "money"):
        raise TargetError(f"target {text!r}: {raw!r} is not {_HINT[kind]}")
    value = float(match["num"]) * _UNITS[kind][unit]
    if kind == "count" and not value.is_integer():
        raise TargetError(f"target {text!r}: {raw!r} is not {_HINT[kind]}")
    return value
