"""Recovery with known truth: the solver on literal-simulator captures of a misaligned station.

A reduced standard case that fits the test budget (the full 15x15 LEDs / 64 px standard case is in
``benchmarks/bench_solver.py``): the fixture bench with its central 11 x 11 LEDs, 32 px frames,
0.1 waves RMS over Noll 5-15, a random misalignment (shift +/-1 mm, rotation +/-3 deg, distance
+/-3 mm, tilt, brightness, defocus, position), 0.2 mm emitters, shot and read noise, 12-bit camera.
Tolerances are the issue's standard-case targets, except where the smaller frames carry less
information (stated per line).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from metrology.physics import StationModel
from metrology.references import catalogue_over_field
from metrology.solver import NoiseModel, default_schedule, reconstruct
from metrology.solver import refit_budget
from metrology.solver.schedule import parameters_at_bounds
from metrology.solver.uncertainty import measurement_from_fit
from tests.sim_cases import misaligned_capture


@pytest.fixture(scope="module")
def case():
    return misaligned_capture(32, 11, seed=21)


def _fit(case, mode, hold=(), stated_na_scale=1.0):
    """The fit of ``case`` in ``mode`` (the default schedule less the paths ``hold``), the station's
    NA stated as ``stated_na_scale`` times the lens's true NA."""
    station, leds, capture, truth, _ = case
    g = station.geometry(leds)
    g = replace(g, na=g.na * stated_na_scale)
    ref = None
    if mode == "known":
        ref = catalogue_over_field(truth["reference_sample"], station.fov_um, g, seed=truth["reference_seed"])
    model = StationModel(g, transmission=ref, exposure=truth["relative_exposure"])
    cam = station.camera
    noise = NoiseModel.from_camera(cam.photons_per_count, cam.read_noise_e, cam.full_scale, True)
    result = reconstruct(model, capture.frames, noise, default_schedule(mode, g.zernike_terms).without(*hold))
    return model, result


def _lens_error(model, coeffs):
    got = model.pupil.zernike_waves.detach().double().numpy()
    return float(np.sqrt(np.sum((got[4:15] - coeffs[4:15]) ** 2)))


@pytest.fixture(scope="module")
def known(case):
    return _fit(case, "known")


def test_known_mode_recovers_lens_and_misalignment(case, known):
    station, leds, capture, truth, coeffs = case
    model, result = known
    assert result.converged and result.reduced_chi2 < 1.2
    assert result.at_bounds == []  # a fit inside its basin leaves every parameter off its bounds
    assert _lens_error(model, coeffs) < 0.003
    state = model.station_state()
    shift = np.asarray(state["illumination.shift_mm"]) - np.asarray(truth["illumination.shift_mm"])
    assert np.linalg.norm(shift) * 1000 < 10.0  # um
    assert abs(state["illumination.rotation_deg"] - truth["illumination.rotation_deg"]) < 0.02
    assert abs(state["illumination.distance_error_mm"] - truth["illumination.distance_error_mm"]) < 0.1
    assert abs(state["sample.defocus_um"] - truth["sample.defocus_um"]) < 0.5


STATED_NA_SCALE = 1.015
"""The blind recovery fit's station file states the NA 1.5 % above the lens's (the size of a 1 %
NA and 1 % magnification tolerance drawn together): blind mode fits the NA and must find the truth."""


@pytest.fixture(scope="module")
def blind(case):
    """The blind fit as the pipeline runs it (the pupil edge's NA fitted), from a mis-stated NA."""
    return _fit(case, "blind", stated_na_scale=STATED_NA_SCALE)


@pytest.fixture(scope="module")
def blind_held_na(case):
    """The blind fit with the NA held at its (correctly) stated value: what the pupil radius's
    re-fit term of the budget serves (``[reconstruction] fit_na = false``, and prior mode)."""
    return _fit(case, "blind", hold=("pupil.na",))


