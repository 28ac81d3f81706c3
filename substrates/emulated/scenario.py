"""A calibration row's scenario: the deployment its items name, and the metric predicted on it.

`predict_point` serves `calibrate`, the fitter, cross-validation and the scripts.
"""

from __future__ import annotations

from typing import Literal

from agentrt.errors import ConfigError
from substrates.emulated.deployment import Deployment, SpecDecode, parse_precision
from substrates.emulated.perfmodel import prefill
from substrates.emulated.predict import LoadPoint, closed_loop, cost_usd, predict_request
from substrates.emulated.profiles import ModelProfile, ProfileCatalog, StackProfile
from substrates.emulated.sizing import check_fits, size_deployment
from substrates.emulated.stacks import forced_spec_decode, parse_content_kind, resolve_stack

__all__ = ["parse_scenario", "predict_point"]


def parse_scenario(text: str) -> dict[str, str]:
    """The ``key=value`` items of a scenario; see `predict_point` for the keys."""
    pairs = [item.split("=", 1) for item in text.split()]
    if any(len(p) != 2 for p in pairs):
        raise ConfigError(f"bad scenario {text!r}: expected key=value items")
    return dict(pairs)


def _spec_decode(
    spec: dict[str, str], stack: StackProfile, model: ModelProfile, catalog: ProfileCatalog
) -> SpecDecode | Literal["stack"] | None:
    """``spec=K:A`` (``off``, ``on``) and ``draft=eagle|mtp|MODEL``, or the stack's default."""
    text, draft = spec.get("spec"), spec.get("draft")
    if text is None and draft is None:
        return "stack"
    if text is not None and text.lower() in ("off", "none", "0"):
        return None
    if text is not None and text.lower() == "on" and draft is None:
        content = spec.get("content")
        return forced_spec_decode(
            stack, model, parse_content_kind(content) if content else None, catalog
        )
    if text is None:
        raise ConfigError("draft= needs spec=K:A (draft length and acceptance rate)")
    if draft is None or draft.lower() in ("eagle", "mtp", "model"):
        return SpecDecode.parse(text if draft is None else f"{text}:{draft.lower()}")
    return SpecDecode.parse(text, draft_model=catalog.get_model(draft))


def _deployment(spec: dict[str, str], catalog: ProfileCatalog) -> Deployment:
    dep = _layout_deployment(spec, catalog)
    # moe14: minimal parsing of ep= and adp=1 (stacks14 owns this function; to reconcile).
    ep, adp = int(spec.get("ep", "1")), spec.get("adp", "0") == "1"
    if ep == 1 and not adp:
        return dep
    dep = Deployment.model_validate({**dict(dep), "ep": ep, "attention_dp": adp})
    check_fits(dep)
    return dep


def _layout_deployment(spec: dict[str, str], catalog: ProfileCatalog) -> Deployment:
    hardware = catalog.get_hardware(spec["hw"])
    model = catalog.get_model(spec["model"])
    stack = resolve_stack(hardware, spec.get("stack"), catalog)
    precision = parse_precision(
        spec.get("precision", stack.weight_precision or model.native_precision)
    )
    max_batch = int(spec.get("max_batch", "256"))
    tp, pp = int(spec.get("tp", "1")), int(spec.get("pp", "1"))
    layout = tp * pp if "tp" in spec or "pp" in spec else None
    dep = size_deployment(
        hardware,
        model,
        precision=precision,
        max_batch=max_batch,
        chips=layout,
        stack=stack,
        ep=int(spec.get("ep", "1")),
        spec_decode=_spec_decode(spec, stack, model, catalog),
        content=parse_content_kind(spec["content"]) if "content" in spec else None,
        catalog=catalog,
    )
    if layout is not None and (dep.tp, dep.pp) != (tp, pp):
        raise ConfigError(f"scenario layout tp/pp cannot be arranged: {spec}")
    if spec.get("adp", "0") not in ("0", "1"):
        raise ConfigError(f"adp= is 0 or 1 (attention data-parallel), got {spec['adp']!r}")
    if spec.get("adp") == "1":
        dep = Deployment.model_validate({**dict(dep), "attention_dp": True})
    return dep


