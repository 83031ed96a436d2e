"""Alternating-projection pupil initialisation (metrology.solver.projection)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metrology.physics import StationModel
from metrology.solver.start import initialise_intensity
from metrology.solver.projection import _basis, fit_phase_map, project
from tests.physics_cases import random_object, small_geometry


def _model(geometry, transmission=None):
    """A model with the projections' own pupil edge (the cells' area fraction): these tests check
    the algorithm on data it can describe exactly."""
    model = StationModel(geometry, transmission=transmission, dtype=torch.float64)
    model.pupil.edge = "coverage"
    return model


def _rms_5_up(a, b):
    d = np.asarray(a)[4:] - np.asarray(b)[4:]
    return float(np.sqrt(np.sum(d**2)))


def test_fit_phase_map_recovers_a_wrapped_phase():
    """Several waves peak to valley (the map wraps many times): the difference fit needs no unwrapping."""
    g = small_geometry(frame_px=64, n_side=1, zernike_terms=15)
    model = _model(g)
    basis = _basis(model)
    support = model.pupil(torch.zeros((1, 2), dtype=torch.float64), torch.zeros((), dtype=torch.float64))[0].abs() > 0.5
    rng = np.random.default_rng(3)
    truth = torch.as_tensor(np.r_[rng.normal(0, 1.0, 11), 2.0, 0.3, -0.2])  # Noll 5-15, defocus, position
    phase = torch.tensordot(truth, basis, dims=1)
    steps = torch.cat([phase.diff(dim=0)[support[1:] & support[:-1]], phase.diff(dim=1)[support[:, 1:] & support[:, :-1]]])
    truth[:11] *= 2.0 / float(steps.abs().max())  # steepest step between neighbours: 2 rad (< pi)
    phase = torch.tensordot(truth, basis, dims=1) + 1.3  # plus a piston
    assert float(phase[support].max() - phase[support].min()) > 4 * math.pi  # wraps at least twice
    coeffs, defocus, position = fit_phase_map(model, torch.polar(torch.ones_like(phase), phase), support)
    np.testing.assert_allclose(coeffs.numpy(), truth[:11].numpy(), atol=1e-6)
    assert float(defocus) == pytest.approx(2.0, abs=1e-5)
    np.testing.assert_allclose(position.numpy(), [0.3, -0.2], atol=1e-6)


def _strong_case(seed=0, rms=0.2):
    """Noise-free frames of a known object through 0.2 waves RMS of Noll 5-10 (about 1 wave PV)."""
    g = small_geometry(frame_px=32, n_side=7, zernike_terms=10)
    obj = random_object(g.object_px, seed=seed, phase=0.8, amp=0.2)
    truth = _model(g, obj)
    rng = np.random.default_rng(seed)
    z = np.zeros(10)
    z[4:] = rng.normal(0, 1, 6)
    z[4:] *= rms / np.sqrt(np.sum(z[4:] ** 2))
    with torch.no_grad():
        truth.pupil.zernike_waves.copy_(torch.as_tensor(z))
        data = truth()
    return g, obj, z, data


def test_projection_recovers_strong_aberration_with_a_known_object():
    g, obj, z, data = _strong_case()
    model = _model(g, obj)
    mask = torch.ones_like(data)
    initialise_intensity(model, data, 0.0, mask)
    out = project(model, data, mask, 0.0, iterations=30)
    got = model.pupil.zernike_waves.detach().numpy()
    assert _rms_5_up(np.zeros(10), z) == pytest.approx(0.2)
    assert _rms_5_up(got, z) < 0.01  # from 0.2 waves RMS to < 0.01
    assert out["error_end"] < 0.1 * out["error_start"]


def test_projection_with_unknown_object_recovers_the_pupil():
    """Blind: the object spectrum is updated too (start: a clear object)."""
    g, obj, z, data = _strong_case(seed=1)
    model = _model(g)
    mask = torch.ones_like(data)
    initialise_intensity(model, data, 0.0, mask)
    project(model, data, mask, 0.0, iterations=60, update_sample=True)
    assert _rms_5_up(model.pupil.zernike_waves.detach().numpy(), z) < 0.03


def test_projection_leaves_frozen_quantities_alone():
    """A schedule that freezes the sample defocus (or some Zernike terms) is obeyed by the projections."""
    from metrology.solver import default_schedule
    from metrology.solver.projection import basis_mask

    g, obj, z, data = _strong_case(seed=2)
    schedule = default_schedule("known", 10).without("sample.defocus_um")
    model = _model(g, obj)
    free = basis_mask(model, schedule.parameters, blind=False)
    assert free[:6].all() and not free[6] and free[7:].all()
    mask = torch.ones_like(data)
    initialise_intensity(model, data, 0.0, mask)
    with torch.no_grad():
        model.sample.defocus_um.fill_(1.5)
    out = project(model, data, mask, 0.0, iterations=20, free=free)
    assert float(model.sample.defocus_um) == 1.5 and out["defocus_um"] == 0.0
    free[:3] = False  # Noll 5-7 frozen too
    before = model.pupil.zernike_waves.detach().clone()
    project(model, data, mask, 0.0, iterations=5, free=free)
    assert torch.equal(model.pupil.zernike_waves.detach()[4:7], before[4:7])


def test_observed_estimates_converge_and_do_not_change_the_result():
    """``observe`` sees the lens estimate every OBSERVE_EVERY iterations (what a time-to-accuracy
    benchmark traces): it improves towards the truth, and observing leaves the outcome unchanged."""
    from metrology.solver.projection import OBSERVE_EVERY
    from metrology.solver.start import initialise_pupil

    g, obj, z, data = _strong_case(seed=1)
    mask = torch.ones_like(data)
    results, seen = [], []
    for observe in (None, seen.append):
        model = _model(g)
        initialise_intensity(model, data, 0.0, mask)
        out = initialise_pupil(model, data, mask, 0.0, 30, blind=True, observe=observe)
        results.append(model.pupil.zernike_waves.detach().clone())
    # the same to rounding (multi-threaded sums differ by ~1e-17 from run to run anyway)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-12)
    # one pass over all LEDs (30 it); with a staged run also the low-angle pass (15 it) and a second
    # pass over all LEDs
    one = 30 // OBSERVE_EVERY - 1
    assert len(seen) == (one if "kept" not in out else 15 // OBSERVE_EVERY - 1 + 2 * one)
    assert all(s.shape == (10,) and torch.isfinite(s).all() for s in seen)
    errors = [_rms_5_up(s.numpy(), z) for s in seen]
    assert min(errors) < 0.03 < errors[0]  # from the first estimate to a good one


def test_unknown_object_starts_dark_field_leds_at_nominal_brightness():
    """With an unknown object the smooth start predicts no dark-field light, so the frame ratio says
    nothing there: dark-field LEDs start at 1, bright-field LEDs from the ratio (as with a known
    object, where every LED takes its ratio)."""
    g, obj, z, data = _strong_case(seed=3)
    mask = torch.ones_like(data)
    known, blind = _model(g, obj), _model(g)
    with torch.no_grad():
        j = int(torch.argmin(blind.illumination.illumination_na()))
    data = data.clone()
    data[j] *= 1.3  # the on-axis LED 30 % brighter
    initialise_intensity(known, data, 0.0, mask)
    initialise_intensity(blind, data, 0.0, mask, object_known=False)
    bf = blind.bright_field()
    assert bf.any() and (~bf).any()
    b_blind = blind.illumination.brightness.detach()
    assert torch.all(b_blind[~bf] == 1.0)
    assert float(b_blind[j] / torch.median(b_blind[bf])) == pytest.approx(1.3, rel=0.05)
    b_known = known.illumination.brightness.detach()
    assert torch.allclose(b_known[~bf], torch.ones_like(b_known[~bf]), rtol=0.05)  # true object: ratio ~1

