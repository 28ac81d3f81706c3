from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt.errors import ConfigError, DoesNotFitError
from substrates.emulated import moe
from substrates.emulated.calibration import predict_point
from substrates.emulated.comm import ACTIVATION_BYTES, allreduce_s, pipeline_hops_s
from substrates.emulated.deployment import (
    BYTES_PER_VALUE,
    Deployment,
    kv_bytes_per_token,
    kv_shards,
    weight_bytes,
)
from substrates.emulated.perfmodel import (
    decode_floor_s,
    decode_iteration,
    prefill,
    prefill_floor_s,
)
from substrates.emulated.profiles import load_catalog
from substrates.emulated.sizing import check_fits, kv_capacity_tokens, memory_need, size_deployment

CATALOG = load_catalog()
MOE_MODELS = sorted(n for n, m in CATALOG.models.items() if m.is_moe)
DENSE_MODELS = sorted(n for n, m in CATALOG.models.items() if not m.is_moe)
GPU_LIKE = sorted(n for n, h in CATALOG.hardware.items() if not h.spreads_layers)
FAST = settings(max_examples=60, deadline=None)


def _dep(hw: str, model: str, **kw: object) -> Deployment:
    fields: dict[str, object] = {"precision": "fp8", **kw}
    return Deployment(hardware=CATALOG.get_hardware(hw), model=CATALOG.get_model(model), **fields)


# ---------------------------------------------------------------- the all-to-all


def test_all_to_all_grows_with_tokens_and_top_k_and_falls_with_bandwidth():
    hw = CATALOG.get_hardware("b200")
    base = moe.all_to_all_s(hw, 8, 256, 7168, 8)
    assert moe.all_to_all_s(hw, 8, 1024, 7168, 8) > base > moe.all_to_all_s(hw, 8, 16, 7168, 8)
    assert moe.all_to_all_s(hw, 8, 256, 7168, 8) > moe.all_to_all_s(hw, 8, 256, 7168, 2)
    wider = 4 * hw.scale_up_bandwidth_gb_per_s
    faster = hw.model_copy(update={"scale_up_bandwidth_gb_per_s": wider})
    assert moe.all_to_all_s(faster, 8, 256, 7168, 8) < base
    # a latency term per all-to-all: even one token pays the link latency
    assert moe.all_to_all_s(hw, 8, 1, 7168, 1) >= hw.scale_up_latency_s
    assert moe.all_to_all_s(hw, 1, 1024, 7168, 8) == 0.0


def test_all_to_all_across_nodes_is_set_by_the_slower_link():
    hw = CATALOG.get_hardware("b200")
    inside = moe.all_to_all_s(hw, 8, 4096, 7168, 8)
    across = moe.all_to_all_s(hw, 16, 8192, 7168, 8)  # same tokens per chip, half off-node
    assert across > inside
    assert across >= hw.scale_out_latency_s


@FAST
@given(
    tokens=st.floats(1, 1e5),
    more=st.floats(1.01, 10),
    k=st.integers(1, 16),
    ep=st.sampled_from([2, 4, 8, 16, 32]),
)
def test_all_to_all_is_monotone(tokens, more, k, ep):
    hw = CATALOG.get_hardware("h100")
    t = moe.all_to_all_s(hw, ep, tokens, 4096, k)
    assert moe.all_to_all_s(hw, ep, tokens * more, 4096, k) > t
    assert moe.all_to_all_s(hw, ep, tokens, 4096, k + 1) > t


# ---------------------------------------------------------------- dense models unchanged


