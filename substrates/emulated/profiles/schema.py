"""The profile schema: validated pydantic models of hardware, models, efficiencies and prices."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Efficiency",
    "HardwareKind",
    "HardwareProfile",
    "ModelProfile",
    "Precision",
    "TokenPrice",
]

#: Architecture families of the performance model (docs/performance-model.md): ``gpu`` and
#: ``hbm`` (TPU, Gaudi, Trainium, Maia) share the tensor/pipeline-parallel model; ``wafer`` and
#: ``lpu`` spread layers over SRAM (wafer cores, or many SRAM-only chips); ``rdu`` adds a DDR
#: tier behind HBM (SambaNova); ``fpga`` adds a deterministic per-layer pipeline latency.
HardwareKind = Literal["gpu", "hbm", "wafer", "lpu", "rdu", "fpga"]

#: Number formats the performance model knows; fp16 and int8/int4 map onto these (same bytes).
Precision = Literal["bf16", "fp8", "fp4"]
#: What a model mostly writes; a speculative draft's acceptance rate depends on it.
ContentKind = Literal["chat", "code", "reasoning"]

_Positive = Annotated[float, Field(gt=0)]
_Fraction = Annotated[float, Field(gt=0, le=1)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_fit_paths(owner: BaseModel, fit: tuple[str, ...]) -> None:
    """Raise unless every ``fit`` entry that names a path of ``owner`` names one of its numbers.

    Three forms (`substrates.emulated.fit`): ``efficiency.flop_efficiency``, a parameter of this
    profile, fitted; ``KIND:NAME.PATH``, any profile's parameter, fitted; and
    ``PATH = KIND:NAME.PATH``, this profile's ``PATH`` takes that fitted parameter's value. Paths
    into other profiles are checked by the fitter, which sees the whole catalog.
    """
    for entry in fit:
        local = entry.split("=", 1)[0].strip()
        if ":" in local or (type(owner), entry) in _FIT_PATHS_SEEN:
            continue
        node: object = owner
        through_dict = False
        for part in local.split("."):
            if isinstance(node, BaseModel):
                known = sorted(type(node).model_fields)
            else:
                known = sorted(node) if isinstance(node, dict) else []
            if part not in known:
                listing = ", ".join(map(str, known)) or "none (not a table)"
                raise ValueError(f"fit entry {entry!r}: no field {part!r} here; fields: {listing}")
            through_dict |= isinstance(node, dict)
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        if not isinstance(node, int | float) or isinstance(node, bool):
            raise ValueError(f"fit entry {entry!r} is not a number; name a numeric field")
        if "=" in entry and ":" not in entry.split("=", 1)[1]:
            raise ValueError(f"fit entry {entry!r}: after '=' name KIND:NAME.PATH")
        if not through_dict:
            _FIT_PATHS_SEEN.add((type(owner), entry))


#: (profile class, entry) pairs already resolved: profiles are revalidated inside every
#: deployment, and a path through fields only (no table keys) depends on the class alone.
_FIT_PATHS_SEEN: set[tuple[type[BaseModel], str]] = set()


def _missing_sources(owner: BaseModel, sources: Mapping[str, str], table: str = "sources") -> None:
    """Raise if a number given in the file has no entry in ``sources``."""
    missing = [
        name
        for name in sorted(owner.model_fields_set)
        if isinstance(getattr(owner, name), int | float)
        and not isinstance(getattr(owner, name), bool)
        and name not in sources
    ]
    if missing:
        raise ValueError(f"no entry in [{table}] for: {', '.join(missing)}")


class TokenPrice(_Frozen):
    """A published per-token price of one model on one substrate."""

    input_usd_per_mtok: float = Field(ge=0, description="USD per million prompt tokens.")
    output_usd_per_mtok: float = Field(ge=0, description="USD per million generated tokens.")
    source: str = Field(min_length=1, description="Where the price was published, and when.")


class Efficiency(_Frozen):
    """Fitted or assumed parameters of the performance model for one kind of hardware.

    Physics gives the floors (bytes over bandwidth, flops over peak); these parameters say how
    far above the floor real software runs. Each one names, in ``fitted_to``, the published
    points (rows of ``substrates/emulated/data/published_tuning.csv``) or measurements it came from.
    """

    memory_usable_fraction: _Fraction = Field(
        description="Share of each chip's memory that may hold weights and KV cache."
    )
    bandwidth_efficiency: _Fraction = Field(
        description="Achieved fraction of memory bandwidth while streaming weights and KV cache."
    )
    flop_efficiency: _Fraction = Field(
        description="Achieved fraction of peak matrix throughput (model FLOPs utilisation)."
    )
    iteration_overhead_s: float = Field(
        ge=0, description="Fixed cost of one forward pass: launches, scheduling, sampling."
    )
    request_overhead_s: float = Field(
        ge=0, description="Server-side cost of one request before its prefill: HTTP, tokenizer."
    )
    allreduce_latency_s: float = Field(
        default=0.0, ge=0, description="All-reduce latency floor between 2 chips (GPU only)."
    )
    allreduce_latency_per_doubling_s: float = Field(
        default=0.0,
        ge=0,
        description="Extra all-reduce latency each time the group doubles (GPU only).",
    )
    allreduce_bus_bandwidth_gb_per_s: float = Field(
        default=0.0, ge=0, description="All-reduce bus bandwidth, ring convention (GPU only)."
    )
    layer_latency_s: float = Field(
        default=0.0,
        ge=0,
        description="Fixed part of one layer's latency: wafer and LPU layer pipelines; a fused "
        "layer kernel (RDU) or a compiled layer pipeline's fill (FPGA).",
    )
    mesh_hop_s: float = Field(
        default=0.0,
        ge=0,
        description="Layer latency per core (wafer) or chip (LPU) of mesh distance across the "
        "layer's region.",
    )
    expert_latency_s: float = Field(
        default=0.0,
        ge=0,
        description="Fixed latency per routed expert a pass touches, per MoE layer (RDU: each "
        "expert is a separate weight stream from HBM).",
    )
    reduction_s_per_width: float = Field(
        default=0.0,
        ge=0,
        description="Wafer: latency per unit of model width d of one layer's on-wafer "
        "reductions and broadcasts (they cross a region whose side grows with d).",
    )
    moe_layer_latency_s: float = Field(
        default=0.0,
        ge=0,
        description="Wafer: the extra dependent stages of a mixture-of-experts layer (router, "
        "top-k, dispatch to the experts' cores, combine), per MoE layer.",
    )
    custom_allreduce_latency_s: float = Field(
        default=0.0,
        ge=0,
        description="GPU: latency floor of the stack's own one-shot/two-shot all-reduce kernel "
        "over NVLink (0 = NCCL only).",
    )
    comm_overlap_fraction: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="GPU: share of the tensor-parallel communication hidden under compute.",
    )
    fitted_to: dict[str, str] = Field(
        description="For each parameter: the CSV rows or measurements it was fitted to."
    )

    @model_validator(mode="after")
    def _every_parameter_is_justified(self) -> Efficiency:
        _missing_sources(self, self.fitted_to, table="efficiency.fitted_to")
        return self


class HardwareProfile(_Frozen):
    """One accelerator: a GPU or HBM chip, a wafer, an SRAM-only LPU, a three-tier RDU, an FPGA.

    A wafer-scale engine is one chip per CS-3 system. For a wafer, "memory" is the on-wafer
    SRAM that holds weights and KV cache, and the scale-up link is the system I/O between
    wafers; for an LPU it is the chip's SRAM; for an RDU, HBM (DDR is ``offchip_memory_gb``).
    """

    profile: Literal["hardware"] = Field(description="Marks the file as a hardware profile.")
    name: str = Field(min_length=1, description="Lookup name, e.g. 'h100'.")
    aliases: tuple[str, ...] = Field(default=(), description="Other names accepted by lookups.")
    display_name: str = Field(description="Human-readable name.")
    kind: HardwareKind = Field(
        description="Family: gpu/hbm (TP/PP), wafer/lpu (SRAM, layers), rdu (three-tier), fpga."
    )
    fit: tuple[str, ...] = Field(
        default=(),
        description="Parameters `agentrt calibrate` fits to the published points: paths into "
        "this file ('efficiency.flop_efficiency'), into any profile "
        "('hardware:h100.efficiency.flop_efficiency'), or a shared value "
        "('efficiency.flop_efficiency = hardware:h100.efficiency.flop_efficiency').",
    )
    chips_per_node: int = Field(ge=1, description="Chips sharing the fast scale-up domain.")
    cores: int | None = Field(
        default=None, ge=1, description="Compute cores per chip (wafer mesh)."
    )
    memory_gb: _Positive = Field(description="Memory per chip for weights and KV cache (GB).")
    memory_bandwidth_tb_per_s: _Positive = Field(description="Bandwidth of that memory (TB/s).")
    sram_mb: float | None = Field(
        default=None, gt=0, description="On-chip SRAM or L2 cache per chip (MB)."
    )
    offchip_memory_gb: float | None = Field(
        default=None, gt=0, description="Third memory tier behind HBM per chip, e.g. DDR (GB)."
    )
    offchip_bandwidth_tb_per_s: float | None = Field(
        default=None, gt=0, description="Bandwidth of that tier (TB/s)."
    )
    peak_bf16_tflops: _Positive = Field(description="Dense BF16 matrix peak per chip (TFLOP/s).")
    peak_fp8_tflops: float | None = Field(
        default=None, gt=0, description="Dense FP8 peak (TFLOP/s)."
    )
    peak_fp4_tflops: float | None = Field(
        default=None, gt=0, description="Dense FP4 peak (TFLOP/s)."
    )
    scale_up_bandwidth_gb_per_s: _Positive = Field(
        description="Per-chip, per-direction point-to-point bandwidth inside a node, as "
        "achieved (NVLink through NCCL; a wafer's system I/O)."
    )
    scale_up_latency_s: float = Field(ge=0, description="Latency of one hop inside a node.")
    scale_out_bandwidth_gb_per_s: _Positive = Field(
        description="Per-chip, per-direction point-to-point bandwidth between nodes, as achieved "
        "(InfiniBand, Ethernet)."
    )
    scale_out_latency_s: float = Field(ge=0, description="Latency of one hop between nodes.")
    power_w: _Positive = Field(description="Power drawn per chip while busy (W).")
    node_power_w: float | None = Field(default=None, gt=0, description="Power of a whole node (W).")
    price_usd_per_chip_hour: float | None = Field(
        default=None, gt=0, description="Rental price per chip-hour, where one is published."
    )
    prices: dict[str, TokenPrice] = Field(
        default_factory=dict, description="Published per-token prices by model name."
    )
    efficiency: Efficiency = Field(description="Fitted and assumed model parameters.")
    default_stack: str | None = Field(
        default=None,
        description="Serving stack used when none is named (a file in profiles/stacks/); "
        "None = the hardware's own efficiency table, no stack overrides.",
    )
    sources: dict[str, str] = Field(description="Where each number comes from, by field name.")

    @model_validator(mode="after")
    def _check(self) -> HardwareProfile:
        _missing_sources(self, self.sources)
        _check_fit_paths(self, self.fit)
        if self.kind == "wafer":
            if self.cores is None:
                raise ValueError("a wafer profile needs 'cores' (the mesh size)")
        elif self.kind == "lpu":
            if self.efficiency.mesh_hop_s <= 0 or self.efficiency.layer_latency_s <= 0:
                raise ValueError(
                    "an lpu profile needs efficiency.layer_latency_s and mesh_hop_s > 0"
                )
        elif self.kind == "rdu" and (
            self.offchip_memory_gb is None or self.offchip_bandwidth_tb_per_s is None
        ):
            raise ValueError(
                "an rdu profile needs offchip_memory_gb and offchip_bandwidth_tb_per_s"
            )
        if not self.spreads_layers and self.efficiency.allreduce_bus_bandwidth_gb_per_s <= 0:
            raise ValueError(
                f"a {self.kind} profile needs efficiency.allreduce_bus_bandwidth_gb_per_s > 0"
            )
        return self

    @property
    def spreads_layers(self) -> bool:
        """Whether whole layers are spread over SRAM (wafer, LPU) rather than split by TP/PP."""
        return self.kind in ("wafer", "lpu")

    def peak_tflops(self, precision: Precision) -> float:
        """Dense peak for matrix math in ``precision``.

        A precision the chip has no tensor-core path for (fp4 on Hopper) is computed at the
        next wider precision it does have: the weights are smaller, the math is not faster.

        Args:
            precision: the number format of the weights.

        Returns:
            Peak TFLOP/s per chip.
        """
        order: tuple[tuple[Precision, float | None], ...] = (
            ("fp4", self.peak_fp4_tflops),
            ("fp8", self.peak_fp8_tflops),
            ("bf16", self.peak_bf16_tflops),
        )
        start = [p for p, _ in order].index(precision)
        for _, rate in order[start:]:
            if rate is not None:
                return rate
        return self.peak_bf16_tflops  # pragma: no cover - bf16 is required


class ModelProfile(_Frozen):
    """One transformer model's shape, as published in its ``config.json`` and model card."""

    profile: Literal["model"] = Field(description="Marks the file as a model profile.")
    name: str = Field(min_length=1, description="Lookup name, e.g. 'llama-3.1-70b'.")
    aliases: tuple[str, ...] = Field(default=(), description="Other names accepted by lookups.")
    display_name: str = Field(description="Human-readable name.")
    total_params_b: _Positive = Field(description="All parameters (billions): sets capacity.")
    active_params_b: _Positive = Field(
        description="Parameters used per token (billions): sets flops and, for MoE, bytes."
    )
    layers: int = Field(ge=1, description="Transformer layers.")
    hidden_size: int = Field(ge=1, description="Model width d_model.")
    intermediate_size: int = Field(ge=1, description="FFN width (per expert for MoE).")
    attention_heads: int = Field(ge=1, description="Query heads.")
    kv_heads: int = Field(ge=1, description="Key/value heads (grouped-query attention).")
    head_dim: int = Field(ge=1, description="Width of one attention head.")
    vocab_size: int = Field(ge=1, description="Tokenizer vocabulary.")
    experts: int | None = Field(default=None, ge=2, description="Routed experts per MoE layer.")
    experts_active: int | None = Field(default=None, ge=1, description="Routed experts per token.")
    content: ContentKind = Field(
        default="chat", description="What it mostly writes: 'reasoning' if it thinks aloud."
    )
    moe_layers: int | None = Field(
        default=None,
        ge=1,
        description="Layers whose FFN is routed experts (default: all layers of an MoE model); "
        "the others keep a dense FFN.",
    )
    mla_kv_dim: int | None = Field(
        default=None,
        ge=1,
        description="Values cached per token per layer with latent attention (MLA).",
    )
    sliding_window_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Window of the layers with local (sliding or chunked) attention.",
    )
    sliding_window_layers: int = Field(
        default=0, ge=0, description="How many layers use that window."
    )
    native_precision: Precision = Field(description="Precision the weights were released in.")
    context_length_tokens: int = Field(ge=1, description="Longest supported context.")
    sources: dict[str, str] = Field(description="Where each number comes from, by field name.")

    @model_validator(mode="after")
    def _check(self) -> ModelProfile:
        _missing_sources(self, self.sources)
        if self.active_params_b > self.total_params_b:
            raise ValueError("active_params_b cannot exceed total_params_b")
        if (self.experts is None) != (self.experts_active is None):
            raise ValueError("set both 'experts' and 'experts_active', or neither")
        if self.experts is not None and self.experts_active is not None:
            if self.experts_active >= self.experts:
                raise ValueError("experts_active must be fewer than experts")
        elif not math.isclose(self.active_params_b, self.total_params_b):
            raise ValueError("a dense model (no 'experts') has active_params_b == total_params_b")
        if self.moe_layers is not None and (self.experts is None or self.moe_layers > self.layers):
            raise ValueError("moe_layers needs 'experts' and cannot exceed layers")
        if self.sliding_window_layers > self.layers:
            raise ValueError("sliding_window_layers cannot exceed layers")
        if self.sliding_window_layers and self.sliding_window_tokens is None:
            raise ValueError("sliding_window_layers needs sliding_window_tokens")
        if self.attention_heads % self.kv_heads:
            raise ValueError("attention_heads must be a multiple of kv_heads")
        return self

    @property
    def is_moe(self) -> bool:
        """Whether the model is a mixture of experts."""
        return self.experts is not None

    @property
    def kv_values_per_token_per_layer(self) -> int:
        """Numbers cached per token per layer: keys and values, or the MLA latent."""
        if self.mla_kv_dim is not None:
            return self.mla_kv_dim
        return 2 * self.kv_heads * self.head_dim

    @property
    def expert_params_b(self) -> float:
        """Parameters in routed experts (billions); zero for a dense model.

        Derived from total and active counts: ``active = shared + expert · k / E``.
        """
        if self.experts is None or self.experts_active is None:
            return 0.0
        share = self.experts_active / self.experts
        return (self.total_params_b - self.active_params_b) / (1.0 - share)

    @property
    def shared_params_b(self) -> float:
        """Parameters every token uses (billions): attention, embeddings, dense and shared FFNs."""
        return self.total_params_b - self.expert_params_b
