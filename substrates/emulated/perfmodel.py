"""Pure performance model of one engine pass: prefill, decode iterations and spans, floors.

The pass skeletons of both families (tensor/pipeline parallel; layers spread over SRAM, with
its wafer pipeline) and speculative decoding. Communication terms live in
`substrates.emulated.comm`; request-level price, energy and load summaries in
`substrates.emulated.predict`; the deployment, memory fit and sizing in
`substrates.emulated.deployment`.
"""

# Functions of their arguments only: no clock, no I/O, no randomness.

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agentrt.errors import ConfigError
from substrates.emulated import families, moe, speculative
from substrates.emulated.comm import ACTIVATION_BYTES, allreduce_s, hop_s, pipeline_hops_s
from substrates.emulated.deployment import (
    BYTES_PER_VALUE,
    Deployment,
    attended_positions,
    kv_shards,
)

__all__ = [
    "StepTime",
    "WaferPipeline",
    "decode_floor_s",
    "decode_iteration",
    "decode_span",
    "prefill",
    "prefill_floor_s",
    "wafer_pipeline",
]

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
        cores_per_layer: mesh cores (LPU: chips) holding one layer's weights.
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
    return moe.weights_read_bytes(dep.model, dep.precision, tokens)


def _flops(dep: Deployment, tokens: float, attended: float) -> float:
    """``2 * active_params`` per token, ``4 * d_q`` per attended position, MoE routers."""
    m = dep.model
    attention = moe.attention_flops_per_position(m) * attended  # 4 d_q; MLA: 4 heads x latent
    return 2.0 * m.active_params_b * 1e9 * tokens + attention + moe.router_flops(m, tokens)


def _rates(dep: Deployment, *, ideal: bool) -> tuple[float, float]:
    """Memory bytes/s and matrix flop/s of one chip: peak (ideal) or achieved."""
    hw, eff = dep.hardware, dep.efficiency
    bw = hw.memory_bandwidth_tb_per_s * _TERA
    flops = hw.peak_tflops(dep.precision) * _TERA
    if ideal:
        return bw, flops
    return bw * eff.bandwidth_efficiency, flops * eff.flop_efficiency


def _pass(
    dep: Deployment,
    tokens: float,
    attended: float,
    kv_positions: float,
    requests: float | None = None,
) -> StepTime:
    """One forward pass over ``tokens`` tokens that attend ``attended`` cached positions.

    GPU: weights and KV cache stream once, split over ``tp`` chips and summed over the ``pp``
    stages the pass crosses in turn; math splits over ``tp``. Traffic and math add (no
    overlap): the fit prefers it by far (docs/performance-model.md). A stack may hide a share
    of the tensor-parallel communication under that work (``comm_overlap_fraction``). Wafer:
    a token's latency crosses every layer; each further token adds its math; SRAM traffic is a
    floor. MoE terms (expert parallelism, routing, DP attention) come from
    `substrates.emulated.moe`. ``requests`` (default: one per token) matter only to DP
    attention, which splits them.
    """
    hw, eff = dep.hardware, dep.efficiency
    bw, flop_rate = _rates(dep, ideal=False)
    weights = _weights_read_bytes(dep, tokens)
    kv = kv_positions * dep.model.kv_values_per_token_per_layer * BYTES_PER_VALUE[dep.kv_dtype]
    flops = _flops(dep, tokens, attended)
    hops = pipeline_hops_s(dep, tokens)
    if hw.spreads_layers:
        latency = wafer_pipeline(dep).token_latency_s
        return StepTime(latency + (flops / flop_rate + (weights + kv) / bw) / dep.pp, hops)
    kv_chip, t_math = kv / kv_shards(dep), flops / (flop_rate * dep.tp)
    if dep.attention_dp:  # the busiest chip's requests (moe.dp_attention_load)
        kv_chip, chip_flops = moe.dp_attention_load(dep, tokens, attended, kv, requests or tokens)
        t_math = chip_flops / flop_rate
    t_mem = families.memory_read_s(dep, moe.chip_weight_bytes(dep, tokens), kv_chip, bw)
    work = t_mem + t_math + eff.iteration_overhead_s
    work += families.pipeline_fill_s(dep, tokens)
    # -- communication: two all-reduces per layer (Megatron), then stage hand-offs --
    message = tokens * dep.model.hidden_size * ACTIVATION_BYTES
    tp_comm = moe.allreduces_per_pass(dep) * allreduce_s(hw, dep.tp, message, eff)  # 2/layer
    tp_comm -= eff.comm_overlap_fraction * min(tp_comm, work)
    return StepTime(work, tp_comm + moe.moe_comm_s(dep, tokens) + hops)


def wafer_pipeline(dep: Deployment) -> WaferPipeline:
    """The layer pipeline of a wafer-scale (or LPU) deployment.

    A layer takes `families.wafer_layer_s`: on a wafer a fixed per-layer latency, reductions
    that grow with the model width and the layer's weights over its region's SRAM bandwidth
    (an LPU: ``layer_latency + mesh_hop * sqrt(chips)``). A token's latency sums the layers
    (plus the inter-wafer hops); other requests' tokens occupy other layers meanwhile, so
    concurrency costs only their math until the KV cache is full.

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
    eff = dep.efficiency
    cores = families.layer_region_units(dep)
    layer = families.wafer_layer_s(dep)
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
    return _pass(dep, float(sum(prompt_tokens)), attended, kv_positions, len(prompt_tokens))


def _decode_step(dep: Deployment, batch: int, attended: float) -> StepTime:
    """One decode iteration, or one speculative cycle, of ``batch`` requests.

    A cycle: ``k`` draft passes (`speculative.draft_deployment`, the same roofline) and one
    target pass over ``k + 1`` tokens per request, which advances ``E`` tokens on average.
    """
    spec = dep.spec_decode
    if spec is None:
        return _pass(dep, batch, attended, attended)
    k = spec.draft_tokens
    verify = _pass(dep, batch * (k + 1), attended * (k + 1), attended, batch)
    draft_dep = speculative.draft_deployment(dep)
    draft_attended = attended * draft_dep.model.layers / dep.model.layers
    draft = _pass(draft_dep, batch, draft_attended, draft_attended)
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
