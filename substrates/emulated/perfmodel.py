"""Pure performance model of emulated GPU and wafer-scale inference: time, cost, energy."""

# Functions of their arguments only: no clock, no I/O, no randomness. The deployment value
# object, the memory fit check and sizing live in substrates.emulated.deployment and are re-exported
# here, so the scheduler and the engine import one module.

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agentrt.errors import ConfigError
from substrates.emulated import families
from substrates.emulated.deployment import (
    BYTES_PER_VALUE,
    DEFAULT_CONTEXT_TOKENS,
    Deployment,
    SpecDecode,
    attended_positions,
    kv_bytes,
    kv_bytes_per_token,
    kv_shards,
    parse_precision,
    weight_bytes,
)
from substrates.emulated.profiles import HardwareProfile
from substrates.emulated.sizing import (
    MemoryNeed,
    check_fits,
    kv_capacity_bytes,
    kv_capacity_tokens,
    max_concurrent_requests,
    memory_need,
    size_deployment,
)

__all__ = [
    "ACTIVATION_BYTES",
    "BYTES_PER_VALUE",
    "DEFAULT_CONTEXT_TOKENS",
    "Breakdown",
    "Deployment",
    "LoadPoint",
    "MemoryNeed",
    "SpecDecode",
    "StepTime",
    "WaferPipeline",
    "allreduce_s",
    "check_fits",
    "closed_loop",
    "cost_usd",
    "decode_floor_s",
    "decode_iteration",
    "decode_span",
    "energy_j",
    "hop_s",
    "kv_bytes",
    "kv_bytes_per_token",
    "kv_capacity_bytes",
    "kv_capacity_tokens",
    "max_concurrent_requests",
    "memory_need",
    "network_s",
    "parse_precision",
    "pipeline_hops_s",
    "predict_request",
    "prefill",
    "prefill_floor_s",
    "size_deployment",
    "wafer_pipeline",
    "weight_bytes",
]

#: Activations cross chips in 16-bit.
ACTIVATION_BYTES = 2.0

_GB = 1e9
_TERA = 1e12


@dataclass(frozen=True, slots=True)
class StepTime:
    """Time of one engine pass, split so attribution can tell work from communication.

    Attributes:
        work_s: memory traffic, math, fixed overheads (and draft steps).
        comm_s: all-reduces and pipeline or inter-wafer hops.
        tokens_per_request: tokens each request gains (decode: 1, or the speculative gain).
    """

    work_s: float
    comm_s: float
    tokens_per_request: float = 1.0

    @property
    def total_s(self) -> float:
        """Work plus communication."""
        return self.work_s + self.comm_s


@dataclass(frozen=True, slots=True)
class WaferPipeline:
    """How a model sits on a wafer-scale engine and how fast one token crosses it.

    Attributes:
        wafers: wafers (systems) the layers are split across.
        layers_per_wafer: layers on the most loaded wafer.
        cores_per_layer: mesh cores holding one layer's active weights.
        layer_latency_s: one token across one layer.
        hop_s: one token's hand-off between two wafers.
        token_latency_s: one token through all layers (hops are in `pipeline_hops_s`).
        token_compute_s: what each further token in flight adds (its math on all wafers).
    """

    wafers: int
    layers_per_wafer: int
    cores_per_layer: float
    layer_latency_s: float
    hop_s: float
    token_latency_s: float
    token_compute_s: float


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


# ---------------------------------------------------------------------------- communication


def allreduce_s(hardware: HardwareProfile, group: int, message_bytes: float) -> float:
    """One all-reduce: ``alpha(n) + 2 (n - 1) / n * bytes / bus_bandwidth`` (0 for n = 1).

    ``alpha(n) = alpha_2 + alpha_step * log2(n / 2)``, fitted to vidur's NCCL measurements.

    Args:
        hardware: the chips.
        group: chips taking part (the tensor-parallel degree).
        message_bytes: bytes each chip contributes.

    Returns:
        Seconds.
    """
    if group <= 1:
        return 0.0
    eff = hardware.efficiency
    alpha = eff.allreduce_latency_s + eff.allreduce_latency_per_doubling_s * math.log2(group / 2)
    ring = 2.0 * (group - 1) / group
    return alpha + ring * message_bytes / (eff.allreduce_bus_bandwidth_gb_per_s * _GB)


