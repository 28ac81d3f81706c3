"""Speculative decoding, priced physically: what a draft is and where it runs.

A draft proposes ``k`` tokens, one pass each; the target then checks all ``k + 1`` positions in
one pass (`substrates.emulated.perfmodel`). The draft is one of

* ``model``: a separate small model on the same chips, priced as its own deployment;
* ``eagle``: EAGLE-style heads: a fusion layer (``3 d -> d``), one decoder layer of the
  target's shape and the LM head, reading the target's hidden states (EAGLE-3, Li et al. 2025);
* ``mtp``: multi-token-prediction layers: one full decoder layer of the target (its active
  parameters) plus the LM head it shares (DeepSeek-V3 report, section 2.2).

Each draft pass goes through the same roofline as the target's (`perfmodel._pass`): a head
is a one-layer model on the same deployment. Pure functions of their arguments, cached per
deployment.
"""

from __future__ import annotations

import math

from substrates.emulated.deployment import BYTES_PER_VALUE, Deployment
from substrates.emulated.profiles import DraftKind, ModelProfile

__all__ = ["draft_deployment", "draft_head", "head_params_b"]

_GB = 1e9
_HEADS: dict[tuple[int, str], tuple[ModelProfile, ModelProfile]] = {}
_DRAFTS: dict[int, tuple[Deployment, Deployment]] = {}


def head_params_b(model: ModelProfile, kind: DraftKind) -> float:
    """Parameters (billions) one draft pass of an EAGLE head or an MTP layer reads.

    EAGLE: ``3 d^2`` (fusion of three hidden states) + one dense decoder layer (attention
    ``2 d (h + h_kv) hd``, FFN ``3 d f``) + the LM head ``V d``. MTP: one layer's share of the
    target's active parameters, ``(P_a - V d) / L``, + ``V d`` (the head is shared with the
    target but read again), + a ``2 d^2`` projection.

    Args:
        model: the target.
        kind: ``eagle`` or ``mtp``.

    Returns:
        Billions of parameters.
    """
    d, hd = model.hidden_size, model.head_dim
    lm_head = model.vocab_size * d
    if kind == "mtp":
        per_layer = (model.active_params_b * 1e9 - lm_head) / model.layers
        return (per_layer + lm_head + 2 * d * d) / 1e9
    attention = 2 * d * (model.attention_heads + model.kv_heads) * hd
    return (3 * d * d + attention + 3 * d * model.intermediate_size + lm_head) / 1e9


def draft_head(model: ModelProfile, kind: DraftKind) -> ModelProfile:
    """An EAGLE head or MTP layer as a one-layer dense model of the target's width.

    Args:
        model: the target.
        kind: ``eagle`` or ``mtp``.

    Returns:
        A model profile (built without validation: every number is derived from ``model``).
    """
    key = (id(model), kind)
    hit = _HEADS.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    params = head_params_b(model, kind)
    head = ModelProfile.model_construct(
        profile="model",
        name=f"{model.name}-{kind}-head",
        aliases=(),
        display_name=f"{kind} draft of {model.display_name}",
        total_params_b=params,
        active_params_b=params,
        layers=1,
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        attention_heads=model.attention_heads,
        kv_heads=model.kv_heads,
        head_dim=model.head_dim,
        vocab_size=model.vocab_size,
        experts=None,
        experts_active=None,
        mla_kv_dim=model.mla_kv_dim,
        sliding_window_tokens=None,
        sliding_window_layers=0,
        native_precision=model.native_precision,
        context_length_tokens=model.context_length_tokens,
        sources={},
    )
    _HEADS[key] = (model, head)
    return head


def draft_deployment(dep: Deployment) -> Deployment:
    """Where the draft of a speculating deployment runs: the same chips, its own layout.

    GPUs and HBM chips: the target's tensor-parallel group (narrowed to a degree that divides
    the draft's heads), one pipeline stage. Wafer and LPU: a head sits beside the LM head on
    one wafer (chip group); a draft model takes the wafers its weights need.

    Args:
        dep: a deployment with ``spec_decode`` set.

    Returns:
        The draft's deployment (no speculation of its own, no expert parallelism).
    """
    hit = _DRAFTS.get(id(dep))
    if hit is not None and hit[0] is dep:
        return hit[1]
    spec = dep.spec_decode
    assert spec is not None, "draft_deployment needs a speculating deployment"
    draft = spec.draft_model or draft_head(dep.model, spec.draft)
    hw = dep.hardware
    if hw.spreads_layers:
        per_chip = hw.memory_gb * _GB * dep.efficiency.memory_usable_fraction
        need = draft.total_params_b * 1e9 * BYTES_PER_VALUE[dep.precision]
        tp, pp = 1, max(1, min(dep.pp, math.ceil(need / per_chip)))
    else:
        tp = max(
            t for t in range(1, dep.tp + 1) if dep.tp % t == 0 and draft.attention_heads % t == 0
        )
        pp = 1
    out = dep.model_copy(update={"model": draft, "tp": tp, "pp": pp, "spec_decode": None, "ep": 1})
    if len(_DRAFTS) > 256:
        _DRAFTS.clear()
    _DRAFTS[id(dep)] = (dep, out)
    return out
