"""The parameter registry (metrology.parameters) walked record by record: the model, the fit schedule,
the uncertainty report, the station file, the drift rules, the simulator, the spec, the result JSON and
the PDF tables all name every parameter the way its record does.

A record added without the rest (no nn.Parameter of that path in the physics, say) fails here: see
``test_a_record_without_physics_fails``.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from metrology import parameters as reg
from metrology.analysis.spec import MisalignmentLimits
from metrology.analysis.verdict import Verdict
from metrology.audit.drift import STATION_PARAMETERS as CHARTED
from metrology.audit.status import drift_exceedances
from metrology.io.station_file import parse_station
from metrology.measurement import DataQuality
from metrology.misalignment import DEFAULT_RANGES, MISALIGNMENT_SHAPES, nominal_misalignment
from metrology.physics import CALIBRATABLE, StationModel
from metrology.report.document import validate_document
from metrology.report.pdf import station_rows
from metrology.report.result import build_document
from metrology.simulate import simulate_capture
from metrology.solver.jacobian import columns_for
from metrology.solver.reconstruct import FitResult
from metrology.solver.schedule import MODES, default_schedule
from metrology.solver.uncertainty import measurement_from_fit
from tests.physics_cases import small_geometry
from tests.sim_cases import bench_station, centre_leds

RECORDS = reg.PARAMETERS
IDS = [p.path for p in RECORDS]


@pytest.fixture(scope="module")
def model():
    return StationModel(small_geometry(frame_px=16, n_side=3, upsampling=3, zernike_terms=15))


def sizes_of(model) -> dict:
    g = model.geometry
    return {"leds": g.n_leds, "zernike_terms": g.zernike_terms, "object_px": g.object_px}


# ----------------------------------------------------------------------------- model
def check_model(record, model):
    """The physics holds an nn.Parameter at the record's path, of the record's shape."""
    try:
        p = model.get_parameter(record.path)
    except AttributeError:
        raise AssertionError(f"{record.path}: the model has no parameter of that path") from None
    assert tuple(p.shape) == record.resolve_shape(sizes_of(model)), record.path
    assert record.path in CALIBRATABLE


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_model_has_the_parameter(record, model):
    check_model(record, model)
    if record.nominal:  # the model starts aligned
        assert torch.all(model.parameter(record.path) == record.nominal)


def test_every_model_parameter_has_a_record(model):
    assert sorted(name for name, _ in model.named_parameters()) == sorted(IDS)


def test_a_record_without_physics_fails(model):
    unbuilt = reg.Parameter("field.seidel_waves", (), "", "field-dependent Seidel terms (issue 16), waves", "lens",
                               bounds=(0.5, 3.0), fit=reg.Fit(0.01))
    with pytest.raises(AssertionError, match="no parameter of that path"):
        check_model(unbuilt, model)


# ----------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("record", RECORDS, ids=IDS)
@pytest.mark.parametrize("mode", MODES)
def test_schedule_frees_the_parameter_as_the_record_says(record, mode):
    specs = [s for s in default_schedule(mode, 36).parameters if s.path == record.path]
    if record.fit is None or mode not in record.fit.modes:
        assert specs == []
        return
    assert specs and all(s.step == record.fit.step and s.bounds == record.bounds for s in specs)
    if record.fit.stages:
        assert [s.start for s in specs] == [st.start for st in record.fit.stages]
        assert [list(s.indices) for s in specs] == [[i for i in st.elements if i < 36] for st in record.fit.stages]
    else:
        assert [(s.start, s.indices) for s in specs] == [(record.fit.start, None)]


def test_schedule_order_lists_every_fitted_parameter_once():
    assert sorted(reg.SCHEDULE_ORDER) == sorted(p.path for p in RECORDS if p.fit is not None)


# ----------------------------------------------------------------------------- uncertainty report, JSON, PDF
@pytest.fixture(scope="module")
def measurement(model):
    """A Measurement from a FitResult at the nominal state (unit Fisher information: no fit needed)."""
    specs = [s for s in default_schedule("known", model.geometry.zernike_terms).parameters]
    cols = columns_for(model, specs)
    n = len(cols.names)
    fit = FitResult(model=model, schedule=default_schedule("known"), data=None, mask=None, noise=None,
                    quality=DataQuality(), history=[1.0], iterations=1, converged=True, message="",
                    chi2=1.0, dof=1, frame_residuals=np.ones(model.geometry.n_leds), wall_time_s=0.0,
                    jtj=torch.eye(n, dtype=torch.float64) * 4.0, columns=cols)
    return measurement_from_fit(fit)


def _document(measurement):
    loaded = SimpleNamespace(capture=SimpleNamespace(lens_model="lens"), spec=None,
                             station=SimpleNamespace(station_id="st"), inputs=[])
    figures = {k: {"value": 0.0, "u": 0.0, "U": 0.0} for k in ("rms_waves", "rms_nm", "pv_waves", "pvr_waves",
                                                               "strehl", "strehl_psf")}
    figures.update(fit_residual_waves=0.0, mtf=[])
    return build_document(loaded, measurement, Verdict("PASS", [], []), {"status": "none"}, figures, {},
                          "serial", "", datetime(2026, 1, 1, tzinfo=timezone.utc))


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_report_json_and_pdf_name_tracked_parameters_as_the_record(record, measurement, model):
    names = reg.element_names(record.path, sizes_of(model))
    reported = [s for s in measurement.station if s.name in names]
    doc = _document(measurement)
    rows = [m for m in doc["station_misalignment"] if m["name"] in names]
    pdf = {row[0] for row in station_rows(doc)}
    if record.drift is None:  # not station state: not in the station tables
        assert reported == [] and rows == []
        return
    assert [s.name for s in reported] == names  # every element, in order, fitted in known mode
    assert [s.label for s in reported] == list(record.labels) == [m["label"] for m in rows]
    assert {s.unit for s in reported} == {record.unit} == {m["unit"] for m in rows}
    assert set(record.labels) <= pdf
    validate_document(doc)


def test_report_lists_tracked_parameters_in_registry_order(measurement):
    assert [s.name for s in measurement.station] == [n for p in reg.TRACKED for n in reg.element_names(p)]
    assert list(CHARTED) == [s.name for s in measurement.station]  # the audit charts them in that order


# ----------------------------------------------------------------------------- station file and drift rules
@pytest.fixture(scope="module")
def station():
    return bench_station(32)


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_station_file_and_drift_rules_use_the_record(record, station):
    text = station.to_toml()
    if record.drift is None:
        assert record.path not in station.drift_limits
        return
    assert f"\n{record.key} = {record.drift.limit!r}\n" in text.split("[calibration.drift_limits]")[1] + "\n"
    tighter = parse_station(text.replace(f"\n{record.key} = {record.drift.limit!r}",
                                         f"\n{record.key} = {record.drift.limit / 2!r}"))
    assert tighter.drift_limits[record.path] == record.drift.limit / 2
    names = reg.element_names(record.path)
    calibrated = {n: 0.0 for p in reg.TRACKED for n in reg.element_names(p)}
    current = dict(calibrated, **{names[0]: 2.0 * record.drift.limit})
    (key, change, limit, unit, detail), = drift_exceedances(current, calibrated, station.drift_limits)
    assert (key, change, limit, unit) == (record.key, 2.0 * record.drift.limit, record.drift.limit, record.unit)
    assert (record.label if record.magnitude == "norm" else names[0]) in detail
    assert drift_exceedances(dict(calibrated, **{names[0]: 0.5 * record.drift.limit}), calibrated,
                             station.drift_limits) == []


# ----------------------------------------------------------------------------- spec and verdict
def test_spec_validity_limits_are_the_station_geometry():
    keys = [reg.BY_PATH[p].key for p in reg.GEOMETRY]
    assert list(MisalignmentLimits.keys()) == keys == [f.name for f in dataclasses.fields(MisalignmentLimits)]
    assert all(reg.BY_PATH[p].role == "station" and reg.BY_PATH[p].magnitude for p in reg.GEOMETRY)


def test_station_magnitudes():
    values = {"illumination.shift_mm[0]": 3.0, "illumination.shift_mm[1]": -4.0, "illumination.rotation_deg": -0.2,
              "illumination.tilt_deg[0]": 0.1, "illumination.tilt_deg[1]": -0.3, "sample.defocus_um": 2.0,
              "pupil.zernike_waves[4]": 9.0}
    assert reg.station_magnitudes(values) == pytest.approx(
        {"shift_mm": 5.0, "rotation_deg": 0.2, "tilt_deg": 0.3, "defocus_um": 2.0})
    assert reg.station_magnitudes(values, keys=["shift_mm", "illumination.tilt_deg"]) == pytest.approx(
        {"shift_mm": 5.0, "tilt_deg": 0.3})


# ----------------------------------------------------------------------------- simulator
@pytest.fixture(scope="module")
def nominal_frames(station):
    cap, truth = simulate_capture(station, np.zeros(15), {}, leds=centre_leds(3), noise=False)
    return cap.frames.astype(float), truth


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_simulator_draws_and_honours_the_parameter(record, station, nominal_frames):
    frames0, truth0 = nominal_frames
    if record.draw is None:
        assert record.path not in MISALIGNMENT_SHAPES
        return
    n = len(centre_leds(3))
    assert DEFAULT_RANGES[record.path] == record.draw
    assert np.all(np.asarray(nominal_misalignment(n)[record.path]) == record.nominal)
    assert np.all(np.asarray(truth0[record.path]) == record.nominal)
    value = np.array(nominal_misalignment(n)[record.path], dtype=float)
    value.flat[0] += 5 * record.draw  # at the edge of the draws (the tilt moves central LEDs little)
    cap, truth = simulate_capture(station, np.zeros(15), {record.path: value.tolist() if value.ndim else float(value)},
                                  leds=centre_leds(3), noise=False)
    assert np.asarray(truth[record.path]).flat[0] == pytest.approx(value.flat[0])
    assert np.abs(cap.frames.astype(float) - frames0).max() > 1.0, f"the simulator ignores {record.path}"


# ----------------------------------------------------------------------------- element names
@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_element_names_round_trip(record, model):
    for i, name in enumerate(reg.element_names(record.path, sizes_of(model))[:40]):
        p, index = reg.parse_element(name)
        assert p is record and index == (None if record.scalar else i)
        assert reg.lookup(name) == (record, index)
        assert reg.element_label(name)
    if record.key:
        assert reg.lookup(record.key) == (record, None)


def test_noll_of_and_labels():
    assert reg.noll_of("pupil.zernike_waves[4]") == 5
    assert reg.noll_of("pupil.log_amplitude[4]") is None and reg.noll_of("illumination.rotation_deg") is None
    assert reg.element_label("pupil.zernike_waves[4]") == "Noll 5 astigmatism 45"
    assert reg.element_label("illumination.tilt_deg[1]") == "LED array tilt about y"
    with pytest.raises(ValueError):
        reg.parse_element("illumination.shift_mm")  # a vector needs an index
    with pytest.raises(ValueError):
        reg.parse_element("illumination.shift_mm[2]")
    with pytest.raises(KeyError):
        reg.parse_element("illumination.yaw_deg")
