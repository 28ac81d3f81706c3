"""The stack schema: a serving stack's efficiency overrides and default speculative decoding."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from substrates.emulated.profiles.schema import (
    ContentKind,
    Efficiency,
    HardwareKind,
    HardwareProfile,
    Precision,
    _Fraction,
    _Frozen,
)

__all__ = ["ContentKind", "DraftKind", "Speculation", "StackProfile"]

#: What kind of draft proposes tokens for speculative decoding: a separate small ``model`` on
#: the same chips, ``eagle`` heads (one decoder layer on the target's features plus the LM head),
#: or ``mtp`` layers (a full decoder layer of the target plus the shared LM head).
DraftKind = Literal["model", "eagle", "mtp"]

#: The kind of text being generated, which sets the draft's acceptance rate.


class Speculation(_Frozen):
    """A stack's default speculative decoding: which draft, how far ahead, how often accepted.

    The draft proposes ``draft_tokens`` tokens; the target checks them in one pass over
    ``draft_tokens + 1`` tokens and keeps each with probability ``acceptance[content]``.
    """

    draft: DraftKind = Field(description="model (a separate small model), eagle or mtp.")
    draft_model: str | None = Field(
        default=None, description="Model profile of the draft when draft = 'model'."
    )
    draft_tokens: int = Field(ge=1, le=32, description="Tokens proposed per cycle (k).")
    acceptance: dict[ContentKind, _Fraction] = Field(
        description="Per-token acceptance rate by content kind; 'chat' is required (the default)."
    )
    models: dict[str, DraftKind] = Field(
        default_factory=dict,
        description="Model profiles the stack speculates on, each with its draft kind (empty = "
        "every model, with `draft`): a stack ships drafts only for the models that have one.",
    )

    moe: bool = Field(
        default=True,
        description="Whether the stack speculates on mixture-of-experts models too.",
    )
    enabled: bool = Field(
        default=True,
        description="Whether the stack speculates out of the box; False = it ships the drafts "
        "but a deployment turns them on (``--spec-decode on``), as TensorRT-LLM does.",
    )

    @model_validator(mode="after")
    def _check(self) -> Speculation:
        if "chat" not in self.acceptance:
            raise ValueError("speculation.acceptance needs a 'chat' entry (the default content)")
        if (self.draft == "model") != (self.draft_model is not None):
            raise ValueError("set speculation.draft_model exactly when draft = 'model'")
        return self


class StackProfile(_Frozen):
    """A serving stack (software) on one kind of hardware: its efficiency and its defaults.

    Its ``[efficiency]`` table overrides fields of the hardware's `Efficiency` (same names);
    everything it does not name stays the hardware's. ``fitted_to`` says which published rows
    (of ``data/published_tuning.csv``) or measurements each number comes from, and why.
    """

    profile: Literal["stack"] = Field(description="Marks the file as a stack profile.")
    name: str = Field(min_length=1, description="Lookup name, e.g. 'cs-current' or 'vllm'.")
    aliases: tuple[str, ...] = Field(default=(), description="Other names accepted by lookups.")
    display_name: str = Field(description="Human-readable name.")
    kind: HardwareKind = Field(description="The hardware kind the stack runs on.")
    hardware: tuple[str, ...] = Field(
        default=(), description="Hardware profiles it runs on (empty = every one of its kind)."
    )
    description: str = Field(description="What the stack is and what sets it apart.")
    weight_precision: Precision | None = Field(
        default=None,
        description="Precision the stack serves weights in when none is asked (None = the "
        "model's native precision).",
    )
    efficiency: dict[str, float] = Field(
        default_factory=dict, description="Overrides of the hardware's efficiency fields."
    )
    speculation: Speculation | None = Field(
        default=None, description="Speculative decoding the stack ships on by default."
    )
    fit: tuple[str, ...] = Field(
        default=(),
        description="Parameters fitted to published rows, as dotted paths "
        "('stack:NAME.efficiency.FIELD').",
    )
    fitted_to: dict[str, str] = Field(
        description="For each number in [efficiency] and [speculation]: its rows or sources."
    )

    @model_validator(mode="after")
    def _check(self) -> StackProfile:
        known = set(Efficiency.model_fields) - {"fitted_to"}
        unknown = sorted(set(self.efficiency) - known)
        if unknown:
            listing = ", ".join(sorted(known))
            raise ValueError(f"unknown efficiency field(s) {', '.join(unknown)}; known: {listing}")
        needed = list(self.efficiency)
        if self.speculation is not None:
            needed += ["speculation.draft_tokens", "speculation.acceptance"]
        missing = [name for name in needed if name not in self.fitted_to]
        if missing:
            raise ValueError(f"no entry in [fitted_to] for: {', '.join(missing)}")
        return self

    def applies_to(self, hardware: HardwareProfile) -> bool:
        """Whether the stack runs on ``hardware`` (its kind, and its name if listed)."""
        if hardware.kind != self.kind:
            return False
        names = {hardware.name.lower(), *(a.lower() for a in hardware.aliases)}
        return not self.hardware or any(h.lower() in names for h in self.hardware)

    def apply(self, efficiency: Efficiency) -> Efficiency:
        """``efficiency`` with this stack's overrides (the same object when there are none)."""
        if not self.efficiency:
            return efficiency
        return efficiency.model_copy(update=self.efficiency)
