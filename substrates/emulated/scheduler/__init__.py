"""The serving scheduler: iteration-level continuous batching of requests on the run's clock.

Split by concern, each layer a class building on the one before, so that the hot path pays no
call or attribute hop for the split: `admission` (the queue, the batch and the KV they
share), `segment` (what the engine does between two events, priced and drawn), `driver` (the
events on the clock: arrivals, cancellations, completions, leader/followers) and `scheduler`
(`Scheduler`, the public face). `records` holds the service model and the records returned;
`stream` the `ServiceStream` of a streamed request; `bursts` draws the tokens each cycle of a
speculative request delivers. See docs/scheduler.md.
"""

from __future__ import annotations

from substrates.emulated.scheduler.records import (
    BurstRun,
    IterCost,
    PrefillPolicy,
    SchedulerStatistics,
    ServiceModel,
    ServiceRecord,
    Speculation,
    TokenArrivals,
    TokenRun,
)
from substrates.emulated.scheduler.scheduler import Scheduler
from substrates.emulated.scheduler.stream import ServiceStream

__all__ = [
    "BurstRun",
    "IterCost",
    "PrefillPolicy",
    "Scheduler",
    "SchedulerStatistics",
    "ServiceModel",
    "ServiceRecord",
    "ServiceStream",
    "Speculation",
    "TokenArrivals",
    "TokenRun",
]
