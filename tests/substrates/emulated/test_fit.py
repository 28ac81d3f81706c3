"""The fitter and leave-one-model-out cross-validation (substrates/emulated/fit.py, crossval.py)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from agentrt.errors import ConfigError
from substrates.emulated.calibration import Calibration, CalibrationPoint, calibrate, predict_point
from substrates.emulated.crossval import cross_validate
from substrates.emulated.fit import (
    FitResult,
    Parameter,
    _replace,
    fit_family,
    fit_parameters,
    with_values,
)
from substrates.emulated.profiles import HardwareProfile, ProfileCatalog, load_catalog

AGENTRT = str(Path(sys.executable).with_name("agentrt"))


@pytest.fixture(scope="module")
def catalog() -> ProfileCatalog:
    return load_catalog()


@pytest.fixture(scope="module")
def table() -> Calibration:
    return calibrate()


def _fit_points(table: Calibration, family: str) -> list[CalibrationPoint]:
    return [p for p in table.scored if p.use == "fit" and p.family == family]


def _synthetic(points: Sequence[CalibrationPoint], truth: ProfileCatalog) -> list[CalibrationPoint]:
    """The same scenarios, with 'measured' values the model itself gives under ``truth``."""
    return [
        dataclasses.replace(p, measured=predict_point(p.metric, p.scenario, truth)) for p in points
    ]


def test_every_declared_parameter_resolves_to_a_family(catalog, table):
    params = fit_parameters(catalog)
    assert "unused" not in params
    paths = {p.path for family in params.values() for p in family}
    assert "hardware:h100.efficiency.flop_efficiency" in paths
    h100_flops = next(
        p for p in params["gpu"] if p.path.endswith("h100.efficiency.flop_efficiency")
    )
    # h200 declares no parameter of its own: it shares the H100 fit
    assert "hardware:h200.efficiency.flop_efficiency" in h100_flops.targets
    # a stack declares its own parameters (TensorRT-LLM's per-layer kernel latency)
    assert "stack:trtllm.efficiency.layer_latency_s" in paths
    # bandwidth efficiency is measured (vidur), not fitted
    assert not any(p.endswith("bandwidth_efficiency") for p in paths)
    assert not any(p.path.startswith("hardware:h200.") for p in params["gpu"])
    for family in params.values():
        for p in family:
            assert p.lower <= p.value <= p.upper


def test_with_values_sets_every_sharing_profile_and_leaves_the_catalog_alone(catalog):
    param = next(
        p
        for p in fit_parameters(catalog)["gpu"]
        if p.path.endswith("h100.efficiency.flop_efficiency")
    )
    changed = with_values(catalog, [param], [0.5])
    assert changed.hardware["h100"].efficiency.flop_efficiency == 0.5
    assert changed.hardware["h200"].efficiency.flop_efficiency == 0.5
    assert catalog.hardware["h100"].efficiency.flop_efficiency == param.value
    assert changed.hardware["b200"] == catalog.hardware["b200"]


@pytest.mark.parametrize(
    ("family", "scale"),
    [
        ("gpu", {"bandwidth_efficiency": 0.9, "flop_efficiency": 0.8, "iteration_overhead_s": 1.5,
                 "request_overhead_s": 2.0}),
        ("wafer", {"layer_latency_s": 1.4, "mesh_hop_s": 0.7, "request_overhead_s": 0.5}),
        ("lpu", {"layer_latency_s": 0.6, "mesh_hop_s": 1.3}),
    ],
)  # fmt: skip
def test_the_fit_recovers_known_parameters_from_points_the_model_made(
    catalog, table, family, scale
):
    params = fit_parameters(catalog)[family]
    truth_values = [
        min(p.upper, p.value * scale.get(p.path.rsplit(".", 1)[1], 1.1)) for p in params
    ]
    truth = with_values(catalog, params, truth_values)
    points = _synthetic(_fit_points(table, family), truth)
    result = fit_family(family, points, catalog, parameters=params)
    assert result.rank == len(params)
    assert not result.underdetermined
    for p, got, want in zip(params, result.values, truth_values, strict=True):
        assert got == pytest.approx(want, rel=0.01), p.path
    assert max(abs(r) for r in result.residuals) < 1e-3
    # and the start was really elsewhere: the file's values miss the synthetic points
    start = fit_family(family, points, catalog, parameters=())
    assert max(abs(r) for r in start.residuals) > 0.05


def test_a_point_set_that_cannot_separate_two_parameters_is_flagged(catalog, table):
    # one LPU configuration (Llama 3.1 8B) for two parameters (layer latency, mesh hop)
    points = [p for p in _fit_points(table, "lpu") if p.model_name == "llama-3.1-8b"]
    result = fit_family("lpu", points, catalog)
    assert len(result.parameters) == 2
    assert result.rank == 1
    assert result.underdetermined


def test_the_fit_is_deterministic(catalog, table):
    points = _fit_points(table, "gpu")
    first = fit_family("gpu", points, catalog)
    second = fit_family("gpu", points, catalog)
    assert first == second
    assert cross_validate(table, catalog) == cross_validate(table, catalog)


def test_leave_one_model_out_never_fits_to_a_point_of_the_held_out_model(catalog, table):
    calls: list[tuple[str, tuple[int, ...]]] = []

    def spy(
        family: str,
        points: Sequence[CalibrationPoint],
        cat: ProfileCatalog,
        parameters: Sequence[Parameter],
        cache: dict[tuple[int, tuple[float, ...]], float],
    ) -> FitResult:
        calls.append((family, tuple(p.row for p in points)))
        return fit_family(family, points, cat, parameters=parameters, cache=cache)

    cv = cross_validate(table, catalog, fitter=spy)
    model_of = {p.row: p.model_name for p in table.points}
    family_of = {p.row: p.family for p in table.points}
    assert {c.point.row for c in cv.points} == {p.row for p in table.scored}
    for c in cv.points:
        assert (c.point.family, c.trained_on) in calls  # the refit it was predicted under
        assert all(model_of[row] != c.point.model_name for row in c.trained_on), c.point.row
        assert all(family_of[row] == c.point.family for row in c.trained_on)
    for family, rows in calls:
        assert all(family_of[row] == family for row in rows)
    fitted = {p.row for p in table.scored if p.use == "fit"}
    assert {row for _, rows in calls for row in rows} <= fitted


def test_cross_validation_summarises_every_family_with_points(catalog, table):
    cv = cross_validate(table, catalog)
    families = {s.family: s for s in cv.families}
    assert set(families) == {p.family for p in table.scored}
    for s in cv.families:
        errors = [abs(c.cv_error) for c in cv.points if c.point.family == s.family]
        assert s.scored_points == len(errors)
        assert s.max_abs_error == max(errors)
        assert 0 <= s.median_abs_error <= s.max_abs_error
        assert s.folds == len({c.point.model_name for c in cv.points if c.point.family == s.family})
        assert s.parameters == len(cv.refits[s.family].parameters)
    for c in cv.points:
        assert math.isclose(c.cv_error, (c.cv_predicted - c.point.measured) / c.point.measured)


def _hardware(**changes: object) -> dict[str, object]:
    data = load_catalog().hardware["h100"].model_dump(exclude_unset=True)
    data.update(changes)
    return data


def test_a_bad_fit_name_is_a_clear_error(tmp_path, catalog):
    with pytest.raises(
        ValidationError,
        match=r"no field 'bandwith_efficiency' here; fields: .*bandwidth_efficiency",
    ):
        HardwareProfile.model_validate(_hardware(fit=["efficiency.bandwith_efficiency"]))
    with pytest.raises(ValidationError, match=r"'efficiency.fitted_to' is not a number"):
        HardwareProfile.model_validate(_hardware(fit=["efficiency.fitted_to"]))
    source = Path(catalog.files["hardware:h100"]).read_text(encoding="utf-8")
    bad = source.replace('"efficiency.flop_efficiency"', '"efficiency.flops"')
    assert bad != source
    (tmp_path / "h100.toml").write_text(bad, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"h100\.toml: .*fit entry 'efficiency\.flops'"):
        load_catalog([tmp_path])
    with pytest.raises(ConfigError, match=r"fit parameter 'h100\.efficiency\.x'.*KIND:NAME\.PATH"):
        with_values(
            catalog,
            [Parameter("h100.efficiency.x", "gpu", 1.0, 0.1, 10.0, ("h100.efficiency.x",))],
            [1.0],
        )
    # sharing a parameter nobody fits names the fix
    entry = "efficiency.allreduce_latency_s = hardware:h100.efficiency.allreduce_latency_s"
    h200 = catalog.hardware["h200"].model_copy(update={"fit": (entry,)})
    broken = catalog.model_copy(update={"hardware": {**catalog.hardware, "h200": h200}})
    with pytest.raises(ConfigError, match=r"add 'efficiency\.allreduce_latency_s' to the fit list"):
        fit_parameters(broken)
    with pytest.raises(ValidationError, match=r"after '=' name KIND:NAME\.PATH"):
        HardwareProfile.model_validate(_hardware(fit=["efficiency.flop_efficiency = h100"]))


def test_a_parameter_declared_by_two_profiles_is_one_parameter(catalog):
    # a stack may declare the hardware parameters it is fitted with, as h100 does itself
    h200 = catalog.hardware["h200"].model_copy(
        update={"fit": (*catalog.hardware["h200"].fit, "hardware:h100.efficiency.flop_efficiency")}
    )
    twice = catalog.model_copy(update={"hardware": {**catalog.hardware, "h200": h200}})
    assert fit_parameters(twice) == fit_parameters(catalog)


def test_a_path_may_cross_table_keys():
    # a stack's [efficiency] overrides and its acceptance rates are tables, not models
    table = {"layer_latency_s": 6e-6, "acceptance": {"chat": 0.9}}
    changed = _replace(table, ["acceptance", "chat"], 0.8)
    assert changed == {"layer_latency_s": 6e-6, "acceptance": {"chat": 0.8}}
    assert table["acceptance"] == {"chat": 0.9}


def test_a_parameter_at_zero_cannot_be_fitted_in_log_space(catalog):
    wse3 = catalog.hardware["wse3"].model_copy(update={"fit": ("efficiency.iteration_overhead_s",)})
    broken = catalog.model_copy(update={"hardware": {**catalog.hardware, "wse3": wse3}})
    with pytest.raises(ConfigError, match="remove it from the fit list, or give it a positive"):
        fit_parameters(broken)


def test_calibrate_cross_validate_json_shape():
    proc = subprocess.run(
        [AGENTRT, "calibrate", "--json", "--cross-validate", "--refit"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    scored = [p for p in data["points"] if p["use"] in ("fit", "check")]
    assert scored
    assert all(isinstance(p["cv_error"], float) for p in scored)
    assert all(p["cv_error"] is None for p in data["points"] if p["use"] not in ("fit", "check"))
    families = data["cross_validation"]["families"]
    assert {f["family"] for f in families} == {p["family"] for p in scored}
    for f in families:
        assert {"parameters", "fit_points", "median_abs_error", "max_abs_error"} <= set(f)
    assert set(data["exclusions"]) <= {"hardware unknown", "deployment unknown"}
    assert all({"row", "note"} == set(g) for g in data["gaps"])
    assert all({"path", "file", "fitted", "rows", "at_bound"} <= set(r) for r in data["refit"])


def test_a_parameter_no_row_reads_is_reported_not_fitted(catalog, table):
    params = list(fit_parameters(catalog)["gpu"])
    path = "hardware:gaudi3.efficiency.flop_efficiency"  # no gaudi3 row in the table
    value = catalog.hardware["gaudi3"].efficiency.flop_efficiency
    params.append(Parameter(path, "gpu", value, value / 10, 1.0, (path,)))
    result = fit_family("gpu", _fit_points(table, "gpu"), catalog, parameters=params)
    assert result.unmoved == (path,)
    assert result.values[-1] == value
    assert result.rank == len(params) - 1
    assert result.underdetermined
