"""Energy per output token and price per million tokens on every preset, and published figures.

Everything is computed from the performance model through the calibration's own metric code
(`predict_point`), so the numbers move with the model: nothing here is hard-coded.

- J/token at batch 1 and at the largest batch the KV cache allows (a closed loop of as many
  clients as fit): chips x power x busy time per output token. Power is the profile's
  ``power_w``: GPU board power (TDP), but the whole CS-3 system for the wafer. ``J/tok sys``
  charges GPUs their share of the node's power (``node_power_w``) where the profile has it.
- $/M output: the profile's published token price where it has one (``list``), else chip-hours
  of the machine's whole time at the largest batch over its output tokens (``chip-h``). $/M
  input: chip-hours of one prompt's prefill per prompt token.
- Second table: every published energy and price row of the calibration table
  (substrates/emulated/data/published_tuning.csv) with a scenario, measured vs predicted.

Run: .venv/bin/python benchmarks/energy_price.py [--models llama-3.1-70b,llama-3.1-8b]
     [--presets h100,wse3] [--input 1000] [--output 500] [--json | --markdown]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from _common import logging_off, print_table

from agentrt.errors import AgentrtError
from substrates.emulated import PRESETS
from substrates.emulated.calibration import DATA_FILE, predict_point
from substrates.emulated.predict import closed_loop
from substrates.emulated.profiles import ProfileCatalog, load_catalog
from substrates.emulated.sizing import DEFAULT_MODEL, build_deployment

#: The calibration metrics this benchmark reports.
METRICS = ("energy_j_per_token", "price_usd_per_mtok_output", "price_usd_per_mtok_input")


def _predict(metric: str, scenario: str, catalog: ProfileCatalog) -> float | None:
    """`predict_point`, or None where the profile cannot price it (no published price)."""
    try:
        return predict_point(metric, scenario, catalog)
    except AgentrtError:
        return None


def preset_row(
    preset: str, model: str, prompt: int, output: int, catalog: ProfileCatalog
) -> dict[str, Any]:
    """The default deployment of ``model`` on ``preset``: energy and price at batch 1 and at max."""
    hw = catalog.get_hardware(PRESETS[preset])
    dep = build_deployment(preset, model=model)
    base = f"hw={hw.name} model={model} in={prompt} out={output}"
    system = hw.kind == "wafer" or hw.node_power_w is not None
    return {
        "preset": preset,
        "model": model,
        "deployment": dep.describe(),
        "chips": f"{dep.chips} {dep.precision}",
        "kind": hw.kind,
        "hw": hw.name,
        "max_batch": closed_loop(dep, prompt, output, None).batch,
        "j_per_token_batch1": _predict("energy_j_per_token", f"{base} c=1", catalog),
        "j_per_token_max_batch": _predict("energy_j_per_token", f"{base} c=max", catalog),
        "j_per_token_max_batch_system": (
            _predict("energy_j_per_token", f"{base} c=max power=system", catalog)
            if system
            else None
        ),
        "usd_per_mtok_output": _predict("price_usd_per_mtok_output", f"{base} c=max", catalog),
        "usd_per_mtok_input": _predict("price_usd_per_mtok_input", f"{base} c=max", catalog),
        "price_basis": (
            "list"
            if model in hw.prices
            else "chip-h"
            if hw.price_usd_per_chip_hour is not None
            else "n/p"
        ),
    }


def published_rows(catalog: ProfileCatalog) -> list[dict[str, Any]]:
    """Every energy or price row of the calibration table with a scenario, measured vs predicted."""
    with DATA_FILE.open(newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    rows = []
    for record in records:
        scenario = record["agentrt_scenario"].strip()
        if record["metric"] not in METRICS or not scenario:
            continue
        measured = float(record["value"])
        predicted = _predict(record["metric"], scenario, catalog)
        spec = dict(item.split("=", 1) for item in scenario.split())
        rows.append(
            {
                "row": int(record["row"]),
                "use": record["agentrt_use"],
                "system": record["system"],
                "chip": record["chip"],
                "model": record["model"],
                "metric": record["metric"],
                "measured": measured,
                "predicted": predicted,
                "ratio": None if predicted is None else measured / predicted,
                "scenario": scenario,
                "hw": catalog.get_hardware(spec["hw"]).name,
                "model_name": spec["model"],
            }
        )
    return rows


def attach_published(rows: list[dict[str, Any]], published: list[dict[str, Any]]) -> None:
    """Give each preset row the published output prices of its hardware and model, with ratios.

    A ratio is published / predicted under the published row's own scenario (its deployment),
    not the preset's default one. A list-priced preset's price is the published one (ratio 1).
    """
    for row in rows:
        matches = [
            p
            for p in published
            if p["metric"] == "price_usd_per_mtok_output"
            and p["hw"] == row["hw"]
            and p["model_name"] == row["model"]
        ]
        row["published_usd_per_mtok_output"] = [
            {"row": p["row"], "value": p["measured"], "ratio": p["ratio"]} for p in matches
        ]


def _published(row: dict[str, Any], *, rows: bool = True) -> tuple[str, str]:
    """The published output prices of a preset row and their ratios, as two cells."""
    if row["price_basis"] == "list":
        return "= list", "1"
    found = row["published_usd_per_mtok_output"]
    sep = ", " if rows else "/"
    values = sep.join(f"{p['value']:.3g}" + (f" (#{p['row']})" if rows else "") for p in found)
    ratios = sep.join(_fmt(p["ratio"], 2) for p in found)
    return values or "-", ratios or "-"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def markdown(rows: list[dict[str, Any]], published: list[dict[str, Any]]) -> str:
    """The two tables as Markdown, for docs/substrates-compared.md."""
    lines = [
        "| preset | model | deployment | max batch | J/tok batch 1 | J/tok max batch "
        "| J/tok max, system power | $/M out | $/M in | published $/M out | ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        star = "*" if r["price_basis"] == "list" else ""
        lines.append(
            f"| {r['preset']} | {r['model']} | {r['deployment']} | {r['max_batch']} "
            f"| {_fmt(r['j_per_token_batch1'])} | {_fmt(r['j_per_token_max_batch'])} "
            f"| {_fmt(r['j_per_token_max_batch_system'])} "
            f"| {_fmt(r['usd_per_mtok_output'])}{star} | {_fmt(r['usd_per_mtok_input'])}{star} "
            f"| {' | '.join(_published(r))} |"
        )
    lines += [
        "",
        "| row | use | source | chip | model | metric | published | predicted | ratio |",
        "|---:|---|---|---|---|---|---:|---:|---:|",
    ]
    for p in published:
        lines.append(
            f"| {p['row']} | {p['use']} | {p['system']} | {p['chip']} | {p['model']} "
            f"| {p['metric']} | {_fmt(p['measured'])} | {_fmt(p['predicted'])} "
            f"| {_fmt(p['ratio'], 2)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=f"{DEFAULT_MODEL},llama-3.1-8b")
    parser.add_argument("--presets", default=",".join(PRESETS), help="Comma-separated presets.")
    parser.add_argument("--input", type=int, default=1000, help="Prompt tokens per request.")
    parser.add_argument("--output", type=int, default=500, help="Output tokens per request.")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of tables.")
    parser.add_argument("--markdown", action="store_true", help="Print Markdown tables.")
    args = parser.parse_args(argv)
    logging_off()
    catalog = load_catalog()
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {', '.join(unknown)}: choose from {', '.join(PRESETS)}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = [preset_row(p, m, args.input, args.output, catalog) for p in presets for m in models]
    published = published_rows(catalog)
    attach_published(rows, published)
    if args.json:
        workload = {"input_tokens": args.input, "output_tokens": args.output}
        print(json.dumps({"workload": workload, "presets": rows, "published": published}))
        return 0
    if args.markdown:
        print(markdown(rows, published))
        return 0
    print_table(
        f"energy and price, default deployments, {args.input} in / {args.output} out per request",
        [
            "preset",
            "model",
            "chips",
            "batch",
            "J/tok b=1",
            "J/tok max",
            "J/tok sys",
            "$/M out",
            "$/M in",
            "published",
            "ratio",
        ],
        [
            [
                r["preset"],
                r["model"].removeprefix("llama-"),
                r["chips"],
                r["max_batch"],
                _fmt(r["j_per_token_batch1"]),
                _fmt(r["j_per_token_max_batch"]),
                _fmt(r["j_per_token_max_batch_system"]),
                _fmt(r["usd_per_mtok_output"]) + ("*" if r["price_basis"] == "list" else ""),
                _fmt(r["usd_per_mtok_input"]) + ("*" if r["price_basis"] == "list" else ""),
                *_published(r, rows=False),
            ]
            for r in rows
        ],
    )
    print_table(
        "published energy and price rows (calibration table): measured vs predicted",
        ["row", "use", "system", "chip", "model", "metric", "measured", "predicted", "ratio"],
        [
            [
                p["row"],
                p["use"],
                p["system"][:28],
                p["chip"],
                p["model"],
                p["metric"].replace("price_usd_per_mtok_", "$/M ").replace("_per_token", "/tok"),
                _fmt(p["measured"]),
                _fmt(p["predicted"]),
                _fmt(p["ratio"], 2),
            ]
            for p in published
        ],
    )
    print(
        "J/tok: chips x power_w (GPU board, wafer system); sys: node power share. "
        "$/M: chip-hours at the largest batch; * = the profile's list price; - = no price. "
        "published: output list prices of the table (#row); ratio: published / predicted at "
        "that row's own deployment."
    )
    gpus = [r for r in rows if r["kind"] == "gpu" and r["j_per_token_max_batch"] is not None]
    ok = all(r["j_per_token_max_batch"] < r["j_per_token_batch1"] for r in gpus)
    verdict = "meets" if ok else "MISSES"
    print(f"target: J/token at the largest batch below batch 1 on every GPU preset -> {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
