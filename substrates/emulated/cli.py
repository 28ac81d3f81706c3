"""Commands the emulated engines add to ``agentrt`` (entry points ``agentrt.commands``).

``agentrt predict``, ``agentrt calibrate`` and ``agentrt substrates``. They live here, not in the
kernel's CLI, because the kernel does not import this package.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from agentrt import cli_options as opt
from agentrt.errors import AgentrtError
from agentrt.registry import default_registry
from agentrt.render import Column, print_table, terminal_console
from substrates.emulated import PRESETS, build_engine
from substrates.emulated.calibration import (
    Calibration,
    calibrate,
    format_exclusions,
    format_table,
)
from substrates.emulated.profiles import hardware_names, load_catalog, model_names, stack_names
from substrates.emulated.survey import predict_shape, preset_fits

if TYPE_CHECKING:  # the fit needs numpy: imported only by --cross-validate and --refit
    from substrates.emulated.crossval import CrossValidation
    from substrates.emulated.fit import FitResult

__all__ = ["calibrate_command", "predict_command", "substrates_command"]

_out = terminal_console(piped_width=160)
_err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    return opt.fail(message)


def predict_command(
    substrate: Annotated[
        str,
        typer.Option(
            "--substrate",
            "-s",
            metavar="NAME",
            help="Any emulated preset: " + ", ".join(PRESETS) + ".",
        ),
    ],
    model: opt.Model = None,
    prompt_tokens: Annotated[int, typer.Option(min=1, metavar="N", help="Prompt length.")] = 1000,
    output_tokens: Annotated[
        int, typer.Option(min=1, metavar="N", help="Tokens to generate.")
    ] = 500,
    concurrency: Annotated[
        int, typer.Option(min=1, metavar="N", help="Identical requests arriving together.")
    ] = 1,
    chips: opt.Chips = None,
    tp: opt.Tp = None,
    pp: opt.Pp = None,
    precision: opt.Precision = None,
    max_batch: opt.MaxBatch = None,
    network_rtt_ms: opt.NetworkRttMs = None,
    spec_decode: opt.SpecDecode = None,
    stack: opt.Stack = None,
    ep: opt.Ep = None,
    option: opt.Options = None,
    seed: opt.Seed = opt.SEED_DEFAULT,
    as_json: opt.AsJson = False,
) -> None:
    """Predict one request's latency, speed, cost and energy on an emulated engine.

    With --concurrency C, C identical requests arrive together and the figures are medians.
    """
    if substrate not in PRESETS:
        raise _fail(
            f"predict works on the emulated presets ({', '.join(PRESETS)}), not {substrate!r}"
        )
    try:
        options = opt.engine_options(
            option,
            model=model,
            chips=chips,
            tp=tp,
            pp=pp,
            precision=precision,
            max_batch=max_batch,
            network_rtt_ms=network_rtt_ms,
            spec_decode=spec_decode,
            stack=stack,
            ep=ep,
        )
        engine = build_engine(substrate, seed=seed, **options)
        model = engine.model
    except AgentrtError as exc:
        raise _fail(str(exc)) from None
    data = {
        "substrate": substrate,
        **predict_shape(engine, prompt_tokens, output_tokens, concurrency),
    }
    if as_json:
        _out.print_json(json.dumps(data))
        return
    rows = [["stack", str(data["stack"])], ["speculation", str(data["speculation"] or "off")]]
    for key in (
        "ttft_s",
        "tpot_s",
        "output_tokens_per_s",
        "e2e_s",
        "queue_s",
        "network_s",
        "prefill_s",
        "decode_s",
        "comm_s",
        "cost_usd",
        "energy_j",
    ):
        value = data[key]
        rows.append([key, "-" if value is None else f"{value:.6g}"])
    print_table(
        _out,
        [Column("measure", "left"), Column("value")],
        rows,
        title=f"{model} on {engine.deployment.describe()} · stack {engine.deployment.stack.name}"
        f" · {concurrency} concurrent",
    )


def calibrate_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    scored_only: Annotated[
        bool, typer.Option("--scored-only", help="Hide excluded, gap and input rows.")
    ] = False,
    cross_validate_: Annotated[
        bool,
        typer.Option(
            "--cross-validate",
            help="Refit each family without each model in turn and predict that model's points "
            "(leave-one-model-out); per-family median and maximum error.",
        ),
    ] = False,
    refit: Annotated[
        bool,
        typer.Option("--refit", help="Refit every family; show fitted against file values."),
    ] = False,
) -> None:
    """Every published point in the calibration table: measured, predicted, relative error."""
    try:
        calibration = calibrate()
        cv = None
        if cross_validate_ or refit:
            from substrates.emulated.crossval import cross_validate

            cv = cross_validate(calibration, load_catalog())
    except AgentrtError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        _out.print_json(
            json.dumps(
                _calibration_json(
                    calibration, cv, scored_only=scored_only, show_cv=cross_validate_, refit=refit
                )
            )
        )
    else:
        _print_calibration(calibration, scored_only=scored_only)
        if cv is not None and cross_validate_:
            _print_cross_validation(cv)
        if cv is not None and refit:
            _print_refit(cv)
    if calibration.failures:
        raise typer.Exit(1)


def _calibration_json(
    calibration: Calibration,
    cv: CrossValidation | None,
    *,
    scored_only: bool,
    show_cv: bool,
    refit: bool,
) -> dict[str, object]:
    cv_errors = {c.point.row: c for c in cv.points} if cv is not None else {}
    worst = calibration.largest_error
    points = []
    for p in calibration.points:
        if scored_only and not p.scored:
            continue
        entry: dict[str, object] = {
            "row": p.row,
            "system": p.system,
            "chip": p.chip,
            "model": p.model,
            "metric": p.metric,
            "unit": p.unit,
            "measured": p.measured,
            "predicted": p.predicted,
            "relative_error": p.relative_error,
            "use": p.use,
            "family": p.family,
            "scenario": p.scenario,
            "source": p.source,
            "note": p.note,
        }
        if show_cv:
            c = cv_errors.get(p.row)
            entry["cv_error"] = None if c is None else c.cv_error
            entry["cv_underdetermined"] = None if c is None else c.underdetermined
        points.append(entry)
    payload: dict[str, object] = {
        "tolerance": calibration.tolerance,
        "points": points,
        "largest_error": None
        if worst is None
        else {"row": worst.row, "relative_error": worst.relative_error},
        "failures": [p.row for p in calibration.failures],
        "exclusions": {reason: list(rows) for reason, rows in calibration.exclusions.items()},
        "gaps": [{"row": p.row, "note": p.note} for p in calibration.gaps],
    }
    if cv is not None and show_cv:
        payload["cross_validation"] = {
            "median_abs_error": cv.median_abs_error,
            "families": [dataclasses.asdict(s) for s in cv.families],
        }
    if cv is not None and refit:
        payload["refit"] = [
            {"path": p.path, "family": family, "file": p.value, "fitted": value,
             "rows": list(fit.rows), "at_bound": p.path in fit.at_bound,
             "moved_by_rows": p.path not in fit.unmoved}
            for family, fit in cv.refits.items()
            for p, value in zip(fit.parameters, fit.values, strict=True)
        ]  # fmt: skip
    return payload


def substrates_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Registered substrates; per emulated preset: chips, memory, bandwidth, what fits."""
    try:
        registry = default_registry()
        names = registry.names("agentrt.substrates")
        tools = registry.names("agentrt.tools")
    except AgentrtError as exc:
        raise _fail(str(exc)) from None
    presets = preset_fits([name for name in names if name in PRESETS])
    others = [n for n in names if n not in PRESETS]
    if as_json:
        _out.print_json(
            json.dumps(
                {
                    "presets": presets,
                    "substrates": names,
                    "tools": tools,
                    "hardware_profiles": list(hardware_names()),
                    "stacks": list(stack_names()),
                }
            )
        )
        return
    models = list(model_names())
    rows = [
        [
            p["name"],
            p["hardware"],
            f"{p['memory_gb_per_chip']:g} GB",
            f"{p['memory_bandwidth_tb_per_s']:g} TB/s",
            f"{p['power_w_per_chip']:g} W",
            f"{p['default_stack']} (of {', '.join(p['stacks'])})",
            *(p["models"][m] for m in models),
        ]
        for p in presets
    ]
    print_table(
        _out,
        [
            *(Column(c, "left") for c in ("preset", "hardware")),
            *(Column(c) for c in ("memory/chip", "bandwidth/chip", "power/chip")),
            Column("default stack (stacks)", "left", wrap=True),
            *(Column(c) for c in models),
        ],
        rows,
        title="emulated presets · chips needed per model (smallest deployment that fits)",
    )
    if others:
        _out.print("other substrates: " + ", ".join(others), highlight=False)
    _out.print("tools: " + (", ".join(tools) or "none registered"), highlight=False)


