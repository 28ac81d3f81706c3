from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentrt import (
    Agent,
    BadResponse,
    ConfigError,
    DoesNotFitError,
    InferenceRequest,
    InferenceResult,
    Plan,
    Step,
    StreamingSubstrate,
    Substrate,
    current_clock,
)
from agentrt.registry import Registry
from agentrt.testing import check_substrate
from substrates.emulated import PRESETS, build_deployment, build_engine
from substrates.emulated.calibration import FAMILY_TOLERANCE
from substrates.emulated.content import (
    ReplayContent,
    ScriptedContent,
    SyntheticContent,
    count_tokens,
    split_tokens,
)
from substrates.emulated.engine import EmulatedEngine
from substrates.emulated.perfmodel import decode_floor_s, prefill_floor_s
from substrates.emulated.predict import predict_request

ROOT = Path(__file__).resolve().parents[3]


def request(step: str = "s", prompt: int = 1000, output: int = 200, **kw: Any) -> InferenceRequest:
    return InferenceRequest.from_prompt(
        "p", prompt_tokens=prompt, max_output_tokens=output, step_id=step, **kw
    )


def quiet(hw: str, **kw: Any) -> EmulatedEngine:
    return build_engine(hw, jitter=0.0, stall_prob=0.0, **kw)


@pytest.mark.parametrize("hw", sorted(PRESETS))
def test_presets_pass_the_substrate_conformance_check(hw: str, vrun: Callable[..., Any]) -> None:
    def floor(req: InferenceRequest) -> float:
        dep = build_deployment(hw, model="llama-3.1-8b")
        n = req.max_output_tokens
        prompt = req.estimated_prompt_tokens()
        return prefill_floor_s(dep, [prompt]) + (n - 1) * decode_floor_s(dep, [prompt + 1])

    vrun(
        lambda: check_substrate(
            lambda: build_engine(hw, model="llama-3.1-8b", seed=1), floor_s=floor
        )
    )


def test_a_lone_request_matches_the_performance_model(vrun: Callable[..., Any]) -> None:
    # exactly, on plain decoding; a speculative stream's bursts match it only on average
    # (tests/substrates/emulated/test_bursts.py)
    for hw in ("wse3", "h100"):
        engine = quiet(hw, spec_decode="off")
        result: InferenceResult = vrun(engine.infer, request(prompt=1000, output=200))
        expected = predict_request(engine.deployment, 1000, 200)
        t = result.timing
        assert t.e2e_s == pytest.approx(expected.e2e_s, rel=1e-6)
        assert t.ttft_s == pytest.approx(expected.ttft_s, rel=1e-6)
        assert t.tpot_s == pytest.approx(expected.tpot_s, rel=1e-6)
        assert t.comm_s == pytest.approx(expected.comm_s, rel=1e-6)
        assert t.queue_s == 0
        assert result.usage.output_tokens == 200
        assert result.chips == engine.deployment.chips
        assert result.energy_j == pytest.approx(expected.energy_j, rel=1e-6)
        assert result.attributes["agentrt.deployment"] == engine.deployment.describe()


def test_wafer_scale_is_faster_per_user_than_gpus(vrun: Callable[..., Any]) -> None:
    wse3 = vrun(quiet("wse3", stack="cs-2024-08").infer, request(output=500))
    h100 = vrun(quiet("h100").infer, request(output=500))
    ratio = h100.timing.tpot_s / wse3.timing.tpot_s
    # published per-user speeds of Llama 3.1 70B in Sept 2024 (the launch stack): ~450 tok/s
    # on CS-3 vs ~30-130 on H100s
    assert 3 < ratio < 20
    now = vrun(quiet("wse3").infer, request(output=500))  # cs-current: ~2,200 tok/s
    assert now.timing.tpot_s < wse3.timing.tpot_s / 3


def test_latency_rises_with_load(vrun: Callable[..., Any]) -> None:
    def median_e2e(concurrency: int) -> tuple[float, float]:
        engine = build_engine("h100", model="llama-3.1-8b", seed=3)

        async def main() -> list[InferenceResult]:
            out: list[InferenceResult] = []

            async def one(i: int) -> None:
                out.append(await engine.infer(request(f"r{i}", prompt=500, output=100)))

            async with anyio.create_task_group() as tg:
                for i in range(concurrency):
                    tg.start_soon(one, i)
            return out

        results = vrun(main)
        return (
            statistics.median(r.timing.e2e_s for r in results),
            max(r.timing.queue_s for r in results),
        )

    alone, _ = median_e2e(1)
    busy, _ = median_e2e(64)
    crowded, queued = median_e2e(600)  # beyond max_batch=256: requests queue
    assert alone < busy < crowded
    assert queued > 0


