from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agentrt.errors import ConfigError, UnknownNameError
from substrates.emulated.profiles import (
    BUILTIN_PROFILE_DIR,
    PROFILE_PATH_ENV,
    HardwareProfile,
    clear_profile_cache,
    hardware_names,
    load_catalog,
    load_hardware,
    load_model,
    model_names,
)

HARDWARE = {
    "wse3",
    "h100",
    "h200",
    "b200",
    "tpu-v5e",
    "tpu-v6e",
    "gaudi3",
    "inferentia2",
    "trainium2",
    "maia100",
    "groq-lpu",
    "sn40l",
    "fpga",
}
MODELS = {
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "llama-3.3-70b",
    "llama-2-70b",
    "qwen3-32b",
    "qwen3-235b-a22b",
    "gpt-oss-120b",
    "llama-4-maverick",
    "deepseek-r1",
}
MOE = {"gpt-oss-120b", "llama-4-maverick", "deepseek-r1", "qwen3-235b-a22b"}


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.delenv(PROFILE_PATH_ENV, raising=False)
    clear_profile_cache()
    yield
    clear_profile_cache()


def _copy_builtin(name: str, dest: Path, kind: str = "hardware") -> Path:
    target = dest / f"{name}.toml"
    shutil.copy(BUILTIN_PROFILE_DIR / kind / f"{name}.toml", target)
    return target


def test_every_builtin_profile_loads():
    assert set(hardware_names()) == HARDWARE
    assert set(model_names()) == MODELS


def test_lookup_accepts_aliases_and_any_case():
    assert load_hardware("H100_SXM").name == "h100"
    assert load_hardware("cs3").name == "wse3"
    assert load_model("openai/gpt-oss-120b").name == "gpt-oss-120b"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownNameError) as info:
        load_model("llama-9-1t")
    err = info.value
    assert err.kind == "model profile"
    assert err.name == "llama-9-1t"
    assert set(err.known) == MODELS
    assert "llama-3.1-70b" in str(err)
    with pytest.raises(UnknownNameError):
        load_hardware("tpu-v9x")


def test_units_and_headline_numbers_are_the_published_ones():
    h100 = load_hardware("h100")
    assert (h100.memory_gb, h100.memory_bandwidth_tb_per_s) == (80, 3.35)
    assert (h100.peak_bf16_tflops, h100.peak_fp8_tflops, h100.peak_fp4_tflops) == (989, 1979, None)
    assert load_hardware("b200").peak_fp4_tflops == 9000
    wse3 = load_hardware("wse3")
    assert (wse3.kind, wse3.memory_gb, wse3.cores) == ("wafer", 44, 900_000)


def test_precision_without_tensor_cores_falls_back_to_a_wider_one():
    h100 = load_hardware("h100")
    assert h100.peak_tflops("fp4") == h100.peak_tflops("fp8") == 1979
    assert load_hardware("wse3").peak_tflops("fp8") == 125_000


def test_every_number_has_a_source_and_every_parameter_a_fit():
    catalog = load_catalog()
    for profile in [*catalog.hardware.values(), *catalog.models.values()]:
        for field in profile.model_fields_set:
            value = getattr(profile, field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                assert profile.sources.get(field), (profile.name, field)
    for hw in catalog.hardware.values():
        for field in hw.efficiency.model_fields_set - {"fitted_to"}:
            assert hw.efficiency.fitted_to.get(field), (hw.name, field)


def test_mixture_of_experts_split_capacity_from_traffic():
    for name in MODELS:
        model = load_model(name)
        assert model.is_moe == (name in MOE)
        if model.is_moe:
            assert model.active_params_b < model.total_params_b / 5
            assert model.shared_params_b + model.expert_params_b == pytest.approx(
                model.total_params_b
            )
            assert 0 < model.shared_params_b < model.active_params_b
        else:
            assert model.active_params_b == model.total_params_b


def test_kv_values_per_token_follow_the_architecture():
    assert load_model("llama-3.1-70b").kv_values_per_token_per_layer == 2 * 8 * 128
    assert load_model("deepseek-r1").kv_values_per_token_per_layer == 512 + 64


def test_loading_is_cached_until_cleared():
    first = load_catalog()
    assert load_catalog() is first
    clear_profile_cache()
    assert load_catalog() is not first


def test_a_user_drops_one_file_into_a_directory(tmp_path):
    target = _copy_builtin("h100", tmp_path)
    text = target.read_text().replace('name = "h100"', 'name = "h100-lab"')
    text = text.replace('aliases = ["h100_sxm", "h100-sxm", "h100-sxm5"]', "aliases = []")
    target.write_text(text.replace("memory_gb = 80", "memory_gb = 96"))
    profile = load_hardware("h100-lab", search_path=[tmp_path])
    assert profile.memory_gb == 96
    assert "h100-lab" in hardware_names([tmp_path])
    assert load_hardware("h100").memory_gb == 80  # the built-in is untouched


def test_profile_path_environment_variable(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    target = _copy_builtin("llama-3.1-8b", models, kind="models")
    target.write_text(target.read_text().replace('name = "llama-3.1-8b"', 'name = "my-8b"'))
    monkeypatch.setenv(PROFILE_PATH_ENV, str(tmp_path))
    clear_profile_cache()
    assert load_model("my-8b").layers == 32


def test_a_user_file_shadows_the_builtin_of_the_same_name(tmp_path):
    target = _copy_builtin("h100", tmp_path)
    target.write_text(target.read_text().replace("power_w = 700", "power_w = 650"))
    assert load_hardware("h100", search_path=[tmp_path]).power_w == 650


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("memory_gb = 80", "memory_gb = -80"), "memory_gb"),
        (("memory_gb = 80", 'memory_gb = "eighty"'), "memory_gb"),
        (("power_w = 700", "power_w = 700\nwatts = 1"), "watts"),
        (("bandwidth_efficiency = 0.90", "bandwidth_efficiency = 1.5"), "bandwidth_efficiency"),
        (('\npower_w = "NVIDIA H100 SXM datasheet TDP 700 W"', ""), "power_w"),
        (('profile = "hardware"', 'profile = "gpu"'), "profile"),
    ],
)
def test_a_bad_profile_names_the_file_and_the_field(tmp_path, edit, field):
    target = _copy_builtin("h100", tmp_path)
    old, new = edit
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_hardware("h100", search_path=[tmp_path])
    message = str(info.value)
    assert str(target) in message
    assert field in message


def test_invalid_toml_names_the_file(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text('profile = "model"\nname = \n')
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_catalog([tmp_path])


def test_two_files_defining_one_name_in_a_directory_is_an_error(tmp_path):
    _copy_builtin("h100", tmp_path)
    shutil.copy(tmp_path / "h100.toml", tmp_path / "h100-copy.toml")
    with pytest.raises(ConfigError, match="also defined in"):
        load_catalog([tmp_path])


def test_a_missing_directory_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_catalog([tmp_path / "nope"])


def test_wafer_profiles_need_a_mesh():
    wse3 = load_hardware("wse3")
    data = wse3.model_dump(exclude_unset=True)
    data["cores"] = None
    del data["sources"]["cores"]
    with pytest.raises(ValueError, match="cores"):
        HardwareProfile.model_validate(data)
