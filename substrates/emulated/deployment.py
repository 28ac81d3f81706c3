"""A model on a group of chips: parallel layout, precision, memory fit check and sizing."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentrt.errors import ConfigError, DoesNotFitError
from substrates.emulated.profiles import HardwareProfile, ModelProfile, Precision

__all__ = [
    "BYTES_PER_VALUE",
    "DEFAULT_CONTEXT_TOKENS",
    "Deployment",
    "MemoryNeed",
    "SpecDecode",
    "attended_positions",
    "check_fits",
    "kv_bytes",
    "kv_bytes_per_token",
    "kv_capacity_bytes",
    "kv_capacity_tokens",
    "kv_shards",
    "max_concurrent_requests",
    "memory_need",
    "parse_precision",
    "size_deployment",
    "weight_bytes",
]

#: Bytes per weight or cached value in each precision (fp4 ignores its small block scales).
BYTES_PER_VALUE: dict[Precision, float] = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5}

#: KV cache (tokens) a deployment must hold for one request when sized, unless told otherwise.
DEFAULT_CONTEXT_TOKENS = 8192

_PRECISION_NAMES: dict[str, Precision] = {
    **dict.fromkeys(("bf16", "fp16", "16-bit"), "bf16"),
    **dict.fromkeys(("fp8", "int8", "8-bit"), "fp8"),
    **dict.fromkeys(("fp4", "int4", "mxfp4", "nvfp4", "4-bit"), "fp4"),
}
_GB = 1e9


def parse_precision(text: str) -> Precision:
    """Read a precision as a user types it: ``bf16``/``fp16``, ``fp8``/``int8``, ``fp4``/``int4``.

    Args:
        text: the name, case-insensitive.

    Returns:
        ``"bf16"``, ``"fp8"`` or ``"fp4"``.

    Raises:
        ConfigError: not a known precision.
    """
    try:
        return _PRECISION_NAMES[text.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(_PRECISION_NAMES))
        raise ConfigError(f"unknown precision {text!r}; use one of: {known}") from None


class SpecDecode(BaseModel):
    """Speculative decoding: a cheap draft proposes ``k`` tokens, the target checks them at once.

    With per-token acceptance ``a`` the target advances ``(1 - a**(k+1)) / (1 - a)`` tokens per
    step on average; a step costs ``k`` draft steps plus one target pass over ``k + 1`` tokens.

    Example:
        >>> SpecDecode.parse("1:0.5").expected_tokens_per_step
        1.5
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    draft_tokens: int = Field(ge=1, le=32, description="Tokens proposed per step (k).")
    acceptance_rate: float = Field(ge=0, le=1, description="Chance each draft token is accepted.")
    draft_model: ModelProfile | None = Field(
        default=None,
        description="Draft model on the same chips; its decode step is the draft cost.",
    )
    draft_cost_fraction: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Without a draft model, one draft token costs this share of a target step "
        "(an assumption: an EAGLE-style head or a ~10x smaller model).",
    )

    @classmethod
    def parse(cls, text: str) -> SpecDecode:
        """Read ``--spec-decode DRAFT:ACCEPT`` (e.g. ``4:0.7``).

        Args:
            text: draft length and acceptance rate separated by a colon.

        Returns:
            The configuration.

        Raises:
            ConfigError: the text is not of that form.
        """
        try:
            k, a = text.split(":")
            return cls(draft_tokens=int(k), acceptance_rate=float(a))
        except ValueError as exc:
            raise ConfigError(
                f"--spec-decode expects DRAFT:ACCEPT like 4:0.7, got {text!r}"
            ) from exc

    @property
    def expected_tokens_per_step(self) -> float:
        """Tokens the target advances per verification step, on average."""
        a, k = self.acceptance_rate, self.draft_tokens
        return float(k + 1) if a >= 1.0 else (1.0 - float(a ** (k + 1))) / (1.0 - a)


