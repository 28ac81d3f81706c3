"""The same physical properties on every registered preset, whatever its architecture family.

One parametrised suite over `substrates.emulated.presets.PRESETS` (GPUs, the wafer, TPUs, Gaudi,
Trainium/Inferentia, Maia, the LPU, the RDU and the FPGA card): never faster than physics,
monotone in the work asked, refusing what does not fit with what would.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt.errors import DoesNotFitError
from substrates.emulated import DEFAULT_MODEL, PRESETS, build_deployment, build_engine, families
from substrates.emulated.deployment import Deployment
from substrates.emulated.perfmodel import (
    decode_floor_s,
    decode_iteration,
    decode_span,
    prefill,
    prefill_floor_s,
)
from substrates.emulated.predict import closed_loop, predict_request
from substrates.emulated.profiles import load_hardware, load_model
from substrates.emulated.sizing import size_deployment

ALL = sorted(PRESETS)
SETTINGS = settings(max_examples=25, deadline=None)
contexts = st.lists(st.integers(1, 32_000), min_size=1, max_size=32)


@pytest.fixture(scope="module", params=ALL)
def preset(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_every_preset_sizes_the_default_model_and_builds_an_engine(preset: str) -> None:
    engine = build_engine(preset, seed=0)
    dep = engine.deployment
    assert dep.model.name == DEFAULT_MODEL
    assert dep.hardware.name == PRESETS[preset]
    smaller = dep.chips - dep.tp if dep.pp > 1 else dep.chips // 2
    if smaller >= 1 and not dep.hardware.offchip_memory_gb:  # an RDU may spill to DDR
        with pytest.raises(DoesNotFitError, match="use "):
            size_deployment(dep.hardware, dep.model, chips=smaller)
    b = predict_request(dep, 1000, 200)
    assert 0 < b.ttft_s < b.e2e_s
    assert b.energy_j > 0


@functools.cache
def _deployment(preset: str) -> Deployment:
    return build_deployment(preset)


@SETTINGS
@given(ctx=contexts, prompt=st.integers(1, 16_000))
def test_never_faster_than_the_physical_floor(preset: str, ctx: list[int], prompt: int) -> None:
    dep = _deployment(preset)
    assert decode_iteration(dep, ctx).total_s >= decode_floor_s(dep, ctx) > 0
    assert decode_span(dep, ctx, 10).total_s >= 10 * decode_floor_s(dep, ctx) * (1 - 1e-9)
    assert prefill(dep, [prompt]).total_s >= prefill_floor_s(dep, [prompt]) > 0


@SETTINGS
@given(a=st.integers(1, 16_000), b=st.integers(1, 16_000), ctx=contexts, extra=st.integers(1, 8000))
def test_monotone_in_prompt_output_and_concurrency(
    preset: str, a: int, b: int, ctx: list[int], extra: int
) -> None:
    dep = _deployment(preset)
    short, long = sorted((a, b))
    assert predict_request(dep, long, 64).ttft_s >= predict_request(dep, short, 64).ttft_s
    assert predict_request(dep, 500, long).e2e_s >= predict_request(dep, 500, short).e2e_s
    assert decode_iteration(dep, [*ctx, extra]).total_s >= decode_iteration(dep, ctx).total_s


@SETTINGS
@given(a=st.integers(1, 200), b=st.integers(1, 200))
def test_load_raises_latency_and_never_lowers_throughput(preset: str, a: int, b: int) -> None:
    dep = _deployment(preset)
    low, high = sorted((a, b))
    p, q = closed_loop(dep, 1000, 200, low), closed_loop(dep, 1000, 200, high)
    assert q.e2e_s >= p.e2e_s * (1 - 1e-9)
    assert q.throughput_tokens_per_s >= p.throughput_tokens_per_s * (1 - 1e-9)


def test_a_model_too_big_for_any_tier_is_refused_with_advice(preset: str) -> None:
    hw, m = load_hardware(PRESETS[preset]), load_model("llama-3.1-405b")
    huge = m.model_copy(update={"total_params_b": 1e6, "active_params_b": 1e6})
    with pytest.raises(DoesNotFitError, match="needs"):
        size_deployment(hw, huge, chips=1)


def test_weights_in_the_rdu_ddr_tier_are_read_at_ddr_speed() -> None:
    hw, m = load_hardware("sn40l"), load_model("llama-3.1-70b")
    in_hbm = size_deployment(hw, m)
    spilled = size_deployment(hw, m, chips=1)  # 141 GB on one socket: 64 GB HBM + DDR
    assert families.offchip_fraction(in_hbm) == 0
    assert 0 < families.offchip_fraction(spilled) < 1
    ctx = [1000]
    assert decode_iteration(spilled, ctx).total_s > 10 * decode_iteration(in_hbm, ctx).total_s
    assert decode_iteration(spilled, ctx).total_s >= decode_floor_s(spilled, ctx)


def test_an_lpu_spreads_a_layer_over_chips_and_hands_off_between_them() -> None:
    dep = build_deployment("groq-lpu", precision="fp8")
    assert dep.tp == 1
    assert dep.pp > dep.model.layers  # hundreds of chips for 80 layers
    assert families.layer_region_units(dep) > 1
    assert families.layer_handoffs(dep) == dep.model.layers - 1
    small = build_deployment("groq-lpu", model="llama-3.1-8b", precision="fp8")
    assert predict_request(small, 1000, 200).tpot_s < predict_request(dep, 1000, 200).tpot_s


def test_an_fpga_pays_its_pipeline_fill_once_per_pass() -> None:
    dep = build_deployment("fpga", precision="fp8")
    fill = families.pipeline_fill_s(dep, 1)
    assert fill == pytest.approx(dep.model.layers * dep.hardware.efficiency.layer_latency_s)
    assert decode_iteration(dep, [1000]).work_s > fill
    assert families.pipeline_fill_s(build_deployment("h100", stack="vllm"), 1) == 0
    trt = build_deployment("h100")  # the default trtllm stack: a fixed latency per layer
    assert families.pipeline_fill_s(trt, 1) == pytest.approx(
        trt.model.layers * trt.efficiency.layer_latency_s
    )