def _old_gpu_pass_s(dep: Deployment, tokens: float, attended: float, kv_positions: float) -> float:
    """The tensor/pipeline-parallel pass as it was before MoE parallelism (the oracle)."""
    from substrates.emulated import families

    hw, m = dep.hardware, dep.model
    bw = hw.memory_bandwidth_tb_per_s * 1e12 * hw.efficiency.bandwidth_efficiency
    flop_rate = hw.peak_tflops(dep.precision) * 1e12 * hw.efficiency.flop_efficiency
    weights = m.total_params_b * (BYTES_PER_VALUE[dep.precision] * 1e9)
    kv = kv_positions * m.kv_values_per_token_per_layer * BYTES_PER_VALUE[dep.kv_dtype]
    flops = 2.0 * m.active_params_b * 1e9 * tokens + 4.0 * m.attention_heads * m.head_dim * attended
    t_mem = families.memory_read_s(dep, weights / dep.tp, kv / kv_shards(dep), bw)
    work = t_mem + flops / (flop_rate * dep.tp) + hw.efficiency.iteration_overhead_s
    work += families.pipeline_fill_s(dep, tokens)
    message = tokens * m.hidden_size * ACTIVATION_BYTES
    comm = 2 * m.layers * allreduce_s(hw, dep.tp, message) + pipeline_hops_s(dep, tokens)
    return work + comm


@pytest.mark.parametrize("hw", GPU_LIKE)
@pytest.mark.parametrize("model", DENSE_MODELS)
def test_ep_1_reproduces_the_dense_model_exactly(hw, model):
    hardware = CATALOG.get_hardware(hw)
    # the oracle prices the hardware's own efficiency (NCCL, no stack overrides): the vllm stack
    stack = CATALOG.get_stack("vllm", hardware) if hw in ("h100", "h200", "b200") else None
    dep = size_deployment(hardware, CATALOG.get_model(model), precision="fp8", stack=stack)
    assert dep.ep == 1
    assert not dep.attention_dp
    for batch in (1, 7, 64):
        ctx = [1000 + 37 * i for i in range(batch)]
        step = decode_iteration(dep, ctx)
        attended = sum(ctx) * dep.model.layers
        if dep.model.sliding_window_layers:
            continue  # the oracle above does not cap windows; the hooks are checked below
        assert step.total_s == _old_gpu_pass_s(dep, batch, attended, attended)
    assert moe.chip_weight_bytes(dep, 5) == weight_bytes(dep.model, "fp8") / dep.tp
    assert moe.allreduces_per_pass(dep) == 2 * dep.model.layers
    assert moe.moe_comm_s(dep, 100) == 0.0
    assert moe.router_flops(dep.model, 100) == 0.0
    assert memory_need(dep).weights_bytes == weight_bytes(dep.model, "fp8")


def test_ep_and_attention_dp_are_refused_on_dense_models():
    with pytest.raises(ConfigError, match="dense"):
        _dep("h100", "llama-3.1-70b", tp=8, ep=8)
    with pytest.raises(ConfigError, match="dense"):
        _dep("h100", "llama-3.1-70b", tp=8, ep=8, attention_dp=True)


def test_bad_moe_layouts_say_what_to_do():
    with pytest.raises(ConfigError, match="must divide tp"):
        _dep("b200", "deepseek-r1", tp=8, ep=3, precision="fp4")
    with pytest.raises(ConfigError, match="needs ep = tp"):
        _dep("b200", "deepseek-r1", tp=8, ep=4, attention_dp=True, precision="fp4")
    hybrid = _dep("b200", "deepseek-r1", tp=8, ep=4, precision="fp4")  # experts EP4 x TP2
    assert moe.moe_comm_s(hybrid, 64) == 0.0
    with pytest.raises(ConfigError, match="needs ep = tp"):
        _dep("b200", "deepseek-r1", tp=8, ep=1, attention_dp=True, precision="fp4")
    with pytest.raises(ConfigError, match="use pp"):
        _dep("wse3", "gpt-oss-120b", pp=4, ep=4, precision="bf16")
    with pytest.raises(ConfigError, match="heads"):
        _dep("b200", "llama-4-maverick", tp=16, ep=16)  # 40 heads, TP attention
    # DP attention lifts the heads and node limits: attention is not split
    dep = _dep("b200", "llama-4-maverick", tp=16, ep=16, attention_dp=True)
    assert dep.chips == 16
    assert "--ep 16" in dep.describe()


# ---------------------------------------------------------------- reads: active vs total