def _print_calibration(calibration: Calibration, *, scored_only: bool) -> None:
    """The calibration table (ids and numbers whole at any width), the reasons, the summary."""
    shown = [p for p in calibration.points if p.scored or not scored_only]
    rows = [
        [
            str(p.row),
            p.use,
            p.chip,
            p.model,
            p.metric.replace("_", " "),
            f"{p.measured:.4g}",
            "-" if p.predicted is None else f"{p.predicted:.4g}",
            "-" if p.relative_error is None else f"{p.relative_error:+.1%}",
        ]
        for p in shown
    ]
    # a model name is an id (never cut inside a word): its column does not wrap
    columns = [Column("row"), *(Column(h, "left", wrap=True) for h in ("use", "chip"))]
    columns.append(Column("model", "left"))
    columns.append(Column("metric", "left", wrap=True))
    columns += [Column("measured"), Column("predicted"), Column("error")]
    print_table(_out, columns, rows, title="published points: measured, predicted, error")
    if not scored_only:
        for line in format_exclusions(calibration).splitlines():
            _out.print(line, highlight=False)
    _out.print(format_table(calibration).splitlines()[-1], highlight=False)


def _print_cross_validation(cv: CrossValidation) -> None:
    """Per point, then per family: the error under a refit that never saw the point's model."""
    rows = [
        [
            str(c.point.row),
            c.point.family or "-",
            c.point.use,
            c.point.model_name or "-",
            f"{c.point.relative_error or 0.0:+.1%}",
            f"{c.cv_error:+.1%}",
            "yes" if c.underdetermined else "",
        ]
        for c in cv.points
    ]
    columns = [Column("row"), *(Column(h, "left") for h in ("family", "use", "model"))]
    columns += [Column("error"), Column("cv error"), Column("undetermined", "left")]
    print_table(_out, columns, rows, title="leave-one-model-out: each model held out in turn")
    summary = [
        [
            s.family,
            str(s.parameters),
            str(s.fit_points),
            str(s.scored_points),
            f"{s.folds} ({s.underdetermined_folds})",
            f"{s.median_abs_error:.1%}",
            f"{s.max_abs_error:.1%}",
        ]
        for s in cv.families
    ]
    headers = ("parameters", "fit points", "scored", "folds (undetermined)", "cv median", "cv max")
    print_table(
        _out,
        [Column("family", "left"), *(Column(h) for h in headers)],
        summary,
        title="per family: fitted parameters, points, cross-validated |error|",
    )
    _out.print(
        f"leave-one-model-out median |error| over {len(cv.points)} scored points: "
        f"{cv.median_abs_error:.1%}",
        highlight=False,
    )


def _refit_flag(path: str, fit: FitResult) -> str:
    if path in fit.unmoved:
        return " (no row moves it)"
    return " (at a bound)" if path in fit.at_bound else ""


def _print_refit(cv: CrossValidation) -> None:
    """Each fitted parameter: the data file's value against a refit to every fit point."""
    rows = [
        [
            p.path,
            f"{p.value:.4g}",
            f"{value:.4g}",
            f"{value / p.value - 1:+.1%}" + _refit_flag(p.path, fit),
            str(len(fit.rows)),
        ]
        for fit in cv.refits.values()
        for p, value in zip(fit.parameters, fit.values, strict=True)
    ]
    print_table(
        _out,
        [Column("parameter", "left"), *(Column(h) for h in ("file", "refit", "change", "rows"))],
        rows,
        title="fitted parameters: the data files against a refit to every fit point",
    )
