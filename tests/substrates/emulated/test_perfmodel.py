from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt.errors import ConfigError, DoesNotFitError
from substrates.emulated import PRESETS
from substrates.emulated.comm import allreduce_s, pipeline_hops_s
from substrates.emulated.deployment import (
    BYTES_PER_VALUE,
    Deployment,
    SpecDecode,
    kv_bytes,
    kv_bytes_per_token,
    parse_precision,
    weight_bytes,
)
from substrates.emulated.perfmodel import (
    decode_floor_s,
    decode_iteration,
    decode_span,
    prefill,
    prefill_floor_s,
    wafer_pipeline,
)
from substrates.emulated.predict import closed_loop, predict_request
from substrates.emulated.profiles import load_catalog, load_hardware, load_model
from substrates.emulated.sizing import (
    check_fits,
    kv_capacity_tokens,
    max_concurrent_requests,
    memory_need,
    size_deployment,
)

CATALOG = load_catalog()
HARDWARE = sorted(CATALOG.hardware)
MODELS = sorted(CATALOG.models)
PRECISIONS = ["bf16", "fp8", "fp4"]
FAST = settings(max_examples=60, deadline=None)


def _sized(hw: str, model: str, precision: str) -> Deployment:
    """Plain decoding (no stack speculation): the physics these properties are about."""
    return size_deployment(
        CATALOG.get_hardware(hw),
        CATALOG.get_model(model),
        precision=parse_precision(precision),
        spec_decode=None,
    )


deployments = st.builds(
    _sized, st.sampled_from(HARDWARE), st.sampled_from(MODELS), st.sampled_from(PRECISIONS)
)
gpu_deployments = st.builds(
    _sized,
    st.sampled_from([h for h in HARDWARE if not CATALOG.hardware[h].spreads_layers]),
    st.sampled_from(MODELS),
    st.sampled_from(PRECISIONS),
)
contexts = st.lists(st.integers(1, 32_000), min_size=1, max_size=64)


# ---------------------------------------------------------------- never faster than physics


@FAST
@given(dep=deployments, ctx=contexts)
def test_decode_never_beats_the_physical_floor(dep, ctx):
    step = decode_iteration(dep, ctx)
    assert step.total_s >= decode_floor_s(dep, ctx) > 0
    # the floor is at least the weights this batch must read over peak bandwidth
    bytes_floor = weight_bytes(dep.model, dep.precision) * (
        dep.model.active_params_b / dep.model.total_params_b
    )
    peak_bw = dep.hardware.memory_bandwidth_tb_per_s * 1e12
    assert decode_floor_s(dep, ctx) >= bytes_floor / (peak_bw * dep.chips) * 0.999


@FAST
@given(dep=deployments, ctx=contexts, tokens=st.integers(1, 2000))
def test_a_decode_span_never_beats_the_floor_of_its_first_step(dep, ctx, tokens):
    span = decode_span(dep, ctx, tokens)
    assert span.total_s >= tokens * decode_floor_s(dep, ctx)
    assert span.tokens_per_request == tokens


@FAST
@given(
    dep=deployments,
    ctx=st.lists(st.integers(1, 20_000), min_size=1, max_size=6),
    steps=st.integers(1, 200),
)
def test_a_span_is_exactly_the_sum_of_its_iterations(dep, ctx, steps):
    one_by_one = sum(decode_iteration(dep, [c + j for c in ctx]).total_s for j in range(steps))
    assert decode_span(dep, ctx, steps).total_s == pytest.approx(one_by_one, rel=1e-9)


@FAST
@given(ctx=st.lists(st.integers(1, 3000), min_size=1, max_size=8), window=st.integers(1, 2000))
def test_sliding_windows_cap_the_kv_cache_that_is_read(ctx, window):
    base = load_model("llama-3.1-8b")
    sources = {**base.sources, "sliding_window_tokens": "test", "sliding_window_layers": "test"}
    windowed = base.model_copy(
        update={"sliding_window_tokens": window, "sliding_window_layers": 16, "sources": sources}
    )
    dep = Deployment(hardware=load_hardware("h100"), model=windowed, precision="bf16")
    kv = sum(kv_bytes(windowed, c, "bf16") for c in ctx)
    assert kv == pytest.approx(sum((16 * c + 16 * min(c, window)) * 4096 for c in ctx))
    memory_floor = (weight_bytes(windowed, "bf16") + kv) / 3.35e12
    assert decode_floor_s(dep, ctx) == pytest.approx(memory_floor, rel=1e-9)