@FAST
@given(model=st.sampled_from(MOE_MODELS), tokens=st.floats(1, 1e6), more=st.floats(1, 100))
def test_moe_read_bytes_lie_between_active_and_total(model, tokens, more):
    m = CATALOG.get_model(model)
    read = moe.weights_read_bytes(m, "bf16", tokens)
    assert m.active_params_b * 2e9 * 0.999 <= read <= m.total_params_b * 2e9 * 1.001
    assert moe.weights_read_bytes(m, "bf16", tokens * more) >= read
    assert moe.weights_read_bytes(m, "bf16", 1) == pytest.approx(m.active_params_b * 2e9)
    assert moe.weights_read_bytes(m, "bf16", 1e7) == pytest.approx(m.total_params_b * 2e9)


@FAST
@given(
    model=st.sampled_from(MOE_MODELS),
    tokens=st.floats(1, 1e5),
    ep=st.sampled_from([2, 4, 8, 16]),
)
def test_busiest_chip_holds_between_the_mean_and_its_share(model, tokens, ep):
    m = CATALOG.get_model(model)
    touched = moe.experts_touched(m, tokens)
    busiest = moe.busiest_chip_experts(m, tokens, ep)
    assert touched / ep * 0.999 <= busiest <= min(m.experts / ep, touched) * 1.001
    assert busiest >= min(1.0, touched) - 1e-9
    assert moe.busiest_chip_experts(m, tokens, 1) == touched


def test_expert_parallelism_reads_whole_experts_at_batch_1_and_shares_at_large_batch():
    tp_ = _dep("b200", "deepseek-r1", tp=8, precision="fp4")
    ep_ = _dep("b200", "deepseek-r1", tp=8, ep=8, precision="fp4")
    assert moe.chip_weight_bytes(ep_, 1) > moe.chip_weight_bytes(tp_, 1)
    assert moe.chip_weight_bytes(ep_, 1e6) == pytest.approx(moe.chip_weight_bytes(tp_, 1e6))


def test_dp_attention_keeps_non_expert_weights_whole_on_every_chip():
    ep_ = _dep("b200", "deepseek-r1", tp=8, ep=8, precision="fp4")
    dp = _dep("b200", "deepseek-r1", tp=8, ep=8, attention_dp=True, precision="fp4")
    shared = dp.model.shared_params_b * 1e9 * 0.5
    assert moe.chip_weight_bytes(dp, 64) - moe.chip_weight_bytes(ep_, 64) == pytest.approx(
        shared * 7 / 8
    )


# ---------------------------------------------------------------- MLA and DP attention


def test_mla_kv_is_far_smaller_than_the_same_model_with_gqa():
    mla = CATALOG.get_model("deepseek-r1")
    gqa = mla.model_copy(update={"mla_kv_dim": None})
    assert kv_bytes_per_token(mla, "bf16") * 10 < kv_bytes_per_token(gqa, "bf16")
    assert kv_bytes_per_token(mla, "bf16") == mla.layers * 576 * 2
    # the decode reads follow: a long context costs less with the latent
    dep = _dep("b200", "deepseek-r1", tp=8, precision="fp4")
    as_gqa = dep.model_copy(update={"model": gqa})
    ctx = [32_000] * 16
    assert decode_iteration(dep, ctx).work_s < decode_iteration(as_gqa, ctx).work_s


def test_dp_attention_removes_the_attention_all_reduce():
    tp_ = _dep("b200", "deepseek-r1", tp=8, precision="fp4")
    ep_ = _dep("b200", "deepseek-r1", tp=8, ep=8, precision="fp4")
    dp = _dep("b200", "deepseek-r1", tp=8, ep=8, attention_dp=True, precision="fp4")
    layers, moe_layers = dp.model.layers, moe.moe_layer_count(dp.model)
    assert moe.allreduces_per_pass(tp_) == 2 * layers
    assert moe.allreduces_per_pass(ep_) == 2 * layers  # TP attention: tokens on every chip
    assert moe.moe_comm_s(ep_, 64) == 0.0
    assert moe.allreduces_per_pass(dp) == 0
    assert moe.moe_comm_s(dp, 64) == 2 * moe_layers * moe.all_to_all_s(
        dp.hardware, 8, 64, dp.model.hidden_size, 8
    )
    ctx = [2000] * 64
    assert decode_iteration(dp, ctx).comm_s == pytest.approx(moe.moe_comm_s(dp, 64))
    assert decode_iteration(dp, ctx).comm_s < decode_iteration(tp_, ctx).comm_s