def test_same_seed_same_timings_different_seed_different_tails(vrun: Callable[..., Any]) -> None:
    def run_seed(seed: int) -> list[float]:
        engine = build_engine("h100", model="llama-3.1-8b", seed=seed, stall_prob=0.01)

        async def main() -> list[float]:
            return [
                (await engine.infer(request(f"r{i}", output=50))).timing.e2e_s for i in range(30)
            ]

        return list(vrun(main))

    assert run_seed(7) == run_seed(7)
    assert run_seed(7) != run_seed(8)


def test_streaming_paces_tokens_on_the_clock(vrun: Callable[..., Any]) -> None:
    engine = quiet("h100", network_rtt_ms=20)
    assert isinstance(engine, StreamingSubstrate)

    async def main() -> tuple[list[float], str, InferenceResult, float]:
        clock = current_clock()
        t0 = clock.current_time()
        times, text = [], ""
        async with engine.stream(request(output=20)) as stream:
            async for chunk in stream:
                times.append(chunk.t_s - t0)
                text += chunk.text
            return times, text, stream.result(), clock.current_time() - t0

    times, text, result, elapsed = vrun(main)
    assert len(times) == 20
    assert text == result.text
    assert times[0] == pytest.approx(result.timing.ttft_s, rel=1e-6)
    assert times[-1] == pytest.approx(result.timing.e2e_s, rel=1e-6)
    assert elapsed == pytest.approx(result.timing.e2e_s, rel=1e-6)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.mean(gaps) == pytest.approx(result.timing.tpot_s, rel=1e-6)