@FAST
@given(dep=deployments, prompts=st.lists(st.integers(1, 16_000), min_size=1, max_size=8))
def test_prefill_never_beats_flops_over_peak(dep, prompts):
    flops = 2 * dep.model.active_params_b * 1e9 * sum(prompts)
    peak = dep.hardware.peak_tflops(dep.precision) * 1e12 * dep.chips
    assert prefill(dep, prompts).total_s >= prefill_floor_s(dep, prompts) >= flops / peak


def test_floor_uses_bytes_over_bandwidth_for_a_single_stream():
    dep = Deployment(
        hardware=load_hardware("h100"), model=load_model("llama-3.1-70b"), tp=2, precision="fp8"
    )
    floor = decode_floor_s(dep, [1])  # 35.3 GB of weights per GPU
    assert floor == pytest.approx(70.6e9 / 2 / 3.35e12, rel=0.01)
    assert decode_iteration(dep, [1]).total_s > 1.5 * floor


# ------------------------------------------------------------------------------- monotone


@FAST
@given(dep=deployments, a=st.integers(1, 30_000), b=st.integers(1, 30_000))
def test_monotone_in_prompt_length(dep, a, b):
    short, long = sorted((a, b))
    p, q = predict_request(dep, short, 64), predict_request(dep, long, 64)
    assert q.prefill_s >= p.prefill_s
    assert q.ttft_s >= p.ttft_s
    assert q.e2e_s >= p.e2e_s


@FAST
@given(dep=deployments, a=st.integers(1, 4000), b=st.integers(1, 4000))
def test_monotone_in_output_length(dep, a, b):
    short, long = sorted((a, b))
    p, q = predict_request(dep, 500, short), predict_request(dep, 500, long)
    assert q.decode_s >= p.decode_s
    assert q.e2e_s >= p.e2e_s
    assert q.ttft_s == p.ttft_s


@FAST
@given(
    hw=st.sampled_from(HARDWARE),
    name=st.sampled_from(MODELS),
    scale=st.floats(1.0, 4.0),
    ctx=contexts,
    prompt=st.integers(1, 8000),
)
def test_monotone_in_model_size(hw, name, scale, ctx, prompt):
    dep = _sized(hw, name, "fp8")
    small = dep.model
    big = small.model_copy(
        update={
            "total_params_b": small.total_params_b * scale,
            "active_params_b": small.active_params_b * scale,
            "layers": math.ceil(small.layers * scale),
            "hidden_size": math.ceil(small.hidden_size * scale),
        }
    )
    bigger = dep.model_copy(update={"model": big})
    assert decode_iteration(bigger, ctx).total_s >= decode_iteration(dep, ctx).total_s
    assert prefill(bigger, [prompt]).total_s >= prefill(dep, [prompt]).total_s


@pytest.mark.parametrize("hw", sorted(PRESETS))
def test_bigger_real_models_are_slower_per_user(hw):
    # on the same chips: sized alone, a 405B may get 8x the chips of a 70B (16-chip nodes)
    chips = _sized(hw, "llama-3.1-405b", "bf16").chips
    hardware = CATALOG.get_hardware(hw)
    speeds = [
        predict_request(
            size_deployment(hardware, CATALOG.get_model(m), precision="bf16", chips=chips),
            1000,
            200,
        ).output_tokens_per_s
        for m in ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b")
    ]
    assert speeds == sorted(speeds, reverse=True)


@FAST
@given(dep=deployments, ctx=contexts, extra=st.integers(1, 32_000))
def test_monotone_in_concurrency(dep, ctx, extra):
    assert decode_iteration(dep, [*ctx, extra]).total_s >= decode_iteration(dep, ctx).total_s


@FAST
@given(dep=gpu_deployments, a=st.integers(1, 300), b=st.integers(1, 300))
def test_closed_loop_latency_rises_and_throughput_never_falls_with_load(dep, a, b):
    low, high = sorted((a, b))
    p, q = closed_loop(dep, 1000, 200, low), closed_loop(dep, 1000, 200, high)
    assert q.tpot_s >= p.tpot_s
    assert q.ttft_s >= p.ttft_s
    assert q.throughput_tokens_per_s >= p.throughput_tokens_per_s * (1 - 1e-9)


