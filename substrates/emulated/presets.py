"""The emulated-engine presets (``wse3``, ``h100``, ``tpu-v5e``, ``groq-lpu``, ...): entry points.

Every preset takes a model (default llama-3.1-70b) and the same overrides, from code, from the
command line (``--model``, ``--chips``, ``--tp``, ``--pp``, ``--precision``, ``--max-batch``,
``--network-rtt-ms``, ``--spec-decode``, ``--stack``, ``--ep``) or from ``-o key=value``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from substrates.emulated.engine import EmulatedEngine, build_engine

__all__ = [
    "PRESETS",
    "b200",
    "fpga",
    "gaudi3",
    "groq_lpu",
    "h100",
    "h200",
    "inferentia2",
    "maia100",
    "sn40l",
    "tpu_v5e",
    "tpu_v6e",
    "trainium2",
    "wse3",
]

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
