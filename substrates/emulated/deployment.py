"""A model on a group of chips: parallel layout, precision, the bytes of weights and KV cache."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentrt.errors import ConfigError
from substrates.emulated.profiles import (
    DraftKind,
    Efficiency,
    HardwareProfile,
    ModelProfile,
    Precision,
    StackProfile,
    load_stack,
)

__all__ = [
    "BYTES_PER_VALUE",
    "DEFAULT_CONTEXT_TOKENS",
    "Deployment",
    "SpecDecode",
    "attended_positions",
    "base_stack",
    "kv_bytes",
    "kv_bytes_per_token",
    "kv_shards",
    "parse_precision",
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
    cycle on average; a cycle costs ``k`` draft passes plus one target pass over ``k + 1``
    tokens, each priced by the same roofline (`substrates.emulated.speculative`).

    Example:
        >>> SpecDecode.parse("1:0.5").expected_tokens_per_step
        1.5
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    draft_tokens: int = Field(ge=1, le=32, description="Tokens proposed per step (k).")
    acceptance_rate: float = Field(ge=0, le=1, description="Chance each draft token is accepted.")
    draft: DraftKind = Field(
        default="eagle",
        description="What drafts: a separate small 'model', 'eagle' heads (one decoder layer "
        "plus the LM head) or 'mtp' layers (one full target layer plus the LM head).",
    )
    draft_model: ModelProfile | None = Field(
        default=None,
        description="The draft model on the same chips when draft = 'model'.",
    )

    @model_validator(mode="before")
    @classmethod
    def _model_draft(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("draft_model") is not None and "draft" not in data:
            data = {**data, "draft": "model"}  # a draft model given is a 'model' draft
        return data

    @model_validator(mode="after")
    def _check(self) -> SpecDecode:
        if (self.draft == "model") != (self.draft_model is not None):
            raise ConfigError("a 'model' draft needs draft_model, and only it takes one")
        return self

    @classmethod
    def parse(cls, text: str, draft_model: ModelProfile | None = None) -> SpecDecode:
        """Read ``--spec-decode K:A[:DRAFT]`` (e.g. ``4:0.7`` or ``3:0.8:mtp``).

        Args:
            text: draft length and acceptance rate, and optionally the draft kind (``eagle``,
                the default, ``mtp``, or ``model`` with ``draft_model``), separated by colons.
            draft_model: the draft's profile when the kind is ``model``.

        Returns:
            The configuration.

        Raises:
            ConfigError: the text is not of that form.
        """
        parts = text.split(":")
        try:
            k, a = int(parts[0]), float(parts[1])
            kind = parts[2].strip().lower() if len(parts) == 3 else None
            if len(parts) > 3 or kind not in (None, "eagle", "mtp", "model"):
                raise ValueError(text)
        except (ValueError, IndexError) as exc:
            raise ConfigError(
                f"--spec-decode expects DRAFT:ACCEPT[:eagle|mtp|model] like 4:0.7, got {text!r}"
            ) from exc
        draft: DraftKind = "model" if draft_model is not None else (kind or "eagle")  # type: ignore[assignment]
        if not (1 <= k <= 32 and 0.0 <= a <= 1.0):  # also refuses nan
            raise ConfigError(
                f"--spec-decode {text!r}: the draft length is 1 to 32 tokens and the acceptance "
                "rate 0 to 1, e.g. 4:0.7"
            )
        return cls(draft_tokens=k, acceptance_rate=a, draft=draft, draft_model=draft_model)

    @property
    def expected_tokens_per_step(self) -> float:
        """Tokens the target advances per verification step, on average."""
        a, k = self.acceptance_rate, self.draft_tokens
        return float(k + 1) if a >= 1.0 else (1.0 - float(a ** (k + 1))) / (1.0 - a)


def base_stack(hardware: HardwareProfile) -> StackProfile:
    """The stack of hardware that names none: its own efficiency table, no overrides."""
    return StackProfile(
        profile="stack",
        name="base",
        display_name=f"{hardware.name}'s own efficiency table",
        kind=hardware.kind,
        description="No serving stack named: the hardware profile's efficiency as it stands.",
        fitted_to={},
    )


_MERGED: dict[tuple[int, int], tuple[Efficiency, StackProfile, Efficiency]] = {}


def _merged(efficiency: Efficiency, stack: StackProfile) -> Efficiency:
    """``stack.apply(efficiency)``, computed once per pair (the model reads it every pass)."""
    key = (id(efficiency), id(stack))
    hit = _MERGED.get(key)
    if hit is None or hit[0] is not efficiency or hit[1] is not stack:
        if len(_MERGED) > 1024:
            _MERGED.clear()
        hit = _MERGED[key] = (efficiency, stack, stack.apply(efficiency))
    return hit[2]


class Deployment(BaseModel):
    """One model served on one group of chips: what the performance model predicts.

    GPUs: ``tp`` is the tensor-parallel degree inside a node and ``pp`` the pipeline stages.
    Wafer-scale: ``tp`` is 1 and ``pp`` is the number of wafers the layers are split across.

    Example:
        >>> from substrates.emulated.profiles import load_hardware, load_model
        >>> from substrates.emulated.sizing import size_deployment
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
        default=None,
        description="Speculative decoding, if used (builders default it from the stack).",
    )
    stack: StackProfile = Field(
        default=None,  # type: ignore[assignment]  # `_default_stack` fills it before validation
        description="The serving stack; default the hardware's `default_stack`.",
    )
    ep: int = Field(
        default=1,
        ge=1,
        description="Expert-parallel degree (divides tp): 1 splits every expert over the tp "
        "chips of a stage; ep = tp gives each chip whole experts.",
    )
    attention_dp: bool = Field(
        default=False,
        description="Data-parallel attention: each chip of a stage keeps attention weights "
        "whole and the KV cache of its own requests; no attention all-reduce (needs ep = tp).",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_stack(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("stack") is None:
            hw = data.get("hardware")
            if isinstance(hw, HardwareProfile):
                stack = load_stack(hw.default_stack) if hw.default_stack else base_stack(hw)
                data = {**data, "stack": stack}
        return data

    @model_validator(mode="after")
    def _check(self) -> Deployment:
        hw, m = self.hardware, self.model
        if not self.stack.applies_to(hw):
            raise ConfigError(
                f"stack {self.stack.name!r} runs on {self.stack.kind} hardware "
                f"({', '.join(self.stack.hardware) or 'any'}), not on {hw.name} ({hw.kind})"
            )
        if hw.kind == "wafer" and self.efficiency.layer_latency_s <= 0:
            raise ConfigError(
                f"{hw.name} needs a stack with efficiency.layer_latency_s > 0 "
                f"(stack {self.stack.name!r} has none)"
            )
        if hw.spreads_layers and self.tp != 1:
            raise ConfigError(f"{hw.name} splits a model by layers across chips: use pp, not tp")
        if m.attention_heads % self.tp and not self.attention_dp:
            raise ConfigError(
                f"tp={self.tp} does not divide the {m.attention_heads} heads of {m.name}"
            )
        if self.tp > hw.chips_per_node and not self.attention_dp:  # DP attention: no all-reduce
            raise ConfigError(
                f"tp={self.tp} exceeds one {hw.name} node ({hw.chips_per_node} chips)"
            )
        if self.pp > m.layers and hw.kind != "lpu":  # an LPU spreads a layer over chips
            raise ConfigError(f"pp={self.pp} exceeds the {m.layers} layers of {m.name}")
        return self

    @model_validator(mode="after")
    def _check_moe(self) -> Deployment:
        hw, m = self.hardware, self.model
        if self.ep == 1 and not self.attention_dp:
            return self
        if m.experts is None:
            raise ConfigError(
                f"{m.name} is dense: ep and attention_dp apply to mixture-of-experts models; "
                "use tp and pp"
            )
        if hw.spreads_layers:
            raise ConfigError(
                f"{hw.name} keeps each layer's experts in its own region: use pp, not ep or "
                "attention_dp"
            )
        if self.tp % self.ep:
            raise ConfigError(
                f"ep={self.ep} must divide tp={self.tp}: experts spread over the chips of one "
                f"pipeline stage (e.g. --tp {self.tp} --ep {self.tp})"
            )
        if self.ep > m.experts:
            raise ConfigError(f"ep={self.ep} exceeds the {m.experts} experts of {m.name}")
        if m.experts % self.ep:
            raise ConfigError(f"ep={self.ep} does not divide the {m.experts} experts of {m.name}")
        if self.attention_dp and self.ep != self.tp:
            raise ConfigError(
                f"attention_dp needs ep = tp (got ep={self.ep}, tp={self.tp}): DP attention "
                "hands each chip's tokens to the experts by all-to-all"
            )
        return self

    @property
    def efficiency(self) -> Efficiency:
        """The hardware's efficiency with the stack's overrides: what the model reads."""
        stack = self.stack
        if not stack.efficiency:
            return self.hardware.efficiency
        return _merged(self.hardware.efficiency, stack)

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
        if self.ep > 1:
            layout += f" --ep {self.ep}" + (" (DP attention)" if self.attention_dp else "")
        return f"{self.hardware.name} x{self.chips} ({layout}, {self.precision})"


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
    """Ways the KV cache is split: DP attention by requests, TP by KV heads (MLA: replicated)."""
    if dep.attention_dp:
        return dep.tp
    return 1 if dep.model.mla_kv_dim is not None else min(dep.tp, dep.model.kv_heads)
