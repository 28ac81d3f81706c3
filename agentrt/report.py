"""Latency attribution: where a run's end-to-end time went, per step and along the critical path.

The same attribution is computed from a `RunResult` (right after a run) or from a trace file that
agentrt wrote (Jaeger JSON, or OTLP JSON), so what the terminal shows and what Jaeger shows agree.

Invariant: along the critical path, queue + network + prefill + decode + comm + tool + retry +
failed + overhead equals the end-to-end time. ``retry`` is the time before a step's final attempt
(failed attempts and back-off), ``failed`` the final attempt of a step that failed or was
cancelled (its model call or tool never produced a result to split), and ``overhead`` what the
runtime itself and the gaps between steps cost: the one category computed as a remainder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agentrt.errors import ConfigError
from agentrt.result import RunResult
from agentrt.telemetry import semconv as sc

__all__ = [
    "CATEGORIES",
    "LABELS",
    "Attribution",
    "StepAttribution",
    "attribute",
    "from_jaeger",
    "from_otlp_json",
    "from_run",
    "load_trace_file",
]

#: The categories, in the order they are drawn and summed.
CATEGORIES = (
    "queue_s",
    "network_s",
    "prefill_s",
    "decode_s",
    "comm_s",
    "tool_s",
    "retry_s",
    "failed_s",
    "overhead_s",
)
#: How each category is named on screen.
LABELS = {name: name.removesuffix("_s") for name in CATEGORIES}
_TIMING = ("queue_s", "network_s", "prefill_s", "decode_s", "comm_s")
_FROZEN = ConfigDict(frozen=True, extra="forbid")


class StepAttribution(BaseModel):
    """One step's times, split by category. Times are seconds from the start of the run."""

    model_config = _FROZEN

    id: str
    kind: str
    status: str
    start_s: float
    end_s: float
    latency_s: float
    queue_s: float = 0.0
    network_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    comm_s: float = 0.0
    tool_s: float = 0.0
    retry_s: float = Field(
        default=0.0, description="Before the final attempt: failed attempts and back-off."
    )
    failed_s: float = Field(
        default=0.0, description="The final attempt of a step that failed or was cancelled."
    )
    overhead_s: float = Field(default=0.0, description="Latency not explained by the others.")
    substrate: str | None = Field(default=None, description="Substrate of the model call.")
    share: float = Field(default=0.0, description="latency_s / e2e_s of the run.")
    critical: bool = False
    waits_for: tuple[str, ...] = ()


class Attribution(BaseModel):
    """Where a run's time went."""

    model_config = _FROZEN

    run_id: str
    agent: str
    status: str
    e2e_s: float
    critical_path: tuple[str, ...]
    categories: dict[str, float] = Field(description="Sums along the critical path; add to e2e_s.")
    steps: tuple[StepAttribution, ...]
    sum_of_step_latencies_s: float = Field(
        description="What the run would take if nothing ran in parallel."
    )
    trace_id: str | None = None

    @property
    def substrates(self) -> tuple[str, ...]:
        """The substrates the run's model calls went to, in order of first use."""
        return tuple(dict.fromkeys(s.substrate for s in self.steps if s.substrate))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return self.model_dump(mode="json")


def attribute(
    steps: Sequence[StepAttribution],
    *,
    e2e_s: float,
    run_id: str,
    agent: str,
    status: str,
    trace_id: str | None = None,
) -> Attribution:
    """Find the critical path and sum the categories along it.

    The critical path ends at the step that ended last and walks back, at each step, to the one
    of its ``waits_for`` that ended last (the one that released it). Gaps between consecutive
    critical steps, before the first and after the last, count as overhead.
    """
    ran = [s for s in steps if s.end_s >= s.start_s and s.status != "skipped"]
    by_id = {s.id: s for s in ran}
    path: list[str] = []
    if ran:
        current: StepAttribution | None = max(ran, key=lambda s: (s.end_s, s.latency_s))
        while current is not None:
            path.append(current.id)
            preds = [by_id[d] for d in current.waits_for if d in by_id and d not in path]
            current = max(preds, key=lambda s: s.end_s) if preds else None
        path.reverse()
    categories = dict.fromkeys(CATEGORIES, 0.0)
    t = 0.0
    for step_id in path:
        s = by_id[step_id]
        categories["overhead_s"] += max(0.0, s.start_s - t)
        for name in CATEGORIES:
            categories[name] += getattr(s, name)
        t = s.end_s
    categories["overhead_s"] += max(0.0, e2e_s - t)
    critical = set(path)
    final = tuple(
        s.model_copy(
            update={"critical": s.id in critical, "share": s.latency_s / e2e_s if e2e_s else 0.0}
        )
        for s in steps
    )
    return Attribution(
        run_id=run_id,
        agent=agent,
        status=status,
        e2e_s=e2e_s,
        critical_path=tuple(path),
        categories=categories,
        steps=final,
        sum_of_step_latencies_s=sum(s.latency_s for s in ran),
        trace_id=trace_id,
    )