def test_latency_rises_with_load_the_way_a_real_server_does():
    dep = Deployment(
        hardware=load_hardware("h100"), model=load_model("llama-3.3-70b"), tp=2, precision="fp8"
    )
    tpots = [closed_loop(dep, 5000, 500, c).tpot_s for c in (1, 5, 25, 50, 100)]
    assert tpots == sorted(tpots)
    assert tpots[-1] > 4 * tpots[0]  # NIM measured ~5x from 1 to saturation
    saturated = closed_loop(dep, 5000, 500, 250)
    assert saturated.batch < 250
    assert saturated.ttft_s > 10 * closed_loop(dep, 5000, 500, 50).ttft_s  # the queue forms


# ------------------------------------------------------------------------- communication


@FAST
@given(hw=st.sampled_from(HARDWARE), message=st.floats(0, 1e9))
def test_allreduce_is_free_alone_and_grows_with_the_group(hw, message):
    hardware = load_hardware(hw)
    assert allreduce_s(hardware, 1, message) == 0
    if not hardware.spreads_layers:
        costs = [allreduce_s(hardware, n, message) for n in (2, 4, 8)]
        assert 0 < costs[0] < costs[1] < costs[2]


@FAST
@given(
    name=st.sampled_from(["llama-3.1-8b", "llama-3.1-70b", "qwen3-32b"]),
    ctx=contexts,
    hw=st.sampled_from(["h100", "h200", "b200"]),
)
def test_tensor_parallel_comm_is_zero_at_tp1_and_grows_with_tp(name, ctx, hw):
    comm = [
        decode_iteration(
            Deployment(hardware=load_hardware(hw), model=load_model(name), tp=tp, precision="fp8"),
            ctx,
        ).comm_s
        for tp in (1, 2, 4, 8)
    ]
    assert comm[0] == 0
    assert comm[1] < comm[2] < comm[3]


def test_allreduce_matches_vidur_nccl_measurements():
    h100 = load_hardware("h100")
    # medians from vidur data/profiling/network/h100_dgx/all_reduce.csv
    assert allreduce_s(h100, 2, 67_108_864) == pytest.approx(245e-6, rel=0.15)
    assert allreduce_s(h100, 8, 67_108_864) == pytest.approx(322e-6, rel=0.15)
    assert allreduce_s(h100, 4, 2048) == pytest.approx(38e-6, rel=0.25)


def test_pipeline_hops_cross_nodes_over_the_slower_link():
    h100, model = load_hardware("h100"), load_model("llama-3.1-405b")
    inside = Deployment(hardware=h100, model=model, tp=4, pp=2, precision="fp8")
    across = Deployment(hardware=h100, model=model, tp=8, pp=2, precision="fp8")
    activations = 16_384 * 2
    assert pipeline_hops_s(inside, 1) == pytest.approx(8e-6 + activations / 360e9)
    assert pipeline_hops_s(across, 1) == pytest.approx(20e-6 + activations / 36e9)
    assert pipeline_hops_s(across.model_copy(update={"pp": 1}), 1) == 0


# ------------------------------------------------------------------------ memory and fit


def test_405b_bf16_on_one_h100_is_refused_with_what_would_fit():
    dep = Deployment(
        hardware=load_hardware("h100"), model=load_model("llama-3.1-405b"), precision="bf16"
    )
    with pytest.raises(DoesNotFitError) as info:
        check_fits(dep)
    message = str(info.value)
    assert "llama-3.1-405b" in message
    assert "needs 816 GB (weights 812 GB + KV cache 4.2 GB" in message
    assert "h100 x1 has 72 GB usable (80 GB x 0.9)" in message
    assert "use 16 GPUs (--tp 8 --pp 2)" in message
    fitting = Deployment(
        hardware=load_hardware("h100"),
        model=load_model("llama-3.1-405b"),
        tp=8,
        pp=2,
        precision="bf16",
    )
    check_fits(fitting)


@pytest.mark.parametrize(
    ("model", "precision", "wafers"),
    [("llama-3.1-8b", "bf16", 1), ("llama-3.1-70b", "bf16", 4), ("llama-3.1-405b", "bf16", 21)],
)
def test_wafers_needed_match_the_published_counts(model, precision, wafers):
    # 1 and 4 are Cerebras' own; 405B is unpublished, commenters estimate 19-22
    dep = _sized("wse3", model, precision)
    assert (dep.tp, dep.pp) == (1, wafers)


