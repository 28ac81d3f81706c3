"""Speculative decoding delivers tokens in bursts: one per verification cycle, drawn per request."""

from __future__ import annotations

import collections
import itertools
import json
import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import agentrt
from agentrt import Agent, InferenceRequest, Plan, Step, VirtualClock, current_clock
from agentrt.telemetry import semconv as sc
from substrates.emulated import build_engine
from substrates.emulated.predict import predict_request
from substrates.emulated.scheduler import (
    BurstRun,
    IterCost,
    Scheduler,
    ServiceRecord,
    Speculation,
    TokenRun,
)
from substrates.emulated.scheduler.bursts import Bursts
from substrates.emulated.service import PerfServiceModel
from substrates.http.server import create_app

SPEC = Speculation(draft_tokens=4, acceptance_rate=0.7)
T = TypeVar("T")


@dataclass(frozen=True)
class Linear:
    """A GPU-like deployment: a pass's time grows with batch size and total context."""

    max_batch: int = 8
    kv_capacity_tokens: int = 1_000_000
    iter_s: float = 0.0123
    per_seq_s: float = 0.00071
    per_ctx_s: float = 3.1e-7
    comm_s: float = 0.0017
    prefill_token_s: float = 3.17e-4

    def prefill(self, prompt_tokens: Sequence[int]) -> IterCost:
        return IterCost(self.prefill_token_s * sum(prompt_tokens), 0.0009)

    def decode_iter(self, contexts: Sequence[int]) -> IterCost:
        compute = self.iter_s + self.per_seq_s * len(contexts) + self.per_ctx_s * sum(contexts)
        return IterCost(compute, self.comm_s)


@dataclass(frozen=True)
class Speculative(Linear):
    """`Linear`, whose ``decode_iter`` is one verification cycle of ``speculation``."""

    speculation: Speculation = SPEC


def simulate(fn: Callable[..., Awaitable[T]]) -> T:
    """Run ``fn`` in virtual time under a (simulated) deadline, so a deadlock fails, not hangs."""

    async def guarded() -> T:
        with anyio.fail_after(1e6):
            return await fn()

    return agentrt.run(guarded, clock=VirtualClock())


async def gather(
    sched: Scheduler, jobs: Sequence[tuple[float, int, int, int]], submitted: list[int]
) -> list[ServiceRecord]:
    """Submit (arrival_s, prompt, output, priority) jobs at their times; records in job order.
    ``submitted`` receives the job indices in submission order."""
    out: list[ServiceRecord | None] = [None] * len(jobs)

    async def one(i: int, at: float, prompt: int, output: int, priority: int) -> None:
        if at > 0:
            await anyio.sleep(at)
        submitted.append(i)
        out[i] = await sched.submit(prompt, output, priority=priority)

    async with anyio.create_task_group() as tg:
        for i, job in enumerate(jobs):
            tg.start_soon(one, i, *job)
    return [r for r in out if r is not None]


def bursts_of(times: Sequence[float]) -> list[tuple[float, int]]:
    """(time, tokens) of each group of equal arrival times, in order."""
    return [(t, len(list(g))) for t, g in itertools.groupby(times)]


# -- the draws ------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "a"), [(1, 0.5), (4, 0.7), (3, 0.6), (8, 0.85), (5, 0.0), (2, 1.0)])
def test_burst_sizes_follow_the_truncated_geometric(k: int, a: float) -> None:
    spec = Speculation(k, a)
    b = Bursts(spec, seed=3)
    sizes: list[int] = []
    for seq in range(1, 400):
        ends, cycles = b.draw(seq, 150)
        assert ends[0] == 0
        assert ends[cycles] >= 150 > ends[cycles - 1]
        sizes += [y - x for x, y in itertools.pairwise(ends)]
    assert min(sizes) >= 1
    assert max(sizes) <= k + 1
    counts = collections.Counter(sizes)
    n = len(sizes)
    assert n > 15_000
    for j, p in enumerate(spec.probabilities(), 1):
        # Four binomial standard deviations, plus the 2^-16 resolution of the table.
        assert counts[j] / n == pytest.approx(p, abs=4 * (p * (1 - p) / n) ** 0.5 + 1e-4), j
    sd = statistics.pstdev(sizes) if a not in (0.0, 1.0) else 0.0
    assert statistics.fmean(sizes) == pytest.approx(
        spec.expected_tokens, abs=4 * sd / n**0.5 + 1e-4
    )