def _step(
    *,
    id: str,
    kind: str,
    status: str,
    start_s: float,
    end_s: float,
    timing: Mapping[str, float],
    tool_s: float,
    retry_s: float,
    waits_for: Iterable[str],
    substrate: str | None,
) -> StepAttribution:
    latency = end_s - start_s
    parts = [float(timing.get(name, 0.0)) for name in _TIMING]
    queue, network, prefill, decode, comm = parts
    # A step that did not succeed has no result to split: its final attempt is its own category.
    failed = 0.0 if status == "succeeded" else max(0.0, latency - retry_s - sum(parts) - tool_s)
    return StepAttribution(
        id=id,
        kind=kind,
        status=status,
        start_s=start_s,
        end_s=end_s,
        latency_s=latency,
        queue_s=queue,
        network_s=network,
        prefill_s=prefill,
        decode_s=decode,
        comm_s=comm,
        tool_s=tool_s,
        retry_s=retry_s,
        failed_s=failed,
        overhead_s=latency - sum(parts) - tool_s - retry_s - failed,
        waits_for=tuple(waits_for),
        substrate=substrate,
    )


def from_run(result: RunResult) -> Attribution:
    """Attribute a finished run from its result object.

    Example:
        >>> from agentrt import Agent, Plan, Step, VirtualClock, run
        >>> from agentrt.testing import FixedLatencySubstrate
        >>> plan = Plan(name="p", steps=[Step(id="a"), Step(id="b"),
        ...                              Step(id="c", depends_on=["a", "b"])])
        >>> agent = Agent(FixedLatencySubstrate(0.5))
        >>> report = from_run(run(agent.run, plan, clock=VirtualClock()))
        >>> report.critical_path, report.e2e_s
        (('a', 'c'), 1.0)
    """
    steps = []
    for s in result.steps:
        if s.start_s is None or s.end_s is None:
            steps.append(
                StepAttribution(
                    id=s.id,
                    kind=s.kind,
                    status=s.status,
                    start_s=0.0,
                    end_s=-1.0,
                    latency_s=0.0,
                    waits_for=s.waits_for,
                    substrate=s.substrate,
                )
            )
            continue
        timing = s.timing.model_dump() if s.timing is not None and s.status == "succeeded" else {}
        steps.append(
            _step(
                id=s.id,
                kind=s.kind,
                status=s.status,
                start_s=s.start_s,
                end_s=s.end_s,
                timing=timing,
                tool_s=s.tool_s if s.status == "succeeded" else 0.0,
                retry_s=s.retry_s,
                waits_for=s.waits_for,
                substrate=s.substrate,
            )
        )
    return attribute(
        steps,
        e2e_s=result.e2e_s,
        run_id=result.run_id,
        agent=result.agent,
        status=result.status,
        trace_id=result.trace_id,
    )


# -- traces -------------------------------------------------------------------------------------


class _Span:
    """The parts of a span attribution needs, whatever file format it came from."""

    __slots__ = ("attrs", "end", "id", "name", "parent", "start")

    def __init__(
        self,
        *,
        id: str,
        parent: str | None,
        name: str,
        start: float,
        end: float,
        attrs: dict[str, Any],
    ) -> None:
        self.id = id
        self.parent = parent
        self.name = name
        self.start = start
        self.end = end
        self.attrs = attrs


