"""Mixture-of-experts terms: experts touched, router cost, expert and attention parallelism.

Pure functions of the model, the deployment and the tokens of one pass, called by
`substrates.emulated.perfmodel` (both skeletons) and by `families`/`sizing` where MoE changes
what they count (docs/performance-model.md, "Mixture of experts"). For a dense model, or an MoE
model with ``ep = 1`` and tensor-parallel attention, every term reduces to what the dense
tensor-parallel model computes.

Layout inside one pipeline stage of ``tp`` chips:

* ``ep = 1``: every expert is split over the ``tp`` chips like a dense FFN (tensor parallel).
* ``ep`` dividing ``tp``: the experts are dealt to ``ep`` groups of ``tp / ep`` chips, each
  expert split over its group. With tensor-parallel attention every chip already holds every
  token (after the attention all-reduce), so the MoE layer ends with the same all-reduce as a
  dense FFN and needs no all-to-all (TensorRT-LLM's and vLLM's EP without DP attention).
* ``attention_dp`` (needs ``ep = tp``): each chip keeps the attention (and other non-expert)
  weights whole and the KV cache of its own requests; its tokens reach the chips of their
  ``k`` experts by an all-to-all *dispatch* and come back by a *combine*; no all-reduce.
"""

# Functions of their arguments only: no clock, no I/O, no randomness.

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from substrates.emulated.deployment import Deployment
    from substrates.emulated.profiles import HardwareProfile, ModelProfile, Precision

__all__ = [
    "ACTIVATION_BYTES",
    "all_to_all_s",
    "allreduces_per_pass",
    "attention_flops_per_position",
    "busiest_chip_experts",
    "chip_weight_bytes",
    "dp_attention_load",
    "experts_touched",
    "moe_comm_s",
    "moe_layer_count",
    "resident_weight_bytes",
    "router_flops",
    "weights_read_bytes",
]

#: Activations cross chips in 16-bit (as `comm.ACTIVATION_BYTES`; repeated to avoid a cycle).
ACTIVATION_BYTES = 2.0

#: Operations per router logit besides the gating matmul: softmax (max, exp, sum, divide,
#: about 5) before the top-k selection (``log2 k`` compares per logit, added where used).
_SOFTMAX_OPS_PER_LOGIT = 5.0

_GB = 1e9
_BYTES_PER_VALUE: dict[str, float] = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5}


def moe_layer_count(model: ModelProfile) -> int:
    """Layers whose FFN is a routed mixture of experts (0 for a dense model)."""
    if model.experts is None:
        return 0
    return model.moe_layers if model.moe_layers is not None else model.layers


def experts_touched(model: ModelProfile, tokens: float) -> float:
    """Distinct routed experts per MoE layer that ``tokens`` tokens use, on average.

    Each token picks ``k`` of ``E`` experts; assuming balanced routing an expert is missed by
    all tokens with probability ``(1 - k/E)^T``, so ``E (1 - (1 - k/E)^T)`` are touched: ``k``
    for one token, all ``E`` for a large batch.

    Args:
        model: the model.
        tokens: tokens in the pass (at least one is assumed).

    Returns:
        Experts per MoE layer; 0 for a dense model.
    """
    if model.experts is None or model.experts_active is None:
        return 0.0
    e, k = model.experts, model.experts_active
    untouched: float = (1.0 - k / e) ** max(tokens, 1.0)
    return e * (1.0 - untouched)


def busiest_chip_experts(model: ModelProfile, tokens: float, ep: int) -> float:
    """Experts per MoE layer on the most loaded of ``ep`` chips (the one a pass waits for).

    The touched experts fall on the chips like draws without replacement, so each chip's
    count is hypergeometric with mean ``t / ep`` and variance
    ``t (1/ep)(1 - 1/ep)(E - t)/(E - 1)``; the largest of ``ep`` such counts is taken as
    ``mean + sd sqrt(2 ln ep)`` (the Gaussian extreme-value estimate), at least one whole
    expert when any is touched and at most ``E / ep``. At batch 1 with ``k = 1`` one chip reads
    a whole expert while the others wait: expert parallelism does not split one token's read.

    Args:
        model: the model.
        tokens: tokens in the pass.
        ep: expert-parallel degree (1: every chip holds a slice of every expert).

    Returns:
        Experts per MoE layer whose weights the busiest chip reads (whole experts).
    """
    touched = experts_touched(model, tokens)
    if ep <= 1 or model.experts is None:
        return touched
    e = float(model.experts)
    mean = touched / ep
    var = touched * (1.0 / ep) * (1.0 - 1.0 / ep) * max(e - touched, 0.0) / (e - 1.0)
    busiest = mean + math.sqrt(var) * math.sqrt(2.0 * math.log(ep))
    return min(max(busiest, mean, min(1.0, touched)), e / ep, touched)