def test_the_same_seed_and_request_give_the_same_bursts_others_do_not() -> None:
    one, again, other = Bursts(SPEC, seed=1), Bursts(SPEC, seed=1), Bursts(SPEC, seed=2)
    assert one.draw(5, 300) == again.draw(5, 300)
    assert one.draw(5, 300) != one.draw(6, 300)
    assert one.draw(5, 300) != other.draw(5, 300)
    # A longer answer extends the same sequence: the draws are a stream per request.
    short, _ = one.draw(5, 40)
    long, _ = one.draw(5, 4000)
    assert long[: len(short)] == short


def test_drawing_more_cycles_later_gives_the_same_sequence() -> None:
    """A request that outlives its first draw (bad luck) reads on in the same stream."""
    ample, scant = Bursts(SPEC, seed=1), Bursts(SPEC, seed=1)
    scant._per_token = 0.01  # draws 8 + 1% of the tokens at first, then doubles
    for seq in range(1, 30):
        (few, n), (many, m) = scant.draw(seq, 700), ample.draw(seq, 700)
        assert n == m
        assert few[: n + 1] == many[: n + 1]


def test_expected_tokens_is_the_papers_formula() -> None:
    for k, a in [(1, 0.5), (4, 0.7), (7, 0.9)]:
        spec = Speculation(k, a)
        assert spec.expected_tokens == pytest.approx((1 - a ** (k + 1)) / (1 - a))
        assert sum(spec.probabilities()) == pytest.approx(1.0)
        assert sum(j * p for j, p in enumerate(spec.probabilities(), 1)) == pytest.approx(
            spec.expected_tokens
        )
    assert Speculation(3, 1.0).expected_tokens == 4.0


# -- the scheduler --------------------------------------------------------------------------


def test_a_lone_speculative_request_arrives_in_bursts_one_cycle_apart() -> None:
    m = Speculative(per_seq_s=0.0, per_ctx_s=0.0)  # every cycle costs the same
    cycle = m.decode_iter([1]).total_s

    async def main() -> ServiceRecord:
        return await Scheduler(m, seed=4).submit(500, 2001)

    rec = simulate(main)
    times = rec.token_times()
    assert len(times) == 2001
    assert times == sorted(times)
    assert times[0] == rec.first_token_s
    assert times[-1] == pytest.approx(rec.finished_s, rel=1e-12)
    groups = bursts_of(times[1:])
    assert all(1 <= n <= SPEC.draft_tokens + 1 for _, n in groups)
    assert max(n for _, n in groups) > 1  # bursts, not a token at a time
    gaps = [b - a for a, b in itertools.pairwise([times[0]] + [t for t, _ in groups])]
    assert gaps == pytest.approx([cycle] * len(gaps), rel=1e-9)  # one cycle between bursts
    # 2,000 decode tokens: the mean burst is E (the standard error is ~0.03).
    assert 2000 / len(groups) == pytest.approx(SPEC.expected_tokens, abs=0.12)
    assert rec.bursts == len(groups)
    assert all(type(r) is BurstRun for r in rec.runs()[1:])


def test_plain_decoding_has_no_bursts() -> None:
    async def main() -> ServiceRecord:
        return await Scheduler(Linear(), seed=4).submit(500, 300)

    rec = simulate(main)
    times = rec.token_times()
    assert all(b > a for a, b in itertools.pairwise(times))  # one token per iteration
    assert rec.bursts == 299
    assert all(type(r) is TokenRun for r in rec.runs())
    assert rec.cycle_ends is None


def test_speculation_keeps_the_expected_decode_time_of_pricing_by_the_mean() -> None:
    """Pricing a token at cycle / E (the old way) and drawing cycles agree on average; the
    draws add at most one cycle per request (the last one's extra tokens are not emitted)."""
    m = Speculative(per_seq_s=0.0, per_ctx_s=0.0)
    cycle = m.decode_iter([1]).total_s
    out = 401

    async def main() -> list[ServiceRecord]:
        sched = Scheduler(m, seed=9)
        return [await sched.submit(100, out) for _ in range(300)]

    decode = [r.e2e_s - r.ttft_s for r in simulate(main)]
    mean_price = (out - 1) * cycle / SPEC.expected_tokens
    sd = statistics.stdev(decode)
    assert sd > 0  # each request its own draws
    assert abs(statistics.fmean(decode) - mean_price) <= cycle + 4 * sd / len(decode) ** 0.5


