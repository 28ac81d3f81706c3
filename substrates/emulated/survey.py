"""What ``agentrt predict`` and ``agentrt substrates`` show, computed for any caller.

`predict_shape` serves one request shape on an engine in virtual time and returns the median
figures; `preset_fits` lists presets with their hardware and the chips each model needs.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import anyio

from agentrt import InferenceRequest, InferenceResult, VirtualClock, run
from agentrt.errors import DoesNotFitError
from substrates.emulated.engine import EmulatedEngine
from substrates.emulated.presets import PRESETS
from substrates.emulated.profiles import load_catalog, load_hardware, load_model, model_names
from substrates.emulated.sizing import size_deployment

__all__ = ["predict_shape", "preset_fits"]


def predict_shape(
    engine: EmulatedEngine, prompt_tokens: int, output_tokens: int, concurrency: int = 1
) -> dict[str, Any]:
    """``concurrency`` identical requests arriving together: the medians of their figures.

    Example:
        >>> from substrates.emulated import build_engine
        >>> figures = predict_shape(build_engine("wse3", jitter=0), 1000, 500)
        >>> figures["deployment"], figures["output_tokens_per_s"] > 100
        ('wse3 x4 (bf16)', True)
    """

    async def serve() -> list[InferenceResult]:
        results: list[InferenceResult] = []

        async def one(i: int) -> None:
            request = InferenceRequest.from_prompt(
                "predict",
                prompt_tokens=prompt_tokens,
                max_output_tokens=output_tokens,
                step_id=f"predict-{i}",
            )
            results.append(await engine.infer(request))

        async with anyio.create_task_group() as tg:
            for i in range(concurrency):
                tg.start_soon(one, i)
        return results

    results = run(serve, clock=VirtualClock())

    def median(field: str) -> float:
        return float(statistics.median(getattr(r.timing, field) for r in results))

    tpot = median("tpot_s")
    e2e = statistics.median(r.timing.e2e_s for r in results)
    dep = engine.deployment
    spec = dep.spec_decode
    return {
        "model": engine.model,
        "deployment": dep.describe(),
        "stack": dep.stack.name,
        "speculation": None
        if spec is None
        else f"{spec.draft} k={spec.draft_tokens} acceptance={spec.acceptance_rate:g}",
        "chips": engine.chips,
        "concurrency": concurrency,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "ttft_s": median("ttft_s"),
        "tpot_s": tpot,
        "output_tokens_per_s": 1.0 / tpot if tpot > 0 else None,
        "e2e_s": e2e,
        "cost_usd": statistics.median(r.cost_usd for r in results),
        "energy_j": statistics.median(r.energy_j for r in results),
        **{k: median(k) for k in ("queue_s", "network_s", "prefill_s", "decode_s", "comm_s")},
    }


def preset_fits(names: Sequence[str]) -> list[dict[str, Any]]:
    """Each preset's hardware figures, stacks and, per model profile, the chips it needs.

    Example:
        >>> [row] = preset_fits(["wse3"])
        >>> row["kind"], row["default_stack"], row["models"]["llama-3.1-70b"]
        ('wafer', 'cs-current', '4 (bf16)')
    """
    presets: list[dict[str, Any]] = []
    catalog = load_catalog()
    for name in names:
        hw = load_hardware(PRESETS[name])
        fits: dict[str, str] = {}
        for model_name in model_names():
            model = load_model(model_name)
            try:
                dep = size_deployment(hw, model)
                fits[model_name] = f"{dep.chips} ({dep.precision})"
            except DoesNotFitError:
                fits[model_name] = "does not fit"
        presets.append(
            {
                "name": name,
                "hardware": hw.display_name,
                "kind": hw.kind,
                "memory_gb_per_chip": hw.memory_gb,
                "memory_bandwidth_tb_per_s": hw.memory_bandwidth_tb_per_s,
                "chips_per_node": hw.chips_per_node,
                "power_w_per_chip": hw.power_w,
                "default_stack": hw.default_stack,
                "stacks": [s.name for s in catalog.stacks_for(hw)],
                "models": fits,
            }
        )
    return presets
