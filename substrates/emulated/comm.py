"""Communication terms of the performance model: all-reduce, hand-offs, pipeline hops, network."""

# Functions of their arguments only: no clock, no I/O, no randomness.

from __future__ import annotations

import math

from substrates.emulated import families
from substrates.emulated.deployment import Deployment
from substrates.emulated.profiles import Efficiency, HardwareProfile

__all__ = ["ACTIVATION_BYTES", "allreduce_s", "hop_s", "network_s", "pipeline_hops_s"]

#: Activations cross chips in 16-bit.
ACTIVATION_BYTES = 2.0

_GB = 1e9


def allreduce_s(
    hardware: HardwareProfile,
    group: int,
    message_bytes: float,
    efficiency: Efficiency | None = None,
) -> float:
    """One all-reduce (0 for n = 1): NCCL's ring, or the stack's own kernel when faster.

    NCCL: ``alpha(n) + 2 (n - 1) / n * bytes / bus_bandwidth`` with ``alpha(n) = alpha_2 +
    alpha_step * log2(n / 2)``, fitted to vidur's NCCL measurements. A stack with its own
    kernel (``custom_allreduce_latency_s > 0``, e.g. TensorRT-LLM) takes the fastest of NCCL,
    one-shot ``c + (n - 1) * bytes / link_bw`` (every rank reads every other rank's buffer over
    NVLink in one step) and two-shot ``2 c + 2 (n - 1) / n * bytes / link_bw`` (reduce-scatter
    then all-gather), ``link_bw`` being the scale-up link as achieved.

    Args:
        hardware: the chips.
        group: chips taking part (the tensor-parallel degree).
        message_bytes: bytes each chip contributes.
        efficiency: the stack's efficiency (`Deployment.efficiency`); default the hardware's.

    Returns:
        Seconds.
    """
    if group <= 1:
        return 0.0
    eff = efficiency or hardware.efficiency
    alpha = eff.allreduce_latency_s + eff.allreduce_latency_per_doubling_s * math.log2(group / 2)
    ring = 2.0 * (group - 1) / group
    nccl = alpha + ring * message_bytes / (eff.allreduce_bus_bandwidth_gb_per_s * _GB)
    c = eff.custom_allreduce_latency_s
    if c <= 0:
        return nccl
    link = hardware.scale_up_bandwidth_gb_per_s * _GB
    one_shot = c + (group - 1) * message_bytes / link
    two_shot = 2.0 * c + ring * message_bytes / link
    return min(nccl, one_shot, two_shot)


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
    return dep.network_rtt_s + dep.efficiency.request_overhead_s