def test_blind_mode_recovers_the_lens(case, blind, monkeypatch):
    """Unknown sample: the lens within 0.004 waves RMS (Noll 5-15; 0.0012 seen with the NA stated
    exactly and held, 0.0030 before the dark-field LEDs started at their nominal brightness), no
    parameter on a bound; converged by the one test of every mode (the system's Gauss-Newton step,
    and for the free sample: still below tolerance after a further sample pass), and the message says
    so. The station states the NA 1.5 % high (:data:`STATED_NA_SCALE`): the fit measures it back to
    within 0.3 % and within 3 of its standard uncertainties, which the measurement reports. A fit
    that measured the NA carries the pupil edge's model-form term by default, whoever asks for the
    measurement (here its re-fit is a stand-in that moves nothing); only ``refit_edge=False`` omits it."""
    station, _, _, truth, coeffs = case
    model, result = blind
    assert _lens_error(model, coeffs) < 0.004
    assert result.at_bounds == []
    assert result.converged and "sample settled" in result.message, result.message
    assert result.reduced_chi2 < 2.0  # the free sample's degrees of freedom counted as the data constrain them
    na, true_na = float(model.pupil.na.detach()), truth["pupil.na"]
    assert abs(na / true_na - 1) < 0.003, (na, true_na, station.na * STATED_NA_SCALE)
    refitted = []
    monkeypatch.setattr(refit_budget, "refit_from", lambda fit, moved: refitted.append(moved) or (True, "stand-in"))
    m = measurement_from_fit(result)
    assert [b.name for b in m.budget] == ["pupil_edge_model"] and [r.pupil.edge for r in refitted] == ["coverage"]
    assert m.arrays["uncertainty_method"]["pupil_edge_refit"]["edges"] == ["source", "coverage"]
    assert measurement_from_fit(result, refit_edge=False).budget == [] and len(refitted) == 1
    (est,) = m.lens_parameters
    assert est.name == "pupil.na" and est.value == pytest.approx(na) and 0 < est.u < 0.003 * true_na
    assert abs(na - true_na) < 3 * est.u, (na, true_na, est.u)


def test_a_sample_that_is_still_changing_is_settled_or_not_converged(blind_held_na, monkeypatch):
    """The free sample's convergence test on the blind fit. At the fit's solution it passes at once
    (round 1, no further polish). With the sample disturbed (as a loop that stalled far from its
    optimum leaves it) and sample passes too short to undo that alone, a further sample pass moves what
    is reported: given its rounds of sample pass, joint pass and polish, the fit is repaired (settled in a later round, the polish re-run, the lens back within
    0.001 waves of the undisturbed fit); allowed a single round, the test says "not converged"
    (whatever the loss history says)."""
    import copy

    import sys
    import torch

    from metrology.solver import settle
    from metrology.solver.weights import Weighting

    rc = sys.modules["metrology.solver.reconstruct"]  # the package exports the function under this name

    _, result = blind_held_na
    specs = [p for p in result.schedule.parameters if not p.path.startswith("sample.field")]

    def settled(model, schedule=result.schedule):
        data, mask = result.data.to(model.sample.field_real.dtype), result.mask.to(model.sample.field_real.dtype)
        weighting = Weighting.for_fit(model, data, mask, result.noise, result.schedule.data_weights)
        evaluate = rc._objective(model, data, mask, result.noise, result.schedule, None, weighting)
        return settle.sample_settled(model, data, mask, result.noise, schedule, evaluate, weighting, specs,
                                     result.jtj, float(mask.sum()))

    ok, message, jtj, _, _, steps = settled(copy.deepcopy(result.model))
    assert ok and "round 1" in message and jtj is None and steps == 0, message

    def disturbed():
        model = copy.deepcopy(result.model)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for part in (model.sample.field_real, model.sample.field_imag):
                part.add_(0.3 * torch.randn(part.shape, generator=gen, dtype=part.dtype))
        return model

    # a short sample pass cannot undo the disturbance by itself (at 20 iterations it does, in float64)
    monkeypatch.setattr(settle, "SETTLE_SAMPLE_STEPS", 2)
    repaired = disturbed()
    ok, message, jtj, _, _, steps = settled(repaired)
    assert ok and "round 1" not in message and jtj is not None and steps > 0, message
    original = result.model.pupil.zernike_waves.detach().double().numpy()
    assert _lens_error(repaired, original) < 0.001
    ok, message, *_ = settled(disturbed(), replace(result.schedule, settle_rounds=1))
    assert not ok and message.startswith("not converged: the sample is still changing"), message