def bursty_reference(
    m: Speculative, jobs: Sequence[tuple[float, int, int, int]], order: list[int], seed: int
) -> list[tuple[float, float, float]]:
    """(start, first token, finish) per job, one pass at a time: each decode pass is a cycle
    in which every running request gains the tokens drawn for it (the model's cost depends on
    the batch size only, so pricing whole segments at once is exact)."""
    draws = Bursts(m.speculation, seed)
    ends = {i: draws.draw(n + 1, jobs[i][2] - 1)[0] for n, i in enumerate(order)}
    n = len(jobs)
    arrived: list[int] = []
    running: list[int] = []
    cycles = [0] * n
    done = [0] * n
    out = [[0.0, 0.0, 0.0] for _ in range(n)]
    t, kv, nxt, finished = 0.0, 0, 0, 0
    while finished < n:
        while nxt < n and jobs[order[nxt]][0] <= t + 1e-9:
            arrived.append(order[nxt])
            nxt += 1
        arrived.sort(key=lambda i: (-jobs[i][3], order.index(i)))
        new: list[int] = []
        while arrived:
            i = arrived[0]
            if len(running) >= m.max_batch or kv + jobs[i][1] + jobs[i][2] > m.kv_capacity_tokens:
                break
            new.append(arrived.pop(0))
            running.append(i)
            kv += jobs[i][1] + jobs[i][2]
        if new:
            for i in new:
                out[i][0] = t
            t += m.prefill([jobs[i][1] for i in new]).total_s
            for i in new:
                done[i] = 1
                out[i][1] = t
        elif running:
            t += m.decode_iter([1] * len(running)).total_s
            for i in running:
                cycles[i] += 1
                done[i] = 1 + min(ends[i][cycles[i]], jobs[i][2] - 1)
        else:
            t = jobs[order[nxt]][0]
            continue
        for i in list(running):
            if done[i] == jobs[i][2]:
                running.remove(i)
                kv -= jobs[i][1] + jobs[i][2]
                out[i][2] = t
                finished += 1
    return [(a, b, c) for a, b, c in out]


job = st.tuples(
    st.integers(0, 3000).map(lambda ms: ms / 1000),
    st.integers(1, 3000),
    st.integers(1, 150),
    st.integers(0, 2),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    jobs=st.lists(job, min_size=1, max_size=12),
    max_batch=st.integers(1, 5),
    kv=st.integers(3200, 12000),
    k=st.integers(1, 6),
    a=st.floats(0.0, 1.0),
)
def test_bursty_segments_match_a_cycle_by_cycle_simulation(
    jobs: list[tuple[float, int, int, int]], max_batch: int, kv: int, k: int, a: float
) -> None:
    """Arrivals that cut segments short lose no cycle and no token: every request starts,
    gets its first token and finishes when stepping one cycle at a time says, and its token
    times come in bursts of 1 .. k + 1, one cycle apart."""
    m = Speculative(max_batch=max_batch, kv_capacity_tokens=kv, per_ctx_s=0.0,
                    speculation=Speculation(k, a))  # fmt: skip
    order: list[int] = []

    async def main() -> list[ServiceRecord]:
        return await gather(Scheduler(m, seed=11), jobs, order)

    recs = simulate(main)
    want = bursty_reference(m, jobs, order, seed=11)
    for rec, (start, first, finish) in zip(recs, want, strict=True):
        assert rec.started_s == pytest.approx(start, rel=1e-9, abs=1e-9)
        assert rec.first_token_s == pytest.approx(first, rel=1e-9, abs=1e-9)
        assert rec.finished_s == pytest.approx(finish, rel=1e-9, abs=1e-9)
        assert rec.queue_s + rec.prefill_s + rec.decode_s + rec.comm_s == pytest.approx(
            rec.e2e_s, rel=1e-9, abs=1e-12
        )
        times = rec.token_times()
        assert len(times) == rec.output_tokens
        assert all(b >= a for a, b in itertools.pairwise(times))
        assert times[-1] == pytest.approx(rec.finished_s, rel=1e-9, abs=1e-9)
        assert all(1 <= n <= k + 1 for _, n in bursts_of(times[1:]))