def test_dp_attention_splits_the_kv_cache_by_requests():
    tp_ = _dep("b200", "deepseek-r1", tp=8, precision="fp4")
    dp = _dep("b200", "deepseek-r1", tp=8, ep=8, attention_dp=True, precision="fp4")
    assert kv_shards(tp_) == 1  # the MLA latent is replicated by tensor parallelism
    assert kv_shards(dp) == 8
    assert kv_capacity_tokens(dp) > 5 * kv_capacity_tokens(tp_)


# ---------------------------------------------------------------- capacity: total params


@pytest.mark.parametrize("model", MOE_MODELS)
def test_capacity_counts_total_parameters(model):
    m = CATALOG.get_model(model)
    dep = size_deployment(CATALOG.get_hardware("h100"), m, precision="fp8")
    assert memory_need(dep).weights_bytes == pytest.approx(m.total_params_b * 1e9)
    assert dep.chips * 80e9 * 0.9 >= m.total_params_b * 1e9  # not sized by active params


def test_a_model_whose_active_params_fit_but_total_do_not_is_refused():
    dep = _dep("h100", "deepseek-r1", tp=1)  # 37 GB active fits 72 GB, 671 GB total does not
    with pytest.raises(DoesNotFitError, match="deepseek-r1"):
        check_fits(dep)


def test_dp_attention_copies_count_against_capacity():
    ep_ = _dep("b200", "deepseek-r1", tp=8, ep=8, precision="fp4")
    dp = _dep("b200", "deepseek-r1", tp=8, ep=8, attention_dp=True, precision="fp4")
    extra = 7 * dp.model.shared_params_b * 1e9 * 0.5
    assert memory_need(dp).weights_bytes - memory_need(ep_).weights_bytes == pytest.approx(extra)


@pytest.mark.parametrize("model", MOE_MODELS)
def test_wafer_keeps_every_expert_resident_and_reads_the_active_ones(model):
    from substrates.emulated import families

    m = CATALOG.get_model(model)
    dep = size_deployment(CATALOG.get_hardware("wse3"), m, precision="bf16")
    usable = dep.hardware.memory_gb * 1e9 * dep.hardware.efficiency.memory_usable_fraction
    assert dep.pp * usable >= m.total_params_b * 2e9  # wafers hold all experts
    # the layers share their wafers' cores; a token reads only the active experts' cores
    cores = families.layer_region_units(dep)
    assert cores == pytest.approx((dep.hardware.cores or 1) * dep.pp / m.layers)
    dense_like = dep.model_copy(update={"model": m.model_copy(update={"experts": None})})
    assert families.wafer_layer_s(dep) > families.wafer_layer_s(dense_like)  # routing stages
    one = decode_iteration(dep, [1000])
    assert one.total_s >= decode_floor_s(dep, [1000])


# ---------------------------------------------------------------- router


@pytest.mark.parametrize("model", MOE_MODELS)
def test_router_costs_a_little_and_grows_with_tokens(model):
    m = CATALOG.get_model(model)
    assert 0 < moe.router_flops(m, 1) < moe.router_flops(m, 10)
    assert moe.router_flops(m, 1) < 1e-3 * 2 * m.active_params_b * 1e9


# ---------------------------------------------------------------- never below the floor


def _moe_layouts(hw: str, model: str, precision: str) -> list[Deployment]:
    base = size_deployment(CATALOG.get_hardware(hw), CATALOG.get_model(model), precision=precision)
    out = [base]
    if base.tp > 1:
        ep = base.model_copy(update={"ep": base.tp})
        out.append(Deployment.model_validate(dict(ep)))
        out.append(Deployment.model_validate({**dict(ep), "attention_dp": True}))
    return out


