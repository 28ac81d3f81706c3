"""Segments: what the engine does between two events, priced by the model and drawn at once.

A segment is an optional prefill pass, then k decode iterations over a steady batch. `_Pricing`
prices one from the `ServiceModel` (two ``decode_iter`` calls whatever k is) and draws its
jitter and stalls from the scheduler's seeded generator; `_Segment` answers where it stands at
any instant and is cut short when the batch changes. With speculative decoding an iteration is
a verification cycle, and each request gains the tokens its own draws (`Bursts`) say.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from agentrt.errors import ConfigError
from substrates.emulated.scheduler.admission import _Admission, _Request
from substrates.emulated.scheduler.bursts import Bursts, Ledger
from substrates.emulated.scheduler.records import BurstRun, IterCost, ServiceModel, TokenRun

# Two clock readings this close are the same instant: the virtual loop runs a timer up to its
# clock resolution (1e-9 s) early, and float sums differ in the last bits.
_EPS = 1e-9


@dataclass(slots=True, eq=False)
class _Segment:
    """What the engine does between two events, priced and drawn at once.

    An optional prefill pass (``head``), then k decode iterations over a steady batch.
    Decode iteration i (0-based) has base cost ``b0 + db * i`` (of which communication
    ``m0 + dm * i``): exact when the model is affine in the contexts, which grow by one per
    iteration. Realized time is the base time scaled by ``f`` (jitter and stalls) and
    communication is scaled by ``g`` (jitter only), spread over the iterations in proportion
    to their base cost.
    """

    t0: float
    batch: list[_Request]
    t_dec0: float
    end: float
    head: list[_Request] = field(default_factory=list)
    head_tokens: int = 0
    head_s: float = 0.0
    head_comm_s: float = 0.0
    k: int = 0
    b0: float = 0.0
    db: float = 0.0
    m0: float = 0.0
    dm: float = 0.0
    f: float = 1.0
    g: float = 1.0
    cyc0: int = 0  # speculative decoding: the engine's cycles when the segment starts

    def base(self, j: int) -> float:
        """Base (undrawn) time of the first j decode iterations."""
        return j * self.b0 + 0.5 * j * (j - 1) * self.db

    def truncate(self, t: float) -> bool:
        """End after the pass in flight at time t (or at t, if a pass ends then); True if moved."""
        if t >= self.end - _EPS:
            return False
        k = 0  # during the prefill pass, decode waits for the next segment
        if t >= self.t_dec0 - _EPS:
            j = self._done_by(t + _EPS)
            in_flight = self.t_dec0 + self.f * self.base(j) < t - _EPS
            k = min(self.k, j + in_flight)
        if k == self.k:
            return False
        self.k = k
        self.end = self.t_dec0 + self.f * self.base(k)
        return True

    def _done_by(self, t: float) -> int:
        """Decode iterations of this segment complete by time t."""
        x = (t - self.t_dec0) / self.f
        if x <= 0.0:
            return 0
        b0, db = self.b0, self.db
        if abs(db) <= 1e-12 * b0:
            j = int(x / b0)
        else:
            # Solve j * b0 + db * j * (j - 1) / 2 = x for j, then correct for rounding.
            lin = b0 - 0.5 * db
            disc = lin * lin + 2.0 * db * x
            j = int((math.sqrt(disc) - lin) / db) if disc > 0.0 else self.k
        j = max(0, min(j, self.k))
        while j < self.k and self.base(j + 1) <= x:
            j += 1
        while j > 0 and self.base(j) > x:
            j -= 1
        return j

    def planned_runs(self, req: _Request) -> list[TokenRun | BurstRun]:
        """Token runs of ``req`` (a member) in this segment, before it is accounted."""
        runs: list[TokenRun | BurstRun] = []
        if self.head and req.generated == 0:
            runs.append(TokenRun(self.t_dec0, 1, 0.0, 0.0))
        if self.k:
            step, accel = self.f * self.b0, self.f * self.db
            ends = req.ends
            if ends is None:
                runs.append(TokenRun(self.t_dec0, self.k, step, accel))
            else:
                c = self.cyc0 - req.base
                got = min(ends[c + self.k], req.output - 1) - ends[c]
                runs.append(BurstRun(self.t_dec0, got, step, accel, ends, c))
        return runs


class _Pricing(_Admission):
    """Prices and draws segments: the layer of `Scheduler` above admission."""

    _model: ServiceModel
    _rng: random.Random
    _sigma: float
    _jit_var: float
    _stall_p: float
    _stall_s: float
    _stall_log_q: float
    _bursts: Bursts | None  # speculative decoding: draws each request's cycles
    _ledger: Ledger  # and keeps the cycles run (unused on a plain engine)

    def _price(self, t0: float, new: list[_Request]) -> _Segment:
        """Price and draw a segment: a prefill pass for ``new``, then steady decode iterations."""
        model = self._model
        batch = self._running[:]
        seg = _Segment(t0, batch, t0, t0)
        if new:
            bursts = self._bursts
            if bursts is not None:
                for r in new:
                    if r.ends is None:  # drawn once, even if the request is planned again
                        r.ends, r.need = bursts.draw(r.seq, r.output - 1)
                    self._ledger.join(r)
            prompts = [r.prompt for r in new]
            cost = model.prefill(prompts)
            compute, comm = cost
            base = compute + comm
            if not (compute >= 0.0 and comm >= 0.0 and 0.0 < base < math.inf):
                raise _bad_cost("prefill", prompts, cost)
            jit = self._draw(base, base * base) if self._sigma else base
            stall = self._stall_s if self._stall_p and self._rng.random() < self._stall_p else 0.0
            seg.head = new
            seg.head_tokens = sum(prompts)
            seg.head_s = jit + stall
            seg.head_comm_s = comm * jit / base
            seg.t_dec0 = seg.end = t0 + jit + stall
            # Prefill-first: while more prompts can be admitted, the next pass prefills them.
            if self._max_prefill is not None and self._admissible():
                return seg
        # Decode until the first member is done: k iterations over the same batch.
        ctx: list[int] = []
        k = 1 << 62
        if self._bursts is None:
            for r in batch:
                done = r.generated or 1  # a member of the prefill pass has its first token then
                ctx.append(r.prompt + done)
                if r.output - done < k:
                    k = r.output - done
        elif batch:  # k cycles, until the first member has had all the cycles it needs
            g = seg.cyc0 = self._ledger.cycles
            ctx = [r.prompt + 1 + r.ends[g - r.base] for r in batch]  # type: ignore[index]
            k = self._ledger.cycles_left()
        if k == 0:
            return seg
        c0 = model.decode_iter(ctx)
        b0, m0 = c0[0] + c0[1], c0[1]
        if not (c0[0] >= 0.0 and m0 >= 0.0 and 0.0 < b0 < math.inf):
            raise _bad_cost("decode_iter", ctx, c0)
        db = dm = 0.0
        if k > 1:
            if self._bursts is None:
                ctx = [c + k - 1 for c in ctx]
            else:  # the contexts at the start of the last cycle, from each request's draws
                last = seg.cyc0 + k - 1
                ctx = [r.prompt + 1 + r.ends[last - r.base] for r in batch]  # type: ignore[index]
            c1 = model.decode_iter(ctx)
            b1 = c1[0] + c1[1]
            if not (c1[0] >= 0.0 and c1[1] >= 0.0 and 0.0 < b1 < math.inf):
                raise _bad_cost("decode_iter", ctx, c1)
            db = (b1 - b0) / (k - 1)
            dm = (c1[1] - m0) / (k - 1)
        seg.k, seg.b0, seg.db, seg.m0, seg.dm = k, b0, db, m0, dm
        base = seg.base(k)
        jit = base
        if self._sigma:
            # Sum of squared per-iteration costs, for the variance of the jitter sum.
            sq = k * b0 * b0 + b0 * db * k * (k - 1) + db * db * (k - 1) * k * (2 * k - 1) / 6
            jit = self._draw(base, sq)
        stalls = self._stall_s * self._stalls(k) if self._stall_p else 0.0
        seg.f = (jit + stalls) / base
        seg.g = jit / base
        seg.end = seg.t_dec0 + jit + stalls
        return seg

    # -- randomness -------------------------------------------------------------------------

    def _draw(self, mean: float, sum_sq: float) -> float:
        """Drawn time of passes with base costs c_i, each scaled by a lognormal factor of mean 1.

        ``mean`` is the sum of the c_i and ``sum_sq`` the sum of their squares. The sum of
        lognormals is drawn as one lognormal with the same mean and variance
        (Fenton-Wilkinson); exact for a single pass.
        """
        s2 = math.log1p(self._jit_var * sum_sq / (mean * mean))
        return mean * math.exp(self._rng.gauss(-0.5 * s2, math.sqrt(s2)))

    def _stalls(self, k: int) -> int:
        """How many of k passes stall: a Binomial(k, stall_prob) draw."""
        p = self._stall_p
        if p >= 1.0:
            return k
        rng = self._rng
        if k * p > 30.0:  # normal approximation; exact enough this far from 0 and k
            n = round(rng.gauss(k * p, math.sqrt(k * p * (1.0 - p))))
            return min(k, max(0, n))
        # Exact: skip geometrically distributed gaps between stalled passes.
        log_q = self._stall_log_q
        count, i = 0, 0
        while True:
            i += int(math.log(1.0 - rng.random()) / log_q) + 1
            if i > k:
                return count
            count += 1


def _bad_cost(what: str, arg: Sequence[int], cost: IterCost) -> ConfigError:
    shown = ", ".join(map(str, arg[:4])) + (", ..." if len(arg) > 4 else "")
    return ConfigError(
        f"service model {what}([{shown}]) returned {cost!r}; a pass must take a positive, finite "
        "time with compute_s >= 0 and comm_s >= 0"
    )