def hop_s(hardware: HardwareProfile, message_bytes: float, *, cross_node: bool) -> float:
    """One point-to-point hand-off (pipeline stage, or wafer to wafer): latency + bytes / bw."""
    if cross_node:
        bw, latency = hardware.scale_out_bandwidth_gb_per_s, hardware.scale_out_latency_s
    else:
        bw, latency = hardware.scale_up_bandwidth_gb_per_s, hardware.scale_up_latency_s
    return latency + message_bytes / (bw * _GB)


def pipeline_hops_s(dep: Deployment, tokens: float) -> float:
    """All ``pp - 1`` stage hand-offs of ``tokens`` tokens' activations (0 with one stage)."""
    if dep.pp <= 1:
        return 0.0
    message = tokens * dep.model.hidden_size * ACTIVATION_BYTES
    hw = dep.hardware
    if hw.spreads_layers:
        return families.layer_handoffs(dep) * hop_s(hw, message, cross_node=True)
    crossing = (dep.pp - 1) // max(1, hw.chips_per_node // dep.tp)
    inside = dep.pp - 1 - crossing
    return crossing * hop_s(hw, message, cross_node=True) + inside * hop_s(
        hw, message, cross_node=False
    )


def network_s(dep: Deployment) -> float:
    """Client-endpoint round trip plus the server's per-request handling, before prefill."""
    return dep.network_rtt_s + dep.hardware.efficiency.request_overhead_s


# ---------------------------------------------------------------------------------- passes


def _attended_total(
    dep: Deployment, contexts: Sequence[int], count: int = 1, gain: float = 1.0
) -> float:
    """`attended_positions` summed over a batch, in one cheap pass over the contexts."""
    m = dep.model
    ramp = gain * count * (count - 1) / 2
    total = (m.layers - m.sliding_window_layers) * (count * sum(contexts) + len(contexts) * ramp)
    if m.sliding_window_layers:
        window = float(m.sliding_window_tokens or 0)
        last = gain * (count - 1)
        local = 0.0
        for c in contexts:
            if c + last < window:
                local += count * c + ramp
            elif c >= window:
                local += count * window
            else:  # crosses the window during the span
                below = math.ceil((window - c) / gain)
                local += below * c + gain * below * (below - 1) / 2 + (count - below) * window
        total += m.sliding_window_layers * local
    return float(total)


def _weights_read_bytes(dep: Deployment, tokens: float) -> float:
    """Weight bytes one pass over ``tokens`` tokens reads (MoE: the experts they touch)."""
    m = dep.model
    scale = BYTES_PER_VALUE[dep.precision] * 1e9
    if m.experts is None or m.experts_active is None:
        return m.total_params_b * scale
    untouched: float = (1.0 - m.experts_active / m.experts) ** max(tokens, 1.0)
    return (m.shared_params_b + m.expert_params_b * (1.0 - untouched)) * scale


def _flops(dep: Deployment, tokens: float, attended: float) -> float:
    """``2 * active_params`` per token plus ``4 * d_q`` per attended cached position."""
    m = dep.model
    return 2.0 * m.active_params_b * 1e9 * tokens + 4.0 * m.attention_heads * m.head_dim * attended


def _rates(dep: Deployment, *, ideal: bool) -> tuple[float, float]:
    """Memory bytes/s and matrix flop/s of one chip: peak (ideal) or achieved."""
    hw = dep.hardware
    bw = hw.memory_bandwidth_tb_per_s * _TERA
    flops = hw.peak_tflops(dep.precision) * _TERA
    if ideal:
        return bw, flops
    return bw * hw.efficiency.bandwidth_efficiency, flops * hw.efficiency.flop_efficiency