@FAST
@given(
    hw=st.sampled_from(sorted(CATALOG.hardware)),
    model=st.sampled_from(MOE_MODELS),
    precision=st.sampled_from(["bf16", "fp8", "fp4"]),
    ctx=st.lists(st.integers(1, 20_000), min_size=1, max_size=48),
)
def test_moe_layouts_never_beat_the_physical_floor(hw, model, precision, ctx):
    for dep in _moe_layouts(hw, model, precision):
        assert decode_iteration(dep, ctx).total_s >= decode_floor_s(dep, ctx) > 0
        assert prefill(dep, ctx).total_s >= prefill_floor_s(dep, ctx) > 0
        assert math.isfinite(decode_iteration(dep, ctx).total_s)


# ---------------------------------------------------------------- calibration scenarios


def test_calibration_scenarios_take_ep_and_dp_attention():
    base = "hw=b200 model=deepseek-r1 tp=8 precision=fp4 in=1024 out=256 c=8"
    plain = predict_point("throughput_tokens_per_s", base, CATALOG)
    dp = predict_point("throughput_tokens_per_s", base + " ep=8 adp=1", CATALOG)
    assert plain > 0
    assert dp > 0
    assert dp != plain
    with pytest.raises(ConfigError, match="must divide tp"):
        predict_point("throughput_tokens_per_s", base + " ep=3", CATALOG)


# ---------------------------------------------------------------- across nodes, in an engine


def test_expert_parallelism_across_nodes_pays_the_scale_out_link():
    one_node = _dep("b200", "deepseek-r1", tp=8, ep=8, attention_dp=True, precision="fp4")
    two_nodes = _dep("b200", "deepseek-r1", tp=16, ep=16, attention_dp=True, precision="fp4")
    ctx = [2000] * 256
    assert moe.moe_comm_s(two_nodes, 256) > moe.moe_comm_s(one_node, 256)
    # more chips hold the experts: each reads fewer of them
    assert moe.chip_weight_bytes(two_nodes, 256) < moe.chip_weight_bytes(one_node, 256)
    assert decode_iteration(two_nodes, ctx).total_s >= decode_floor_s(two_nodes, ctx)


def test_an_engine_serves_an_expert_parallel_deployment(vrun):
    from agentrt.substrate import InferenceRequest
    from substrates.emulated.engine import EmulatedEngine

    dep = _dep("b200", "deepseek-r1", tp=8, ep=8, attention_dp=True, precision="fp4")
    engine = EmulatedEngine(dep, seed=1)
    req = InferenceRequest.from_prompt("p", prompt_tokens=1000, max_output_tokens=50)
    result = vrun(engine.infer, req)
    assert result.usage.output_tokens == 50
    assert result.timing.decode_s >= 49 * decode_floor_s(dep, [1000])


def test_dp_attention_splits_requests_not_tokens():
    dp = _dep("b200", "deepseek-r1", tp=8, ep=8, attention_dp=True, precision="fp4")
    kv = 1e9
    one_kv, one_flops = moe.dp_attention_load(dp, 8000, 8000 * 4000 * 61, kv, 1)
    eight_kv, eight_flops = moe.dp_attention_load(dp, 8000, 8000 * 4000 * 61, kv, 8)
    assert one_kv == kv  # one request: its whole cache on one chip
    assert eight_kv == pytest.approx(kv / 8)
    assert one_flops > 3 * eight_flops
    nine_kv, _ = moe.dp_attention_load(dp, 9, 9 * 1000 * 61, kv, 9)
    assert nine_kv == pytest.approx(kv * 2 / 9)  # the busiest chip holds two of nine
    # one long prompt prefills on one chip; eight prompts of the same total spread over eight
    assert prefill(dp, [8000]).work_s > prefill(dp, [1000] * 8).work_s
