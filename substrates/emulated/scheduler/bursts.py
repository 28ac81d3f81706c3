"""Speculative bursts: how many tokens each verification cycle of a request delivers.

A cycle proposes k draft tokens and the target accepts them in order until the first rejection,
then adds its own token: 1 .. k + 1 tokens, a truncated geometric (`Speculation`). A request's
whole sequence of cycles is drawn once, when it is admitted, as a pure function of the
scheduler's seed and the request's number: SHAKE-128 of the two gives as many uniform 16-bit
words as needed, and a 65,536-entry table maps each word to a burst size (probabilities exact
to 2^-16). Drawing is C-level work (a hash, a byte translation of the words' high bytes, a
running sum; a word's low byte is read only when its high byte lies astride two sizes), a few
microseconds for a 500-token answer, and independent of every other request and of the jitter
draws. `Ledger` keeps the cycles the engine has run, for accounting a segment without
visiting every member of its batch.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from bisect import bisect_left
from itertools import accumulate, pairwise

from agentrt.errors import ConfigError
from substrates.emulated.scheduler.admission import _DONE, _RUNNING, _Request
from substrates.emulated.scheduler.records import Speculation, TokenRun

__all__ = ["Bursts", "Ledger"]

_WORDS = 1 << 16


class Bursts:
    """Draws the cycles of each request of one scheduler: burst sizes and their running sums.

    Example:
        >>> b = Bursts(Speculation(draft_tokens=4, acceptance_rate=0.7), seed=1)
        >>> ends, cycles = b.draw(seq=1, tokens=100)
        >>> ends[0], ends[cycles] >= 100 > ends[cycles - 1]
        (0, True)
    """

    __slots__ = ("_high", "_key", "_per_token", "_table", "speculation")

    def __init__(self, speculation: Speculation, seed: int) -> None:
        k, a = speculation.draft_tokens, speculation.acceptance_rate
        if not (isinstance(k, int) and 1 <= k <= 254 and 0.0 <= a <= 1.0):
            raise ConfigError(
                f"speculation needs 1 <= draft_tokens <= 254 and 0 <= acceptance_rate <= 1, got "
                f"{k} and {a}"
            )
        self.speculation = speculation
        # Word w in [0, 2^16) maps to the burst size whose cumulative probability band holds it.
        edges = [0, *(round(p * _WORDS) for p in accumulate(speculation.probabilities()))]
        edges[-1] = _WORDS
        self._table = b"".join(
            bytes((j,)) * (hi - lo) for j, (lo, hi) in enumerate(pairwise(edges), 1)
        )
        # By high byte alone: the size when all its 256 words share one, else 0 (look closer).
        blocks = [self._table[h << 8 : (h + 1) << 8] for h in range(256)]
        self._high = bytes(b[0] if b.count(b[0]) == 256 else 0 for b in blocks)
        self._key = f"agentrt.bursts:{seed}:".encode()
        # Cycles to draw per token wanted: the mean, plus room for a long run of bad luck.
        self._per_token = 1.1 / speculation.expected_tokens

    def draw(self, seq: int, tokens: int) -> tuple[list[int], int]:
        """The cycles request ``seq`` needs for ``tokens`` decode tokens.

        Returns:
            ``ends`` (decode tokens after each cycle, ``ends[0] == 0``) and the number of cycles
            until ``ends[cycles] >= tokens`` (the last cycle's extra tokens are not emitted).
        """
        if tokens <= 0:
            return [0], 0
        shake = hashlib.shake_128(self._key + str(seq).encode())
        n = math.ceil(tokens * self._per_token) + 8
        drawn = 0
        ends: list[int] = []
        while True:
            # A longer digest extends a shorter one: read only its new words. Word i is
            # digest[2i] + 256 * digest[2i + 1], on every machine.
            digest = shake.digest(2 * n)[2 * drawn :]
            drawn = n
            high = digest[1::2]
            sizes: bytes | bytearray = high.translate(self._high)
            if 0 in sizes:  # a high byte astride two sizes: its low byte decides
                sizes, low, table = bytearray(sizes), digest[0::2], self._table
                i = sizes.find(0)
                while i >= 0:
                    sizes[i] = table[high[i] << 8 | low[i]]
                    i = sizes.find(0, i + 1)
            if ends:  # rare: a longer answer than drawn for; go on from the last sum
                ends += accumulate(sizes, initial=ends.pop())
            else:
                ends = list(accumulate(sizes, initial=0))
            if ends[-1] >= tokens:
                return ends, bisect_left(ends, tokens)
            n *= 2


class Ledger:
    """The cycles a speculative engine has run, so that a segment costs O(1) per member.

    Every running request advances one cycle per cycle of the engine, so its cycles are the
    engine's cycles since it joined (``cycles - r.base``); its communication and busy shares
    are differences of the running sums over the segments it sat in; its runs of cycles are
    the ledger's runs since it joined. A segment then touches only its new members and the
    requests it completes (a heap by the cycle each request is done), not the whole batch.
    """

    __slots__ = ("busy", "comm", "cycles", "due", "floor", "keep", "runs", "runs0")

    def __init__(self) -> None:
        self.cycles = 0  # cycles run
        self.runs: list[TokenRun] = []  # the run of cycles of each decode segment accounted
        self.runs0 = 0  # the number of runs dropped from the front of ``runs``
        self.floor = 4096  # the least ``keep``
        self.keep = 4096  # ``runs`` length at which the front is dropped
        self.comm = 0.0  # a member's communication over every segment accounted
        self.busy = 0.0  # a member's decode share over every segment accounted
        self.due: list[tuple[int, int, _Request]] = []  # (cycle it is done, seq, request)

    def join(self, r: _Request) -> None:
        """``r`` is admitted to the segment being planned: its accounts start here."""
        r.base = self.cycles
        r.run0 = self.runs0 + len(self.runs)
        r.comm0, r.busy0 = self.comm, self.busy
        heapq.heappush(self.due, (self.cycles + r.need, r.seq, r))

    def cycles_left(self) -> int:
        """Cycles until the first running request is done."""
        due = self.due
        while True:  # drop requests withdrawn, or planned again since they were pushed
            at, _, r = due[0]
            if r.state == _RUNNING and r.base + r.need == at:
                return at - self.cycles
            heapq.heappop(due)

    def runs_of(self, r: _Request) -> list[TokenRun]:
        """The runs of cycles ``r`` has sat in (accounted segments)."""
        return self.runs[r.run0 - self.runs0 :]

    def done(self) -> list[_Request]:
        """The running requests whose last cycle has been accounted, marked done."""
        out: list[_Request] = []
        due = self.due
        while due and due[0][0] <= self.cycles:
            at, _, r = heapq.heappop(due)
            if r.state == _RUNNING and r.base + r.need == at:
                r.state = _DONE  # once, though planned again at the same cycle it has two entries
                out.append(r)
        return out

    def trim(self, running: list[_Request]) -> None:
        """Drop the runs no running request needs any more (the records hold their own)."""
        first = min((r.run0 for r in running), default=self.runs0 + len(self.runs))
        del self.runs[: first - self.runs0]
        self.runs0 = first
        self.keep = max(self.floor, 2 * len(self.runs))