def _pass(dep: Deployment, tokens: float, attended: float, kv_positions: float) -> StepTime:
    """One forward pass over ``tokens`` tokens that attend ``attended`` cached positions.

    GPU: weights and KV cache stream once, split over ``tp`` chips and summed over the ``pp``
    stages the pass crosses in turn; math splits over ``tp``. Traffic and math add (no
    overlap): the fit prefers it by far (docs/performance-model.md). Wafer: a token's latency
    crosses every layer; each further token adds its math; SRAM traffic is a floor.
    """
    hw = dep.hardware
    bw, flop_rate = _rates(dep, ideal=False)
    weights = _weights_read_bytes(dep, tokens)
    kv = kv_positions * dep.model.kv_values_per_token_per_layer * BYTES_PER_VALUE[dep.kv_dtype]
    flops = _flops(dep, tokens, attended)
    hops = pipeline_hops_s(dep, tokens)
    if hw.spreads_layers:
        latency = wafer_pipeline(dep).token_latency_s
        return StepTime(latency + (flops / flop_rate + (weights + kv) / bw) / dep.pp, hops)
    t_mem = families.memory_read_s(dep, weights / dep.tp, kv / kv_shards(dep), bw)
    work = t_mem + flops / (flop_rate * dep.tp) + hw.efficiency.iteration_overhead_s
    work += families.pipeline_fill_s(dep, tokens)
    message = tokens * dep.model.hidden_size * ACTIVATION_BYTES
    tp_comm = 2 * dep.model.layers * allreduce_s(hw, dep.tp, message)  # two per layer (Megatron)
    return StepTime(work, tp_comm + hops)


def wafer_pipeline(dep: Deployment) -> WaferPipeline:
    """The layer pipeline of a wafer-scale (or LPU) deployment.

    A layer's active weights fill ``cores = bytes / sram_per_core`` mesh cores (on an LPU: all
    its weights fill ``bytes / sram_per_chip`` chips, `families.layer_region_units`); a token's
    dependent matrix-vector products cross that region, so a layer takes
    ``layer_latency + mesh_hop * sqrt(cores)``. A token's latency sums the layers (plus the
    inter-wafer hops); other requests' tokens occupy other layers meanwhile, so concurrency
    costs only their math until the KV cache is full.

    Args:
        dep: a deployment on wafer-scale hardware.

    Returns:
        The pipeline's shape and timings.

    Raises:
        ConfigError: the hardware is not wafer-scale (nor an LPU).
    """
    hw, m = dep.hardware, dep.model
    if not hw.spreads_layers:
        raise ConfigError(f"{hw.name} is not a wafer-scale engine or an LPU")
    eff = hw.efficiency
    cores = families.layer_region_units(dep)
    layer = eff.layer_latency_s + eff.mesh_hop_s * math.sqrt(cores)
    _, flop_rate = _rates(dep, ideal=False)
    return WaferPipeline(
        wafers=dep.pp,
        layers_per_wafer=math.ceil(m.layers / dep.pp),
        cores_per_layer=cores,
        layer_latency_s=layer,
        hop_s=hop_s(hw, m.hidden_size * ACTIVATION_BYTES, cross_node=True),
        token_latency_s=m.layers * layer + eff.iteration_overhead_s,
        token_compute_s=2.0 * m.active_params_b * 1e9 / (flop_rate * dep.pp),
    )


def prefill(
    dep: Deployment, prompt_tokens: Sequence[int], cached_tokens: Sequence[int] | None = None
) -> StepTime:
    """One prefill pass over a batch of prompts (or chunks); it yields each first token.

    Args:
        dep: the deployment.
        prompt_tokens: new tokens of each request.
        cached_tokens: tokens each request already holds in KV cache (chunked prefill, prefix
            cache); default none.

    Returns:
        The pass's work and communication.
    """
    cached = [0] * len(prompt_tokens) if cached_tokens is None else cached_tokens
    pairs = list(zip(cached, prompt_tokens, strict=True))
    attended = sum(attended_positions(dep.model, c + 1, s) for c, s in pairs)
    kv_positions = sum(attended_positions(dep.model, c + s, 1) for c, s in pairs)
    return _pass(dep, float(sum(prompt_tokens)), attended, kv_positions)