def weights_read_bytes(model: ModelProfile, precision: Precision, tokens: float) -> float:
    """Weight bytes one pass over ``tokens`` tokens reads, over all chips.

    ``shared + experts x touched / E``: the non-expert weights (attention, embeddings, dense
    and shared-expert FFNs, routers) and the routed experts the tokens touch. Dense: all.
    """
    scale = _BYTES_PER_VALUE[precision] * 1e9
    if model.experts is None or model.experts_active is None:
        return model.total_params_b * scale
    untouched: float = (1.0 - model.experts_active / model.experts) ** max(tokens, 1.0)
    return (model.shared_params_b + model.expert_params_b * (1.0 - untouched)) * scale


def chip_weight_bytes(dep: Deployment, tokens: float) -> float:
    """Weight bytes the busiest chip of a stage reads in one pass (summed over its stages).

    Tensor parallel (``ep = 1``, no DP attention): ``weights_read / tp``, the dense model's
    term. With ``ep > 1`` the experts part is the busiest of ``ep`` groups'
    `busiest_chip_experts`, split over its ``tp / ep`` chips; with DP attention each chip
    reads the non-expert weights whole.

    Args:
        dep: the deployment.
        tokens: tokens in the pass (over all chips of the stage).

    Returns:
        Bytes.
    """
    m = dep.model
    if dep.ep <= 1 and not dep.attention_dp:
        return weights_read_bytes(m, dep.precision, tokens) / dep.tp
    scale = _BYTES_PER_VALUE[dep.precision] * 1e9
    shared = m.shared_params_b * scale
    if not dep.attention_dp:
        shared /= dep.tp
    per_expert = m.expert_params_b * scale / (m.experts or 1)  # one expert, all MoE layers
    experts = busiest_chip_experts(m, tokens, dep.ep) * per_expert * dep.ep / dep.tp
    return shared + experts


def dp_attention_load(
    dep: Deployment, tokens: float, attended: float, kv_bytes: float, requests: float
) -> tuple[float, float]:
    """KV bytes and flops of the busiest chip of a stage under DP attention.

    DP attention splits *requests*, not tokens: the busiest chip holds ``ceil(R / tp)`` of the
    ``R`` requests, so it reads that share of the KV cache and does that share of the
    attention, router and other non-expert math (one request, or one long prompt, runs on one
    chip); the routed experts' math spreads over the ``tp`` chips by the all-to-all.

    Args:
        dep: a deployment with ``attention_dp``.
        tokens: tokens in the pass (all chips).
        attended: cached positions those tokens attend (all chips, summed over layers).
        kv_bytes: KV-cache bytes the pass reads (all chips).
        requests: requests in the pass.

    Returns:
        ``(kv_bytes, flops)`` of the busiest chip.
    """
    m = dep.model
    r = max(requests, 1.0)
    share = math.ceil(r / dep.tp - 1e-9) / r
    routed_b = m.expert_params_b * (m.experts_active or 0) / (m.experts or 1)
    expert_flops = 2.0 * routed_b * 1e9 * tokens
    other = (
        2.0 * (m.active_params_b - routed_b) * 1e9 * tokens
        + attention_flops_per_position(m) * attended
        + router_flops(m, tokens)
    )
    return kv_bytes * share, other * share + expert_flops / dep.tp


def resident_weight_bytes(dep: Deployment) -> float:
    """Weight bytes held over all chips (capacity): all parameters, plus DP copies.

    Capacity counts *total* parameters, every expert included. DP attention keeps the
    non-expert weights whole on each of the ``tp`` chips of a stage, ``tp - 1`` extra copies.
    """
    m = dep.model
    scale = 1e9 * _BYTES_PER_VALUE[dep.precision]
    total = m.total_params_b * scale
    if not dep.attention_dp:
        return total
    return total + (dep.tp - 1) * m.shared_params_b * scale