def test_a_warm_refit_from_the_optimum_stays_there(blind_held_na):
    """:func:`refit_from` (the fit's last stretch, warm-started) on an unmoved copy of the blind fit:
    converged by the fit's own test, every fitted column within the convergence tolerance (0.5 of its
    standard deviation), and the fit itself untouched."""
    import copy

    from metrology.solver.jacobian import psd_inverse
    from metrology.solver.reconstruct import refit_from
    from metrology.solver.refit_budget import _column_values

    _, result = blind_held_na
    before = _column_values(result.model, result.columns)
    model = copy.deepcopy(result.model)
    ok, message = refit_from(result, model)
    assert ok and "sample settled" in message, message
    sd = np.sqrt(np.diag(psd_inverse(result.jtj.double()).numpy()))
    moved = np.abs(_column_values(model, result.columns) - before) / sd
    assert moved.max() < 0.5, (result.columns.names[int(moved.argmax())], moved.max())
    np.testing.assert_array_equal(_column_values(result.model, result.columns), before)


def test_the_pupil_radius_term_stands_for_the_na_magnification_and_pixel(blind_held_na):
    """``refit_radius``: in blind mode with the NA held (``fit_na = false``; prior mode) the NA, magnification and camera pixel enter the budget as one
    term, the pupil radius, whose ``u`` is their relative uncertainties added in quadrature and whose
    effect comes from two warm re-fits with the sample free (2 settle rounds here, to bound the
    test's time). The physics it rests on, checked on the held budget: a 1 % NA error and a -1 %
    magnification error move the lens the same way (correlation < -0.99 between the NA's and the
    magnification's contributions, of equal size for equal relative u). The re-fits move the lens
    along that direction (correlation > 0.8 with the held NA term) by a similar amount (0.5-2x the
    held terms in quadrature: the sample's freedom changes the size, not the kind, of the effect)."""
    _, result = blind_held_na
    g = result.model.geometry
    na = float(result.model.pupil.na.detach())
    u = {"na": 0.01 * na, "magnification": 0.01 * g.magnification, "camera_pixel_um": 0.001 * g.camera_pixel_um,
         "wavelength_nm": 2.0}
    held = {b.name: b.zernike[4:15] for b in measurement_from_fit(result, u).budget}
    assert set(held) == {"na", "magnification", "camera_pixel_um", "wavelength_nm"}
    assert np.corrcoef(held["na"], held["magnification"])[0, 1] < -0.99
    assert np.linalg.norm(held["magnification"]) == pytest.approx(np.linalg.norm(held["na"]), rel=0.1)

    quick = replace(result, schedule=replace(result.schedule, settle_rounds=2))
    m = measurement_from_fit(quick, u, refit_radius=True)
    refits = m.arrays["uncertainty_method"]["pupil_radius_refits"]
    assert len(refits["converged"]) == 2
    # replaced where both re-fits converged, kept beside it otherwise (the next test)
    kept = [] if all(refits["converged"]) else ["na", "magnification", "camera_pixel_um"]
    assert sorted(b.name for b in m.budget[:-1]) == sorted(["wavelength_nm", *kept])
    radius = m.budget[-1]
    assert radius.unit == "%" and radius.u == pytest.approx(100 * np.sqrt(0.01**2 + 0.01**2 + 0.001**2), rel=1e-9)
    assert 100 * refits["u_relative"] == pytest.approx(radius.u, rel=1e-12)
    effect = radius.zernike[4:15]
    combined = np.sqrt(held["na"] ** 2 + held["magnification"] ** 2 + held["camera_pixel_um"] ** 2)
    assert np.corrcoef(effect, held["na"])[0, 1] > 0.8
    assert 0.5 < np.linalg.norm(effect) / np.linalg.norm(combined) < 2.0
    # the wavelength keeps its held term, unchanged
    wavelength = next(b for b in m.budget if b.name == "wavelength_nm")
    np.testing.assert_allclose(wavelength.zernike[4:15], held["wavelength_nm"], rtol=1e-9, atol=1e-12)
    # the result document's budget block carries the re-fits, as its schema states
    import json

    import jsonschema

    from metrology.analysis.budget import budget_document
    from metrology.report.document import SCHEMA_PATH

    block = budget_document(m)
    assert block["pupil_radius_refits"] == refits and "re-fits" in block["method"]
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(json.loads(json.dumps(block)), {**schema["properties"]["uncertainty_budget"], "$defs": schema["$defs"]})


