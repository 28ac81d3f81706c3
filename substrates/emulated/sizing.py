"""Which deployments hold a model: the memory fit check, sizing, and the context window.

`build_deployment` turns names and options (``--model --chips --tp --pp --precision ...``) into
a checked `Deployment`; `size_deployment` finds the smallest that fits; `check_fits` refuses one
that does not, saying what would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from agentrt.errors import BadResponse, ConfigError, DoesNotFitError
from substrates.emulated import moe
from substrates.emulated.deployment import (
    Deployment,
    SpecDecode,
    kv_bytes,
    kv_bytes_per_token,
    kv_shards,
    parse_precision,
)
from substrates.emulated.profiles import (
    ContentKind,
    HardwareProfile,
    ModelProfile,
    Precision,
    ProfileCatalog,
    StackProfile,
    load_catalog,
)
from substrates.emulated.stacks import (
    parse_content_kind,
    parse_spec_option,
    resolve_stack,
    stack_spec_decode,
)

__all__ = [
    "DEFAULT_MODEL",
    "ContextLengthExceeded",
    "MemoryNeed",
    "build_deployment",
    "check_context",
    "check_fits",
    "kv_capacity_bytes",
    "kv_capacity_tokens",
    "max_concurrent_requests",
    "memory_need",
    "size_deployment",
]

#: The model an engine serves when none is named.
DEFAULT_MODEL = "llama-3.1-70b"
_GB = 1e9


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


def _available_bytes(dep: Deployment, *, offchip: bool = False) -> float:
    """Usable memory of all chips: the fast tier, plus the off-chip tier (RDU DDR) if asked."""
    hw = dep.hardware
    per_chip = hw.memory_gb + ((hw.offchip_memory_gb or 0.0) if offchip else 0.0)
    return dep.chips * per_chip * _GB * dep.efficiency.memory_usable_fraction


def memory_need(dep: Deployment, kv_tokens: int | None = None) -> MemoryNeed:
    """Weights plus the KV cache of one request of ``kv_tokens`` (default: reserved context)."""
    tokens = dep.reserved_context_tokens if kv_tokens is None else kv_tokens
    return MemoryNeed(
        weights_bytes=moe.resident_weight_bytes(dep),
        kv_bytes=kv_bytes(dep.model, tokens, dep.kv_dtype) * dep.tp / kv_shards(dep),
        available_bytes=_available_bytes(dep),
        kv_tokens=tokens,
    )


def kv_capacity_bytes(dep: Deployment) -> float:
    """KV cache (as `kv_bytes` counts it) that fits beside the weights; admission checks this."""
    free = _available_bytes(dep) - moe.resident_weight_bytes(dep)
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
        bigger = size_deployment(
            hw, m, precision=dep.precision, kv_tokens=need.kv_tokens, stack=dep.stack
        )
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
        f"({_gb(raw)} x {dep.efficiency.memory_usable_fraction:g}); use {advice}"
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
    spec_decode: SpecDecode | Literal["stack"] | None = "stack",
    stack: StackProfile | None = None,
    ep: int = 1,
    content: ContentKind | None = None,
    catalog: ProfileCatalog | None = None,
) -> Deployment:
    """The smallest deployment of ``model`` on ``hardware`` that fits weights plus KV cache.

    Wafers: as many as needed, layers split across them. GPUs: tensor parallelism inside one
    node (a power of two dividing the heads), then pipeline stages of whole nodes.

    Args:
        hardware: the chips.
        model: the model.
        precision: weight precision; default the stack's (``weight_precision``), else the
            model's native one.
        chips: use exactly this many chips (still checked).
        kv_tokens: KV tokens one request must be able to hold; default min(context, 8192).
        max_batch: most requests decoded together.
        network_rtt_s: client-endpoint round trip.
        spec_decode: speculative decoding; ``"stack"`` (default) = what the stack ships for
            this model, None = off.
        stack: the serving stack; default the hardware's ``default_stack``.
        ep: expert-parallel degree (MoE models).
        content: the kind of text generated; picks the stack draft's acceptance rate.
        catalog: where to find the stack and a draft model; default the built-in profiles.

    Returns:
        The deployment.

    Raises:
        DoesNotFitError: no layout fits, or ``chips`` is too few.
        ConfigError: ``chips`` is below 1.
    """
    if chips is not None and chips < 1:
        raise ConfigError(f"chips must be at least 1, got {chips}")
    stack = stack or resolve_stack(hardware, None, catalog)
    spec = (
        stack_spec_decode(stack, model, content, catalog) if spec_decode == "stack" else spec_decode
    )

    def layout(tp: int, pp: int) -> Deployment:
        return Deployment(
            hardware=hardware,
            model=model,
            tp=tp,
            pp=pp,
            precision=precision or stack.weight_precision or model.native_precision,
            max_batch=max_batch,
            context_tokens=kv_tokens,
            network_rtt_s=network_rtt_s,
            spec_decode=spec,
            stack=stack,
            ep=ep,
        )

    layouts = [(tp, pp) for tp, pp in _layouts(hardware, model, chips) if tp * pp >= ep]
    if not layouts:
        raise ConfigError(f"--ep {ep} needs at least {ep} chips; --chips {chips} is fewer")
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


def build_deployment(
    hardware: str,
    *,
    model: str = DEFAULT_MODEL,
    chips: int | None = None,
    tp: int | None = None,
    pp: int | None = None,
    precision: str | None = None,
    max_batch: int = 256,
    network_rtt_ms: float = 0.0,
    spec_decode: str | None = None,
    stack: str | None = None,
    ep: int = 1,
    spec_content: str | None = None,
) -> Deployment:
    """A deployment of ``model`` on ``hardware``: the smallest that fits, or the layout given.

    ``stack`` names the serving stack (default the hardware's); ``spec_decode`` is
    ``K:A[:eagle|mtp|MODEL]``, or ``off`` to turn off the stack's default speculation;
    ``spec_content`` (``chat``, ``code``, ``reasoning``) picks the stack draft's acceptance.

    Raises:
        DoesNotFitError: the model (plus one request's KV cache) does not fit; the message says
            what would.
        ConfigError: a bad option.
    """
    catalog = load_catalog()
    hw = catalog.get_hardware(hardware)
    m = catalog.get_model(model)
    prec = parse_precision(precision) if precision else None
    stack_profile = resolve_stack(hw, stack, catalog)
    content = parse_content_kind(spec_content) if spec_content else None
    spec = parse_spec_option(spec_decode, stack_profile, m, content, catalog)
    if ep < 1:
        raise ConfigError(f"--ep must be at least 1, not {ep}")
    if network_rtt_ms < 0:
        raise ConfigError(f"network_rtt_ms must be >= 0, got {network_rtt_ms}")
    rtt = network_rtt_ms / 1000
    if tp is None and pp is None:
        return size_deployment(
            hw,
            m,
            precision=prec,
            chips=chips,
            max_batch=max_batch,
            network_rtt_s=rtt,
            spec_decode=spec,
            stack=stack_profile,
            ep=ep,
            content=content,
            catalog=catalog,
        )
    if hw.kind == "wafer" and tp not in (None, 1):
        raise ConfigError(
            "a wafer-scale engine has no tensor parallelism: each wafer holds whole layers; "
            "use --pp N (wafers) or --chips N"
        )
    tp_ = tp or 1
    pp_ = pp or (chips // tp_ if chips else 1)
    if chips is not None and tp_ * pp_ != chips:
        raise ConfigError(f"--chips {chips} disagrees with --tp {tp_} x --pp {pp_}")
    dep = Deployment(
        hardware=hw,
        model=m,
        tp=tp_,
        pp=pp_,
        precision=prec or stack_profile.weight_precision or m.native_precision,
        max_batch=max_batch,
        network_rtt_s=rtt,
        spec_decode=None if spec == "stack" else spec,
        stack=stack_profile,
        ep=ep,
    )
    if spec == "stack":
        dep = dep.model_copy(
            update={"spec_decode": stack_spec_decode(stack_profile, m, content, catalog)}
        )
    check_fits(dep)
    return dep


class ContextLengthExceeded(BadResponse):
    """The prompt plus the requested output do not fit in the model's context window.

    Not retryable: the same request fails the same way. ``context``, ``prompt_tokens`` and
    ``output_tokens`` say by how much.
    """

    def __init__(self, model: str, context: int, prompt_tokens: int, output_tokens: int) -> None:
        self.model = model
        self.context = context
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        room = context - prompt_tokens
        fix = f"reduce max_output_tokens to at most {room}" if room > 0 else "shorten the prompt"
        super().__init__(
            f"{model}'s maximum context length is {context:,} tokens, but the request asks for "
            f"{prompt_tokens + output_tokens:,} ({prompt_tokens:,} in the prompt, "
            f"{output_tokens:,} of output): {fix}"
        )

    def __reduce__(self) -> tuple[type[ContextLengthExceeded], tuple[str, int, int, int]]:
        # Rebuilt from its fields (a process pool or a pickled result carries it as they are).
        return type(self), (self.model, self.context, self.prompt_tokens, self.output_tokens)


def check_context(model: str, context: int, prompt_tokens: int, output_tokens: int) -> None:
    """Raise `ContextLengthExceeded` unless ``prompt_tokens + output_tokens <= context``.

    Example:
        >>> check_context("m", 100, 40, 60)
        >>> check_context("m", 100, 40, 61)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        substrates.emulated.sizing.ContextLengthExceeded: m's maximum context length is 100 \
tokens, ... reduce max_output_tokens to at most 60
    """
    if prompt_tokens + output_tokens > context:
        raise ContextLengthExceeded(model, context, prompt_tokens, output_tokens)