def test_a_speculative_stream_delivers_each_burst_when_its_cycle_ends() -> None:
    m = Speculative()

    async def main() -> tuple[list[tuple[int, tuple[float, ...], float]], ServiceRecord]:
        sched = Scheduler(m, seed=2, jitter=0.05)
        chunks: list[tuple[int, tuple[float, ...], float]] = []

        async def intruder(at: float) -> None:
            await anyio.sleep(at)
            await sched.submit(2000, 30)

        async with anyio.create_task_group() as tg:
            tg.start_soon(intruder, 0.4)  # mid-decode: cuts the segment short
            tg.start_soon(intruder, 0.05)  # during our prefill
            async with sched.stream(300, 120) as stream:
                chunks.extend(
                    [
                        (chunk.index, chunk.times_s, current_clock().current_time())
                        async for chunk in stream.arrivals(max_tokens=1)
                    ]
                )
                rec = await stream.wait()
        return chunks, rec

    chunks, rec = simulate(main)
    flat = [t for _, times, _ in chunks for t in times]
    assert flat == pytest.approx(rec.token_times(), rel=1e-12)
    for _, times, now in chunks:
        assert now == pytest.approx(times[-1], rel=1e-12)
    assert any(n > 1 for _, n in bursts_of(flat[1:]))


def test_streams_read_their_bursts_while_the_ledger_drops_old_cycles() -> None:
    """Many overlapping speculative streams, the engine's ledger of cycles trimmed often: every
    stream reads exactly its record's token times, and leaving one early withdraws it."""
    jobs = [(0.02 * i, 50 + 13 * i, 30 + 17 * (i % 7), 0) for i in range(40)]

    async def main() -> tuple[list[tuple[list[float], ServiceRecord]], Any]:
        sched = Scheduler(Speculative(max_batch=5), seed=6, jitter=0.05)
        sched._ledger.floor = sched._ledger.keep = 3  # trim after every few segments
        out: list[tuple[list[float], ServiceRecord]] = []

        async def one(at: float, prompt: int, output: int, quit_early: bool) -> None:
            await anyio.sleep(at)
            async with sched.stream(prompt, output) as stream:
                times: list[float] = []
                async for chunk in stream.arrivals(max_tokens=3):
                    times += chunk.times_s
                    if quit_early and len(times) > 10:
                        return
                out.append((times, await stream.wait()))

        async with anyio.create_task_group() as tg:
            for i, (at, prompt, output, _) in enumerate(jobs):
                tg.start_soon(one, at, prompt, output, i % 9 == 4)
        assert sched._ledger.runs0 > 0  # runs no stream needs were dropped
        return out, sched.statistics()

    out, stats = simulate(main)
    quitters = sum(1 for i in range(40) if i % 9 == 4)
    assert len(out) == 40 - quitters
    assert stats.cancelled == quitters
    assert (stats.running, stats.queued, stats.kv_tokens_used) == (0, 0, 0)
    for times, rec in out:
        assert times == pytest.approx(rec.token_times(), rel=1e-12)
        assert all(1 <= n <= SPEC.draft_tokens + 1 for _, n in bursts_of(times[1:]))
    # Every token of a served request counted, and some of each withdrawn one's.
    served = sum(rec.output_tokens for _, rec in out)
    assert served < stats.tokens_generated < served + quitters * max(o for _, _, o, _ in jobs)


def test_same_seed_same_bursts_under_load() -> None:
    jobs = [(0.03 * i, 100 + 50 * i, 40 + 7 * i, i % 2) for i in range(15)]

    def once(seed: int) -> list[list[float]]:
        async def main() -> list[ServiceRecord]:
            sched = Scheduler(Speculative(max_batch=4), seed=seed, jitter=0.05)
            return await gather(sched, jobs, [])

        return [r.token_times() for r in simulate(main)]

    assert once(1) == once(1)
    assert once(1) != once(2)


# -- the engine, the trace and serve ----------------------------------------------------------


async def _stream(engine: Any, tokens: int) -> tuple[list[float], agentrt.InferenceResult]:
    req = InferenceRequest.from_prompt("burst", max_output_tokens=tokens)
    async with engine.stream(req) as s:
        times = [chunk.t_s async for chunk in s]
    return times, s.result()


def test_an_engine_streams_bursts_and_says_so_in_its_result() -> None:
    engine = build_engine("h200", spec_decode="4:0.7", seed=7, jitter=0)
    times, result = agentrt.run(_stream, engine, 200, clock=VirtualClock())
    assert len(times) == 200
    assert times == sorted(times)
    groups = bursts_of(times[1:])
    assert all(1 <= n <= 5 for _, n in groups)
    assert max(n for _, n in groups) > 1
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(groups)]
    assert max(gaps) == pytest.approx(min(gaps), rel=0.02)  # one cycle apart (contexts grow)
    assert result.attributes[sc.SPEC_BURSTS] == len(groups)
    assert result.attributes[sc.SPEC_TOKENS_PER_BURST] == pytest.approx(199 / len(groups))
    # The speculative service model prices a whole cycle: E tokens' worth of the old price.
    service = PerfServiceModel(engine.deployment)
    assert service.speculation == Speculation(4, 0.7)


