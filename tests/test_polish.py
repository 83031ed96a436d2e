"""The Gauss-Newton polish (metrology/solver/polish.py) and its linearisation (jacobian.py).

What must hold when the polish takes fewer Jacobian rebuilds (issue 18): a rescaled linearisation
is a fresh one; the polish's final ``J^T W J`` is a fresh linearisation's at the final point with
the data variances re-estimated there; and an off-model capture whose polish crawled (14 rebuilds,
not converged) now converges with fewer.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metrology.physics import StationModel
from metrology.references import catalogue_over_field
from metrology.solver import NoiseModel, default_schedule, reconstruct
from metrology.solver.jacobian import linearise
from metrology.solver.priors import add_to_normal_equations
from metrology.solver.weights import Weighting
from tests.sim_cases import misaligned_capture

ROOT = Path(__file__).resolve().parents[1]
polish_module = importlib.import_module("metrology.solver.polish")


def _known_fit_inputs(frame_px=16, leds_per_side=5, seed=3):
    station, leds, capture, truth, _ = misaligned_capture(frame_px, leds_per_side, seed=seed)
    g = station.geometry(leds)
    ref = catalogue_over_field(truth["reference_sample"], station.fov_um, g, seed=truth["reference_seed"])
    model = StationModel(g, transmission=ref, exposure=truth["relative_exposure"], dtype=torch.float32)
    cam = station.camera
    noise = NoiseModel.from_camera(cam.photons_per_count, cam.read_noise_e, cam.full_scale, True)
    return model, capture, noise, default_schedule("known", g.zernike_terms)


def test_a_rescaled_linearisation_equals_a_fresh_one():
    model, capture, noise, schedule = _known_fit_inputs()
    specs = [p for p in schedule.parameters if not p.path.startswith("sample.field")]
    data = torch.as_tensor(np.asarray(capture.frames, np.float32))
    mask = torch.ones_like(data)
    mask[:, :2] = 0.0
    scale = mask * torch.as_tensor(np.random.default_rng(0).uniform(0.3, 1.0, data.shape), dtype=data.dtype)
    fresh = linearise(model, data, scale, noise, specs)
    rescaled = linearise(model, data, mask, noise, specs).rescaled(scale)
    torch.testing.assert_close(rescaled.tangents, fresh.tangents, rtol=1e-5, atol=1e-6 * float(fresh.tangents.abs().max()))
    torch.testing.assert_close(rescaled.residual, fresh.residual, rtol=1e-5, atol=1e-5)
    for a, b in zip(rescaled.normal(), fresh.normal()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8 * float(b.abs().max()))
    with pytest.raises(ValueError, match="left out"):
        linearise(model, data, scale, noise, specs).rescaled(torch.ones_like(data))


def test_polish_ends_on_a_fresh_linearisation_with_the_variances_of_the_final_point():
    model, capture, noise, schedule = _known_fit_inputs(frame_px=24, leds_per_side=5, seed=4)
    fit = reconstruct(model, capture.frames, noise, schedule)
    assert fit.converged, fit.message
    # the variances the fit reports are the MAP of its final residuals: re-estimating changes nothing
    weighting = Weighting(fit.weights, fit.data.dtype)
    assert weighting.update(model, fit.data, fit.mask, noise) < 1e-6
    specs = [p for p in schedule.parameters if not p.path.startswith("sample.field")]
    lin = linearise(model, fit.data, weighting.residual_scale(fit.mask), noise, specs)
    jtj, _ = add_to_normal_equations(*lin.normal(), model, schedule.priors, lin.columns)
    # float32 tangents: a rescaled linearisation agrees with a fresh one to ~1e-5 (variances moved
    # by 1 % change J^T W J by ~1e-2)
    torch.testing.assert_close(fit.jtj.double(), jtj.cpu(), rtol=1e-4, atol=1e-7 * float(jtj.abs().max()))


@pytest.fixture(scope="module")
def offmodel():
    """bench_offmodel's render path (25 nm LED spectrum, margin, pixel integration, drawn
    constants): seed 1 at 32 px and 5 x 5 LEDs, the case whose polish used to crawl."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        bench = importlib.import_module("bench_offmodel")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench


