"""Speculative decoding priced physically, and the wafer's per-layer model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt.errors import ConfigError
from substrates.emulated.deployment import SpecDecode
from substrates.emulated.families import wafer_layer_s
from substrates.emulated.perfmodel import _pass, decode_iteration, decode_span, wafer_pipeline
from substrates.emulated.predict import predict_request
from substrates.emulated.profiles import load_catalog
from substrates.emulated.sizing import build_deployment, size_deployment
from substrates.emulated.speculative import draft_deployment, draft_head, head_params_b

CATALOG = load_catalog()
FAST = settings(max_examples=40, deadline=None)


@given(k=st.integers(1, 16), a=st.floats(0.0, 0.999))
@FAST
def test_expected_tokens_per_cycle(k: int, a: float):
    e = SpecDecode(draft_tokens=k, acceptance_rate=a).expected_tokens_per_step
    assert e == pytest.approx(sum(a**i for i in range(k + 1)))
    assert 1.0 <= e <= k + 1


def test_a_cycle_is_k_draft_passes_plus_one_verification_over_k_plus_1_tokens():
    dep = build_deployment("h100", model="llama-3.1-70b", tp=4, spec_decode="4:0.7:eagle")
    attended = 3 * 2000.0 * dep.model.layers  # three requests at 2,000 tokens each
    cycle = decode_iteration(dep, [2000, 2000, 2000])
    verify = _pass(dep, 3 * 5, attended * 5, attended)
    draft = draft_deployment(dep)
    head_attended = attended / dep.model.layers
    one_draft = _pass(draft, 3, head_attended, head_attended)
    assert cycle.work_s == pytest.approx(verify.work_s + 4 * one_draft.work_s)
    assert cycle.comm_s == pytest.approx(verify.comm_s + 4 * one_draft.comm_s)
    assert cycle.tokens_per_request == pytest.approx((1 - 0.7**5) / 0.3)


def test_draft_heads_are_priced_from_the_target_shape():
    for name in ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b"):
        model = CATALOG.get_model(name)
        eagle, mtp = head_params_b(model, "eagle"), head_params_b(model, "mtp")
        # more than one layer's share, far less than the model
        assert model.total_params_b / model.layers < eagle < 0.1 * model.total_params_b
        assert model.total_params_b / model.layers < mtp < 0.1 * model.total_params_b
        assert draft_head(model, "eagle").layers == 1
    small, big = (
        head_params_b(CATALOG.get_model(m), "eagle") for m in ("llama-3.1-8b", "llama-3.1-405b")
    )
    assert big > 5 * small  # the layer grows with d^2, the LM head with d


def test_better_acceptance_is_faster_and_useless_drafts_cost():
    def speed(spec: str) -> float:
        dep = build_deployment("h100", model="llama-3.1-70b", tp=4, spec_decode=spec)
        return predict_request(dep, 1000, 500).output_tokens_per_s

    plain = speed("off")
    assert speed("4:0.0") < plain < speed("4:0.5") < speed("4:0.8") < speed("4:0.95")
    # a separate 8B draft costs more per draft token than an EAGLE head
    assert speed("4:0.8:llama-3.1-8b") < speed("4:0.8:eagle")


def test_content_sets_the_acceptance_of_the_stacks_draft():
    chat = build_deployment("wse3", spec_content="chat")
    reasoning = build_deployment("wse3", spec_content="reasoning")
    assert chat.spec_decode
    assert reasoning.spec_decode
    assert reasoning.spec_decode.acceptance_rate < chat.spec_decode.acceptance_rate
    assert (
        predict_request(reasoning, 1000, 500).output_tokens_per_s
        < predict_request(chat, 1000, 500).output_tokens_per_s
    )


def test_a_stack_drafts_only_for_the_models_it_ships_drafts_for():
    r1 = build_deployment("b200", model="deepseek-r1", stack="trtllm", spec_decode="on")
    assert r1.spec_decode is not None
    assert r1.spec_decode.draft == "mtp"
    eight = build_deployment("h100", model="llama-3.1-8b", stack="trtllm", spec_decode="on")
    assert eight.spec_decode is not None
    assert eight.spec_decode.draft == "eagle"
    with pytest.raises(ConfigError, match="ships no draft for qwen3-32b"):
        build_deployment("h100", model="qwen3-32b", stack="trtllm", spec_decode="on")
    # TensorRT-LLM ships the drafts but runs them only when asked; vLLM likewise
    assert build_deployment("h100", model="llama-3.1-8b").spec_decode is None
    assert build_deployment("h100", model="llama-3.1-8b", stack="vllm").spec_decode is None
    # cs-current speculates out of the box
    assert build_deployment("wse3", model="llama-3.3-70b").spec_decode is not None


def test_a_speculative_span_advances_the_expected_tokens():
    dep = build_deployment("wse3")
    assert dep.spec_decode is not None
    e = dep.spec_decode.expected_tokens_per_step
    span = decode_span(dep, [1000], 10 * e)
    assert span.total_s == pytest.approx(
        10 * decode_iteration(dep, [1000 + 5 * e]).total_s, rel=0.01
    )


# ----------------------------------------------------------------------- the wafer's layers


def _wafer(model: str, **kw: object) -> float:
    dep = build_deployment("wse3", model=model, stack="cs-2024-08", **kw)  # type: ignore[arg-type]
    return wafer_layer_s(dep)


def test_wafer_layer_latency_grows_with_width_not_with_layers():
    eff = CATALOG.stacks["cs-2024-08"].efficiency
    widths = {
        m: CATALOG.get_model(m).hidden_size
        for m in ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b")
    }
    layers = {m: _wafer(m) for m in widths}
    assert layers["llama-3.1-8b"] < layers["llama-3.1-70b"] < layers["llama-3.1-405b"]
    for m, tau in layers.items():
        fixed = eff["layer_latency_s"] + eff["reduction_s_per_width"] * widths[m]
        assert fixed < tau < fixed + 2.2e-6  # the SRAM read: at most 48 KB / per-core bandwidth


def test_wafer_weight_read_is_the_wafers_weights_over_its_bandwidth():
    dep = build_deployment("wse3", model="llama-3.1-70b", stack="cs-2024-08")
    eff = dep.efficiency
    read = wafer_layer_s(dep) - eff.layer_latency_s - eff.reduction_s_per_width * 8192
    per_wafer = dep.model.total_params_b * 2e9 / dep.pp
    assert read == pytest.approx(per_wafer / (dep.hardware.memory_bandwidth_tb_per_s * 1e12))
    spread = build_deployment("wse3", model="llama-3.1-70b", stack="cs-2024-08", pp=8)
    assert wafer_layer_s(spread) < wafer_layer_s(dep)  # same layer over twice the cores


def test_wafer_token_latency_sums_its_layers():
    for model in ("llama-3.1-8b", "llama-3.1-405b", "gpt-oss-120b"):
        dep = size_deployment(
            CATALOG.get_hardware("wse3"), CATALOG.get_model(model), spec_decode=None
        )
        pipe = wafer_pipeline(dep)
        assert pipe.token_latency_s == pytest.approx(dep.model.layers * pipe.layer_latency_s)


@pytest.mark.parametrize("text", ["4:1.5", "4:-0.1", "0:0.5", "40:0.5", "4:nan", "4", "4:0.7:tree"])
def test_a_bad_spec_decode_is_one_clear_error(text: str) -> None:
    with pytest.raises(ConfigError, match="spec-decode"):
        SpecDecode.parse(text)


def test_a_bad_spec_decode_on_the_command_line_exits_2_without_a_traceback(
    agentrt_command,
) -> None:
    proc = agentrt_command("predict", "-s", "h100", "--spec-decode", "4:1.5")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "acceptance rate 0 to 1" in proc.stderr
