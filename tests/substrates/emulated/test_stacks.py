"""Serving stacks as data: lookup, defaults, overrides, options and the calibration's stacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrt.errors import ConfigError, UnknownNameError
from substrates.emulated import PRESETS, build_engine
from substrates.emulated.calibration import DATA_FILE, _read_rows, predict_point
from substrates.emulated.comm import allreduce_s
from substrates.emulated.perfmodel import decode_iteration
from substrates.emulated.predict import predict_request
from substrates.emulated.profiles import clear_profile_cache, load_catalog, load_stack
from substrates.emulated.sizing import build_deployment, size_deployment

CATALOG = load_catalog()


def test_every_preset_names_a_default_stack_that_runs_on_it():
    for preset, hw_name in PRESETS.items():
        hw = CATALOG.get_hardware(hw_name)
        assert hw.default_stack, preset
        stack = CATALOG.get_stack(hw.default_stack, hw)
        assert stack.applies_to(hw)
        assert build_engine(preset, model="llama-3.1-8b").deployment.stack == stack


def test_the_default_stack_of_every_calibrated_preset_is_the_one_the_calibration_checks():
    scored_stacks: dict[str, set[str]] = {}
    for row in _read_rows(DATA_FILE):
        if row["agentrt_use"] not in ("fit", "check"):
            continue
        spec = dict(item.split("=", 1) for item in row["agentrt_scenario"].split())
        assert "stack" in spec, f"row {row['row']} does not name its stack"
        hw = CATALOG.get_hardware(spec["hw"])
        scored_stacks.setdefault(hw.name, set()).add(spec["stack"])
    for hw_name, stacks in scored_stacks.items():
        assert CATALOG.get_hardware(hw_name).default_stack in stacks, hw_name


def test_default_configuration_is_the_calibrated_one_on_the_wafer():
    """Row 13's scenario (gpt-oss-120b on wse3) is what `agentrt predict` does by default."""
    row13 = next(r for r in _read_rows(DATA_FILE) if r["row"] == "13")
    calibrated = predict_point(row13["metric"], row13["agentrt_scenario"], CATALOG)
    dep = build_deployment("wse3", model="gpt-oss-120b", spec_content="reasoning")
    assert predict_request(dep, 1000, 500).output_tokens_per_s == pytest.approx(calibrated)


def test_unknown_stack_suggests_the_stacks_of_that_hardware():
    with pytest.raises(UnknownNameError) as info:
        build_deployment("wse3", stack="cs-curent")
    message = str(info.value)
    assert "did you mean 'cs-current'" in message
    assert "cs-2024-08" in message
    assert "vllm" not in message


def test_a_stack_for_other_hardware_is_a_clear_error():
    with pytest.raises(ConfigError, match="runs on h100, h200, b200, not on wse3"):
        build_deployment("wse3", stack="trtllm")
    with pytest.raises(ConfigError, match="not on h100"):
        build_deployment("h100", stack="cs-current")


def test_a_stack_overrides_only_the_fields_it_names():
    vllm = build_deployment("h100", model="llama-3.1-70b", stack="vllm", tp=8, precision="fp8")
    trt = build_deployment("h100", model="llama-3.1-70b", stack="trtllm", tp=8, precision="fp8")
    assert vllm.efficiency == vllm.hardware.efficiency  # vLLM adds no overrides
    # CUDA graphs: a small host overhead, but each layer's kernels keep a fixed latency
    assert trt.efficiency.iteration_overhead_s < vllm.efficiency.iteration_overhead_s
    assert trt.efficiency.layer_latency_s > vllm.efficiency.layer_latency_s == 0
    assert trt.efficiency.bandwidth_efficiency == vllm.efficiency.bandwidth_efficiency
    # the custom one-shot all-reduce beats NCCL on decode's small messages
    message = 8192 * 2.0
    assert allreduce_s(trt.hardware, 8, message, trt.efficiency) < allreduce_s(
        vllm.hardware, 8, message, vllm.efficiency
    )
    # and part of it hides under the kernels (comm_overlap_fraction)
    busy = [2000] * 64
    assert decode_iteration(trt, busy).comm_s < decode_iteration(vllm, busy).comm_s / 2


def test_custom_allreduce_is_never_slower_than_nccl_and_wins_on_small_messages():
    hw = CATALOG.get_hardware("h100")
    trt = load_stack("trtllm").apply(hw.efficiency)
    for n in (2, 4, 8):
        for size in (2e3, 16e3, 1e6, 64e6):
            assert allreduce_s(hw, n, size, trt) <= allreduce_s(hw, n, size) + 1e-15
        assert allreduce_s(hw, n, 16e3, trt) < 0.5 * allreduce_s(hw, n, 16e3)
    assert allreduce_s(hw, 1, 16e3, trt) == 0.0


def test_overlap_hides_at_most_its_share_of_the_communication():
    base = build_deployment("h100", model="llama-3.1-70b", tp=8, stack="trtllm", spec_decode="off")
    exposed = base.model_copy(
        update={
            "stack": base.stack.model_copy(
                update={"efficiency": {**base.stack.efficiency, "comm_overlap_fraction": 0.0}}
            )
        }
    )
    hidden, shown = decode_iteration(base, [1000]), decode_iteration(exposed, [1000])
    f = base.efficiency.comm_overlap_fraction
    assert hidden.work_s == pytest.approx(shown.work_s)
    assert hidden.comm_s == pytest.approx(shown.comm_s - f * min(shown.comm_s, shown.work_s))