class Deployment(BaseModel):
    """One model served on one group of chips: what the performance model predicts.

    GPUs: ``tp`` is the tensor-parallel degree inside a node and ``pp`` the pipeline stages.
    Wafer-scale: ``tp`` is 1 and ``pp`` is the number of wafers the layers are split across.

    Example:
        >>> from substrates.emulated.profiles import load_hardware, load_model
        >>> dep = size_deployment(load_hardware("h100"), load_model("llama-3.1-405b"))
        >>> dep.tp, dep.pp
        (8, 2)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    hardware: HardwareProfile = Field(description="The chips.")
    model: ModelProfile = Field(description="The model.")
    tp: int = Field(default=1, ge=1, description="Tensor-parallel degree.")
    pp: int = Field(
        default=1, ge=1, description="Pipeline stages (wafers, on a wafer-scale engine)."
    )
    precision: Precision = Field(description="Weight precision.")
    kv_precision: Precision | None = Field(
        default=None,
        description="KV-cache precision; default bf16, or fp8 when weights are 8-bit or less.",
    )
    max_batch: int = Field(default=256, ge=1, description="Most requests decoded together.")
    context_tokens: int | None = Field(
        default=None,
        ge=1,
        description="KV tokens the fit check reserves for one request (default 8192).",
    )
    network_rtt_s: float = Field(default=0.0, ge=0, description="Client-endpoint round trip (s).")
    spec_decode: SpecDecode | None = Field(
        default=None, description="Speculative decoding, if used."
    )

    @model_validator(mode="after")
    def _check(self) -> Deployment:
        hw, m = self.hardware, self.model
        if hw.spreads_layers and self.tp != 1:
            raise ConfigError(f"{hw.name} splits a model by layers across chips: use pp, not tp")
        if m.attention_heads % self.tp:
            raise ConfigError(
                f"tp={self.tp} does not divide the {m.attention_heads} heads of {m.name}"
            )
        if self.tp > hw.chips_per_node:
            raise ConfigError(
                f"tp={self.tp} exceeds one {hw.name} node ({hw.chips_per_node} chips)"
            )
        if self.pp > m.layers and hw.kind != "lpu":  # an LPU spreads a layer over chips
            raise ConfigError(f"pp={self.pp} exceeds the {m.layers} layers of {m.name}")
        return self

    @property
    def chips(self) -> int:
        """GPUs or wafers in the deployment."""
        return self.tp * self.pp

    @property
    def kv_dtype(self) -> Precision:
        """Precision of the KV cache."""
        if self.kv_precision is not None:
            return self.kv_precision
        return "bf16" if self.precision == "bf16" else "fp8"

    @property
    def reserved_context_tokens(self) -> int:
        """KV tokens the fit check reserves for one request."""
        if self.context_tokens is not None:
            return self.context_tokens
        return min(self.model.context_length_tokens, DEFAULT_CONTEXT_TOKENS)

    def describe(self) -> str:
        """Short text such as ``h100 x16 (--tp 8 --pp 2, bf16)``."""
        if self.hardware.spreads_layers:
            return f"{self.hardware.name} x{self.chips} ({self.precision})"
        layout = f"--tp {self.tp} --pp {self.pp}"
        return f"{self.hardware.name} x{self.chips} ({layout}, {self.precision})"


@dataclass(frozen=True, slots=True)
class MemoryNeed:
    """Weights plus one request's KV cache against usable memory (bytes over all chips).

    Attributes:
        weights_bytes: all weights in the deployment's precision.
        kv_bytes: KV cache of the reserved tokens, with the copies tensor parallelism makes.
        available_bytes: usable memory of all chips.
        kv_tokens: the reserved tokens.
    """

    weights_bytes: float
    kv_bytes: float
    available_bytes: float
    kv_tokens: int

    @property
    def needed_bytes(self) -> float:
        """Weights plus KV cache."""
        return self.weights_bytes + self.kv_bytes

    @property
    def fits(self) -> bool:
        """Whether the need fits."""
        return self.needed_bytes <= self.available_bytes


def weight_bytes(model: ModelProfile, precision: Precision) -> float:
    """Bytes of all weights (total parameters: capacity, not traffic)."""
    return model.total_params_b * 1e9 * BYTES_PER_VALUE[precision]


def attended_positions(model: ModelProfile, first: float, count: int, gain: float = 1.0) -> float:
    """Sum over j < count of the cached positions (over layers) at context first + j * gain."""
    if count <= 0:
        return 0.0
    local = model.sliding_window_layers
    total = (model.layers - local) * (count * first + gain * count * (count - 1) / 2)
    if local:
        window = float(model.sliding_window_tokens or 0)
        below = min(count, max(0, math.ceil((window - first) / gain)))
        total += local * (below * first + gain * below * (below - 1) / 2 + (count - below) * window)
    return total


def kv_bytes_per_token(model: ModelProfile, precision: Precision) -> float:
    """KV bytes one token adds while every layer keeps it (``2 * L * kv_heads * head_dim * b``)."""
    return model.layers * model.kv_values_per_token_per_layer * BYTES_PER_VALUE[precision]


def kv_bytes(model: ModelProfile, context_tokens: float, precision: Precision) -> float:
    """KV bytes of one request holding ``context_tokens`` (sliding-window layers capped)."""
    per_position = model.kv_values_per_token_per_layer * BYTES_PER_VALUE[precision]
    return attended_positions(model, context_tokens, 1) * per_position


def kv_shards(dep: Deployment) -> int:
    """Ways tensor parallelism splits the KV cache (an MLA latent is replicated)."""
    return 1 if dep.model.mla_kv_dim is not None else min(dep.tp, dep.model.kv_heads)


def _available_bytes(dep: Deployment, *, offchip: bool = False) -> float:
    """Usable memory of all chips: the fast tier, plus the off-chip tier (RDU DDR) if asked."""
    hw = dep.hardware
    per_chip = hw.memory_gb + ((hw.offchip_memory_gb or 0.0) if offchip else 0.0)
    return dep.chips * per_chip * _GB * hw.efficiency.memory_usable_fraction


def memory_need(dep: Deployment, kv_tokens: int | None = None) -> MemoryNeed:
    """Weights plus the KV cache of one request of ``kv_tokens`` (default: reserved context)."""
    tokens = dep.reserved_context_tokens if kv_tokens is None else kv_tokens
    return MemoryNeed(
        weights_bytes=weight_bytes(dep.model, dep.precision),
        kv_bytes=kv_bytes(dep.model, tokens, dep.kv_dtype) * dep.tp / kv_shards(dep),
        available_bytes=_available_bytes(dep),
        kv_tokens=tokens,
    )


def kv_capacity_bytes(dep: Deployment) -> float:
    """KV cache (as `kv_bytes` counts it) that fits beside the weights; admission checks this."""
    free = _available_bytes(dep) - weight_bytes(dep.model, dep.precision)
    return max(0.0, free * kv_shards(dep) / dep.tp)


def kv_capacity_tokens(dep: Deployment) -> int:
    """Tokens of KV cache that fit beside the weights, at the full per-token cost.

    Sliding-window layers stop growing past their window, so this undercounts long contexts
    of such models a little (never overcounts).
    """
    per_token = kv_bytes_per_token(dep.model, dep.kv_dtype)
    return int(kv_capacity_bytes(dep) // per_token)


def max_concurrent_requests(dep: Deployment, context_tokens: float) -> int:
    """Requests of ``context_tokens`` whose KV cache fits at once, capped by ``max_batch``."""
    per_request = kv_bytes(dep.model, max(context_tokens, 1.0), dep.kv_dtype)
    return min(dep.max_batch, int(kv_capacity_bytes(dep) // per_request))


def _gb(value: float) -> str:
    return f"{value / _GB:,.0f} GB" if value >= 10 * _GB else f"{value / _GB:,.1f} GB"


def check_fits(dep: Deployment, kv_tokens: int | None = None) -> None:
    """Refuse a deployment whose weights plus one request's KV cache exceed its memory.

    An RDU's weights may overflow HBM into its DDR tier (slow: `families.memory_read_s`);
    sizing never chooses that, but an explicit layout may.

    Args:
        dep: the deployment.
        kv_tokens: KV tokens to reserve; default ``dep.reserved_context_tokens``.

    Raises:
        DoesNotFitError: naming the memory needed (weights + KV), the memory available and a
            deployment that fits (or a smaller model).
    """
    need = memory_need(dep, kv_tokens)
    if need.fits or need.needed_bytes <= _available_bytes(dep, offchip=True):
        return  # in HBM/SRAM, or (RDU) with the rest of the weights in the DDR tier
    hw, m = dep.hardware, dep.model
    advice = "a smaller model or a lower precision"
    try:
        bigger = size_deployment(hw, m, precision=dep.precision, kv_tokens=need.kv_tokens)
    except DoesNotFitError:
        pass
    else:
        layout = f"--pp {bigger.pp}" if hw.spreads_layers else f"--tp {bigger.tp} --pp {bigger.pp}"
        unit = {"wafer": "wafers", "gpu": "GPUs"}.get(hw.kind, "chips")
        advice = f"{bigger.chips} {unit} ({layout}) or a smaller model"
    raw = dep.chips * hw.memory_gb * _GB
    raise DoesNotFitError(
        f"{m.name} in {dep.precision} needs {_gb(need.needed_bytes)} (weights "
        f"{_gb(need.weights_bytes)} + KV cache {_gb(need.kv_bytes)} for {need.kv_tokens:,} "
        f"tokens) but {hw.name} x{dep.chips} has {_gb(need.available_bytes)} usable "
        f"({_gb(raw)} x {hw.efficiency.memory_usable_fraction:g}); use {advice}"
    )


def _layouts(
    hardware: HardwareProfile, model: ModelProfile, chips: int | None
) -> list[tuple[int, int]]:
    """Candidate (tp, pp), smallest first: TP inside a node first, then whole-node stages."""
    if hardware.spreads_layers:  # an LPU is sized by bytes at once (size_deployment)
        counts = range(1, model.layers + 1) if chips is None else [chips]
        return [(1, n) for n in counts]
    tps = [1]
    while tps[-1] * 2 <= hardware.chips_per_node:
        tps.append(tps[-1] * 2)
    tps = [tp for tp in tps if model.attention_heads % tp == 0]
    if chips is not None:
        tp = max(t for t in tps if chips % t == 0)
        return [(tp, chips // tp)]
    return [(tp, 1) for tp in tps] + [(tps[-1], pp) for pp in range(2, model.layers + 1)]


def size_deployment(
    hardware: HardwareProfile,
    model: ModelProfile,
    *,
    precision: Precision | None = None,
    chips: int | None = None,
    kv_tokens: int | None = None,
    max_batch: int = 256,
    network_rtt_s: float = 0.0,
    spec_decode: SpecDecode | None = None,
) -> Deployment:
    """The smallest deployment of ``model`` on ``hardware`` that fits weights plus KV cache.

    Wafers: as many as needed, layers split across them. GPUs: tensor parallelism inside one
    node (a power of two dividing the heads), then pipeline stages of whole nodes.

    Args:
        hardware: the chips.
        model: the model.
        precision: weight precision; default the model's native one.
        chips: use exactly this many chips (still checked).
        kv_tokens: KV tokens one request must be able to hold; default min(context, 8192).
        max_batch: most requests decoded together.
        network_rtt_s: client-endpoint round trip.
        spec_decode: speculative decoding, if used.

    Returns:
        The deployment.

    Raises:
        DoesNotFitError: no layout fits, or ``chips`` is too few.
        ConfigError: ``chips`` is below 1.
    """
    if chips is not None and chips < 1:
        raise ConfigError(f"chips must be at least 1, got {chips}")

    def layout(tp: int, pp: int) -> Deployment:
        return Deployment(
            hardware=hardware,
            model=model,
            tp=tp,
            pp=pp,
            precision=precision or model.native_precision,
            max_batch=max_batch,
            context_tokens=kv_tokens,
            network_rtt_s=network_rtt_s,
            spec_decode=spec_decode,
        )

    layouts = _layouts(hardware, model, chips)
    if hardware.kind == "lpu" and chips is None:  # hundreds of chips: divide bytes at once
        need = memory_need(layout(1, 1))
        least = max(1, math.ceil(need.needed_bytes / need.available_bytes))
        layouts = [(1, least), (1, least + 1)]
    last: Deployment | None = None
    for tp, pp in layouts:
        last = layout(tp, pp)
        if memory_need(last).fits:
            return last
    assert last is not None
    if chips is not None:
        check_fits(last)
        return last  # fits only with weights in an off-chip tier (RDU DDR): slow, but given
    need = memory_need(last)
    raise DoesNotFitError(
        f"{model.name} in {last.precision} needs {_gb(need.needed_bytes)}, more than "
        f"{last.chips} {hardware.name} chips hold; use a smaller model or a lower precision"
    )