@pytest.mark.parametrize(("hw", "spec"), [("wse3", "3:0.6"), ("h100", "4:0.7")])
def test_a_lone_speculative_request_matches_the_performance_model_on_average(
    hw: str, spec: str
) -> None:
    """Per seed, a request takes a whole number of cycles (its own draws); over seeds its
    time is the performance model's, which prices (output - 1) / E cycles, plus at most about
    half a cycle (the last cycle's extra tokens are not emitted)."""
    prompt, output, seeds = 1000, 200, 120

    async def one(seed: int) -> tuple[float, float, float]:
        engine = build_engine(hw, spec_decode=spec, seed=seed, jitter=0, stall_prob=0)
        t = (await engine.infer(InferenceRequest.from_prompt(
            "x", prompt_tokens=prompt, max_output_tokens=output))).timing  # fmt: skip
        return t.ttft_s, t.e2e_s, t.comm_s

    runs = [agentrt.run(one, seed, clock=VirtualClock()) for seed in range(seeds)]
    engine = build_engine(hw, spec_decode=spec, seed=0)
    want = predict_request(engine.deployment, prompt, output)
    cycle = (want.e2e_s - want.ttft_s) / (
        (output - 1) / engine.deployment.spec_decode.expected_tokens_per_step  # type: ignore[union-attr]
    )
    assert all(ttft == pytest.approx(want.ttft_s, rel=1e-9) for ttft, _, _ in runs)
    e2e = [e for _, e, _ in runs]
    sd = statistics.stdev(e2e)
    assert sd > 0
    noise = 4 * sd / seeds**0.5
    assert -noise <= statistics.fmean(e2e) - want.e2e_s <= 0.7 * cycle + noise
    comm = statistics.fmean(c for _, _, c in runs)
    assert comm == pytest.approx(want.comm_s, rel=0.05)


def test_a_plain_engine_streams_one_token_at_a_time() -> None:
    engine = build_engine("h200", seed=7, jitter=0)
    times, result = agentrt.run(_stream, engine, 50, clock=VirtualClock())
    assert all(b > a for a, b in itertools.pairwise(times))
    assert sc.SPEC_BURSTS not in result.attributes
    assert PerfServiceModel(engine.deployment).speculation is None


def test_the_chat_span_carries_the_bursts() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine = build_engine("wse3", spec_decode="3:0.6", seed=1)
    agent = Agent(engine, tracer_provider=provider)
    plan = Plan(name="p", steps=[Step(id="a", max_output_tokens=300)])
    agentrt.run(agent.run, plan, clock=VirtualClock())
    (chat,) = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert chat.attributes is not None
    bursts = chat.attributes[sc.SPEC_BURSTS]
    assert isinstance(bursts, int)
    assert 299 / 4 <= bursts < 299
    assert chat.attributes[sc.SPEC_TOKENS_PER_BURST] == pytest.approx(299 / bursts)


def test_serve_sends_a_bursts_chunks_together_and_traces_them() -> None:
    """The SSE body of a speculative engine, read in virtual time through the ASGI app:
    content chunks come in groups sent at one instant, a cycle apart."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine = build_engine("h200", spec_decode="4:0.7", seed=3, jitter=0)
    app = create_app(engine, tracer_provider=provider)
    body = json.dumps({"model": engine.model, "stream": True, "max_tokens": 60,
                       "messages": [{"role": "user", "content": "go"}]}).encode()  # fmt: skip

    async def main() -> list[float]:
        sent: list[float] = []
        done = anyio.Event()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                sent.extend(
                    current_clock().current_time() for _ in range(chunk.count(b'"content":'))
                )
                if not message.get("more_body", False):
                    done.set()

        await app(scope, receive, send)
        return sent

    sent = agentrt.run(main, clock=VirtualClock())
    assert len(sent) == 60
    groups = bursts_of(sent[1:])
    assert max(n for _, n in groups) > 1  # several SSE chunks at one instant
    assert all(n <= 5 for _, n in groups)
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert span.attributes is not None
    assert span.attributes[sc.SPEC_BURSTS] == len(groups)