def test_an_unconverged_radius_refit_keeps_the_held_terms_beside_it(blind_held_na, monkeypatch):
    """Where a re-fit of the pupil-radius term does not converge, its size is not established: the
    held NA, magnification and camera-pixel terms stay in the budget beside it, so U is never smaller
    than the held budget's, and the method record says which re-fit stopped short. (The re-fit is
    replaced by one that stops at once, reporting no convergence: the policy, not the re-fit, is under
    test here; the re-fit itself is tested above.)"""
    _, result = blind_held_na
    g = result.model.geometry
    u = {"na": 0.01 * float(result.model.pupil.na.detach()), "magnification": 0.01 * g.magnification,
         "camera_pixel_um": 0.001 * g.camera_pixel_um, "wavelength_nm": 2.0}
    held = measurement_from_fit(result, u)
    calls = []

    def stops_short(fit, model):
        calls.append(model)
        return len(calls) == 1, "converged" if len(calls) == 1 else "not converged: stopped after 0 rounds"

    monkeypatch.setattr(refit_budget, "refit_from", stops_short)
    m = measurement_from_fit(result, u, refit_radius=True)
    assert len(calls) == 2
    assert sorted(b.name for b in m.budget) == ["camera_pixel_um", "magnification", "na", "pupil_radius", "wavelength_nm"]
    assert m.arrays["uncertainty_method"]["pupil_radius_refits"]["converged"] == [True, False]
    assert np.all(m.zernike_u[4:15] >= held.zernike_u[4:15] * (1 - 1e-9))
    both = {b.name: b.zernike for b in m.budget}
    for name in ("na", "magnification", "camera_pixel_um", "wavelength_nm"):
        np.testing.assert_allclose(both[name], {b.name: b.zernike for b in held.budget}[name], rtol=1e-9, atol=1e-12)


def test_the_pupil_edge_term_is_the_other_edges_refit(known, monkeypatch):
    """``[uncertainty] pupil_edge_model`` (or ``refit_edge``): the fit re-run, warm, with the other edge discretisation (the pixel-coverage
    edge for the default source-averaged one); the change of every fitted column enters the budget
    as one standard uncertainty of one common cause (u = 1, contribution = the change itself, fully
    correlated), and only there. On a capture of the model's own physics the two edges' optima are
    close: within a few times the lens's Type A u of this fit (no station constants here)."""
    model, result = known
    refitted = []
    original = refit_budget.refit_from

    def recording(fit, moved):
        out = original(fit, moved)
        refitted.append(moved)
        return out

    monkeypatch.setattr(refit_budget, "refit_from", recording)
    plain = measurement_from_fit(result, {})
    # as a station asks for it: [uncertainty] pupil_edge_model = 2 (the difference counts as 2 u)
    m = measurement_from_fit(result, {"pupil_edge_model": 2.0})
    refit = m.arrays["uncertainty_method"]["pupil_edge_refit"]
    assert refit["edges"] == ["source", "coverage"] and refit["converged"], refit
    (moved,) = refitted
    assert moved.pupil.edge == "coverage" and result.model.pupil.edge == "source"  # the fit's model untouched
    (edge,) = [b for b in m.budget if b.name == "pupil_edge_model"]
    assert edge.u == 2.0 and plain.budget == []
    delta = (moved.pupil.zernike_waves.detach() - result.model.pupil.zernike_waves.detach().double()).numpy()
    np.testing.assert_allclose(edge.zernike[4:15], 2 * delta[4:15], atol=1e-9)
    rotation = float(moved.illumination.rotation_deg.detach() - result.model.illumination.rotation_deg.detach().double())
    assert edge.station["illumination.rotation_deg"] == pytest.approx(2 * rotation, abs=1e-9)
    # the covariance gains exactly the rank-one term of the (scaled) change
    added = np.diag(m.zernike_cov)[4:15] - np.diag(plain.zernike_cov)[4:15]
    np.testing.assert_allclose(added, 4 * delta[4:15] ** 2, rtol=1e-6, atol=1e-14)
    print(f"\nedge term on the literal simulator: |delta| Noll 5-15 {np.linalg.norm(delta[4:15]):.5f} waves, "
          f"median u {np.median(plain.zernike_u[4:15]):.5f}; rotation {rotation:+.4f} deg")
    assert np.abs(delta[4:15]).max() < 4 * np.median(plain.zernike_u[4:15])  # 0.00018 RSS against u 0.00008


