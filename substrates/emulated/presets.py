"""The emulated-engine presets (``wse3``, ``h100``, ``tpu-v5e``, ``groq-lpu``, ...): entry points.

Every preset takes a model (default llama-3.1-70b) and the same overrides, from code, from the
command line (``--model``, ``--chips``, ``--tp``, ``--pp``, ``--precision``, ``--max-batch``,
``--network-rtt-ms``, ``--spec-decode``) or from ``-o key=value``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from agentrt.errors import ConfigError
from substrates.emulated.content import (
    ContentSource,
    ReplayContent,
    ScriptedContent,
    SyntheticContent,
)
from substrates.emulated.deployment import (
    Deployment,
    SpecDecode,
    check_fits,
    parse_precision,
    size_deployment,
)
from substrates.emulated.engine import DEFAULT_JITTER, DEFAULT_STALL_PROB, EmulatedEngine
from substrates.emulated.profiles import load_hardware, load_model

__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "b200",
    "build_deployment",
    "build_engine",
    "fpga",
    "gaudi3",
    "groq_lpu",
    "h100",
    "h200",
    "inferentia2",
    "maia100",
    "parse_content",
    "sn40l",
    "tpu_v5e",
    "tpu_v6e",
    "trainium2",
    "wse3",
]

DEFAULT_MODEL = "llama-3.1-70b"
#: Preset name -> hardware profile.
PRESETS = {
    "wse3": "wse3",
    "h100": "h100",
    "h200": "h200",
    "b200": "b200",
    "tpu-v5e": "tpu-v5e",
    "tpu-v6e": "tpu-v6e",
    "gaudi3": "gaudi3",
    "inferentia2": "inferentia2",
    "trainium2": "trainium2",
    "maia100": "maia100",
    "groq-lpu": "groq-lpu",
    "sn40l": "sn40l",
    "fpga": "fpga",
}


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
) -> Deployment:
    """A deployment of ``model`` on ``hardware``: the smallest that fits, or the layout given.

    Raises:
        DoesNotFitError: the model (plus one request's KV cache) does not fit; the message says
            what would.
        ConfigError: a bad option.
    """
    hw = load_hardware(hardware)
    m = load_model(model)
    prec = parse_precision(precision) if precision else None
    spec = SpecDecode.parse(spec_decode) if spec_decode else None
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
        precision=prec or m.native_precision,
        max_batch=max_batch,
        network_rtt_s=rtt,
        spec_decode=spec,
    )
    check_fits(dep)
    return dep


def parse_content(spec: str, *, seed: int | None = None) -> ContentSource:
    """Content from ``synthetic``, ``scripted:FILE`` (YAML: step -> answer) or ``replay:RUN.json``.

    Raises:
        ConfigError: an unknown form or an unreadable file.
    """
    kind, _, rest = spec.partition(":")
    if kind == "synthetic" and not rest:
        return SyntheticContent(seed=seed)
    if kind == "replay" and rest:
        return ReplayContent(Path(rest))
    if kind == "scripted" and rest:
        try:
            answers = yaml.safe_load(Path(rest).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{rest}: cannot read scripted answers ({exc})") from exc
        if not isinstance(answers, dict):
            raise ConfigError(f"{rest}: scripted answers are a mapping of step id -> text")
        return ScriptedContent({str(k): v for k, v in answers.items()}, seed=seed)
    raise ConfigError(f"unknown content {spec!r}; use synthetic, scripted:FILE or replay:RUN.json")


def build_engine(
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
    seed: int | None = None,
    warm: bool = True,
    cold_start_s: float | None = None,
    jitter: float = DEFAULT_JITTER,
    stall_prob: float = DEFAULT_STALL_PROB,
    content: str | ContentSource = "synthetic",
    name: str | None = None,
) -> EmulatedEngine:
    """An `EmulatedEngine` for a preset; every keyword is also a command-line option.

    Example:
        >>> engine = build_engine("h100", model="llama-3.1-8b", precision="fp8")
        >>> engine.deployment.describe()
        'h100 x1 (--tp 1 --pp 1, fp8)'
    """
    dep = build_deployment(
        hardware,
        model=model,
        chips=chips,
        tp=tp,
        pp=pp,
        precision=precision,
        max_batch=max_batch,
        network_rtt_ms=network_rtt_ms,
        spec_decode=spec_decode,
    )
    source = parse_content(content, seed=seed) if isinstance(content, str) else content
    return EmulatedEngine(
        dep,
        name=name or hardware,
        content=source,
        seed=seed,
        warm=warm,
        cold_start_s=cold_start_s,
        jitter=jitter,
        stall_prob=stall_prob,
    )


def _preset(hardware: str, summary: str) -> Callable[..., EmulatedEngine]:
    """A registry factory: `build_engine` with the hardware fixed and the same typed options."""

    @functools.wraps(build_engine)
    def factory(**options: Any) -> EmulatedEngine:
        return build_engine(hardware, **options)

    signature = inspect.signature(build_engine)
    factory.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "hardware"]
    )
    factory.__name__ = factory.__qualname__ = hardware
    factory.__doc__ = f"{summary}\n\nOptions: those of `build_engine`."
    return factory


wse3 = _preset(
    "wse3",
    "Cerebras CS-3 (WSE-3): as many wafers as the model needs, weights in SRAM, layers "
    "pipelined across wafers.",
)
h100 = _preset("h100", "NVIDIA H100 SXM, 8-GPU nodes: tensor parallel in a node, pipeline across.")
h200 = _preset("h200", "NVIDIA H200, 8-GPU nodes: tensor parallel in a node, pipeline across.")
b200 = _preset("b200", "NVIDIA B200, 8-GPU nodes: tensor parallel in a node, pipeline across.")
tpu_v5e = _preset(
    "tpu-v5e", "Google TPU v5e, 256-chip ICI pod: tensor parallel over ICI, pipeline across pods."
)
tpu_v6e = _preset(
    "tpu-v6e",
    "Google TPU v6e (Trillium), 256-chip ICI pod: tensor parallel over ICI, pipeline across pods.",
)
gaudi3 = _preset("gaudi3", "Intel Gaudi 3, 8-card nodes over RoCE: tensor parallel, then pipeline.")
inferentia2 = _preset(
    "inferentia2", "AWS Inferentia2, 12 chips per inf2.48xlarge over NeuronLink: TP, then pipeline."
)
trainium2 = _preset(
    "trainium2", "AWS Trainium2, 16 chips per trn2.48xlarge over NeuronLink: TP, then pipeline."
)
maia100 = _preset("maia100", "Microsoft Maia 100, 4 per server over Ethernet: TP, then pipeline.")
groq_lpu = _preset(
    "groq-lpu",
    "Groq LPU: SRAM only, the model spread over hundreds of chips, layers in a deterministic "
    "pipeline.",
)
sn40l = _preset(
    "sn40l",
    "SambaNova SN40L, 16 sockets per rack: weights in HBM streamed through SRAM, DDR behind; TP.",
)
fpga = _preset(
    "fpga", "AMD Alveo V80 FPGA cards, 8 per server: HBM, compiled layer pipeline, tensor parallel."
)
