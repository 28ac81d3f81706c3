"""How long a replica takes to start serving: weights from storage into memory, then the engine.

A cold start is three phases, one after the other:

1. **process start**: the container or appliance job starts, the serving process imports its
   libraries and opens its API (nothing the model's size changes);
2. **weight load**: the weights (`deployment.weight_bytes`) read from storage into HBM, or into
   the wafer's SRAM, at the deployment's load bandwidth (below);
3. **engine start**: the engine builds its runtime: profiling and KV-cache allocation, CUDA-graph
   capture (vLLM, with its ``torch.compile`` cache kept between starts), TensorRT-LLM's executor;
   on a wafer, loading the (cached) compiled program onto the cores.

The load bandwidth of a deployment is ``min(chips * per_chip, nodes * per_node)``: a loader
process per chip reads its shard, and the node's storage caps them together. A wafer reads its
weights from the weight servers over its system I/O (12 x 100 GbE = 150 GB/s, the profile's
``scale_out_bandwidth_gb_per_s``), every wafer in parallel.

Every number below is sourced, or marked ESTIMATE with its reasoning. A warm start (a standby
replica, weights loaded and engine built, joining the pool) is `WARM_START_S`.

Example:
    >>> from substrates.emulated.sizing import size_deployment
    >>> from substrates.emulated.profiles import load_hardware, load_model
    >>> dep = size_deployment(load_hardware("h100"), load_model("llama-3.1-8b"))
    >>> start = cold_start_s(dep)
    >>> round(start.load_s), start.total_s > WARM_START_S
    (15, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from substrates.emulated.deployment import Deployment, weight_bytes
from substrates.emulated.profiles import HardwareKind

__all__ = [
    "COLD_START",
    "ENGINE_START_BY_STACK",
    "WARM_START_S",
    "ColdStart",
    "ColdStartParams",
    "cold_start_s",
]

#: Seconds for a standby replica (weights loaded, engine built) to take traffic. ESTIMATE: it
#: only has to pass a readiness check; Kubernetes probes every ``periodSeconds`` (default 10 s,
#: https://kubernetes.io/docs/tasks/configure-pod-container/configure-liveness-readiness-startup-probes/),
#: so a replica waits half a period on average.
WARM_START_S = 5.0


@dataclass(frozen=True, slots=True)
class ColdStartParams:
    """The cold-start physics of one hardware family (see the module docs).

    Attributes:
        per_chip_gb_per_s: storage read one chip's loader achieves (GB/s); None = the chip's
            own link (the hardware's ``scale_out_bandwidth_gb_per_s``: a wafer's system I/O).
        per_node_gb_per_s: storage read a whole node achieves (GB/s); None = no node cap.
        process_start_s: container / process / job start before loading (s).
        engine_start_s: engine build after loading (s), unless the stack has its own
            (`ENGINE_START_BY_STACK`).
        sources: where each number comes from.
    """

    per_chip_gb_per_s: float | None
    per_node_gb_per_s: float | None
    process_start_s: float
    engine_start_s: float
    sources: tuple[str, ...]


_GPU = ColdStartParams(
    per_chip_gb_per_s=1.1,
    per_node_gb_per_s=4.3,
    process_start_s=24.0,
    engine_start_s=34.0,
    sources=(
        "per_chip 1.1 GB/s: Qwen3-30B-A3B on 1 x H200 with the default safetensors loader, "
        "57.4 s (InstantTensor README benchmark, https://github.com/mgoin/instanttensor); fast "
        "loaders reach 35-45 GB/s there, fastsafetensors up to 26.4 GB/s with GPUDirect Storage",
        "per_node 4.3 GB/s: DeepSeek-R1 on 8 x H200 with the default safetensors loader, 160 s "
        "(same benchmark): the node's storage caps the eight loaders together",
        "process_start 24 s: vllm-project/vllm#20264, a Llama 3.2 pod answered after 59 s of "
        "which init engine took 34 s and weights 0.9 s; the ~24 s left are process start, imports "
        "and the API server",
        "engine_start 34 s: vllm-project/vllm#20264 'init engine (profile, create kv cache, warmup "
        "model) took 34.11 seconds' with the torch.compile cache reused (CUDA-graph capture 17 s); "
        "without the cache 90.8 s (run-ai/runai-model-streamer#67: compile 45.8 s, graphs 37 s)",
    ),
)

#: Cold-start physics by hardware family. GPUs are sourced (vLLM and loader benchmarks); the
#: other families are ESTIMATEs from the same software path where theirs is not published.
COLD_START: dict[HardwareKind, ColdStartParams] = {
    "gpu": _GPU,
    "hbm": ColdStartParams(
        per_chip_gb_per_s=1.1,
        per_node_gb_per_s=4.3,
        process_start_s=24.0,
        engine_start_s=34.0,
        sources=(
            "ESTIMATE: as GPUs (safetensors from local storage into HBM, a vLLM-like engine "
            "with its compiled graphs cached: XLA for TPUs, neuronx-cc for Trainium); no "
            "per-phase start times are published for these accelerators",
        ),
    ),
    "wafer": ColdStartParams(
        per_chip_gb_per_s=None,
        per_node_gb_per_s=None,
        process_start_s=24.0,
        engine_start_s=30.0,
        sources=(
            "load: each CS-3 streams its layers' weights into SRAM over its 1.2 Tb/s system I/O "
            "(12 x 100 GbE = 150 GB/s, wse3.toml scale_out_bandwidth_gb_per_s; Argonne SC24 "
            "tutorial), all wafers in parallel; ESTIMATE that the weight servers (MemoryX: DDR5 "
            "and flash tiers) feed it at line rate",
            "process_start 24 s: ESTIMATE, as the GPU serving process (an appliance job on the "
            "host nodes, which also run compilation: Argonne ALCF CS-3 user guide)",
            "engine_start 30 s: ESTIMATE: programming the wafer's 900,000 cores with a cached "
            "compiled program; Cerebras publishes no inference start time. The program is small "
            "next to the weights, so this is dominated by job orchestration, like a GPU engine "
            "build without graph capture",
        ),
    ),
    "lpu": ColdStartParams(
        per_chip_gb_per_s=None,
        per_node_gb_per_s=None,
        process_start_s=24.0,
        engine_start_s=30.0,
        sources=(
            "ESTIMATE: each LPU's SRAM share loaded over its own chip-to-chip links (the "
            "profile's scale_out_bandwidth), hundreds of chips in parallel; program load and "
            "process start as the wafer's (nothing published)",
        ),
    ),
    "rdu": ColdStartParams(
        per_chip_gb_per_s=1.1,
        per_node_gb_per_s=4.3,
        process_start_s=24.0,
        engine_start_s=34.0,
        sources=("ESTIMATE: as GPUs (weights from node storage into HBM/DDR; nothing published)",),
    ),
    "fpga": ColdStartParams(
        per_chip_gb_per_s=1.1,
        per_node_gb_per_s=4.3,
        process_start_s=24.0,
        engine_start_s=10.0,
        sources=(
            "ESTIMATE: weights as GPUs; engine start is loading a prebuilt bitstream (seconds), "
            "not compiling one (hours)",
        ),
    ),
}

#: Engine start by serving stack where it differs from the family's.
ENGINE_START_BY_STACK: dict[str, tuple[float, str]] = {
    "trtllm": (
        13.4,
        "TensorRT-LLM startup metrics example, total_py_executor_creation_seconds 13.373 "
        "(NVIDIA/TensorRT-LLM#18060 docs/source/llm-api/index.md; model not named: ESTIMATE-grade)",
    ),
}


@dataclass(frozen=True, slots=True)
class ColdStart:
    """A deployment's cold start, by phase (seconds), and what it was derived from.

    Attributes:
        weights_bytes: bytes of weights loaded.
        load_gb_per_s: the deployment's load bandwidth (GB/s).
        process_start_s, load_s, engine_start_s: the three phases.
        sources: where the numbers come from.
    """

    weights_bytes: float
    load_gb_per_s: float
    process_start_s: float
    load_s: float
    engine_start_s: float
    sources: tuple[str, ...]

    @property
    def total_s(self) -> float:
        """Seconds from asking for a replica to its serving: the three phases in a row."""
        return self.process_start_s + self.load_s + self.engine_start_s


def cold_start_s(dep: Deployment, *, load_gb_per_s: float | None = None) -> ColdStart:
    """The cold start of ``dep`` (see the module docs).

    Args:
        dep: the deployment.
        load_gb_per_s: overrides the derived load bandwidth (e.g. a fast loader's 35 GB/s).

    Returns:
        The phases and their total.
    """
    hw = dep.hardware
    params = COLD_START[hw.kind]
    chips = dep.chips
    per_chip = params.per_chip_gb_per_s or hw.scale_out_bandwidth_gb_per_s
    bandwidth = chips * per_chip
    if params.per_node_gb_per_s is not None:
        nodes = math.ceil(chips / hw.chips_per_node)
        bandwidth = min(bandwidth, nodes * params.per_node_gb_per_s)
    if load_gb_per_s is not None:
        bandwidth = load_gb_per_s
    engine_s, sources = params.engine_start_s, params.sources
    if dep.stack.name in ENGINE_START_BY_STACK:
        engine_s, note = ENGINE_START_BY_STACK[dep.stack.name]
        sources = (*sources, f"engine_start ({dep.stack.name}): {note}")
    weights = weight_bytes(dep.model, dep.precision)
    return ColdStart(
        weights_bytes=weights,
        load_gb_per_s=bandwidth,
        process_start_s=params.process_start_s,
        load_s=weights / (bandwidth * 1e9),
        engine_start_s=engine_s,
        sources=sources,
    )
