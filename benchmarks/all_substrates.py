"""The same 10-step agent on every preset: end-to-end p50/p99, cost and energy per run.

Runs in virtual time (seconds of wall time for the lot) and writes the Markdown table and the
picture used by docs/substrates-compared.md.

Run: .venv/bin/python benchmarks/all_substrates.py [--trials 20] [--model llama-3.1-70b]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from agentrt import Plan, Step, VirtualClock, run
from agentrt.compare import Comparison, compare
from agentrt.log import configure_logging
from substrates.emulated import PRESETS, build_engine
from substrates.emulated.profiles import load_hardware

ROOT = Path(__file__).resolve().parents[1]


def ten_step_plan() -> Plan:
    """Plan, three parallel reads, think, two patches, test, review, answer: 10 model turns."""
    steps = [Step(id="plan", kind="think", prompt_tokens=2000, max_output_tokens=300)]
    reads = [f"read-{i}" for i in range(3)]
    steps += [
        Step(id=r, kind="think", depends_on=["plan"], prompt_tokens=4000, max_output_tokens=150)
        for r in reads
    ]
    steps += [
        Step(
            id="design", kind="think", depends_on=reads, prompt_tokens=6000, max_output_tokens=400
        ),
        Step(
            id="patch-1",
            kind="think",
            depends_on=["design"],
            prompt_tokens=6500,
            max_output_tokens=600,
        ),
        Step(
            id="patch-2",
            kind="think",
            depends_on=["design"],
            prompt_tokens=6500,
            max_output_tokens=600,
        ),
        Step(
            id="test",
            kind="think",
            depends_on=["patch-1", "patch-2"],
            prompt_tokens=7000,
            max_output_tokens=200,
        ),
        Step(
            id="review",
            kind="think",
            depends_on=["test"],
            prompt_tokens=7500,
            max_output_tokens=300,
        ),
        Step(
            id="answer",
            kind="answer",
            depends_on=["review"],
            prompt_tokens=8000,
            max_output_tokens=250,
        ),
    ]
    return Plan(name="ten-step-agent", steps=steps)


def _priced(preset: str, model: str) -> bool:
    hw = load_hardware(PRESETS[preset])
    return hw.price_usd_per_chip_hour is not None or model in hw.prices


def table(comparison: Comparison, model: str) -> str:
    """The Markdown table, fastest first."""
    rows = sorted(comparison.substrates.values(), key=lambda s: s.e2e_p50_s)
    lines = [
        "| preset | deployment | p50 e2e (s) | p99 e2e (s) | cost/run (USD) | energy/run (kJ) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in rows:
        dep = build_engine(s.name, model=model).deployment.describe()
        cost = f"{s.cost_usd_mean:.4f}" if _priced(s.name, model) else "n/p"
        lines.append(
            f"| {s.name} | {dep} | {s.e2e_p50_s:.2f} | {s.e2e_p99_s:.2f} | {cost} | "
            f"{s.energy_j_mean / 1e3:.1f} |"
        )
    return "\n".join(lines)


def picture(comparison: Comparison, path: Path) -> None:
    """Bars of p50 with p99 whiskers, and energy per run, one bar per preset."""
    rows = sorted(comparison.substrates.values(), key=lambda s: s.e2e_p50_s)
    names = [s.name for s in rows]
    p50 = [s.e2e_p50_s for s in rows]
    p99 = [s.e2e_p99_s - s.e2e_p50_s for s in rows]
    energy = [s.energy_j_mean / 1e3 for s in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    left.barh(names, p50, xerr=[[0] * len(p99), p99], color="#4c72b0", capsize=3)
    left.set_xlabel("end-to-end per run (s): bar p50, whisker p99")
    left.invert_yaxis()
    right.barh(names, energy, color="#dd8452")
    right.set_xlabel("energy per run (kJ, chips x power x busy time)")
    fig.suptitle(f"Same 10-step agent on every preset ({comparison.trials} trials, virtual time)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write docs/img/substrates-compared.png and the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--model", default="llama-3.1-70b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "substrates-compared.png"))
    args = parser.parse_args(argv)
    configure_logging(level="off")
    engines = {
        name: build_engine(name, model=args.model, seed=args.seed) for name in sorted(PRESETS)
    }
    result = run(
        lambda: compare(ten_step_plan(), engines, trials=args.trials, seed=args.seed),
        clock=VirtualClock(),
    )
    text = table(result, args.model)
    print(text)
    Path(args.out).with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    picture(result, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
