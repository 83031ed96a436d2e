"""Each LED lights the sample with a spherical wave (``spherical_illumination``, issue 14).

Across the modelled field the illumination angle changes by ``x / R``: the model carries the waves'
common curvature ``exp(i pi |x|^2 / (lambda R))`` on the sample
(:meth:`metrology.physics.StationModel.illumination_phase`). Checked against the independent
renderer's exact spherical wave from each LED (``metrology/render.py``), phase and frames.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from metrology.io.station_file import load_station, parse_station
from metrology.physics import StationModel
from metrology.references import reference_transmission
from metrology.render import RealPhysics, _spherical_residual, field_side, render_intensity
from metrology.simulate import check_misalignment
from metrology.simulate_optics import illumination_frequencies, led_positions_mm
from tests.physics_cases import small_geometry

ROOT = Path(__file__).resolve().parents[1]
STATION = ROOT / "fixtures" / "stations" / "bench-4x-15x15.toml"


def _curvature(phase: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Quadratic coefficients (rad / um^2) of a phase map's central row and column."""
    c = phase.shape[0] // 2
    row = np.unwrap(np.angle(phase[c, :] * np.conj(phase[c, c])))
    col = np.unwrap(np.angle(phase[:, c] * np.conj(phase[c, c])))
    return float(np.polyfit(x, row, 2)[0]), float(np.polyfit(x, col, 2)[0])


def test_the_illumination_phase_is_the_spherical_waves_curvature():
    """The phase is ``pi |x|^2 / (lambda R)`` from the tile centre: the curvature of the renderer's
    exact spherical wave from the LED under the tile to 1e-6, and of an LED at illumination NA 0.1
    (a pupil-edge LED) to 1.5 %; ``R`` follows the fitted LED distance, a slide counts its thickness
    over its index; without the switch there is no phase (plane waves)."""
    g = small_geometry(frame_px=32, upsampling=4, margin_px=4, leds=[(7, 7), (8, 9)], spherical_illumination=True)
    m = StationModel(g, dtype=torch.float64)
    q = m.illumination_phase().detach().numpy()
    n = g.object_px
    x = (np.arange(n) - n / 2) * g.object_pixel_um
    expected = np.pi / (g.wavelength_um * g.led_distance_mm * 1e3)
    assert _curvature(q, x) == pytest.approx((expected, expected), rel=1e-9)
    assert abs(q[n // 2, n // 2] - 1) < 1e-12 and np.allclose(np.abs(q), 1)
    station = load_station(STATION).replace(frame_px=32, upsampling=4)
    truth = check_misalignment({}, 2)
    pos = led_positions_mm(station, g.leds, truth, (0.0, 0.0))
    k = illumination_frequencies(station, pos)
    for j, tol in ((0, 1e-6), (1, 0.015)):
        exact = _spherical_residual(pos[j], k[j], g.wavelength_um, x[None, :], x[:, None], station.tile_center_mm)
        assert np.array(_curvature(exact, x)) == pytest.approx(np.array(_curvature(q, x)), rel=tol), j
    with torch.no_grad():
        m.illumination.distance_error_mm.fill_(10.0)
    far = _curvature(m.illumination_phase().detach().numpy(), x)[0]
    assert far == pytest.approx(expected * 90 / 100, rel=1e-9)
    slide = StationModel(replace(g, slide_thickness_mm=1.0, slide_index=1.5), dtype=torch.float64)
    assert _curvature(slide.illumination_phase().detach().numpy(), x)[0] == pytest.approx(
        expected * 90 / (90 - 1 + 1 / 1.5), rel=1e-9)
    assert StationModel(replace(g, spherical_illumination=False)).illumination_phase() is None


def test_pupil_edge_frames_follow_the_rendered_spherical_waves():
    """Frames of the LEDs whose illumination NA is within 0.002 of the pupil edge (NA 0.1), where the
    angle's change across a 64-px field (0.0006 in NA at its border, 90 mm below) decides how much
    light passes: the renderer's spherical waves change them by ~20 % of their mean from its plane
    waves; the model with the curvature follows that change (correlation > 0.85) and halves its
    mismatch to the spherical rendering; the other frames barely move (< 0.5 %), in the model as in the
    rendering, with the sample displaced by a few um (the waves are centred on the tile, not on it)."""
    n, up, margin, m_px = 64, 4, 0.5, 8
    leds = [(7, 7), (6, 6), (8, 9), (6, 9), (8, 5), (6, 5), (9, 8), (5, 8), (9, 6), (5, 6)]  # centre, NA 0.063, 8 at 0.0994
    station = load_station(STATION).replace(frame_px=n, zernike_terms=15, upsampling=up)
    truth = check_misalignment({"sample.position_um": [6.0, -4.0]}, len(leds))  # the waves stay on the tile
    lens = np.zeros(15)
    lens[[4, 6, 7, 10]] = [0.03, -0.02, 0.015, 0.02]
    pixel = station.camera_pixel_um / station.magnification
    n_large = field_side(n, margin)
    sample = reference_transmission("random-broadband", n_large * pixel, n_large * up, seed=4)
    rendered = {s: render_intensity(station, leds, truth, sample, lens,
                                    RealPhysics(margin=margin, emitter_points=3, spectral_points=1, spherical_illumination=s))
                for s in (False, True)}
    c0 = (n_large - n) // 2 * up - m_px * up
    ref = sample[c0 : c0 + (n + 2 * m_px) * up, c0 : c0 + (n + 2 * m_px) * up]
    model = {}
    for s in (False, True):
        m = StationModel(replace(station.geometry(leds), margin_px=m_px, spherical_illumination=s), ref, dtype=torch.float64)
        with torch.no_grad():
            m.pupil.zernike_waves[:15] = torch.tensor(lens)
            m.sample.position_um.copy_(torch.tensor(truth["sample.position_um"]))
            model[s] = m.intensity().numpy()
    edge = np.abs(m.illumination.illumination_na().detach().numpy() - 0.1) < 0.002
    assert edge.sum() == 8
    mean = rendered[True].mean(axis=(1, 2))[:, None, None]
    true_change, modelled = (rendered[True] - rendered[False]) / mean, (model[True] - model[False]) / mean

    def rms(a):
        return float(np.sqrt(np.mean(a**2)))

    a, b = true_change[edge], modelled[edge]
    corr = float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))
    plane, curved = rms(((model[False] - rendered[True]) / mean)[edge]), rms(((model[True] - rendered[True]) / mean)[edge])
    print(f"\npupil-edge frames: rendered change {rms(a):.4f}, modelled {rms(b):.4f}, correlation {corr:.3f}; "
          f"mismatch to the spherical rendering: plane waves {plane:.4f}, with the curvature {curved:.4f}")
    assert rms(a) > 0.1 and corr > 0.85 and curved < 0.5 * plane
    other, other_model = rms(true_change[~edge]), rms(modelled[~edge])
    print(f"the other frames: rendered change {other:.4f}, modelled {other_model:.4f}")
    # small, and the same size: the waves stay on the tile while the sample is displaced (moving
    # with it, the model's change would be several times the rendered one)
    assert other < 0.005 and abs(other_model - other) < 0.5 * other


def test_the_station_file_switches_it():
    text = STATION.read_text(encoding="utf-8")
    assert load_station(STATION).geometry([(7, 7)]).spherical_illumination is False
    on = parse_station(text.replace("size_mm = 0.2\n", "size_mm = 0.2\nspherical_illumination = true\n"), "s.toml")
    assert on.spherical_illumination and on.geometry([(7, 7)]).spherical_illumination
    assert parse_station(on.to_toml(), "again.toml").spherical_illumination
