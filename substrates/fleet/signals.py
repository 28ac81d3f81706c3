"""Scale and rollout events as OpenTelemetry span events and metrics (API only, clock-stamped).

A fleet's controllers (`substrates.fleet.autoscale`, `substrates.fleet.rollout`) record every
decision three ways: a row in their event list, a span event (``agentrt.fleet.scale`` /
``agentrt.fleet.rollout``) and a metric. This module holds the names and the recorder they share.
Span events go on a span the recorder opens on a given tracer, else on the current span.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import metrics, trace
from opentelemetry.trace import Span

from agentrt import current_clock

__all__ = [
    "EVENT_ROLLOUT",
    "EVENT_SCALE",
    "FLEET_POOL",
    "FLEET_VERSION",
    "METRIC_REPLICAS",
    "METRIC_ROLLOUT_EVENTS",
    "METRIC_SCALE_EVENTS",
    "METRIC_WEIGHT",
    "Signals",
]

EVENT_SCALE = "agentrt.fleet.scale"
EVENT_ROLLOUT = "agentrt.fleet.rollout"
FLEET_POOL = "agentrt.fleet.pool"
FLEET_VERSION = "agentrt.fleet.version"
METRIC_SCALE_EVENTS = "agentrt.fleet.scale.events"
METRIC_REPLICAS = "agentrt.fleet.replicas"
METRIC_ROLLOUT_EVENTS = "agentrt.fleet.rollout.events"
METRIC_WEIGHT = "agentrt.fleet.route.weight"

_Attrs = Mapping[str, str | int | float | bool]


class Signals:
    """Span events and metrics for one controller.

    Args:
        span_name: the name of the span opened on ``tracer`` for the controller's life.
        tracer: where that span goes; None = add events to the current span, if any.
        meter: where the counters and gauges go; None = no metrics.
    """

    __slots__ = ("_counters", "_gauges", "_meter", "_span", "_span_name", "_tracer")

    def __init__(
        self,
        span_name: str,
        *,
        tracer: trace.Tracer | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        self._span_name = span_name
        self._tracer = tracer
        self._meter = meter
        self._span: Span | None = None
        self._counters: dict[str, metrics.Counter] = {}
        self._gauges: dict[str, metrics._Gauge] = {}

    def start(self, attributes: _Attrs) -> None:
        """Open the controller's span (with a tracer), stamped by the run's clock."""
        if self._tracer is not None and self._span is None:
            clock = current_clock()
            self._span = self._tracer.start_span(
                self._span_name,
                attributes=dict(attributes),
                start_time=clock.to_epoch_ns(clock.current_time()),
            )

    def end(self) -> None:
        """Close the controller's span, if one was opened."""
        if self._span is not None:
            clock = current_clock()
            self._span.end(end_time=clock.to_epoch_ns(clock.current_time()))
            self._span = None

    def event(self, name: str, t_s: float, attributes: _Attrs) -> None:
        """Add a span event at clock time ``t_s``."""
        span = self._span if self._span is not None else trace.get_current_span()
        if span.is_recording():
            span.add_event(
                name, attributes=dict(attributes), timestamp=current_clock().to_epoch_ns(t_s)
            )

    def count(self, metric: str, attributes: _Attrs, *, description: str) -> None:
        """Add one to the counter ``metric``."""
        if self._meter is None:
            return
        counter = self._counters.get(metric)
        if counter is None:
            counter = self._counters[metric] = self._meter.create_counter(
                metric, unit="{event}", description=description
            )
        counter.add(1, attributes=dict(attributes))

    def gauge(self, metric: str, value: float, attributes: _Attrs, *, description: str) -> None:
        """Set the gauge ``metric``."""
        if self._meter is None:
            return
        gauge = self._gauges.get(metric)
        if gauge is None:
            gauge = self._gauges[metric] = self._meter.create_gauge(metric, description=description)
        gauge.set(value, attributes=dict(attributes))
