"""Speculative bursts: how many tokens each verification cycle of a request delivers.

A cycle proposes k draft tokens and the target accepts them in order until the first rejection,
then adds its own token: 1 .. k + 1 tokens, a truncated geometric (`Speculation`). A request's
whole sequence of cycles is drawn once, when it is admitted, as a pure function of the
scheduler's seed and the request's number: SHAKE-128 of the two gives as many uniform 16-bit
words as needed, and a 65,536-entry table maps each word to a burst size (probabilities exact
to 2^-16). Drawing is C-level work (a hash, a byte translation of the words' high bytes, a
running sum; a word's low byte is read only when its high byte lies astride two sizes), a few
microseconds for a 500-token answer, and independent of every other request and of the jitter
draws.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left
from itertools import accumulate, pairwise

from agentrt.errors import ConfigError
from substrates.emulated.scheduler.records import Speculation

__all__ = ["Bursts"]

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