@FAST
@given(hw=st.sampled_from(HARDWARE), name=st.sampled_from(MODELS), p=st.sampled_from(PRECISIONS))
def test_sizing_returns_the_smallest_layout_that_fits(hw, name, p):
    dep = _sized(hw, name, p)
    assert memory_need(dep).fits
    check_fits(dep)
    if dep.chips > 1:
        smaller = (
            dep.model_copy(update={"pp": dep.pp - 1})
            if dep.pp > 1
            else dep.model_copy(update={"tp": dep.tp // 2})
        )
        assert not memory_need(smaller).fits


def test_sizing_a_fixed_chip_count_and_refusing_too_few():
    h100, model = load_hardware("h100"), load_model("llama-3.1-405b")
    fixed = size_deployment(h100, model, chips=24)
    assert (fixed.tp, fixed.pp) == (8, 3)
    with pytest.raises(DoesNotFitError, match="use 16 GPUs"):
        size_deployment(h100, model, chips=8)
    with pytest.raises(ConfigError):
        size_deployment(h100, model, chips=0)


def test_kv_cache_bytes_per_token():
    assert kv_bytes_per_token(load_model("llama-3.1-8b"), "bf16") == 131_072
    assert kv_bytes_per_token(load_model("llama-3.1-70b"), "bf16") == 327_680
    assert kv_bytes_per_token(load_model("llama-3.1-405b"), "bf16") == 516_096
    assert kv_bytes_per_token(load_model("llama-3.1-70b"), "fp8") == 163_840
    oss = load_model("gpt-oss-120b")  # half its layers keep only a 128-token window
    assert kv_bytes(oss, 10_000, "bf16") == pytest.approx((18 * 10_000 + 18 * 128) * 2 * 8 * 64 * 2)


def test_mla_cache_is_replicated_by_tensor_parallelism():
    r1 = load_model("deepseek-r1")
    dep = Deployment(hardware=load_hardware("b200"), model=r1, tp=8, precision="fp8")
    assert memory_need(dep, 1000).kv_bytes == pytest.approx(8 * kv_bytes(r1, 1000, "fp8"))


def test_batch_is_limited_by_the_kv_cache_that_fits():
    dep = _sized("wse3", "llama-3.1-70b", "bf16")
    few = max_concurrent_requests(dep, 8000)
    many = max_concurrent_requests(dep, 1000)
    assert 1 <= few < many
    # 4 x 44 GB x 0.9 = 158.4 GB, less 141.2 GB of weights, over 320 KiB per token
    assert kv_capacity_tokens(dep) == int((158.4e9 - 141.2e9) // 327_680)
    assert few == kv_capacity_tokens(dep) // 8000


# ---------------------------------------------------------------- precision, MoE, spec decode


def test_precision_changes_bytes_and_rates():
    model = load_model("llama-3.1-70b")
    assert weight_bytes(model, "fp8") == weight_bytes(model, "bf16") / 2
    assert BYTES_PER_VALUE["fp4"] == 0.5
    h100 = load_hardware("h100")
    bf16 = Deployment(hardware=h100, model=model, tp=4, precision="bf16")
    fp8 = bf16.model_copy(update={"precision": "fp8"})
    assert decode_iteration(fp8, [1000]).total_s < decode_iteration(bf16, [1000]).total_s
    assert prefill(fp8, [4000]).total_s < prefill(bf16, [4000]).total_s
    with pytest.raises(ConfigError, match="unknown precision"):
        parse_precision("fp3")


def test_moe_reads_active_experts_alone_and_all_of_them_in_a_big_batch():
    dep = _sized("h200", "gpt-oss-120b", "fp4")
    one = decode_floor_s(dep, [100])
    assert one < weight_bytes(dep.model, "fp4") / 4.8e12 / 5  # far below reading all weights
    crowd = decode_floor_s(dep, [100] * 512)
    assert crowd >= weight_bytes(dep.model, "fp4") / 4.8e12 * 0.99


def test_speculative_decoding_expected_tokens():
    assert SpecDecode.parse("4:0.7").expected_tokens_per_step == pytest.approx((1 - 0.7**5) / 0.3)
    assert SpecDecode(draft_tokens=3, acceptance_rate=1.0).expected_tokens_per_step == 4
    assert SpecDecode(draft_tokens=3, acceptance_rate=0.0).expected_tokens_per_step == 1
    with pytest.raises(ConfigError, match="DRAFT:ACCEPT"):
        SpecDecode.parse("fast")


def test_speculative_decoding_is_a_deployment_option_with_a_draft_cost():
    base = _sized("h100", "llama-3.1-70b", "fp8")
    good = base.model_copy(update={"spec_decode": SpecDecode.parse("4:0.8")})
    useless = base.model_copy(update={"spec_decode": SpecDecode.parse("4:0.0")})
    drafted = base.model_copy(
        update={
            "spec_decode": SpecDecode(
                draft_tokens=4, acceptance_rate=0.8, draft_model=load_model("llama-3.1-8b")
            )
        }
    )
    plain = predict_request(base, 1000, 500).output_tokens_per_s
    assert predict_request(good, 1000, 500).output_tokens_per_s > 1.5 * plain
    assert predict_request(useless, 1000, 500).output_tokens_per_s < plain
    assert plain < predict_request(drafted, 1000, 500).output_tokens_per_s
    step = decode_iteration(good, [1000])
    assert step.tokens_per_request == pytest.approx(
        SpecDecode.parse("4:0.8").expected_tokens_per_step
    )


# -------------------------------------------------------------------------- wafer pipeline


def test_wafer_token_latency_is_the_sum_of_layers_plus_hops():
    dep = _sized("wse3", "llama-3.1-70b", "bf16")
    pipe = wafer_pipeline(dep)
    assert pipe.wafers == 4
    assert pipe.layers_per_wafer == 20
    assert pipe.token_latency_s == pytest.approx(80 * pipe.layer_latency_s)
    step = decode_iteration(dep, [1000])
    assert step.comm_s == pytest.approx(3 * pipe.hop_s)
    assert 1 / step.total_s == pytest.approx(450, rel=0.05)  # rows 2 and 4


def test_wafer_concurrency_comes_from_the_pipeline():
    dep = _sized("wse3", "llama-3.1-70b", "bf16")
    pipe = wafer_pipeline(dep)
    one, many = decode_iteration(dep, [1000]), decode_iteration(dep, [1000] * 32)
    # 32 streams cost the first one's latency plus their math, not 32 latencies
    assert many.total_s < 1.1 * one.total_s
    assert many.work_s - one.work_s == pytest.approx(31 * pipe.token_compute_s, rel=0.05)
    with pytest.raises(ConfigError):
        wafer_pipeline(_sized("h100", "llama-3.1-8b", "bf16"))


def test_wafer_rejects_tensor_parallelism():
    with pytest.raises(ConfigError, match="use pp"):
        Deployment(
            hardware=load_hardware("wse3"),
            model=load_model("llama-3.1-70b"),
            tp=2,
            precision="bf16",
        )


# ------------------------------------------------------------------- a request, end to end


@FAST
@given(
    dep=deployments,
    prompt=st.integers(1, 20_000),
    output=st.integers(1, 3000),
    rtt=st.floats(0, 0.5),
)
def test_the_breakdown_adds_up(dep, prompt, output, rtt):
    b = predict_request(dep.model_copy(update={"network_rtt_s": rtt}), prompt, output)
    parts = b.queue_s + b.network_s + b.prefill_s + b.decode_s + b.comm_s
    assert parts == pytest.approx(b.e2e_s, rel=1e-9)
    assert b.ttft_s + (output - 1) * b.tpot_s == pytest.approx(b.e2e_s, rel=1e-9)
    assert b.network_s >= rtt
    assert b.energy_j == pytest.approx(
        dep.chips * dep.hardware.power_w * (b.e2e_s - b.network_s), rel=1e-9
    )


def test_network_round_trip_adds_to_first_token_and_end_to_end():
    dep = _sized("h100", "llama-3.1-8b", "bf16")
    near = predict_request(dep, 1000, 100)
    far = predict_request(dep.model_copy(update={"network_rtt_s": 0.08}), 1000, 100)
    assert far.ttft_s - near.ttft_s == pytest.approx(0.08)
    assert far.e2e_s - near.e2e_s == pytest.approx(0.08)
    assert far.tpot_s == near.tpot_s


def test_cost_per_chip_hour_or_per_published_token_price():
    gpu = _sized("h100", "llama-3.1-70b", "bf16")
    b = predict_request(gpu, 1000, 500)
    busy = b.e2e_s - b.network_s
    assert b.cost_usd == pytest.approx(gpu.chips * 2.69 * busy / 3600)
    wafer = _sized("wse3", "llama-3.3-70b", "bf16")
    assert predict_request(wafer, 1_000_000, 1_000_000).cost_usd == pytest.approx(0.85 + 1.2)
    assert predict_request(_sized("wse3", "llama-3.1-405b", "bf16"), 10, 10).cost_usd is None


def test_predictions_are_pure():
    dep = _sized("b200", "deepseek-r1", "fp8")
    assert predict_request(dep, 2000, 300) == predict_request(dep, 2000, 300)
    assert closed_loop(dep, 2000, 300, 64) == closed_loop(dep, 2000, 300, 64)