def test_the_wafer_stacks_differ_where_the_fit_says(tmp_path: Path):
    launch = build_deployment("wse3", stack="cs-2024-08")
    current = build_deployment("wse3")
    assert current.stack.name == "cs-current"
    assert launch.spec_decode is None
    assert current.spec_decode is not None
    assert current.spec_decode.draft == "eagle"
    plain = predict_request(launch, 1000, 500).output_tokens_per_s
    assert 3 * plain < predict_request(current, 1000, 500).output_tokens_per_s
    moe = build_deployment("wse3", model="gpt-oss-120b")  # moe = true: MoE models speculate
    assert moe.spec_decode is not None
    assert moe.spec_decode.acceptance_rate == moe.stack.speculation.acceptance["reasoning"]  # type: ignore[union-attr]


def test_a_stack_file_is_validated(tmp_path: Path):
    good = (Path(__file__).parents[3] / "substrates/emulated/profiles/stacks/vllm.toml").read_text()
    (tmp_path / "stacks").mkdir()
    bad = good.replace('name = "vllm"', 'name = "mine"').replace(
        "# No [efficiency] overrides", "[efficiency]\nwarp_speed = 2.0\n\n# No"
    )
    (tmp_path / "stacks" / "mine.toml").write_text(bad)
    with pytest.raises(ConfigError, match="unknown efficiency field.*warp_speed"):
        load_catalog([tmp_path])
    unsourced = good.replace('name = "vllm"', 'name = "mine"').replace(
        "# No [efficiency] overrides", "[efficiency]\niteration_overhead_s = 1e-4\n\n# No"
    )
    (tmp_path / "stacks" / "mine.toml").write_text(unsourced)
    clear_profile_cache()
    with pytest.raises(ConfigError, match="no entry in \\[fitted_to\\] for: iteration_overhead_s"):
        load_catalog([tmp_path])
    clear_profile_cache()


def test_ep_is_an_option_and_is_checked():
    with pytest.raises(ConfigError, match="dense"):
        build_deployment("h100", model="llama-3.1-8b", ep=2)
    dep = build_deployment("b200", model="deepseek-r1", ep=8)
    assert dep.ep == 8
    assert dep.chips >= 8
    with pytest.raises(ConfigError, match="ep=7 must divide tp=8"):
        size_deployment(dep.hardware, dep.model, ep=7)


def test_calibration_scenario_keys():
    base = "hw=h100 model=llama-3.1-70b tp=4 precision=fp8 in=1000 out=200"
    plain = predict_point("output_tokens_per_s_per_user", f"{base} stack=trtllm spec=off", CATALOG)
    assert plain == predict_point("output_tokens_per_s_per_user", f"{base} stack=trtllm", CATALOG)
    eagle = predict_point("output_tokens_per_s_per_user", f"{base} stack=trtllm spec=on", CATALOG)
    drafted = predict_point(
        "output_tokens_per_s_per_user", f"{base} stack=vllm spec=4:0.8 draft=llama-3.1-8b", CATALOG
    )
    assert eagle > plain
    assert drafted > 0
    chat = predict_point("output_tokens_per_s_per_user", f"{base} stack=trtllm spec=on", CATALOG)
    reasoning = predict_point(
        "output_tokens_per_s_per_user", f"{base} stack=trtllm spec=on content=reasoning", CATALOG
    )
    assert reasoning < chat
    with pytest.raises(ConfigError, match="spec=K:A"):
        predict_point("output_tokens_per_s_per_user", f"{base} draft=mtp", CATALOG)


def test_predict_prints_the_stack_and_takes_it_as_an_option(agentrt_command):
    out = agentrt_command("predict", "-s", "wse3", "--model", "llama-3.1-8b", "--json")
    assert json.loads(out.stdout)["stack"] == "cs-current"
    old = agentrt_command("predict", "-s", "wse3", "-o", "stack=cs-2024-08", "--json")
    data = json.loads(old.stdout)
    assert data["stack"] == "cs-2024-08"
    assert data["speculation"] is None
    wrong = agentrt_command("predict", "-s", "h100", "--stack", "cs-current")
    assert wrong.returncode == 2
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert "stacks for h100: trtllm, vllm" in wrong.stderr


def test_the_table_names_every_stack_file():
    assert sorted(CATALOG.stacks) == sorted(
        p.stem for p in (DATA_FILE.parents[1] / "profiles" / "stacks").glob("*.toml")
    )


def test_calibration_scenario_moe_keys():
    moe = "hw=b200 model=deepseek-r1 tp=8 precision=fp4 in=1000 out=200 stack=vllm"
    assert predict_point("output_tokens_per_s_per_user", f"{moe} ep=8 adp=1", CATALOG) > 0
    with pytest.raises(ConfigError, match="adp= is 0 or 1"):
        predict_point("output_tokens_per_s_per_user", f"{moe} adp=2", CATALOG)
    with pytest.raises(ConfigError, match="dense"):
        predict_point("output_tokens_per_s_per_user", "hw=h100 model=llama-3.1-8b ep=2", CATALOG)


def test_spec_decode_on_turns_on_a_shipped_draft_from_the_command_line(agentrt_command):
    plain = json.loads(agentrt_command("predict", "-s", "b200", "--json").stdout)
    drafted = json.loads(
        agentrt_command("predict", "-s", "b200", "--spec-decode", "on", "--json").stdout
    )
    assert plain["stack"] == drafted["stack"] == "trtllm"
    assert drafted["output_tokens_per_s"] > plain["output_tokens_per_s"]
    refused = agentrt_command(
        "predict", "-s", "h100", "--model", "qwen3-32b", "--spec-decode", "on"
    )
    assert refused.returncode == 2
    assert "ships no draft for qwen3-32b" in refused.stderr
    assert "Traceback" not in refused.stderr