def _from_spans(spans: Sequence[_Span], trace_id: str) -> list[Attribution]:
    children: dict[str | None, list[_Span]] = {}
    for span in spans:
        children.setdefault(span.parent, []).append(span)
    roots = [s for s in spans if s.attrs.get(sc.OPERATION_NAME) == "invoke_agent"]
    reports = []
    for root in sorted(roots, key=lambda s: s.start):
        steps = []
        index: dict[str, int] = {}
        for step in children.get(root.id, []):
            if sc.STEP_ID not in step.attrs:
                continue
            a = step.attrs
            status = str(a.get(sc.STEP_STATUS, "succeeded"))
            retry_s = float(a.get(sc.STEP_RETRY_S, 0.0))
            index[str(a[sc.STEP_ID])] = int(a.get(sc.STEP_INDEX) or 0)
            op = a.get(sc.OPERATION_NAME)
            kind = a.get(sc.STEP_KIND)
            if op in ("chat", "execute_tool"):
                # A tool loop's model or tool call: a step with no span of its own.
                kind = kind or ("chat" if op == "chat" else "tool")
                timing, tool_s, substrate = _own_times(step, op, status, retry_s)
            else:
                timing, tool_s, substrate = _child_times(
                    children.get(step.id, []), status, int(a.get(sc.STEP_ATTEMPTS, 1))
                )
            waits = a.get(sc.STEP_WAITS_FOR, [])
            if isinstance(waits, str):  # Jaeger stores lists as JSON strings
                waits = json.loads(waits)
            steps.append(
                _step(
                    id=str(a[sc.STEP_ID]),
                    kind=str(kind or "think"),
                    status=status,
                    start_s=step.start - root.start,
                    end_s=step.end - root.start,
                    timing=timing,
                    tool_s=tool_s,
                    retry_s=retry_s,
                    waits_for=[str(w) for w in waits],
                    substrate=substrate,
                )
            )
        steps.sort(key=lambda s: (index[s.id], s.start_s))
        reports.append(
            attribute(
                steps,
                e2e_s=root.end - root.start,
                run_id=str(root.attrs.get(sc.RUN_ID, "?")),
                agent=str(root.attrs.get(sc.AGENT_NAME, "?")),
                status=str(root.attrs.get(sc.RUN_STATUS, "?")),
                trace_id=trace_id,
            )
        )
    return reports


def _timing_of(chat: _Span) -> dict[str, float]:
    return {n: float(chat.attrs.get(sc.TIMING[n], 0.0)) for n in _TIMING}


def _own_times(
    span: _Span, op: object, status: str, retry_s: float
) -> tuple[dict[str, float], float, str | None]:
    """(timing, tool_s, substrate) of a span that is both a step and its model or tool call."""
    substrate = str(span.attrs[sc.SUBSTRATE]) if span.attrs.get(sc.SUBSTRATE) else None
    if status != "succeeded":
        return {}, 0.0, substrate
    if op == "chat":
        return _timing_of(span), 0.0, substrate
    return {}, max(0.0, span.end - span.start - retry_s), substrate


def _child_times(
    children: Sequence[_Span], status: str, attempts: int
) -> tuple[dict[str, float], float, str | None]:
    """(timing, tool_s, substrate) of a step span from the calls of its final attempt.

    A step with ``tools`` makes several model calls (their timings add up) and may run tools
    side by side: its tool time is the time at least one of them ran, not their sum.
    """
    timing: dict[str, float] = {}
    tools: list[tuple[float, float]] = []
    substrate: str | None = None
    for child in children:
        if substrate is None and child.attrs.get(sc.SUBSTRATE):
            substrate = str(child.attrs[sc.SUBSTRATE])
        if child.attrs.get(sc.ATTEMPT, attempts) != attempts or status != "succeeded":
            continue
        op = child.attrs.get(sc.OPERATION_NAME)
        if op == "chat":
            for name, value in _timing_of(child).items():
                timing[name] = timing.get(name, 0.0) + value
        elif op == "execute_tool":
            tools.append((child.start, child.end))
    return timing, _covered(tools), substrate