def test_frozen_misalignment_leaks_into_the_lens(case):
    """The same capture with the LED geometry frozen at nominal: the lens comes out wrong, which is
    why the misalignment must be fitted (the separation benchmark prints it for 8 misalignments)."""
    station, leds, capture, truth, coeffs = case
    g = station.geometry(leds)
    ref = catalogue_over_field(truth["reference_sample"], station.fov_um, g, seed=truth["reference_seed"])
    model = StationModel(g, transmission=ref, exposure=truth["relative_exposure"])
    cam = station.camera
    noise = NoiseModel.from_camera(cam.photons_per_count, cam.read_noise_e, cam.full_scale, True)
    schedule = default_schedule("known", g.zernike_terms).without(
        "illumination.shift_mm", "illumination.rotation_deg", "illumination.distance_error_mm", "illumination.tilt_deg")
    reconstruct(model, capture.frames, noise, schedule, initialise_geometry=False)
    assert _lens_error(model, coeffs) > 0.005


def test_parameters_at_bounds_names_the_pinned_elements(case):
    """Elements on a bound of their spec are named (``path`` or ``path[i]``); interior values and
    parameters the schedule does not free are not."""
    import torch

    station, leds, _, _, _ = case
    model = StationModel(station.geometry(leds))
    schedule = default_schedule("known", model.geometry.zernike_terms)
    assert parameters_at_bounds(model, schedule) == []
    with torch.no_grad():
        model.illumination.shift_mm[1] = 3.0  # the upper bound
        model.illumination.rotation_deg.fill_(-10.0)  # the lower bound
        model.illumination.brightness[4] = 10.0
        model.pupil.zernike_waves[6] = -2.0
        model.pupil.zernike_waves[1] = 2.0  # Noll 2: held by the schedule, not reported
    assert parameters_at_bounds(model, schedule) == [
        "illumination.shift_mm[1]", "illumination.rotation_deg", "illumination.brightness[4]", "pupil.zernike_waves[6]"]


def test_a_blind_start_without_bright_field_disks_names_that_cause():
    """Few LEDs at a wide pitch (5 x 5 at 10 mm: only the centre LED is in bright field): the blind
    start cannot place the LED array from one disk; it tries the nominal geometry and a scanned one.
    Where no LED sits at the bright-/dark-field transition (16 px frames, shift 0.8 mm) neither is
    right, and a fit that then does not converge says so first: the verdict's one-sentence reason is
    that cause."""
    from metrology.analysis.verdict import solver_reason
    from metrology.simulate import simulate_capture
    from tests.sim_cases import bench_station, lens_coefficients

    station = bench_station(16).replace(led_rows=5, led_cols=5, led_pitch_mm=10.0, led_center_row=None,
                                        led_center_col=None, upsampling=None, zernike_terms=15)
    leds = [(r, c) for r in range(5) for c in range(5)]
    truth = {"illumination.shift_mm": [0.8, -0.5], "illumination.rotation_deg": 2.0}
    capture, _ = simulate_capture(station, lens_coefficients(0.05, seed=4, n_terms=15), truth, seed=4, leds=leds)
    g = station.geometry(leds)
    model = StationModel(g, transmission=None)
    cam = station.camera
    noise = NoiseModel.from_camera(cam.photons_per_count, cam.read_noise_e, cam.full_scale, True)
    schedule = replace(default_schedule("blind", g.zernike_terms, max_iterations=4), settle_rounds=1)
    result = reconstruct(model, capture.frames, noise, schedule)
    start = result.init_summary["geometry_search"]
    assert start["bright_field_leds"] < 4 and start["note"].startswith("too few bright-field LEDs; ")
    assert start["scan"]["scan_candidates"] > 25 and result.init_summary["other"]["error_end"] > 0
    assert not result.converged and result.reduced_chi2_noise > 4
    assert result.message.startswith("not converged: the LED geometry could not be started from the data ("), \
        result.message
    reason = solver_reason(result.message)
    assert reason.startswith("solver did not converge: the LED geometry could not be started") and ";" not in reason


