"""Request-level predictions: price and energy, one request alone, a closed loop's steady state."""

# Functions of their arguments only: no clock, no I/O, no randomness. They sum the passes
# priced by substrates.emulated.perfmodel into what a request or a load costs.

from __future__ import annotations

import math
from dataclasses import dataclass

from substrates.emulated.comm import network_s
from substrates.emulated.deployment import Deployment
from substrates.emulated.perfmodel import decode_span, prefill
from substrates.emulated.sizing import check_fits, max_concurrent_requests

__all__ = ["Breakdown", "LoadPoint", "closed_loop", "cost_usd", "energy_j", "predict_request"]


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Where one request's time, money and energy went: the fields of ``Timing``.

    ``queue + network + prefill + decode + comm == e2e`` and ``ttft + (output - 1) * tpot == e2e``.

    Attributes:
        queue_s: waiting for a batch slot (0 for a request alone).
        network_s: client-endpoint round trip plus server-side request handling.
        prefill_s: prompt processing without communication.
        decode_s: every token after the first, without communication.
        comm_s: all communication of prefill and decode.
        ttft_s: time to first token.
        tpot_s: mean time per output token after the first.
        e2e_s: end to end.
        input_tokens: prompt tokens.
        output_tokens: generated tokens.
        cost_usd: price of the request, or None when nothing is published to price it.
        energy_j: energy the chips drew while busy with it.
    """

    queue_s: float
    network_s: float
    prefill_s: float
    decode_s: float
    comm_s: float
    ttft_s: float
    tpot_s: float
    e2e_s: float
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    energy_j: float

    @property
    def output_tokens_per_s(self) -> float:
        """Per-user output speed after the first token (1 / tpot)."""
        return 1.0 / self.tpot_s if self.tpot_s > 0 else math.inf


@dataclass(frozen=True, slots=True)
class LoadPoint:
    """Steady state of a closed loop of identical requests (each client resends when done).

    Attributes:
        batch: requests decoded together.
        ttft_s: time to first token, waiting for a slot included.
        tpot_s: time per output token after the first.
        e2e_s: end to end per request.
        throughput_tokens_per_s: output tokens per second of the whole deployment.
    """

    batch: int
    ttft_s: float
    tpot_s: float
    e2e_s: float
    throughput_tokens_per_s: float


def cost_usd(
    dep: Deployment, *, busy_s: float, input_tokens: int, output_tokens: int
) -> float | None:
    """Price of a request: a published per-token price, else chip-hours of busy time.

    Args:
        dep: the deployment.
        busy_s: chip time the request is charged (its share when batched).
        input_tokens: prompt tokens.
        output_tokens: generated tokens.

    Returns:
        USD, or None when the hardware has neither a token price for the model nor a
        chip-hour price.
    """
    price = dep.hardware.prices.get(dep.model.name)
    if price is not None:
        spent = input_tokens * price.input_usd_per_mtok + output_tokens * price.output_usd_per_mtok
        return spent / 1e6
    hourly = dep.hardware.price_usd_per_chip_hour
    return None if hourly is None else dep.chips * hourly * busy_s / 3600.0


def energy_j(dep: Deployment, busy_s: float) -> float:
    """Energy of the deployment's chips over ``busy_s``: chips x power x time."""
    return dep.chips * dep.hardware.power_w * busy_s


def predict_request(dep: Deployment, prompt_tokens: int, output_tokens: int) -> Breakdown:
    """One request alone on the deployment (no queue, batch of one), fully broken down.

    Args:
        dep: the deployment.
        prompt_tokens: tokens in the prompt.
        output_tokens: tokens to generate (the first comes out of the prefill).

    Returns:
        The breakdown.
    """
    net = network_s(dep)
    pre = prefill(dep, [prompt_tokens])
    later = max(output_tokens - 1, 0)
    dec = decode_span(dep, [prompt_tokens + 1], later)
    busy = pre.total_s + dec.total_s
    return Breakdown(
        queue_s=0.0,
        network_s=net,
        prefill_s=pre.work_s,
        decode_s=dec.work_s,
        comm_s=pre.comm_s + dec.comm_s,
        ttft_s=net + pre.total_s,
        tpot_s=dec.total_s / later if later else 0.0,
        e2e_s=net + busy,
        input_tokens=prompt_tokens,
        output_tokens=output_tokens,
        cost_usd=cost_usd(
            dep, busy_s=busy, input_tokens=prompt_tokens, output_tokens=output_tokens
        ),
        energy_j=energy_j(dep, busy),
    )


def closed_loop(
    dep: Deployment, prompt_tokens: int, output_tokens: int, concurrency: int | None
) -> LoadPoint:
    """Steady state of ``concurrency`` clients that each send a new request when one ends.

    The batch is the concurrency capped by ``max_batch`` and by the KV cache that fits; the
    other clients queue. In one cycle every slot prefills one prompt (the batch stalls
    meanwhile) and decodes ``output_tokens - 1`` tokens. ``None`` means as many clients as fit
    (an offline maximum-throughput run). The scheduler simulates this in detail; this closed
    form is what the calibration compares with published load tests.

    Args:
        dep: the deployment.
        prompt_tokens: prompt length of every request.
        output_tokens: output length of every request.
        concurrency: clients, or None.

    Returns:
        Per-request latencies and the deployment's throughput.

    Raises:
        DoesNotFitError: not even one request's KV cache fits.
    """
    fit = max_concurrent_requests(dep, prompt_tokens + output_tokens / 2)
    if fit < 1:
        check_fits(dep, prompt_tokens + output_tokens)
        fit = 1
    batch = fit if concurrency is None else max(1, min(concurrency, fit))
    clients = batch if concurrency is None else max(1, concurrency)
    pre = prefill(dep, [prompt_tokens]).total_s
    later = max(output_tokens - 1, 0)
    decode = decode_span(dep, [prompt_tokens + 1] * batch, later).total_s
    cycle = batch * pre + decode
    queue = (clients - batch) / batch * cycle
    ttft = network_s(dep) + queue + pre
    e2e = ttft + cycle - pre
    throughput = min(batch * output_tokens / cycle, clients * output_tokens / e2e)
    return LoadPoint(
        batch=batch,
        ttft_s=ttft,
        tpot_s=(cycle - pre) / later if later else 0.0,
        e2e_s=e2e,
        throughput_tokens_per_s=throughput,
    )
