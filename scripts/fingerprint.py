"""Hash what the emulated substrates compute, to show a refactor changed nothing.

Prints one sha256 per area and a total. Run it before and after a move; equal hashes mean every
`InferenceResult` of a fixed, seeded workload on every preset (and on several models, layouts,
precisions, speculative decoding, streaming, the router and fault injection), and every
``agentrt predict/calibrate/substrates/load/run/compare --json`` report, came out byte-identical.

Usage::

    .venv/bin/python scripts/fingerprint.py            # the hashes
    .venv/bin/python scripts/fingerprint.py --dump DIR # also the raw outputs, to diff
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import anyio

import agentrt
from agentrt import InferenceRequest
from substrates import PRESETS, FaultInjector, Router, build_engine

ROOT = Path(__file__).resolve().parent.parent

# (preset, options): every preset on its default model, then the layouts users vary.
ENGINES: list[tuple[str, dict[str, object]]] = [(name, {}) for name in sorted(PRESETS)] + [
    ("wse3", {"model": "llama-3.1-8b"}),
    ("wse3", {"model": "llama-3.1-405b"}),
    ("wse3", {"model": "gpt-oss-120b"}),
    ("h100", {"model": "llama-3.1-8b", "tp": 1}),
    ("h100", {"model": "llama-3.1-405b", "precision": "fp8"}),
    ("h100", {"tp": 4, "pp": 2, "max_batch": 32}),
    ("b200", {"model": "gpt-oss-120b", "precision": "fp4"}),
    ("h200", {"spec_decode": "4:0.7", "network_rtt_ms": 30.0}),
    ("wse3", {"spec_decode": "3:0.6"}),
]


def _requests(seed: int, n: int) -> list[tuple[float, InferenceRequest]]:
    rng = random.Random(seed)
    out = []
    t = 0.0
    for i in range(n):
        t += rng.expovariate(4.0)
        req = InferenceRequest.from_prompt(
            f"request {i}",
            prompt_tokens=rng.choice([50, 400, 2_000, 8_000]),
            max_output_tokens=rng.choice([1, 20, 200, 900]),
            step_id=f"s{i}",
            step_kind=rng.choice(["think", "search", "debug", "answer"]),
            priority=rng.choice([0, 0, 1]),
            slo=rng.choice([None, "interactive", "batch"]),
        )
        out.append((t, req))
    return out


async def _drive(substrate: object, workload: list[tuple[float, InferenceRequest]]) -> list[str]:
    results: list[str] = [""] * len(workload)
    clock = agentrt.current_clock()
    t0 = clock.current_time()

    async def one(i: int, at: float, req: InferenceRequest) -> None:
        await anyio.sleep(max(0.0, t0 + at - clock.current_time()))
        try:
            res = await substrate.infer(req)  # type: ignore[attr-defined]
            results[i] = res.model_dump_json()
        except Exception as exc:  # the error is part of the fingerprint
            results[i] = f"{type(exc).__name__}: {exc}"

    async with anyio.create_task_group() as tg:
        for i, (at, req) in enumerate(workload):
            tg.start_soon(one, i, at, req)
    return results


async def _stream(engine: object, req: InferenceRequest) -> list[str]:
    async with engine.stream(req) as s:  # type: ignore[attr-defined]
        out = [repr(chunk) async for chunk in s]
        out.append(s.result().model_dump_json())
    return out


def engines() -> list[str]:
    lines: list[str] = []
    for k, (name, options) in enumerate(ENGINES):

        async def main(
            name: str = name, options: dict[str, object] = options, k: int = k
        ) -> list[str]:
            engine = build_engine(name, seed=7, **options)  # type: ignore[arg-type]
            out = [repr(engine), engine.deployment.describe()]
            out += await _drive(engine, _requests(k, 40))
            out += await _stream(engine, InferenceRequest.from_prompt("x", max_output_tokens=12))
            out.append(repr(engine.statistics()))
            return out

        lines.append(f"## {name} {sorted(options.items())}")
        lines += agentrt.run(main, clock=agentrt.VirtualClock())
    return lines


def fleet() -> list[str]:
    async def main() -> list[str]:
        def pair(seed: int) -> dict[str, object]:
            return {"fast": build_engine("wse3", seed=seed), "gpu": build_engine("h100", seed=seed)}

        least = Router(pair(1), policy="least-time")  # type: ignore[arg-type]
        slo = Router(pair(2), policy="slo", by_slo={"interactive": "fast", "batch": "gpu"})  # type: ignore[arg-type]
        faulty = FaultInjector(build_engine("h100", seed=3), error_rate=0.2, spike_rate=0.1, seed=5)
        return (
            await _drive(least, _requests(100, 60))
            + await _drive(slo, _requests(102, 60))
            + await _drive(faulty, _requests(101, 40))
        )

    return agentrt.run(main, clock=agentrt.VirtualClock())


def _cli(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "agentrt", *args], capture_output=True, text=True, cwd=ROOT
    )
    return f"$ agentrt {' '.join(args)}\nexit {proc.returncode}\n{proc.stdout}{proc.stderr}"


def _strip_wall(text: str) -> str:
    """Drop the fields that hold wall-clock time or random ids from a JSON report."""
    try:
        data = json.loads(text)
    except ValueError:
        return text

    def clean(x: object) -> object:
        if isinstance(x, dict):
            return {
                k: clean(v)
                for k, v in x.items()
                if k not in {"wall_s", "started_at", "run_id", "trace_id", "elapsed_wall_s"}
            }
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(data), sort_keys=True)


CLI_RUNS: list[tuple[str, ...]] = [
    ("substrates", "--json"),
    ("calibrate", "--json"),
    ("predict", "-s", "wse3", "--json"),
    ("predict", "-s", "h100", "--model", "llama-3.1-405b", "--concurrency", "16", "--json"),
    ("predict", "-s", "b200", "--model", "gpt-oss-120b", "--precision", "fp4", "--json"),
    (
        "load",
        "examples/plans/research.yaml",
        "-s",
        "wse3",
        "--virtual",
        "--agents",
        "30",
        "--arrival-rate",
        "2",
        "--json",
    ),
    (
        "load",
        "examples/plans/research.yaml",
        "-s",
        "h100",
        "--virtual",
        "--agents",
        "30",
        "--arrival-rate",
        "2",
        "--faults",
        "errors=0.1",
        "--slo-s",
        "20",
        "--json",
    ),
    (
        "load",
        "examples/plans/research.yaml",
        "-s",
        "wse3,h100",
        "--virtual",
        "--agents",
        "20",
        "--sweep",
        "--json",
    ),
    (
        "load",
        "examples/plans/research.yaml",
        "-s",
        "route:scripts/fingerprint_fleet.yaml",
        "--virtual",
        "--agents",
        "30",
        "--arrival-rate",
        "3",
        "--json",
    ),
    (
        "run",
        "examples/plans/fix-bug.yaml",
        "-s",
        "route:scripts/fingerprint_fleet.yaml",
        "--virtual",
        "--json",
    ),
    ("run", "examples/plans/research.yaml", "-s", "wse3", "--virtual", "--json"),
    ("run", "examples/plans/research.yaml", "-s", "h100", "--virtual", "--json", "--seed", "3"),
    (
        "compare",
        "examples/plans/research.yaml",
        "--substrates",
        "wse3,h100,b200",
        "--trials",
        "5",
        "--virtual",
        "--json",
    ),
]


def cli() -> list[str]:
    out = []
    for args in CLI_RUNS:
        text = _cli(*args)
        head, _, body = text.partition("\nexit ")
        code, _, rest = body.partition("\n")
        out.append(f"{head}\nexit {code}\n{_strip_wall(rest)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump", type=Path, help="also write each area's raw text here")
    args = parser.parse_args()
    total = hashlib.sha256()
    for area, fn in (("engines", engines), ("fleet", fleet), ("cli", cli)):
        text = "\n".join(fn())
        digest = hashlib.sha256(text.encode()).hexdigest()
        total.update(digest.encode())
        print(f"{area:8} {digest}")
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            (args.dump / f"{area}.txt").write_text(text)
    print(f"{'total':8} {total.hexdigest()}")


if __name__ == "__main__":
    main()