def _covered(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of ``intervals``."""
    total = 0.0
    end = -float("inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def from_jaeger(document: Mapping[str, Any] | Sequence[Any]) -> list[Attribution]:
    """Attribute every agentrt run in a Jaeger JSON document (any shape the Jaeger UI opens)."""
    if isinstance(document, Mapping):
        data = document.get("data", document)
        traces = data if isinstance(data, list) else [data]
    else:
        traces = list(document)
    reports = []
    for doc in traces:
        spans = []
        for raw in doc.get("spans", []):
            parent = next(
                (
                    r["spanID"]
                    for r in raw.get("references") or ()
                    if r.get("refType") == "CHILD_OF"
                ),
                None,
            )
            start = raw["startTime"] / 1e6
            spans.append(
                _Span(
                    id=raw["spanID"],
                    parent=parent,
                    name=raw.get("operationName", ""),
                    start=start,
                    end=start + raw.get("duration", 0) / 1e6,
                    attrs={t["key"]: t.get("value") for t in raw.get("tags") or ()},
                )
            )
        reports += _from_spans(spans, str(doc.get("traceID")))
    return reports


def _otlp_value(value: Mapping[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_otlp_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def from_otlp_json(document: Mapping[str, Any]) -> list[Attribution]:
    """Attribute every agentrt run in an OTLP JSON document (``{"resourceSpans": [...]}``)."""
    by_trace: dict[str, list[_Span]] = {}
    for rs in document.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for raw in ss.get("spans", []):
                by_trace.setdefault(raw["traceId"], []).append(
                    _Span(
                        id=raw["spanId"],
                        parent=raw.get("parentSpanId") or None,
                        name=raw.get("name", ""),
                        start=int(raw["startTimeUnixNano"]) / 1e9,
                        end=int(raw["endTimeUnixNano"]) / 1e9,
                        attrs={
                            a["key"]: _otlp_value(a["value"]) for a in raw.get("attributes", [])
                        },
                    )
                )
    reports = []
    for trace_id, spans in by_trace.items():
        reports += _from_spans(spans, trace_id)
    return reports


_TRACE_FORMATS = (
    'expected Jaeger JSON ({"data": [{"spans": [...]}]}) or OTLP JSON ({"resourceSpans": [...]}), '
    "as `agentrt run ... --trace jaeger-json:PATH` writes"
)


def _looks_like_a_trace(document: object) -> bool:
    """The shapes `from_jaeger` and `from_otlp_json` read: checked before either walks it."""
    if isinstance(document, Mapping):
        if "resourceSpans" in document:
            return isinstance(document["resourceSpans"], list)
        data = document.get("data", document)
        traces = data if isinstance(data, list) else [data]
    elif isinstance(document, list):
        traces = document
    else:
        return False
    return all(isinstance(t, Mapping) and isinstance(t.get("spans"), list) for t in traces)


def load_trace_file(path: str | Path) -> list[Attribution]:
    """Attribute the runs in a trace file agentrt wrote: Jaeger JSON or OTLP JSON.

    Raises:
        ConfigError: unreadable, not JSON, not a Jaeger or OTLP JSON document (the message
            names both formats), or no agentrt run in it.
    """
    p = Path(path)
    if p.exists() and not p.is_file():  # a directory, a FIFO, /dev/zero: never read unbounded
        raise ConfigError(f"{p}: not a regular file; {_TRACE_FORMATS}")
    try:
        document = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: no such trace file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{p}: not a JSON trace file ({exc})") from exc
    if not _looks_like_a_trace(document):
        raise ConfigError(f"{p}: not an agentrt trace file; {_TRACE_FORMATS}")
    try:
        if isinstance(document, Mapping) and "resourceSpans" in document:
            reports = from_otlp_json(document)
        else:
            reports = from_jaeger(document)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ConfigError(
            f"{p}: a span in this trace file is malformed ({detail}); {_TRACE_FORMATS}"
        ) from exc
    if not reports:
        raise ConfigError(
            f"{p}: no agentrt run in this trace (no invoke_agent span); write one with "
            "`agentrt run ... --trace jaeger-json:PATH`"
        )
    return reports
