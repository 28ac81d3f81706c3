"""The scheduler's cost model for one deployment: each pass priced by the performance model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

from agentrt.telemetry import semconv as sc
from substrates.emulated.deployment import Deployment
from substrates.emulated.perfmodel import decode_iteration, prefill
from substrates.emulated.scheduler import IterCost, ServiceRecord, Speculation
from substrates.emulated.sizing import kv_capacity_tokens

__all__ = ["PerfServiceModel", "burst_attributes"]


@final
class PerfServiceModel:
    """The scheduler's cost model for one deployment, priced by `substrates.emulated.perfmodel`.

    With speculative decoding, ``speculation`` holds the draft length and acceptance rate of
    ``deployment.spec_decode`` and ``decode_iter`` prices one whole verification cycle (k draft
    passes and one target pass over k + 1 tokens); the scheduler draws the tokens each request
    gains in it (E on average). Without, ``speculation`` is None and an iteration is one token.
    """

    __slots__ = (
        "_cache",
        "_prefill_cache",
        "deployment",
        "kv_capacity_tokens",
        "max_batch",
        "speculation",
    )

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        spec = deployment.spec_decode
        self.speculation = (
            None if spec is None else Speculation(spec.draft_tokens, spec.acceptance_rate)
        )
        self.max_batch = deployment.max_batch
        self.kv_capacity_tokens = kv_capacity_tokens(deployment)
        self._cache: dict[tuple[int, int], IterCost] = {}
        self._prefill_cache: dict[tuple[int, ...], IterCost] = {}

    def prefill(self, prompt_tokens: Sequence[int]) -> IterCost:
        """One prefill pass over these prompts."""
        key = tuple(prompt_tokens)
        cost = self._prefill_cache.get(key)
        if cost is None:
            step = prefill(self.deployment, prompt_tokens)
            cost = IterCost(step.work_s, step.comm_s)
            if len(self._prefill_cache) < 4096:
                self._prefill_cache[key] = cost
        return cost

    def decode_iter(self, contexts: Sequence[int]) -> IterCost:
        """One decode token (or one speculative cycle) for every request of the batch."""
        # Iteration cost is affine in the attended context: key on batch size and total context
        # (rounded to 64 tokens) so a steady batch prices each distinct state once.
        key = (len(contexts), sum(contexts) >> 6)
        cost = self._cache.get(key)
        if cost is None:
            step = decode_iteration(self.deployment, contexts)
            cost = IterCost(step.work_s, step.comm_s)
            if len(self._cache) < 65536:
                self._cache[key] = cost
        return cost


def burst_attributes(record: ServiceRecord) -> dict[str, int | float]:
    """How a speculative request's tokens after the first came, for its result and trace.

    ``agentrt.spec.bursts`` (verification cycles: each delivered its accepted tokens at once)
    and ``agentrt.spec.tokens_per_burst`` (their mean size); none for a single token.
    """
    bursts = record.bursts
    if bursts < 1:
        return {}
    return {
        sc.SPEC_BURSTS: bursts,
        sc.SPEC_TOKENS_PER_BURST: (record.output_tokens - 1) / bursts,
    }
