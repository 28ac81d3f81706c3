"""The terms that set the architecture families apart; the shared equations stay in perfmodel.

`substrates.emulated.perfmodel` prices every pass with one of two skeletons
(docs/performance-model.md):

* tensor/pipeline parallel (``gpu``, ``hbm``, ``rdu``, ``fpga``): weights and KV cache stream
  from memory split over ``tp`` chips, math splits over ``tp``, two all-reduces per layer and
  one hand-off per pipeline stage;
* layers spread over SRAM (``wafer``, ``lpu``): a token crosses every layer in turn, plus the
  hand-offs between regions. A wafer layer takes ``layer_latency + reduction_per_width * d +
  its weights over its region's SRAM bandwidth`` (`wafer_layer_s`); an LPU layer
  ``layer_latency + mesh_hop * sqrt(chips)``.

This module holds only what differs between the families inside a skeleton: how big a layer's
region is (wafer cores or LPU chips) and how long a token takes across it, how many hand-offs a
token makes, which memory tier the weights stream from (the RDU's DDR behind HBM), and the fixed
per-layer latency of a fused kernel or a compiled FPGA pipeline. Pure functions of the
deployment; parameters are read through ``dep.efficiency`` (the hardware's, with the serving
stack's overrides).
"""

from __future__ import annotations

import math

from agentrt.errors import ConfigError
from substrates.emulated import moe
from substrates.emulated.deployment import BYTES_PER_VALUE, Deployment, weight_bytes

__all__ = [
    "layer_handoffs",
    "layer_region_units",
    "wafer_layer_s",
    "memory_read_s",
    "offchip_fraction",
    "pipeline_fill_s",
]

_GB = 1e9
_TERA = 1e12


def layer_region_units(dep: Deployment) -> float:
    """Memory units that hold one layer's weights: wafer cores, or LPU chips.

    Wafer: the layers share their wafers' cores evenly, ``cores * wafers / layers`` (a layer
    holds all its experts; a token reads only the active ones, from the cores holding them).
    LPU: *all* of the layer's weights over one chip's SRAM; a token's reduction (and, for MoE,
    its expert dispatch) spans every chip of the layer.

    Args:
        dep: a deployment on a ``wafer`` or ``lpu`` profile.

    Returns:
        Cores (wafer) or chips (LPU) per layer; fractional when a layer shares a chip.

    Raises:
        ConfigError: the hardware does not spread layers over SRAM.
    """
    hw, m = dep.hardware, dep.model
    if hw.kind == "wafer" and hw.cores is not None:
        return hw.cores * dep.pp / m.layers
    if hw.kind == "lpu":
        per_value = BYTES_PER_VALUE[dep.precision]
        return m.total_params_b * 1e9 * per_value / m.layers / (hw.memory_gb * _GB)
    raise ConfigError(f"{hw.name} is not a wafer-scale engine or an LPU")


def wafer_layer_s(dep: Deployment) -> float:
    """One token's latency across one layer of a wafer-scale (wafer) or SRAM-chip (LPU) pipeline.

    Wafer, three terms that scale from the architecture (docs/performance-model.md):

    * ``layer_latency``: the fixed latency of a layer's chain of dependent stages (the
      stack's pipeline: synchronisation, stage hand-offs), independent of the model;
    * ``reduction_per_width * d``: each matrix-vector stage reduces (and broadcasts) across
      its region, whose side grows with the model width ``d``;
    * ``layer_bytes / (region_cores * bw_core * eff)``: every core of the layer's region reads
      its share of the weights from its own SRAM; at one token in flight only that region
      works, so this is the wafer's weights over the wafer's bandwidth. MoE: the cores of the
      active experts read theirs, the same time per core;
    * MoE layers add ``moe_layer_latency`` each: the router, top-k, the dispatch to the active
      experts' cores and the combine are further dependent stages.

    LPU: ``layer_latency + mesh_hop * sqrt(chips per layer)`` (fitted to Groq rows 27-28).

    Args:
        dep: a deployment on a ``wafer`` or ``lpu`` profile.

    Returns:
        Seconds.
    """
    hw, m, eff = dep.hardware, dep.model, dep.efficiency
    region = layer_region_units(dep)
    if hw.kind == "lpu":
        return eff.layer_latency_s + eff.mesh_hop_s * math.sqrt(region)
    cores = float(hw.cores or 1)
    layer_bytes = weight_bytes(m, dep.precision) / m.layers
    core_bw = hw.memory_bandwidth_tb_per_s * _TERA / cores * eff.bandwidth_efficiency
    read = layer_bytes / (region * core_bw)
    # An MoE layer adds its routing stages; averaged over the layers, as the caller multiplies.
    routing = eff.moe_layer_latency_s * moe.moe_layer_count(m) / m.layers
    return eff.layer_latency_s + eff.reduction_s_per_width * m.hidden_size + read + routing