def attention_flops_per_position(model: ModelProfile) -> float:
    """Attention math per query token per cached position per layer.

    Grouped-query attention: ``4 d_q`` (``QK^T`` and ``AV``, ``2 heads x head_dim`` each).
    Latent attention (MLA) as decode kernels run it, with the up-projections absorbed into
    the query and the output: every head scores against the whole cached latent and mixes it,
    ``4 heads x mla_kv_dim`` (DeepSeek: 2 x 128 x (576 + 512) exactly, so this is 6% high).
    That is 4.5x the GQA figure for DeepSeek-R1: MLA trades KV bytes for attention math.

    Args:
        model: the model.

    Returns:
        Flops.
    """
    if model.mla_kv_dim is not None:
        return 4.0 * model.attention_heads * model.mla_kv_dim
    return 4.0 * model.attention_heads * model.head_dim


def router_flops(model: ModelProfile, tokens: float) -> float:
    """Operations of the routers beyond the gating matmul, for ``tokens`` tokens.

    The gating matmul (``2 d E`` per token per MoE layer) is part of the active parameters
    (its ``d x E`` weights are counted in ``active_params_b``), so it is already in
    ``2 P_active T``; what the router adds is the softmax over ``E`` logits and the top-``k``
    selection: ``E (5 + log2 k)`` per token per MoE layer.

    Args:
        model: the model.
        tokens: tokens in the pass.

    Returns:
        Operations (priced at the matrix rate like the rest of the pass: a small term).
    """
    if model.experts is None or model.experts_active is None:
        return 0.0
    per_logit = _SOFTMAX_OPS_PER_LOGIT + math.log2(max(model.experts_active, 1)) + 1.0
    return moe_layer_count(model) * tokens * model.experts * per_logit


def all_to_all_s(
    hardware: HardwareProfile, ep: int, tokens: float, hidden: int, top_k: int
) -> float:
    """One all-to-all (an MoE layer's dispatch, or its combine) over ``ep`` chips.

    Each chip routes its ``T / ep`` tokens; a token's hidden vector goes to each of its ``k``
    experts, a share ``(ep - 1) / ep`` of them on other chips, so a chip sends
    ``T/ep x k x d x 2 B x (ep - 1)/ep`` over its own link (the message sizes of DeepEP's
    decode kernels, one copy per routed expert; its prefill kernels merge copies bound for
    the same chip, which this does not credit). ``latency + bytes / bandwidth``, NVLink-class
    inside a node; when ``ep`` spans nodes the off-node share goes over the scale-out NIC and
    sets the time if slower.

    Args:
        hardware: the chips.
        ep: expert-parallel degree.
        tokens: tokens in the pass over all ``ep`` chips.
        hidden: model width ``d``.
        top_k: experts per token ``k``.

    Returns:
        Seconds (0 for ``ep = 1``).
    """
    if ep <= 1:
        return 0.0
    sent = tokens / ep * top_k * hidden * ACTIVATION_BYTES * (ep - 1) / ep
    node = hardware.chips_per_node
    if ep <= node:
        return hardware.scale_up_latency_s + sent / (hardware.scale_up_bandwidth_gb_per_s * _GB)
    inside = sent * (node - 1) / (ep - 1)
    outside = sent - inside
    t_inside = inside / (hardware.scale_up_bandwidth_gb_per_s * _GB)
    t_outside = outside / (hardware.scale_out_bandwidth_gb_per_s * _GB)
    return hardware.scale_out_latency_s + max(t_inside, t_outside)


def moe_comm_s(dep: Deployment, tokens: float) -> float:
    """All-to-all time of one pass: dispatch and combine at every MoE layer (DP attention only)."""
    m = dep.model
    if not dep.attention_dp or dep.ep <= 1 or m.experts_active is None:
        return 0.0
    one = all_to_all_s(dep.hardware, dep.ep, tokens, m.hidden_size, m.experts_active)
    return 2 * moe_layer_count(m) * one


def allreduces_per_pass(dep: Deployment) -> int:
    """Tensor-parallel all-reduces one pass makes (Megatron: two per layer).

    Expert parallelism under tensor-parallel attention keeps both (the MoE layer's partial
    sums are reduced like a dense FFN's); DP attention has none: attention and dense layers
    are replicated and the all-to-alls carry the MoE traffic.
    """
    if dep.attention_dp:
        return 0
    return 2 * dep.model.layers
