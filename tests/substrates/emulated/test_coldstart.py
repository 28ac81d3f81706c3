from __future__ import annotations

import pytest

from substrates.emulated.coldstart import (
    COLD_START,
    ENGINE_START_BY_STACK,
    WARM_START_S,
    cold_start_s,
)
from substrates.emulated.engine import build_engine
from substrates.emulated.profiles import load_hardware


def start(hardware: str, model: str, **options: object) -> float:
    dep = build_engine(hardware, model=model, **options).deployment  # type: ignore[arg-type]
    return cold_start_s(dep).total_s


@pytest.mark.parametrize(
    ("hardware", "options"),
    [("h100", {"chips": 8}), ("wse3", {"chips": 4}), ("b200", {"chips": 8})],
)
def test_cold_start_grows_with_model_size_on_the_same_chips(
    hardware: str, options: dict[str, object]
) -> None:
    times = [start(hardware, m, **options) for m in ("llama-3.1-8b", "llama-3.1-70b")]
    assert times[0] < times[1]


def test_weights_load_at_the_derived_bandwidth() -> None:
    dep = build_engine("h100", model="llama-3.1-70b", chips=8).deployment
    cold = cold_start_s(dep)
    assert cold.load_gb_per_s == pytest.approx(COLD_START["gpu"].per_node_gb_per_s)  # node cap
    assert cold.load_s == pytest.approx(cold.weights_bytes / (cold.load_gb_per_s * 1e9))
    assert cold.total_s == pytest.approx(cold.process_start_s + cold.load_s + cold.engine_start_s)
    faster = cold_start_s(dep, load_gb_per_s=40.0)
    assert faster.load_s < cold.load_s
    assert faster.total_s < cold.total_s


def test_more_nodes_load_faster() -> None:
    one = cold_start_s(build_engine("h100", model="llama-3.1-405b", precision="fp8").deployment)
    dep = build_engine("h100", model="llama-3.1-405b", tp=8, pp=2, precision="fp8").deployment
    two = cold_start_s(dep)
    assert two.load_gb_per_s == pytest.approx(2 * COLD_START["gpu"].per_node_gb_per_s)
    assert one.weights_bytes == two.weights_bytes
    assert two.load_s <= one.load_s


def test_wafer_loads_over_its_system_io_in_parallel() -> None:
    dep = build_engine("wse3", model="llama-3.1-70b").deployment
    cold = cold_start_s(dep)
    io = load_hardware("wse3").scale_out_bandwidth_gb_per_s
    assert cold.load_gb_per_s == pytest.approx(dep.chips * io)
    assert cold.load_s < 1.0 < cold.engine_start_s  # SRAM fills fast; the start dominates


def test_warm_start_is_faster_than_any_cold_start() -> None:
    for hardware in ("h100", "wse3", "groq", "tpu_v6e"):
        assert start(hardware, "llama-3.1-8b") > WARM_START_S


def test_every_number_is_sourced_or_an_estimate() -> None:
    for kind, params in COLD_START.items():
        assert params.sources, kind
        assert all(len(s) > 20 for s in params.sources)
    for stack, (seconds, source) in ENGINE_START_BY_STACK.items():
        assert seconds > 0, stack
        assert source, stack
    dep = build_engine("h100", model="llama-3.1-8b", stack="trtllm").deployment
    assert any("trtllm" in s for s in cold_start_s(dep).sources)