def test_cold_start_is_paid_once_unless_warm(vrun: Callable[..., Any]) -> None:
    engine = quiet("h100", warm=False, cold_start_s=5.0)

    async def main() -> list[InferenceResult]:
        out: list[InferenceResult] = []

        async def one(i: int) -> None:
            out.append(await engine.infer(request(f"r{i}", output=10)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0)
            tg.start_soon(one, 1)
        out.append(await engine.infer(request("later", output=10)))
        return out

    first, second, later = vrun(main)
    assert first.timing.queue_s == pytest.approx(5.0, abs=1e-6)
    assert second.timing.queue_s == pytest.approx(5.0, abs=1e-6)
    assert later.timing.queue_s == pytest.approx(0.0, abs=1e-9)
    warm = quiet("h100")
    assert vrun(warm.infer, request(output=10)).timing.queue_s == 0.0
    # default cold start: weights streamed over the chips' links, a physical floor
    assert build_engine("h100", warm=False).cold_start_s > 0.1


def test_fit_errors_and_bad_options() -> None:
    with pytest.raises(DoesNotFitError, match=r"needs .* GB .* but h100 x1 has .*use 16 GPUs"):
        build_engine("h100", model="llama-3.1-405b", chips=1)
    with pytest.raises(ConfigError, match="unknown precision"):
        build_engine("h100", precision="fp3")
    with pytest.raises(ConfigError, match="DRAFT:ACCEPT"):
        build_engine("h100", spec_decode="fast")
    with pytest.raises(ConfigError, match="no tensor parallelism"):
        build_engine("wse3", tp=2)
    with pytest.raises(LookupError, match="unknown model profile 'gpt-9'"):
        build_engine("h100", model="gpt-9")
    dep = build_deployment("h100", model="llama-3.1-70b", tp=4, pp=2)
    assert (dep.tp, dep.pp, dep.chips) == (4, 2, 8)


def test_speculative_decoding_speeds_up_decode(vrun: Callable[..., Any]) -> None:
    plain = vrun(quiet("h100", model="llama-3.1-8b").infer, request(output=200))
    spec = vrun(quiet("h100", model="llama-3.1-8b", spec_decode="4:0.7").infer, request(output=200))
    assert spec.timing.tpot_s < plain.timing.tpot_s


def test_registry_builds_presets_from_command_line_strings() -> None:
    engine = Registry().substrate(
        "h100", model="llama-3.1-8b", precision="fp8", max_batch="32", network_rtt_ms="15", seed="4"
    )
    assert isinstance(engine, Substrate)
    assert isinstance(engine, EmulatedEngine)
    assert engine.deployment.max_batch == 32
    assert engine.deployment.precision == "fp8"
    assert engine.deployment.network_rtt_s == pytest.approx(0.015)
    with pytest.raises(ConfigError, match="has no option 'turbo'"):
        Registry().substrate("wse3", turbo="1")


def test_an_agent_runs_on_an_emulated_engine(vrun: Callable[..., Any]) -> None:
    content = ScriptedContent({"patch": "--- a/parse.py\n+++ b/parse.py\n-    x\n+    y\n"})
    engine = build_engine("wse3", model="llama-3.1-8b", seed=0, content=content)
    plan = Plan(
        name="p",
        steps=[
            Step(id="plan", max_output_tokens=100),
            Step(id="patch", depends_on=["plan"]),
            Step(id="answer", kind="answer", depends_on=["patch"], prompt="{{ patch }}"),
        ],
    )
    result = vrun(Agent(engine).run, plan)
    assert result.status == "succeeded"
    patch = result.step("patch")
    assert patch.text.startswith("--- a/parse.py")
    assert patch.output_tokens == count_tokens(patch.text)
    assert result.step("plan").output_tokens == 100
    assert result.cost_usd >= 0
    assert result.energy_j > 0


def test_a_wrong_model_name_is_refused(vrun: Callable[..., Any]) -> None:
    engine = quiet("h100", model="llama-3.1-8b")
    with pytest.raises(BadResponse, match="serves llama-3.1-8b, not qwen3-32b"):
        vrun(engine.infer, request(model="qwen3-32b"))


def test_content_sources(tmp_path: Path) -> None:
    assert "".join(split_tokens("hello world", 4)) == "hello world"
    assert len(split_tokens("hello world", 4)) == 4
    recorded = {"steps": [{"id": "a", "text": "recorded answer", "output_tokens": 7}]}
    replay = ReplayContent(recorded)
    assert replay.text_for(request("a"), 100) == ("recorded answer", 7)
    with pytest.raises(BadResponse, match="no step 'b' to replay"):
        replay.text_for(request("b"), 100)
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(ConfigError, match="agentrt run ... --json"):
        ReplayContent(bad)
    scripted = ScriptedContent({"a": ["one two", "three"]}, default="fallback")
    assert scripted.text_for(request("a"), 10)[0] == "one two"
    assert scripted.text_for(request("a"), 10)[0] == "three"
    assert scripted.text_for(request("a"), 10)[0] == "three"
    assert scripted.text_for(request("z"), 10)[0] == "fallback"
    long = ScriptedContent({"a": "x" * 400})
    assert long.text_for(request("a"), 10)[1] == 10


def test_synthetic_text_depends_on_seed_and_step_only() -> None:
    source = SyntheticContent(seed=3)
    text, tokens = source.text_for(request("a"), 12)
    assert tokens == 12
    assert len(text.split(" ")) == 12
    assert source.text_for(request("a", prompt=5), 12) == (text, 12)  # again, remembered
    assert SyntheticContent(seed=3).text_for(request("a"), 12) == (text, 12)  # fresh
    assert source.text_for(request("b"), 12)[0] != text
    assert SyntheticContent(seed=4).text_for(request("a"), 12)[0] != text


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentrt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_predict_command() -> None:
    wse3 = cli(
        "predict",
        "--substrate",
        "wse3",
        "--model",
        "llama-3.1-70b",
        "--prompt-tokens",
        "1000",
        "--output-tokens",
        "500",
        "--json",
    )
    h100 = cli(
        "predict",
        "--substrate",
        "h100",
        "--model",
        "llama-3.1-70b",
        "--prompt-tokens",
        "1000",
        "--output-tokens",
        "500",
        "--json",
    )
    assert wse3.returncode == 0, wse3.stderr
    a, b = json.loads(wse3.stdout), json.loads(h100.stdout)
    for key in (
        "ttft_s",
        "tpot_s",
        "output_tokens_per_s",
        "e2e_s",
        "cost_usd",
        "energy_j",
        "queue_s",
        "network_s",
        "prefill_s",
        "decode_s",
        "comm_s",
    ):
        assert key in a
    assert a["output_tokens_per_s"] > 5 * b["output_tokens_per_s"]
    crowd = json.loads(
        cli(
            "predict", "-s", "h100", "--model", "llama-3.1-8b", "--concurrency", "64", "--json"
        ).stdout
    )
    one = json.loads(cli("predict", "-s", "h100", "--model", "llama-3.1-8b", "--json").stdout)
    assert crowd["e2e_s"] > one["e2e_s"]
    bad = cli("predict", "-s", "h100", "--model", "llama-3.1-405b", "--chips", "1")
    assert bad.returncode == 2
    assert "needs" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_calibrate_and_substrates_commands() -> None:
    proc = cli("calibrate", "--json", "--scored-only")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["failures"] == []
    assert abs(data["largest_error"]["relative_error"]) <= max(FAMILY_TOLERANCE.values())
    assert all(p["use"] in ("fit", "check") for p in data["points"])
    proc = cli("substrates", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    presets = {p["name"]: p for p in data["presets"]}
    assert set(presets) >= {"wse3", "h100", "h200", "b200"}  # plus any newly registered
    assert presets["wse3"]["models"]["llama-3.1-70b"].startswith("4 ")
    assert "fixed" in data["substrates"]


def test_run_on_an_emulated_engine_from_the_command_line() -> None:
    proc = cli(
        "run",
        str(ROOT / "examples/plans/research.yaml"),
        "-s",
        "wse3",
        "--virtual",
        "--json",
        "-o",
        "model=llama-3.1-8b",
        "--seed",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "succeeded"
    assert {s["substrate"] for s in data["steps"]} == {"wse3"}
    assert data["energy_j"] > 0