def _decode_step(dep: Deployment, batch: int, attended: float) -> StepTime:
    """One decode iteration, or one speculative step, of ``batch`` requests."""
    spec = dep.spec_decode
    plain = _pass(dep, batch, attended, attended)
    if spec is None:
        return plain
    k = spec.draft_tokens
    verify = _pass(dep, batch * (k + 1), attended * (k + 1), attended)
    if spec.draft_model is not None:
        draft_dep = dep.model_copy(update={"model": spec.draft_model, "spec_decode": None})
        draft_attended = attended * spec.draft_model.layers / dep.model.layers
        draft = _pass(draft_dep, batch, draft_attended, draft_attended)
    else:
        draft = StepTime(plain.work_s * spec.draft_cost_fraction, 0.0)
    return StepTime(
        work_s=verify.work_s + k * draft.work_s,
        comm_s=verify.comm_s + k * draft.comm_s,
        tokens_per_request=spec.expected_tokens_per_step,
    )


def decode_iteration(dep: Deployment, contexts: Sequence[int]) -> StepTime:
    """One decode iteration of a batch whose requests hold ``contexts`` tokens each.

    Args:
        dep: the deployment.
        contexts: tokens in each request's KV cache (prompt plus tokens generated so far).

    Returns:
        Work and communication, and the tokens each request gains (1, or more when
        speculating).
    """
    if not contexts:
        return StepTime(0.0, 0.0)
    return _decode_step(dep, len(contexts), _attended_total(dep, contexts))


def decode_span(dep: Deployment, contexts: Sequence[int], tokens: float) -> StepTime:
    """``tokens`` more tokens for every request of a steady batch, in one call.

    An iteration's time is affine in the attended positions, so the span is exactly
    ``steps x iteration(mean attention over the span)``: a 1,000-token decode is one call.

    Args:
        dep: the deployment.
        contexts: each request's context when the span starts.
        tokens: tokens each request gains over the span.

    Returns:
        Total work and communication over the span; ``tokens_per_request`` is ``tokens``.
    """
    if not contexts or tokens <= 0:
        return StepTime(0.0, 0.0, max(tokens, 0.0))
    gain = dep.spec_decode.expected_tokens_per_step if dep.spec_decode else 1.0
    steps = tokens / gain
    whole = max(1, math.ceil(steps))
    attended = _attended_total(dep, contexts, whole, gain) / whole
    step = _decode_step(dep, len(contexts), attended)
    return StepTime(step.work_s * steps, step.comm_s * steps, tokens)


def decode_floor_s(dep: Deployment, contexts: Sequence[int]) -> float:
    """Physical floor of one plain decode iteration: no engine can be faster.

    ``max(bytes that must be read / peak bandwidth, flops / peak of all chips)``; the weights
    (experts touched) and KV cache stream through the stages one after another.
    """
    bw, flop_rate = _rates(dep, ideal=True)
    attended = _attended_total(dep, contexts)
    weights = _weights_read_bytes(dep, len(contexts))
    kv = attended * dep.model.kv_values_per_token_per_layer * BYTES_PER_VALUE[dep.kv_dtype]
    if dep.hardware.spreads_layers:
        t_mem = (weights + kv) / (bw * dep.pp)
    else:
        t_mem = (weights / dep.tp + kv / kv_shards(dep)) / bw
    return max(t_mem, _flops(dep, len(contexts), attended) / (flop_rate * dep.chips))


def prefill_floor_s(dep: Deployment, prompt_tokens: Sequence[int]) -> float:
    """Physical floor of a prefill pass: flops over the peak of all chips (or weights read)."""
    bw, flop_rate = _rates(dep, ideal=True)
    tokens = float(sum(prompt_tokens))
    attended = sum(attended_positions(dep.model, 1, s) for s in prompt_tokens)
    t_flop = _flops(dep, tokens, attended) / (flop_rate * dep.chips)
    return max(t_flop, _weights_read_bytes(dep, tokens) / (bw * dep.chips))


# -------------------------------------------------------------------------------- requests


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