def predict_point(metric: str, scenario: str, catalog: ProfileCatalog) -> float:
    """Predict one published metric under a scenario of the calibration table.

    Args:
        metric: the CSV ``metric`` (``output_tokens_per_s_per_user``, ``ttft_s``, ``tpot_ms``,
            ``throughput_tokens_per_s`` or ``energy_j_per_token``).
        scenario: ``key=value`` items: ``hw``, ``model``, optional ``tp``, ``pp``,
            ``precision``, ``max_batch``, ``in``, ``out``, ``c`` (clients, or ``max``),
            ``metric=e2e_per_output`` for latencies derived as end-to-end / output tokens,
            ``stack`` (default the hardware's), ``ep`` (expert parallel), ``adp=1`` (attention
            data-parallel), ``spec=K:A`` or ``spec=off`` with ``draft=eagle|mtp|MODEL``
            (default: the stack's speculation) and ``content=chat|code|reasoning`` (which
            acceptance rate the stack's draft has).
        catalog: where to find the profiles.

    Returns:
        The predicted value in the metric's unit.

    Raises:
        ConfigError: the scenario or metric is not understood.
    """
    spec = parse_scenario(scenario)
    dep = _deployment(spec, catalog)
    prompt, output = int(spec.get("in", "1000")), int(spec.get("out", "500"))
    clients = None if spec.get("c", "1") == "max" else int(spec.get("c", "1"))
    if metric == "output_tokens_per_s_per_user":
        return predict_request(dep, prompt, output).output_tokens_per_s
    if metric == "ttft_s" and clients == 1:
        return predict_request(dep, prompt, output).ttft_s
    point = closed_loop(dep, prompt, output, clients)
    if metric == "ttft_s":
        return point.ttft_s
    if metric == "tpot_ms":
        if spec.get("metric") == "e2e_per_output":
            return 1000.0 * point.e2e_s / output
        return 1000.0 * point.tpot_s
    if metric == "throughput_tokens_per_s":
        return point.throughput_tokens_per_s
    return _energy_or_price(metric, spec, dep, point, prompt)


def _energy_or_price(
    metric: str, spec: dict[str, str], dep: Deployment, point: LoadPoint, prompt: int
) -> float:
    """Energy per output token and price per million tokens of a closed-loop steady state.

    ``energy_j_per_token``: chips x power x busy time per output token; ``power=system`` charges
    each chip its share of the node (``node_power_w / chips_per_node``, what MLPerf Power meters)
    instead of its own power (GPU board power, what NVML and ML.ENERGY read); a wafer's
    ``power_w`` is already its CS-3 system's. ``price_usd_per_mtok_output``: `cost_usd` of a
    million output tokens, the machine's whole time charged to them; ``..._input``: of a million
    prompt tokens at the time their prefill takes. A published token price is returned as is.
    """
    hw = dep.hardware
    if metric == "energy_j_per_token":
        watts = hw.power_w
        if spec.get("power") == "system" and hw.kind != "wafer":
            if hw.node_power_w is None:
                raise ConfigError(f"power=system needs node_power_w in the {hw.name} profile")
            watts = hw.node_power_w / hw.chips_per_node
        return dep.chips * watts / point.throughput_tokens_per_s
    if metric in ("price_usd_per_mtok_output", "price_usd_per_mtok_input"):
        output = metric.endswith("output")
        busy = (
            1e6 / point.throughput_tokens_per_s
            if output
            else 1e6 / prompt * prefill(dep, [prompt]).total_s
        )
        usd = cost_usd(
            dep,
            busy_s=busy,
            input_tokens=0 if output else 10**6,
            output_tokens=10**6 if output else 0,
        )
        if usd is not None:
            return usd
        raise ConfigError(
            f"{hw.name} has neither price_usd_per_chip_hour nor [prices.{dep.model.name!r}]: "
            "add one to its profile"
        )
    raise ConfigError(f"calibration metric {metric!r} is not modelled")