def test_a_wide_board_is_scanned_into_place_where_a_neighbour_sits_at_the_pupil_edge():
    """One bright-field disk cannot place a 5 x 5 board at 10 mm pitch (its two-disk pattern is
    symmetric in the sign of the illumination frequency). The neighbours' frames can: shifted by
    (-0.6, 0.7) mm and 2 mm nearer nominal's 90 mm, two of them sit at illumination NA 0.101-0.102,
    on the pupil edge (NA 0.1), half lit. The scan of the start's misfit
    (:func:`metrology.solver.start.scan_geometry`) finds the shift within 0.3 mm, where the nominal
    geometry is 0.9 mm off; it costs a few seconds. The blind start keeps it over the nominal one."""
    import torch

    from metrology.simulate import simulate_capture
    from metrology.solver.reconstruct import prepare
    from metrology.solver.start import initial_sample, scan_geometry, start
    from tests.sim_cases import bench_station, lens_coefficients

    station = bench_station(32).replace(led_rows=5, led_cols=5, led_pitch_mm=10.0, led_center_row=None,
                                        led_center_col=None, upsampling=None, zernike_terms=15)
    leds = [(r, c) for r in range(5) for c in range(5)]
    truth = {"illumination.shift_mm": [-0.6, 0.7], "illumination.rotation_deg": -1.5,
             "illumination.distance_error_mm": 2.0}
    capture, _ = simulate_capture(station, lens_coefficients(0.05, seed=4, n_terms=15), truth, seed=4, leds=leds)
    model = StationModel(station.geometry(leds), transmission=None)
    cam = station.camera
    noise = NoiseModel.from_camera(cam.photons_per_count, cam.read_noise_e, cam.full_scale, True)
    data, mask, _, background = prepare(model, capture.frames, noise)
    initial_sample(model, data, background)
    found = scan_geometry(model, data, mask, background)
    error = np.hypot(*(np.asarray(found["shift_mm"]) - truth["illumination.shift_mm"]))
    assert error < 0.3 < 0.9 < np.hypot(*truth["illumination.shift_mm"]), (found, error)
    assert np.allclose(model.illumination.shift_mm.detach().double().numpy(), found["shift_mm"])
    with torch.no_grad():  # the scan restores what it tried: only the geometry moved
        assert float(model.pupil.zernike_waves.abs().max()) == 0.0
    # the blind start tries it beside the nominal geometry and keeps it: its projections fit better
    model = StationModel(station.geometry(leds), transmission=None)
    summary = start(model, data, mask, background, default_schedule("blind", 15))
    assert summary["geometry_search"]["note"].startswith("too few bright-field LEDs; scanned geometry kept")
    assert summary["projection"]["error_end"] < summary["other"]["error_end"]
    assert np.hypot(*(model.illumination.shift_mm.detach().double().numpy() - truth["illumination.shift_mm"])) < 0.3


def test_a_nominal_start_is_blamed_only_where_the_fit_does_not_explain_the_data():
    """A fit that kept the nominal geometry but explains the data (reduced chi-square against the
    noise within the verdict's limit: the fit found the LEDs itself) keeps its own reason; above the
    limit, or where the chi-square is not finite, the start is named first."""
    from metrology.solver.reconstruct import START_CAUSE_CHI2, _start_cause

    kept = {"geometry_search": {"bright_field_leds": 1, "note": "too few bright-field LEDs; nominal geometry kept"}}
    assert _start_cause(kept, 2.8) == ""
    assert _start_cause(kept, START_CAUSE_CHI2) == ""
    for chi2 in (START_CAUSE_CHI2 * 1.01, 1296.0, float("nan")):
        assert _start_cause(kept, chi2).startswith(
            "not converged: the LED geometry could not be started from the data (1 bright-field LED(s), 4 needed)")
    found = {"geometry_search": {"bright_field_leds": 9}}
    assert _start_cause(found, 1296.0) == "" and _start_cause(None, 1296.0) == ""