def test_an_offmodel_polish_converges_with_fewer_jacobian_rebuilds(offmodel, monkeypatch):
    calls = []
    real = polish_module.linearise

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(polish_module, "linearise", counted)
    station = offmodel.trial_station(32)
    leds = [(r, c) for r in range(5, 10) for c in range(5, 10)]
    assert (int(station.led_center_row), int(station.led_center_col)) == (7, 7)
    result = offmodel.trial(station, leds, 1, "known")
    # before issue 18's polish: 13 rebuilds in the polish, "not converged: iteration budget spent
    # with a 9.2 sigma step left", Noll 5-15 error 0.0110 waves, LED shift error 56 um
    assert result["converged"], result["message"]
    # the count moves with float32 rounding (the machine's FFT and BLAS, the order of the Jacobian's
    # sums): 9 to 11 on one 2-core Intel Xeon across equivalent codes (2026-12-02), 10 on the AMD
    # EPYC of the change; always below the old polish's 13
    assert len(calls) <= 11
    assert result["error_5_15"] < 0.0105


@pytest.mark.parametrize("physics", [
    dict(),
    dict(pixel_quadrature=2, margin_px=3, spectral_fwhm_nm=25.0, spectral_points=3, spherical_illumination=True),
    dict(pixel_quadrature=3, vignetting=(1.3, 0.4, -0.2)),
    dict(emission_exponent=4.0),  # the gain's dependence on the LED geometry (cos^p of each LED's angle)
])
def test_the_closed_form_camera_part_equals_forward_mode_through_the_whole_model(physics):
    """linearise differentiates the camera (|ifft2|^2, gain, whitened root) in closed form and only
    the box spectra by forward mode; every column, brightness, stray light and background included, must equal
    a forward-mode pass through the whole model (linearise_reference), with each physics term on."""
    from dataclasses import replace

    from metrology.solver.jacobian import linearise_reference
    from metrology.solver.schedule import ParameterSpec

    model, capture, noise, schedule = _known_fit_inputs(frame_px=16, leds_per_side=3, seed=5)
    g = replace(model.geometry, **physics)
    m = StationModel(g, transmission=model.sample.transmission().detach() if not g.margin_px else None,
                     exposure=model.exposure, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if g.margin_px:  # not the clear sample (its phase columns would all be 0): a random one on the larger grid
            m.sample.field_real.add_(0.3 * torch.randn(m.sample.field_real.shape, generator=gen, dtype=torch.float64))
            m.sample.field_imag.add_(0.3 * torch.randn(m.sample.field_imag.shape, generator=gen, dtype=torch.float64))
        m.pupil.zernike_waves[4:15] = 0.05 * torch.randn(11, generator=gen, dtype=torch.float64)
        m.pupil.log_amplitude[3:6] = 0.1
        m.illumination.brightness.copy_(torch.linspace(500, 900, len(m.illumination.brightness)))
        m.camera.background_counts.fill_(40.0)
        m.sample.defocus_um.fill_(3.0)
        m.illumination.shift_mm.copy_(torch.tensor([0.3, -0.2]))
        # the first frames' negative stray light puts part of them under the dark level, where the
        # residual's root continues along its tangent (losses.model_root): both branches are compared
        light = (m() - 40.0).mean(dim=(-2, -1)) / (m.camera.counts_per_unit * m.frame_gain())
        k = len(light) // 2
        m.illumination.stray_light.copy_(torch.cat([-light[:k], torch.full_like(light[k:], 0.02)]))
        below = float((m() < 40.0).double().mean())
    assert 0.05 < below < 0.5
    paths = ["illumination.shift_mm", "illumination.rotation_deg", "illumination.distance_error_mm",
             "illumination.tilt_deg", "illumination.brightness", "illumination.stray_light",
             "illumination.emission_exponent",
             "pupil.zernike_waves", "pupil.log_amplitude", "pupil.na", "sample.defocus_um", "sample.position_um",
             "camera.counts_per_unit", "camera.background_counts"]
    if g.vignetting:
        paths += ["pupil.vignetting_radius", "pupil.vignetting_center"]
    some = {"pupil.zernike_waves": (4, 7, 11), "pupil.log_amplitude": (3, 4)}
    specs = [ParameterSpec(p, 1.0, indices=some.get(p)) for p in paths]
    data = torch.as_tensor(np.asarray(capture.frames, np.float64))
    mask = torch.as_tensor(np.random.default_rng(2).uniform(0.0, 1.0, data.shape))
    fast = linearise(m, data, mask, noise, specs)
    ref = linearise_reference(m, data, mask, noise, specs)
    assert fast.columns.names == ref.columns.names and len(fast.columns.names) > 25
    scale = float(ref.tangents.abs().amax())
    for t in range(ref.tangents.shape[0]):
        torch.testing.assert_close(fast.tangents[t], ref.tangents[t], rtol=1e-8, atol=1e-9 * scale)
    torch.testing.assert_close(fast.residual, ref.residual, rtol=1e-10, atol=1e-10)
    assert float(fast.tangents.abs().amax()) > 0
    phase = [i for i, name in enumerate(fast.columns.names) if name.startswith("pupil.zernike_waves")]
    # every phase column is far above the tolerance (1000x): the comparison above can see its errors
    assert len(phase) == 3 and all(float(fast.tangents[fast.plain.index(i)].abs().amax()) > 1e-6 * scale for i in phase)
    # the two per-frame parameters are one compressed tangent each, after the plain ones
    assert ref.tangents.shape[0] == len(fast.plain) + 2


def test_a_centre_sampled_linearisation_is_that_of_the_centre_sampled_model():
    """``pixel_points=1`` (the staged rounds' preconditioner) linearises the model as if its pixels
    were sampled at their centres: the same as the model without pixel quadrature, and not the same
    as the 2 x 2 rule it replaces."""
    from dataclasses import replace

    from metrology.solver.schedule import ParameterSpec

    model, capture, noise, _ = _known_fit_inputs(frame_px=16, leds_per_side=3, seed=5)
    ref = model.sample.transmission().detach()
    models = [StationModel(replace(model.geometry, pixel_quadrature=q), transmission=ref, exposure=model.exposure,
                           dtype=torch.float64) for q in (2, 0)]
    for m in models:
        with torch.no_grad():
            m.pupil.zernike_waves[4:8] = torch.tensor([0.05, -0.03, 0.02, 0.04], dtype=torch.float64)
            m.illumination.brightness.fill_(700.0)
    specs = [ParameterSpec(p, 1.0) for p in ("illumination.shift_mm", "pupil.zernike_waves", "sample.defocus_um",
                                              "illumination.brightness")]
    data = torch.as_tensor(np.asarray(capture.frames, np.float64))
    mask = torch.ones_like(data)
    centre = linearise(models[0], data, mask, noise, specs, pixel_points=1)
    plain = linearise(models[1], data, mask, noise, specs)
    quad = linearise(models[0], data, mask, noise, specs)
    torch.testing.assert_close(centre.tangents, plain.tangents, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(centre.residual, plain.residual, rtol=1e-12, atol=1e-12)
    assert float((quad.tangents - centre.tangents).abs().amax()) > 1e-3 * float(quad.tangents.abs().amax())


def test_a_step_across_a_bound_is_judged_by_the_loss_of_the_point_it_stores():
    """A Gauss-Newton candidate that crosses a bound is stored clamped; the loss it is chosen by must be
    the clamped point's. (Judged unprojected, the pupil edge's re-fit of a 32-px fixture lens took a
    step of the LED tilt to 5.7 deg, bound 5, at a loss of 0.952 and stored it at 1.177, every step.)
    Here on a closed form: L = (x - 2)^2 + 10 (x - y)^2 over the LED shift (x, y), bounds +/-1, from
    (0, 0): the Gauss-Newton step is (2, 2) (L = 0), clamped (1, 1) (L = 1 < 4); the stored point's
    loss is the one returned (unprojected it was 0)."""
    from metrology.solver.schedule import ParameterSpec

    model, *_ = _known_fit_inputs(frame_px=16, leds_per_side=3, seed=3)
    path = "illumination.shift_mm"
    with torch.no_grad():
        model.illumination.shift_mm.zero_()
    specs = [ParameterSpec(path, 1.0, 0, (-1.0, 1.0))]

    def evaluate(overrides):
        x, y = overrides.get(path, model.parameter(path))
        return (x - 2.0) ** 2 + 10.0 * (x - y) ** 2

    jac = torch.tensor([[1.0, 0.0], [10.0**0.5, -(10.0**0.5)]], dtype=torch.float64)
    residual = torch.tensor([-2.0, 0.0], dtype=torch.float64)
    jtj, jtr = jac.T @ jac, jac.T @ residual
    delta = -torch.linalg.solve(jtj, jtr)
    torch.testing.assert_close(delta, torch.tensor([2.0, 2.0], dtype=torch.float64))
    after = polish_module._best_step(model, specs, evaluate, jtj, jtr, delta)
    with torch.no_grad():
        stored = float(evaluate({}))
    torch.testing.assert_close(model.illumination.shift_mm.detach(), torch.tensor([1.0, 1.0]))
    assert after == pytest.approx(stored, abs=1e-6) and stored == pytest.approx(1.0, abs=1e-6)


def _toy_shift_problem(x, y):
    """The closed form of the bound tests: L = (x - 2)^2 + 10 (x - y)^2 over the LED shift (x, y), bounds
    +/-1; its ``J^T J`` and ``J^T r`` at (x, y) (residuals (x - 2, sqrt(10) (x - y)))."""
    from metrology.solver.schedule import ParameterSpec

    model, *_ = _known_fit_inputs(frame_px=16, leds_per_side=3, seed=3)
    path = "illumination.shift_mm"
    with torch.no_grad():
        model.illumination.shift_mm.copy_(torch.tensor([x, y]))
    specs = [ParameterSpec(path, 1.0, 0, (-1.0, 1.0))]

    def evaluate(overrides):
        a, b = overrides.get(path, model.parameter(path))
        return (a - 2.0) ** 2 + 10.0 * (a - b) ** 2

    jac = torch.tensor([[1.0, 0.0], [10.0**0.5, -(10.0**0.5)]], dtype=torch.float64)
    residual = torch.tensor([x - 2.0, 10.0**0.5 * (x - y)], dtype=torch.float64)
    return model, specs, evaluate, jac.T @ jac, jac.T @ residual


def test_the_convergence_test_holds_a_parameter_its_step_pushes_across_a_bound():
    """At the constrained optimum (1, 1) of L = (x - 2)^2 + 10 (x - y)^2 with x <= 1 the unconstrained
    Gauss-Newton step is (1, 1), 1.0 sigma: a fit whose optimum lies beyond a bound never passed the
    test. The bound-constrained step holds x on its bound and leaves y nothing to do (0 sigma); the
    settle loop's test (one backward pass) agrees."""
    from metrology.solver.blocks import Block

    model, specs, evaluate, jtj, jtr = _toy_shift_problem(1.0, 1.0)
    unconstrained = -torch.linalg.solve(jtj, jtr)
    torch.testing.assert_close(unconstrained, torch.tensor([1.0, 1.0], dtype=torch.float64))
    delta, inv, held = polish_module.bounded_step(jtj, jtr, Block(model, specs))
    assert held.tolist() == [True, False]
    torch.testing.assert_close(delta, torch.zeros(2, dtype=torch.float64))
    assert polish_module.remaining_step_sigma(model, specs, evaluate, jtj, n_valid=1.0) == pytest.approx(0.0, abs=1e-6)
    # the pull across the bound is the optimum's: the same problem inside the bounds still has its step
    model, specs, evaluate, jtj, jtr = _toy_shift_problem(0.5, 0.5)
    assert polish_module.remaining_step_sigma(model, specs, evaluate, jtj, n_valid=1.0) > 1.0


def test_a_parameter_on_a_bound_whose_step_points_inside_is_not_held():
    """At (1, -1) (both on a bound) the descent points inside for both (``J^T r`` = (19, -20)), so neither
    is held at first; the unconstrained step (1, 3) would carry x across its upper bound, so x is held
    and y steps alone: (0, 2), y from its lower bound to 1, x's multiplier keeping its sign."""
    from metrology.solver.blocks import Block

    model, specs, _, jtj, jtr = _toy_shift_problem(1.0, -1.0)
    delta, _, held = polish_module.bounded_step(jtj, jtr, Block(model, specs))
    torch.testing.assert_close(jtr, torch.tensor([19.0, -20.0], dtype=torch.float64))
    assert held.tolist() == [True, False]
    torch.testing.assert_close(delta, torch.tensor([0.0, 2.0], dtype=torch.float64))