def layer_handoffs(dep: Deployment) -> int:
    """Point-to-point hand-offs one token makes between chips holding consecutive layers.

    Wafer: one per extra wafer (``pp - 1``). LPU: ``pp`` is the chip count; a token leaves a
    chip group at every layer boundary that is also a chip boundary, ``min(layers, chips) - 1``.

    Args:
        dep: a deployment on a ``wafer`` or ``lpu`` profile.

    Returns:
        The number of hand-offs.
    """
    if dep.hardware.kind == "lpu":
        return min(dep.model.layers, dep.pp) - 1
    return dep.pp - 1


def offchip_fraction(dep: Deployment) -> float:
    """Share of each chip's weights that does not fit the fast tier and sits in the next one.

    Only an RDU has a tier behind HBM (DDR); every other kind returns 0.

    Args:
        dep: the deployment.

    Returns:
        A fraction in [0, 1).
    """
    hw = dep.hardware
    if hw.offchip_memory_gb is None:
        return 0.0
    per_chip = moe.resident_weight_bytes(dep) / dep.chips
    fast = hw.memory_gb * _GB * dep.efficiency.memory_usable_fraction
    return max(0.0, 1.0 - fast / per_chip)


def memory_read_s(
    dep: Deployment, weights_bytes: float, kv_bytes: float, bandwidth: float
) -> float:
    """Time to stream one chip's share of weights and KV cache through its memory tiers.

    ``(w (1 - s) + kv) / B_hbm + w s / (B_ddr eff)`` with ``s`` = `offchip_fraction`: weights
    that fit in HBM stream at the achieved HBM rate through SRAM into the compute units; the
    rest comes from DDR. The KV cache stays in HBM. Without a third tier, ``(w + kv) / B``.

    Args:
        dep: the deployment.
        weights_bytes: weight bytes this chip reads in the pass.
        kv_bytes: KV-cache bytes this chip reads in the pass.
        bandwidth: achieved fast-tier bandwidth (bytes/s).

    Returns:
        Seconds.
    """
    share = offchip_fraction(dep)
    fast = (weights_bytes * (1.0 - share) + kv_bytes) / bandwidth
    if share <= 0.0:
        return fast
    hw = dep.hardware
    slow_bw = (hw.offchip_bandwidth_tb_per_s or 0.0) * _TERA * dep.efficiency.bandwidth_efficiency
    return fast + weights_bytes * share / slow_bw


def pipeline_fill_s(dep: Deployment, tokens: float) -> float:
    """Fixed latency of one pass through the layers on a tensor-parallel family.

    ``layers x layer_latency + moe_layers x experts x expert_latency``: a fused per-layer kernel
    (RDU dataflow graph) or the fill of a compiled, clocked layer pipeline (FPGA); on an MoE
    model each routed expert the busiest chip streams (``E (1 - (1 - k/E)^tokens)`` with
    ``ep = 1``, `moe.busiest_chip_experts`) is one more weight stream to start. Zero for GPUs
    and other HBM chips (both parameters default to 0), whose fixed costs are the per-pass
    ``iteration_overhead_s``.

    Args:
        dep: the deployment.
        tokens: tokens in the pass (they decide how many experts are touched).

    Returns:
        Seconds.
    """
    if dep.hardware.spreads_layers:
        return 0.0
    eff, m = dep.efficiency, dep.model
    fill = m.layers * eff.layer_latency_s
    if m.experts is not None and eff.expert_latency_s > 0:  # busiest chip's expert streams
        touched = moe.busiest_chip_experts(m, tokens, dep.ep)
        fill += moe.moe_layer_count(m) * touched * eff.expert_latency_s
    return fill
